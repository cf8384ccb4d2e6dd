"""Telling people a run waits for them, and workers that a person decided: a span, the
``on_halt`` and ``on_decision`` callables, and the webhook's events (made by
:mod:`guardrail.webhook`, kept and retried by :mod:`guardrail.outbox`).

A failing hook or webhook is logged and never breaks the halt or the decision: the run is
already safely stopped, the decision already recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from guardrail import history, outbox, telemetry, webhook
from guardrail.clock import Clock
from guardrail.history import DecisionEvent
from guardrail.store import RunRecord, Store

log = logging.getLogger("guardrail")


class Notifier:
    """The guard's hooks: a span for every run that halts or completes (with its journal's
    length and head hash, a witness), then the ``on_halt`` callable and the webhook, if any."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        on_halt: Callable[[RunRecord], None] | None = None,
        on_decision: Callable[[DecisionEvent], None] | None = None,
        console_url: str | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.on_halt = on_halt
        self.on_decision = on_decision
        self.console_url = webhook.check_url(console_url, "console_url") if console_url else None
        self.hook: outbox.Webhook | None = None

    @property
    def webhook_url(self) -> str | None:
        return self.hook.url if self.hook is not None else None

    def use_webhook(
        self,
        url: str,
        secret: str | None = None,
        body: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.hook = outbox.Webhook(webhook.check_url(url), secret, body)

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
        if self.hook is not None:
            items = self.store.review_items(run_id=run.id, status="open")
            self.send(webhook.halt_event(run, items, journal, self.clock(), self.console_url))

    def decided(self, run_id: str) -> None:
        """A person's decision on the run landed: tell ``on_decision`` and the webhook."""
        if self.on_decision is None and self.hook is None:
            return
        try:
            event = history.decisions(run_id, self.store.entries(run_id))[-1]
            item = self.store.review_item(event.item_id) if event.item_id else None
            if item is not None and item.answer:
                event = replace(event, answer=item.answer)
            run = self.store.run(run_id)
        except Exception:
            log.warning("guardrail could not read the decision on run %s", run_id, exc_info=True)
            return
        if self.on_decision is not None:
            try:
                self.on_decision(event)
            except Exception:
                log.exception("guardrail on_decision hook failed for run %s", run_id)
        if self.hook is not None and run is not None:
            self.send(webhook.decision_event(run, event, self.console_url))

    def send(self, event: dict[str, Any]) -> None:
        """Keep the event in the outbox and post it once now (never fails the caller)."""
        assert self.hook is not None
        now = self.clock()
        try:
            outbox.queue(self.store, event, now)
            outbox.deliver(self.store, self.hook, now, only=event["id"])
        except Exception:
            log.warning("guardrail could not send event %s", event["id"], exc_info=True)

    def completed(self, run_id: str) -> None:
        """A span marks the run's end with its journal's length and head hash (a witness)."""
        journal = self.store.head(run_id)  # (cached: the run just wrote it)
        if journal is not None:
            telemetry.event(
                "guardrail completed",
                **{"run.id": run_id, "journal.entries": journal[0], "journal.head": journal[1]},
            )
