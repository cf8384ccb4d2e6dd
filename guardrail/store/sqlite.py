"""The SQLite dialect: stdlib ``sqlite3``, WAL mode, one writer at a time (``BEGIN IMMEDIATE``).

``synchronous=NORMAL`` (durability "process": survives a process crash) or ``FULL``
(durability "power": survives power loss, about 4x slower). The transaction holds the
database's write lock from its first statement, so nobody changes a run before it commits: a
fence is a plain condition on the journal insert, checked by the row count.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from guardrail.store.dialect import FENCE, Broken, Dialect, FenceLost, Rejected, Statement

SYNCHRONOUS = {"process": "NORMAL", "power": "FULL"}


class SQLite(Dialect):
    name = "sqlite"

    def __init__(self, path: str, *, durability: str, busy_timeout: float) -> None:
        self.path = path
        self.synchronous = SYNCHRONOUS[durability]
        self.busy_timeout = busy_timeout

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA wal_autocheckpoint=10000")
        return conn

    def fenced_journal(self, statuses: int, *, exclusive: bool) -> str:
        # (starts with INSERT: sqlite3 reports no row count for a statement starting with WITH)
        marks = ", ".join("?" for _ in range(statuses))
        return (
            "INSERT INTO journal (run_id, n, at, kind, body, prev_hash, hash) "
            "SELECT ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM runs WHERE id = ? "
            f"AND epoch = ? AND status IN ({marks}))"
        )

    def write(self, conn: Any, statements: Sequence[Statement]) -> None:
        execute = conn.execute
        execute("BEGIN IMMEDIATE")
        try:
            for sql, params, check, _ in statements:
                if execute(sql, params).rowcount != 1 and check:
                    raise FenceLost if check == FENCE else Rejected
        except BaseException:
            try:
                execute("ROLLBACK")
            except Exception as exc:
                raise Broken(str(exc)) from exc  # (closed by the store, not reused)
            raise
        execute("COMMIT")

    def unique_table(self, exc: BaseException) -> str | None:
        # sqlite3 names the columns only in its message: "UNIQUE constraint failed: t.a, t.b"
        if not isinstance(exc, sqlite3.IntegrityError):
            return None
        _, found, columns = str(exc).partition("UNIQUE constraint failed: ")
        return columns.split(".", 1)[0] if found else None

    def decode_json(self, value: Any) -> Any:
        # sqlite3 hands back the text, except for a bare number, which the column's numeric
        # affinity already turned into one
        return json.loads(value) if isinstance(value, str) else value

    def tables(self, conn: Any, names: Sequence[str]) -> set[str]:
        marks = ", ".join("?" for _ in names)
        rows = conn.execute(
            f"SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ({marks})",
            tuple(names),
        ).fetchall()
        return {str(r[0]) for r in rows}
