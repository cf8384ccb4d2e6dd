"""The webhook's events, their signatures, and one POST.

The webhook receives a JSON POST for every transition to ``pending_review`` or
``awaiting_approval`` and every decision that lands::

    {"id": "3f2a9c1b7e40.14", "event": "run.pending_review", "at": "2026-12-01T16:06:25.120Z",
     "run_id": "3f2a9c1b7e40", "agent": "shop", "status": "pending_review",
     "reason": "ship failed: ...", "metadata": {...}, "url": "https://review.example/runs/...",
     "journal": {"entries": 14, "head": "..."},
     "review_items": [{"id": "...", "seq": 2, "reason": "...", "kind": "...", ...}],
     "decision": null}

A decision's event is ``decision.<what>`` (``decision.resume``, ``decision.abort``,
``decision.approved``, ``decision.done_manually``...) with ``decision`` set to who decided what,
when, and their note. The ``id`` is the run id and its journal entry: the same event always
has the same id, so a receiver drops a repeat (delivery is at least once, see
:mod:`guardrail.outbox`). With a secret, each POST carries ``Guardrail-Signature:
t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` (check it with :func:`verify_signature`).

Events are kept and retried by :mod:`guardrail.outbox`; :mod:`guardrail.notify` makes them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import urllib.request
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from guardrail.errors import GuardrailError
from guardrail.store import ReviewItem, RunRecord

if TYPE_CHECKING:
    from guardrail.history import DecisionEvent

TIMEOUT = 5.0
SIGNATURE = "Guardrail-Signature"
EVENT_ID = "Guardrail-Event-Id"


def check_url(url: str, field: str = "webhook_url") -> str:
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
        raise GuardrailError(f"{field} {url!r} is not an http(s) URL", field=field)
    return url


def shown(url: str) -> str:
    """A webhook URL as logs and screens show it: its scheme and host only. The rest is often
    the secret (a chat tool's incoming-webhook URL is its own password)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    rest = "/…" if (parts.path not in ("", "/") or parts.query) else ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{rest}"


def iso(at: float) -> str:
    """An epoch time as ISO 8601 in UTC: ``2026-12-01T16:06:25.120000Z``."""
    moment = dt.datetime.fromtimestamp(at, dt.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _run_part(run: RunRecord, console_url: str | None) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "agent": run.agent,
        "status": run.status,
        "reason": run.reason,
        "metadata": run.meta,
        "url": f"{console_url.rstrip('/')}/runs/{quote(run.id)}" if console_url else None,
    }


def halt_event(
    run: RunRecord,
    items: list[ReviewItem],
    journal: tuple[int, str] | None,
    at: float,
    console_url: str | None = None,
) -> dict[str, Any]:
    """The event of a run that starts waiting for a person."""
    return {
        "id": f"{run.id}.{journal[0] if journal else 0}",
        "event": f"run.{run.status}",
        "at": iso(at),
        **_run_part(run, console_url),
        # the journal's length and head hash, for a witness kept outside the store
        "journal": {"entries": journal[0], "head": journal[1]} if journal else None,
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
        "decision": None,
    }


def decision_event(
    run: RunRecord, event: DecisionEvent, console_url: str | None = None
) -> dict[str, Any]:
    """The event of a person's decision that landed: who decided what, and the run now."""
    return {
        "id": f"{run.id}.{event.n}",
        "event": f"decision.{event.what}",
        "at": iso(event.at),
        **_run_part(run, console_url),
        "journal": None,
        "review_items": [],
        "decision": {
            "what": event.what,
            "by": event.by,
            "note": event.note,
            "item_id": event.item_id,
            "answer": event.answer,
            "at": iso(event.at),
        },
    }


def chat_text(event: dict[str, Any]) -> dict[str, Any]:
    """A webhook body for chat tools' incoming webhooks (Slack, Mattermost, Rocket.Chat,
    Google Chat take ``{"text": ...}``): one line of what happened, with the console link."""
    run = f"run {event['run_id']} ({event['agent']})"
    decision = event.get("decision")
    if decision:
        line = f"{decision['by']} decided {decision['what']} on {run}: now {event['status']}"
        if decision.get("note"):
            line += f' ("{decision["note"]}")'
    else:
        waiting = len(event.get("review_items") or [])
        line = f"{run} is {event['status']}: {event.get('reason') or 'no reason given'}"
        line += f"; {waiting} item(s) wait for a person" if waiting else ""
    if event.get("url"):
        line += f" — review: {event['url']}"
    return {"text": line}


def sign(secret: str, body: bytes, at: int) -> str:
    """The signature header's value for ``body`` sent at unix time ``at``."""
    mac = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def verify_signature(
    secret: str, header: str, body: bytes, *, now: float, tolerance: float = 300
) -> bool:
    """For receivers: whether ``header`` (the ``Guardrail-Signature`` value) signs ``body``
    with ``secret`` and was made within ``tolerance`` seconds of ``now`` (no replays)."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        at = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(now - at) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, body, at), f"t={at},v1={parts.get('v1', '')}")


def post(url: str, body: bytes, headers: dict[str, str]) -> str | None:
    """POST ``body`` as JSON; None when the server answered 2xx, else what went wrong."""
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/json", "User-Agent": "guardrail", **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            status = int(response.status)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    return None if 200 <= status < 300 else f"the webhook answered HTTP {status}"


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode()
