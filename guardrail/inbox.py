"""The people-facing API at volume, as a part of `Guard`: search, groups of like halts, bulk
decisions with a preview, the decision history, waiting for a decision, and the webhook's
delivery.

A mixin of the facade: each method works through what `guardrail.bulk.Deciding` says the guard
has (its store, clock, reads and one-run decisions), so none of this reaches into the core.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from guardrail import bulk, history, outbox, waiting
from guardrail.clock import Clock
from guardrail.errors import GuardrailError
from guardrail.finding import Found, Group, found, groups
from guardrail.history import DecisionEvent
from guardrail.notify import Notifier
from guardrail.search import RunQuery
from guardrail.store import Action, ReviewItem, RunRecord


class _Guard(bulk.Deciding, Protocol):
    _notifier: Notifier

    @property
    def clock(self) -> Clock: ...


class Inbox:
    """`Guard`'s methods for reviewers at volume (see docs/volume.md)."""

    def search(
        self: _Guard,
        text: str | None = None,
        *,
        status: str | Sequence[str] = (),
        agent: str | None = None,
        tool: str | None = None,
        owner: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Found:
        """Runs matching a search text and filters, newest first, a page at a time.

        ``text`` matches, case-insensitively, the start of a run id, an agent, a tool or an
        external id, and anywhere in the run's reason; each run found says what matched. Pass
        the result's ``next`` as ``cursor`` for the next page::

            found = guard.search("ord_4004", status="pending_review")
            for run in found.runs:
                print(run.id, run.status, found.matches[run.id])
        """
        statuses = (status,) if isinstance(status, str) else tuple(status)
        query = RunQuery(
            text, statuses, agent, tool, owner, since, until, limit=limit, cursor=cursor
        )
        return found(self.store, query)

    def groups(self: _Guard, status: str | Sequence[str] = ("pending_review",)) -> list[Group]:
        """Runs in ``status`` grouped by the cause they halted for (their reason, with ids,
        numbers and quoted values blanked), the largest group first: decide a group at once
        with :meth:`decide`."""
        query = RunQuery(status=(status,) if isinstance(status, str) else tuple(status))
        return groups(r for s in query.status for r in self.store.runs(status=s))

    def run_record(self: _Guard, run_id: str) -> RunRecord | None:
        """The run's record, or None when the store has none (`require_run` raises instead)."""
        return self.store.run(run_id)

    def actions(self: _Guard, run_id: str) -> list[Action]:
        """The run's actions, in order (without its compensations and items: see `log`)."""
        return self.store.actions(run_id)

    def review_items(
        self: _Guard, *, run_id: str | None = None, status: str | None = None
    ) -> list[ReviewItem]:
        """Review items, oldest first: of one run, of one status (``open``, ``resolved``)."""
        return self.store.review_items(run_id=run_id, status=status)

    def review_item(self: _Guard, item_id: str) -> ReviewItem | None:
        return self.store.review_item(item_id)

    def open_item_counts(self: _Guard) -> dict[str, int]:
        """Run id -> how many open review items it has (runs that have some)."""
        return self.store.open_item_counts()

    def history(self: _Guard, run_id: str) -> list[DecisionEvent]:
        """Who decided what on the run and when (resume, abort, each item's resolution, each
        approval), oldest first: read from the run's hash-chained journal."""
        self.require_run(run_id)
        events = history.decisions(run_id, self.store.entries(run_id))
        answers = {i.id: i.answer for i in self.store.review_items(run_id=run_id) if i.answer}
        return [
            replace(e, answer=answers[e.item_id]) if e.item_id in answers else e for e in events
        ]

    def preview(
        self: _Guard,
        run_ids: Iterable[str],
        decision: str,
        *,
        resolution: str | None = None,
        force: bool = False,
    ) -> list[bulk.Preview]:
        """What ``decision`` (``resume``, ``abort``, or ``resolve`` each open item as
        ``resolution``) would do to each run, or why it would be refused. Changes nothing."""
        return bulk.preview(self, run_ids, decision, resolution=resolution, force=force)

    def decide(
        self: _Guard,
        run_ids: Iterable[str],
        decision: str,
        *,
        by: str,
        note: str | None = None,
        resolution: str | None = None,
        force: bool = False,
    ) -> list[bulk.Outcome]:
        """Make one decision on many runs (those :meth:`preview` does not refuse), one run at
        a time; returns each run's outcome::

            group = guard.groups()[0]
            for o in guard.decide(group.run_ids, "abort", by="ana", note="carrier outage"):
                print(o.run_id, o.status, o.error or "")
        """
        return bulk.decide(
            self, run_ids, decision, by=by, note=note, resolution=resolution, force=force
        )

    def wait_decision(
        self: _Guard, run_id: str, *, timeout: float | None = None, poll: float = 1.0
    ) -> RunRecord:
        """Block until a person decides the halted run; returns it then (``running`` after a
        resume, ``aborted`` after an abort). TimeoutError after ``timeout`` seconds::

            try:
                agent(run_id=run_id)
            except RunHalted as halted:
                if guard.wait_decision(halted.run_id).status == "running":
                    agent(run_id=halted.run_id)  # carries on: nothing done runs twice
        """
        return waiting.wait_decision(self.store, run_id, timeout, poll, self.clock)

    async def await_decision(
        self: _Guard, run_id: str, *, timeout: float | None = None, poll: float = 1.0
    ) -> RunRecord:
        return await waiting.await_decision(self.store, run_id, timeout, poll, self.clock)

    def use_webhook(
        self: _Guard,
        url: str,
        *,
        secret: str | None = None,
        body: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        """Send events to ``url`` from now on (as ``Guard(webhook_url=...)``); ``secret``
        defaults to the ``GUARDRAIL_WEBHOOK_SECRET`` variable."""
        self._notifier.use_webhook(url, secret or os.environ.get("GUARDRAIL_WEBHOOK_SECRET"), body)

    def deliver(self: _Guard) -> outbox.Delivery:
        """Post the webhook events that are due (new, or failed before and due again): from
        cron, ``guardrail deliver``, or ``guardrail serve`` (which does every few seconds)."""
        hook = self._notifier.hook
        if hook is None:
            raise GuardrailError("this guard has no webhook_url to deliver to", field="webhook_url")
        return outbox.deliver(self.store, hook, self.clock())
