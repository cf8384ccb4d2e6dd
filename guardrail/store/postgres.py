"""The PostgreSQL dialect: psycopg 3, and one network round trip per transaction.

A transaction is sent as one Query message holding all its statements, their parameters bound
by psycopg on the client (`psycopg.ClientCursor`): PostgreSQL runs such a message as one
transaction, commits it at its end or rolls it back whole at its first error, and answers once.
What must hold is checked by the statements themselves: each checked statement calls
``guardrail_require(ok, code)`` (a function the 0010 migration adds), which raises with SQLSTATE
``code`` when ``ok`` is false, so a failed check aborts the transaction and nothing of it is
committed. The SQLSTATE tells which check failed (GR001: the fence; GR002: a write's
``expect``); a unique violation names its table (the journal's key: a stale chain head).

Each statement shape is prepared once per connection (PREPARE), and the message EXECUTEs them:
the server does not plan them again on every call. (psycopg's pipeline mode would also batch
the statements, but measured no faster here; reads stay server-side bound, psycopg preparing
the frequent ones itself.)
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors
from psycopg.pq import TransactionStatus

from guardrail.store.dialect import FENCE, Broken, Dialect, FenceLost, Rejected, Statement

FENCE_LOST, REJECTED = "GR001", "GR002"
CHANNEL = "guardrail_runs"  # notices: a run's status changed (the payload is its id)
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
        self._names: dict[str, str] = {}  # statement -> the name it is prepared under
        self._prepared: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

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
        # one Query message of several statements: the server runs them as one transaction
        # (committed at its end, rolled back whole at the first error) and answers once
        cur = psycopg.ClientCursor(conn)
        params = [p for statement in statements for p in statement.params]
        for attempt in range(2):
            try:
                cur.execute(self._executes(conn, cur, statements), params)
                break
            except errors.InvalidSqlStatementName:
                # our prepared statements were dropped (a DEALLOCATE ALL): nothing of this
                # transaction ran; prepare them again, once
                with self._lock:
                    self._prepared.pop(conn, None)
                if attempt:
                    raise
            except psycopg.Error as exc:
                self._roll_back(conn)  # (nothing to do unless the connection is in a strange state)
                if exc.sqlstate == FENCE_LOST:
                    raise FenceLost from None
                if exc.sqlstate == REJECTED:
                    raise Rejected from None
                raise
        if conn.info.transaction_status != TransactionStatus.IDLE:  # (never: it committed)
            self._roll_back(conn)
            raise Broken("the transaction did not end")

    def _executes(self, conn: Any, cur: Any, statements: Sequence[Statement]) -> str:
        """The statements as EXECUTEs of prepared statements (the server plans each shape once
        per connection, not on every call); PREPAREs the ones new on this connection."""
        with self._lock:
            done = self._prepared.setdefault(conn, set())
        parts = []
        for sql, params, _, prepare in statements:
            if not prepare:
                parts.append(sql)  # (its values bound in place)
                continue
            name = self._names.get(sql)
            if name is None:
                with self._lock:
                    name = self._names.setdefault(sql, f"guardrail_{len(self._names) + 1}")
            if name not in done:
                cur.execute(f"PREPARE {name} AS {_numbered(sql)}")
                done.add(name)
            marks = ", ".join("%s" for _ in params)
            parts.append(f"EXECUTE {name}({marks})" if params else f"EXECUTE {name}")
        return "; ".join(parts)

    def _roll_back(self, conn: Any) -> None:
        """End a transaction a failed write left open, if any. (psycopg's own rollback, not a
        ROLLBACK statement: it also forgets the statements it prepared itself, deallocating
        them all, ours included.)"""
        if conn.closed:
            return
        if conn.info.transaction_status != TransactionStatus.IDLE:
            with self._lock:
                self._prepared.pop(conn, None)
        try:
            conn.rollback()
        except Exception as exc:
            raise Broken(str(exc)) from exc  # (closed by the store, not reused)

    def unique_table(self, exc: BaseException) -> str | None:
        if isinstance(exc, errors.UniqueViolation):
            return exc.diag.table_name or ""
        return None

    def status_notice(self, run_id: str) -> Statement:
        return Statement(f"SELECT pg_notify('{CHANNEL}', %s)", (run_id,))

    def listener(self) -> _Listener:
        return _Listener(self.connect())

    def tables(self, conn: Any, names: Sequence[str]) -> set[str]:
        rows = conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace "
            "AND relkind IN ('r', 'p') AND relname = ANY(%s)",
            (list(names),),
        ).fetchall()
        return {str(r[0]) for r in rows}


class _Listener:
    """A connection of its own that LISTENs for the store's status notices."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        conn.execute(f"LISTEN {CHANNEL}")

    def wait(self, seconds: float) -> bool:
        return any(True for _ in self.conn.notifies(timeout=max(seconds, 0.0), stop_after=1))

    def close(self) -> None:
        self.conn.close()


def _numbered(sql: str) -> str:
    """``sql`` with its ``%s`` placeholders as ``$1``, ``$2``... (for PREPARE)."""
    parts = sql.split("%s")
    return "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], start=1)) + parts[-1]
