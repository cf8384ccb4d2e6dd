"""Telling people a run waits for them, and workers that a person decided: the ``on_halt``
and ``on_decision`` callables and an optional webhook.

The webhook receives a JSON POST on every transition to ``pending_review`` or
``awaiting_approval``::

    {"event": "run.pending_review", "run_id": "...", "agent": "...", "status": "...",
     "reason": "...", "review_items": [{"id": "...", "reason": "...", "kind": "...", ...}]}

and on every decision that lands (``decision.resume``, ``decision.abort``,
``decision.approved``, ``decision.done_manually``...)::

    {"event": "decision.resume", "run_id": "...", "agent": "...", "status": "running",
     "decision": {"what": "resume", "by": "ana", "note": "...", "item_id": null, "at": 1.7e9,
                  "journal_entry": 12}}

A failing hook or webhook is logged and never breaks the halt: the run is already safely stopped.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from guardrail.errors import GuardrailError
from guardrail.history import DecisionEvent
from guardrail.store import ReviewItem, RunRecord

log = logging.getLogger("guardrail")
TIMEOUT = 5.0


def check_url(url: str) -> str:
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
        raise GuardrailError(f"webhook_url {url!r} is not an http(s) URL", field="webhook_url")
    return url


def payload(
    run: RunRecord, items: list[ReviewItem], journal: tuple[int, str] | None = None
) -> dict[str, Any]:
    return {
        "event": f"run.{run.status}",
        "run_id": run.id,
        # the journal's length and head hash, for a witness kept outside the store
        "journal": {"entries": journal[0], "head": journal[1]} if journal else None,
        "agent": run.agent,
        "status": run.status,
        "reason": run.reason,
        "review_items": [
            {
                "id": i.id,
                "seq": i.seq,
                "reason": i.reason,
                "kind": i.kind,
                "owner": i.owner,
                "instructions": i.instructions,
            }
            for i in items
            if i.status == "open"
        ],
    }


def decision_payload(run: RunRecord, event: DecisionEvent) -> dict[str, Any]:
    """A decision that landed: who decided what on which run, and the run's status now."""
    return {
        "event": f"decision.{event.what}",
        "run_id": run.id,
        "agent": run.agent,
        "status": run.status,
        "decision": {
            "what": event.what,
            "by": event.by,
            "note": event.note,
            "item_id": event.item_id,
            "at": event.at,
            "journal_entry": event.n,
        },
    }


def post(url: str, body: dict[str, Any]) -> bool:
    """POST the body as JSON; True when the server answered 2xx."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "guardrail"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            status = int(response.status)
            ok = 200 <= status < 300
    except Exception as exc:
        log.warning("guardrail webhook %s failed for run %s: %s", url, body.get("run_id"), exc)
        return False
    if not ok:
        log.warning("guardrail webhook %s answered %s", url, status)
    return ok
