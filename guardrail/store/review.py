"""The store's part in review at volume: searching runs (`guardrail.search` builds the SQL),
and the outbox of webhook events (kept apart from the action log: never journaled)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from guardrail.errors import StoreError
from guardrail.search import (
    NARROW,
    Page,
    RunQuery,
    candidates_sql,
    explain,
    page_of,
    prefix_match,
    prefix_params,
    run_page_sql,
)
from guardrail.store.dialect import EXPECT, NO_CHECK, Rejected, Statement
from guardrail.store.reads import Reads
from guardrail.store.records import OutboxEvent


class Review(Reads):
    """Search and the outbox, for `guardrail.store.sql.SQLStore` (which provides writes)."""

    def _write_all(self, statements: Sequence[Statement]) -> None:
        raise NotImplementedError

    # -- search ------------------------------------------------------------------------------

    def search_runs(self, query: RunQuery) -> Page:
        """A page of runs matching ``query``, newest first, with what matched its text."""
        dialect = self.dialect.name
        needle = query.needle
        narrow: list[list[str] | None] = [None, None]
        if needle is not None:
            for i, (table, column) in enumerate((("external_ids", "value"), ("actions", "tool"))):
                rows = self._fetch(
                    None,
                    candidates_sql(table, column, dialect),
                    (*prefix_params(needle), NARROW + 1),
                )
                narrow[i] = [str(r[0]) for r in rows] if len(rows) <= NARROW else None
        sql, params = run_page_sql(query, dialect, narrow[0], narrow[1])
        page = page_of(self._fetch(None, sql, params, cache=False), query.limit)
        if needle is None or not page.run_ids:
            return page
        ids = page.run_ids
        marks = ", ".join("?" for _ in ids)
        runs = self._fetch(
            None, f"SELECT id, agent, reason FROM runs WHERE id IN ({marks})", ids, cache=False
        )
        eids = self._fetch(
            None,
            f"SELECT run_id, name, value FROM external_ids WHERE run_id IN ({marks}) AND "
            + prefix_match("lower(value)", dialect),
            (*ids, *prefix_params(needle)),
            cache=False,
        )
        tools = self._fetch(
            None,
            f"SELECT DISTINCT run_id, tool FROM actions WHERE run_id IN ({marks}) AND "
            + prefix_match("lower(tool)", dialect),
            (*ids, *prefix_params(needle)),
            cache=False,
        )
        for run_id, agent, reason in runs:
            page.matches[run_id] = explain(
                needle,
                run_id,
                agent,
                reason,
                [t for r, t in tools if r == run_id],
                [(n, str(v)) for r, n, v in eids if r == run_id],
            )
        return page

    # -- the outbox --------------------------------------------------------------------------

    def _outbox(self, sql: str, params: Sequence[Any], check: int = NO_CHECK) -> bool:
        """One statement on the outbox in its own transaction; False when a checked one
        changed nothing or an insert met an event already there."""
        text = self.dialect.sql(sql)
        if check != NO_CHECK:
            text = self.dialect.checked(text, check)
        try:
            self._write_all([Statement(text, params, check, prepare=False)])
        except Rejected:
            return False
        except StoreError:
            raise
        except Exception as exc:
            if self.dialect.unique_table(exc) == "outbox":
                return False
            raise StoreError(f"cannot write the outbox in {self.url}: {exc}") from exc
        return True

    def queue_event(self, event: OutboxEvent) -> bool:
        """Keep ``event`` for delivery; False when an event with its id is queued already."""
        return self._outbox(
            "INSERT INTO outbox (id, run_id, event, at, body, attempts, next_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (event.id, event.run_id, event.event, event.at, event.body, 0, event.next_at),
        )

    def due_events(self, now: float, limit: int) -> list[OutboxEvent]:
        return self._records(
            OutboxEvent,
            "WHERE delivered_at IS NULL AND next_at <= ? ORDER BY next_at LIMIT ?",
            (now, limit),
        )

    def claim_event(self, event_id: str, attempts: int, retry_at: float) -> bool:
        """Take the event for one delivery attempt (compare-and-set on its attempts): the next
        attempt, should this one never report, is at ``retry_at``."""
        return self._outbox(
            "UPDATE outbox SET attempts = ?, next_at = ? WHERE id = ? AND attempts = ? "
            "AND delivered_at IS NULL",
            (attempts + 1, retry_at, event_id, attempts),
            EXPECT,
        )

    def event_outcome(self, event_id: str, delivered_at: float | None, error: str | None) -> None:
        self._outbox(
            "UPDATE outbox SET delivered_at = ?, last_error = ? WHERE id = ?",
            (delivered_at, error, event_id),
        )

    def events(self, *, run_id: str | None = None) -> list[OutboxEvent]:
        if run_id is None:
            return self._records(OutboxEvent, "ORDER BY at, id", ())
        return self._records(OutboxEvent, "WHERE run_id = ? ORDER BY at, id", (run_id,), run_id)
