"""Delivering the webhook's events from a durable outbox, so an outage loses none.

An event is first kept in the store's outbox, then posted. Each attempt first claims the event
(a compare-and-set on its attempt count) and moves its next attempt into the future, so two
processes never post it at once, and a process that dies mid-post leaves it to be retried.
Failed attempts back off (10 s, 20 s, 40 s ... at most an hour apart) for ``MAX_ATTEMPTS``;
then the event stays in the outbox with its last error, for a person to see. Delivery is at
least once: receivers drop repeats by the event ``id``.

Who delivers: the guard posts each event once right after queueing it; the retries are made by
:meth:`Guard.deliver` (a cron job, ``guardrail deliver``, the console's server). Never by the
heartbeat: a webhook that hangs must not delay the leases of live runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from guardrail import webhook
from guardrail.store import OutboxEvent, Store

log = logging.getLogger("guardrail")
MAX_ATTEMPTS = 12
FIRST_RETRY = 10.0
MAX_RETRY = 3600.0


@dataclass(frozen=True, slots=True)
class Webhook:
    """Where events go and how: the URL, the signing secret, a body transform (chat tools)."""

    url: str
    secret: str | None = None
    body: Callable[[dict[str, Any]], dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """What one delivery pass did."""

    sent: int = 0
    failed: int = 0


def retry_after(attempt: int) -> float:
    """Seconds before the attempt after ``attempt`` (1-based)."""
    return float(min(MAX_RETRY, FIRST_RETRY * 2.0 ** (attempt - 1)))


def queue(store: Store, event: dict[str, Any], now: float) -> bool:
    """Keep ``event`` in the outbox; False when it is there already (the same id)."""
    row = OutboxEvent(
        id=event["id"],
        run_id=event["run_id"],
        event=event["event"],
        at=now,
        body=json.dumps(event, ensure_ascii=False, sort_keys=True),
        next_at=now,
    )
    return store.queue_event(row)


def deliver(
    store: Store, hook: Webhook, now: float, *, limit: int = 100, only: str | None = None
) -> Delivery:
    """Post the events that are due, oldest first; each one at most once in this pass.
    ``only``: just that event (of its run), if due (a halt posts its own event at once and
    leaves older ones to the next pass, so a webhook that is down never stalls an agent long)."""
    sent = failed = 0
    if only is not None:
        run_id = only.rsplit(".", 1)[0]
        due = [e for e in store.events(run_id=run_id) if e.id == only and e.delivered_at is None]
    else:
        due = store.due_events(now, limit)
    for event in due:
        if event.attempts >= MAX_ATTEMPTS:
            continue
        if not store.claim_event(event.id, event.attempts, now + retry_after(event.attempts + 1)):
            continue  # another process took it
        payload: dict[str, Any] = json.loads(event.body)
        body = webhook.encode(hook.body(payload) if hook.body is not None else payload)
        headers = {webhook.EVENT_ID: event.id}
        if hook.secret:
            headers[webhook.SIGNATURE] = webhook.sign(hook.secret, body, int(now))
        error = webhook.post(hook.url, body, headers)
        if error is None:
            store.event_outcome(event.id, now, None)
            sent += 1
        else:
            if event.attempts + 1 >= MAX_ATTEMPTS:
                error = f"gave up after {MAX_ATTEMPTS} attempts: {error}"
            store.event_outcome(event.id, None, error)
            log.warning(
                "guardrail webhook %s failed for event %s: %s",
                webhook.shown(hook.url),
                event.id,
                error,
            )
            failed += 1
    return Delivery(sent, failed)
