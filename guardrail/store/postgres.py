"""The PostgreSQL dialect: psycopg 3, and one network round trip per transaction.

A transaction is sent as one pipeline: ``BEGIN``, its statements and ``COMMIT``, then one
sync. What must hold is checked by the statements themselves: each checked statement calls
``guardrail_require(ok, code)`` (a function the 0007 migration adds), which raises with SQLSTATE
``code`` when ``ok`` is false. The server then skips everything up to the sync, ``COMMIT``
included, and the store rolls the aborted transaction back: nothing of it is committed. The
SQLSTATE tells which check failed (GR001: the fence; GR002: a write's ``expect``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors
from psycopg.pq import TransactionStatus

from guardrail.store.dialect import FENCE, Broken, Dialect, FenceLost, Rejected, Statement

FENCE_LOST, REJECTED = "GR001", "GR002"
_CODES = {FENCE: FENCE_LOST}

# Our transactions never wait on user code, so they last microseconds. A process paused inside
# one (SIGSTOP, a VM pause) would hold its run's row lock for as long as it sleeps and stall
# recovery: the server ends such a session instead, and nobody waits on a lock for long (a
# recovery pass skips that run and comes back to it).
SESSION = "SET idle_in_transaction_session_timeout = '5s'; SET lock_timeout = '5s'"


class Postgres(Dialect):
    name = "postgresql"

    def __init__(self, connect_args: dict[str, Any]) -> None:
        self.connect_args = connect_args

    def connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(autocommit=True, **self.connect_args)
        conn.execute(SESSION)
        return conn

    def sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def fenced_journal(self, statuses: int, *, exclusive: bool) -> str:
        # FOR SHARE: calls of one run may record side by side, while a takeover's UPDATE waits
        # for them. FOR UPDATE when this transaction updates the run row itself, so that two
        # of them never both hold a share and wait for each other to upgrade it.
        lock = "FOR UPDATE" if exclusive else "FOR SHARE"
        marks = ", ".join("%s" for _ in range(statuses))
        return (
            "INSERT INTO journal (run_id, n, at, kind, body, prev_hash, hash) "
            "SELECT %s, %s, %s, %s, %s, %s, %s WHERE guardrail_require(EXISTS (SELECT 1 FROM "
            f"runs WHERE id = %s AND epoch = %s AND status IN ({marks}) {lock}), "
            f"'{FENCE_LOST}')"
        )

    def checked(self, sql: str, check: int) -> str:
        code = _CODES.get(check, REJECTED)
        return (
            f"WITH changed AS ({sql} RETURNING 1) "
            f"SELECT guardrail_require(count(*) = 1, '{code}') FROM changed"
        )

    def write(self, conn: Any, statements: Sequence[Statement]) -> None:
        failed: psycopg.Error | None = None
        try:
            with conn.pipeline():
                cur = conn.cursor()
                try:
                    cur.execute("BEGIN")
                    for sql, params, _ in statements:
                        cur.execute(sql, params)
                    cur.execute("COMMIT")
                except psycopg.Error as exc:  # an early result already says it failed
                    failed = exc  # (the pipeline still ends normally: no aborted-pipeline noise)
        except psycopg.Error as exc:
            failed = failed or exc
        if failed is not None:
            _roll_back(conn)
            if failed.sqlstate == FENCE_LOST:
                raise FenceLost from None
            if failed.sqlstate == REJECTED:
                raise Rejected from None
            raise failed
        if conn.info.transaction_status != TransactionStatus.IDLE:  # (never: COMMIT ran)
            _roll_back(conn)
            raise Broken("the transaction did not end")

    def unique_table(self, exc: BaseException) -> str | None:
        if isinstance(exc, errors.UniqueViolation):
            return exc.diag.table_name or ""
        return None

    def tables(self, conn: Any, names: Sequence[str]) -> set[str]:
        rows = conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace "
            "AND relkind IN ('r', 'p') AND relname = ANY(%s)",
            (list(names),),
        ).fetchall()
        return {str(r[0]) for r in rows}


def _roll_back(conn: Any) -> None:
    """End the aborted transaction the failed pipeline left open. (psycopg's own rollback, not
    a ROLLBACK statement: it also forgets the statements it meant to prepare in the skipped
    part of the pipeline, which the server never prepared.)"""
    if conn.closed:
        return
    try:
        conn.rollback()
    except Exception as exc:
        raise Broken(str(exc)) from exc  # (closed by the store, not reused)
