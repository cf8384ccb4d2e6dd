"""The store's reads: plain SELECTs on a pooled connection, rows made records.

Records are built without validation (`BaseModel.model_construct`: the rows are what the store
wrote), JSON columns decoded by the dialect.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from pydantic import BaseModel

from guardrail.errors import StoreError
from guardrail.store import JournalRow, Recorded
from guardrail.store.dialect import Dialect
from guardrail.store.journal import COLUMN_NAMES, DONE_STATES, JSON_COLUMNS
from guardrail.store.records import (
    Action,
    Compensation,
    Entry,
    ExternalId,
    OutboxEvent,
    ReviewItem,
    RunRecord,
)

M = TypeVar("M", bound=BaseModel)
_DONE = ", ".join(f"'{s}'" for s in DONE_STATES)


class Reads:
    """The read half of `guardrail.store.sql.SQLStore` (which provides the connections)."""

    url: str
    dialect: Dialect

    def _checkout(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _cached(self, key: Any, sql: str) -> str:
        raise NotImplementedError

    def _fetch(
        self, run_id: str | None, sql: str, params: Sequence[Any], *, cache: bool = True
    ) -> list[Any]:
        """Rows of ``sql``; ``cache=False`` for a statement of one of many shapes (an IN list
        of any length), which the statement cache must not keep."""
        text = self._cached(sql, sql) if cache else self.dialect.sql(sql)
        try:
            with self._checkout() as conn:
                return list(conn.execute(text, params).fetchall())
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"cannot read the store at {self.url}: {exc}", run_id=run_id) from exc

    def _records(
        self, model: type[M], where: str, params: Sequence[Any], run_id: str | None = None
    ) -> list[M]:
        """The rows of ``model``'s table matching ``where`` (and its ORDER BY), as records."""
        names, select, json_at = _columns(model)
        rows = self._fetch(run_id, f"{select} {where}", params)
        decode = self.dialect.decode_json
        out = []
        for row in rows:
            values = list(row)
            for i in json_at:
                values[i] = decode(values[i])
            out.append(model.model_construct(**dict(zip(names, values, strict=True))))
        return out

    def run(self, run_id: str) -> RunRecord | None:
        found = self._records(RunRecord, "WHERE id = ?", (run_id,), run_id)
        return found[0] if found else None

    def runs(
        self,
        *,
        status: str | None = None,
        agent: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        where, params = _where(status=status, agent=agent)
        if since is not None:
            where.append("updated_at >= ?")
            params.append(since)
        sql = (f"WHERE {' AND '.join(where)} " if where else "") + "ORDER BY created_at DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._records(RunRecord, sql, params)

    def actions(self, run_id: str) -> list[Action]:
        return self._records(Action, "WHERE run_id = ? ORDER BY seq", (run_id,), run_id)

    def next_seq(self, run_id: str) -> int:
        row = self._fetch(run_id, "SELECT MAX(seq) FROM actions WHERE run_id = ?", (run_id,))[0]
        return 1 if row[0] is None else int(row[0]) + 1

    def seqs_in_state(self, run_id: str, states: Sequence[str]) -> list[int]:
        rows = self._fetch(
            run_id,
            f"SELECT seq FROM actions WHERE run_id = ? AND state IN "
            f"({', '.join('?' for _ in states)}) ORDER BY seq",
            (run_id, *states),
        )
        return [int(r[0]) for r in rows]

    def done_keys(self, run_id: str) -> dict[str, int]:
        """Idempotency key -> seq of the run's actions that may have taken effect and were not
        undone: succeeded, compensation_failed (the undo failed, so the effect is still there)
        or in_doubt (until a person says it did not happen, it is never run again)."""
        rows = self._fetch(
            run_id,
            "SELECT idempotency_key, seq FROM actions WHERE run_id = ? "
            f"AND state IN ({_DONE}) ORDER BY seq",
            (run_id,),
        )
        return {str(key): int(seq) for key, seq in rows}

    def recorded_result(self, run_id: str, seq: int, key: str) -> Recorded | None:
        """The recorded call behind idempotency key ``key`` (action ``seq``) if it took effect
        (succeeded, or its undo failed) or may have (in doubt); else None."""
        rows = self._fetch(
            run_id,
            "SELECT tool, args_hash, result, result_note FROM actions WHERE run_id = ? "
            f"AND seq = ? AND idempotency_key = ? AND state IN ({_DONE})",
            (run_id, seq, key),
        )
        if not rows:
            return None
        tool, args_hash, result, note = rows[0]
        return Recorded(seq, tool, args_hash, self.dialect.decode_json(result), note)

    def keyed_actions(self, run_id: str, key: str) -> list[Action]:
        return self._records(
            Action, "WHERE run_id = ? AND idempotency_key = ? ORDER BY seq", (run_id, key), run_id
        )

    def compensations(self, run_id: str) -> list[Compensation]:
        # in the order they ran (older rows, without a position: by their start)
        return self._records(
            Compensation,
            "WHERE run_id = ? ORDER BY position IS NULL, position, started_at, seq",
            (run_id,),
            run_id,
        )

    def review_items(
        self, *, run_id: str | None = None, status: str | None = None
    ) -> list[ReviewItem]:
        where, params = _where(run_id=run_id, status=status)
        sql = (f"WHERE {' AND '.join(where)} " if where else "") + "ORDER BY created_at"
        return self._records(ReviewItem, sql, params, run_id)

    def open_item_counts(self) -> dict[str, int]:
        """Run id -> how many open review items it has (only runs that have some)."""
        rows = self._fetch(
            None,
            "SELECT run_id, COUNT(*) FROM review_items WHERE status = 'open' GROUP BY run_id",
            (),
        )
        return {str(run_id): int(n) for run_id, n in rows}

    def review_item(self, item_id: str) -> ReviewItem | None:
        found = self._records(ReviewItem, "WHERE id = ?", (item_id,))
        return found[0] if found else None

    def entries(self, run_id: str) -> list[Entry]:
        return self._records(Entry, "WHERE run_id = ? ORDER BY n", (run_id,), run_id)

    def journal(self, run_id: str) -> list[JournalRow]:
        rows = self._fetch(
            run_id,
            "SELECT n, kind, body, prev_hash, hash FROM journal WHERE run_id = ? ORDER BY n",
            (run_id,),
        )
        return [JournalRow(int(n), kind, body, prev, h) for n, kind, body, prev, h in rows]

    def external_id_rows(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._fetch(
            run_id, "SELECT seq, name, value FROM external_ids WHERE run_id = ?", (run_id,)
        )
        return [
            {"run_id": run_id, "seq": int(seq), "name": name, "value": value}
            for seq, name, value in rows
        ]

    def find(self, *, value: str, name: str | None = None) -> list[ExternalId]:
        where, params = _where(value=value, name=name)
        return self._records(ExternalId, f"WHERE {' AND '.join(where)}", params)


_TABLES = {
    RunRecord: "runs",
    Action: "actions",
    ExternalId: "external_ids",
    Compensation: "compensations",
    ReviewItem: "review_items",
    Entry: "journal",
    OutboxEvent: "outbox",
}
_COLUMNS: dict[type[BaseModel], tuple[list[str], str, list[int]]] = {}


def _columns(model: type[BaseModel]) -> tuple[list[str], str, list[int]]:
    """A record's attributes, the SELECT of its columns, and where its JSON columns are."""
    found = _COLUMNS.get(model)
    if found is None:
        names = list(model.model_fields)
        cols = ", ".join(COLUMN_NAMES.get(n, n) for n in names)
        json_at = [i for i, n in enumerate(names) if n in JSON_COLUMNS]
        found = _COLUMNS[model] = (names, f"SELECT {cols} FROM {_TABLES[model]}", json_at)
    return found


def _where(**given: Any) -> tuple[list[str], list[Any]]:
    """``column = ?`` conditions for the given values that are not None."""
    where = [f"{column} = ?" for column, value in given.items() if value is not None]
    return where, [value for value in given.values() if value is not None]
