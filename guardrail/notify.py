"""Telling people a run waits for them: the ``on_halt`` callable and an optional webhook.

The webhook receives a JSON POST on every transition to ``pending_review`` or
``awaiting_approval``::

    {"event": "run.pending_review", "run_id": "...", "agent": "...", "status": "...",
     "reason": "...", "review_items": [{"id": "...", "reason": "...", "kind": "...", ...}]}

A failing hook or webhook is logged and never breaks the halt: the run is already safely stopped.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from guardrail import telemetry
from guardrail.errors import GuardrailError
from guardrail.store import ReviewItem, RunRecord, Store

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


class Notifier:
    """The guard's hooks: a span for every run that halts or completes (with its journal's
    length and head hash, a witness), then the ``on_halt`` callable and the webhook, if any."""

    def __init__(
        self,
        store: Store,
        on_halt: Callable[[RunRecord], None] | None = None,
        webhook_url: str | None = None,
    ) -> None:
        self.store = store
        self.on_halt = on_halt
        self.webhook_url = check_url(webhook_url) if webhook_url else None

    def halted(self, run: RunRecord) -> None:
        """The run waits for a person (``pending_review`` or ``awaiting_approval``)."""
        journal = self.store.head(run.id)
        telemetry.event(
            "guardrail " + run.status,
            **{"run.id": run.id, "agent": run.agent},
            **(
                {"journal.entries": journal[0], "journal.head": journal[1]}
                if journal is not None
                else {}
            ),
        )
        if self.on_halt is not None:
            try:
                self.on_halt(run)
            except Exception:
                log.exception("guardrail on_halt hook failed for run %s", run.id)
        if self.webhook_url is not None:
            items = self.store.review_items(run_id=run.id, status="open")
            post(self.webhook_url, payload(run, items, journal))

    def completed(self, run_id: str) -> None:
        """A span marks the run's end with its journal's length and head hash (a witness)."""
        journal = self.store.head(run_id)  # (cached: the run just wrote it)
        if journal is not None:
            telemetry.event(
                "guardrail completed",
                **{"run.id": run_id, "journal.entries": journal[0], "journal.head": journal[1]},
            )
