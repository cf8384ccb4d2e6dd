"""The SQL store: the action log in SQLite or PostgreSQL, through the DB-API directly.

Writes are on the hot path of every guarded call: one transaction holds the row changes and
the journal entry that chains them; the journal's primary key (run, n) is the compare-and-set
of the run's chain head. What differs between the databases is a `Dialect`
(`guardrail.store.sqlite`, `guardrail.store.postgres`); the journal's rules are
`guardrail.store.journal`. Reads return the records of `guardrail.store.records`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from guardrail import keys
from guardrail.errors import StoreError
from guardrail.keys import KeySource
from guardrail.store import Fence, Fenced, Listener, Write, migrate
from guardrail.store import url as urls
from guardrail.store.dialect import (
    EXPECT,
    FENCE,
    Broken,
    Dialect,
    FenceLost,
    Rejected,
    Statement,
)
from guardrail.store.journal import COLUMN_NAMES, body, entry_hash
from guardrail.store.journal import row_values as bound_values
from guardrail.store.review import Review


class SQLStore(Review):
    """The action log in SQLite or PostgreSQL."""

    def __init__(
        self,
        url: str,
        *,
        durability: str = "process",
        busy_timeout: float = 10.0,
        hash_key: KeySource | None = None,
    ):
        from guardrail.store.sqlite import SYNCHRONOUS

        if durability not in SYNCHRONOUS:
            raise StoreError(
                f"durability={durability!r} is not one of 'process' or 'power'", field="durability"
            )
        parsed = urls.parse(url)
        self.url = parsed.shown()
        self._heads: dict[str, tuple[int, str, str | None]] = {}  # run -> (n, hash, key id)
        self._sql_cache: dict[Any, str] = {}
        self._closed = False
        self._idle: list[Any] = []  # connections not in use (see _checkout)
        self.max_idle = 8
        self._conns_lock = threading.Lock()
        self.dialect: Dialect
        if parsed.backend == "sqlite":
            from guardrail.store.sqlite import SQLite

            path = parsed.database
            if path in ("", ":memory:"):
                raise StoreError(
                    "an in-memory SQLite store cannot be shared by the guard's connections; "
                    "use a file, e.g. sqlite:///guardrail.db (tests: a tmp_path file)",
                    field="store",
                )
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                raise StoreError(
                    f"cannot open the store at {self.url}: the directory {folder} does not exist "
                    "(or is not a directory); create it or point store= elsewhere",
                    field="store",
                )
            self.keys = keys.load(hash_key, store_path=os.path.abspath(path))
            self.dialect = SQLite(path, durability=durability, busy_timeout=busy_timeout)
        else:
            from guardrail.store.postgres import Postgres

            self.keys = keys.load(hash_key)
            self.dialect = Postgres(parsed.connect_args())
        try:
            with self._checkout() as conn:
                migrate.ensure(conn, self.dialect, parsed)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"cannot open the store at {self.url}: {exc}") from exc

    # -- connections -------------------------------------------------------------------------

    @contextmanager
    def _checkout(self) -> Iterator[Any]:
        """A connection for one operation, from a small pool shared by all threads.

        Not one per thread: frameworks run each tool call on a new thread (``create_agent``
        does), and a connection per thread would pile up with them. A connection that saw an
        error other than our own refusals is closed, not reused (it may be dead).
        """
        if self._closed:
            raise StoreError(f"the store at {self.url} is closed; open a new Guard")
        with self._conns_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            try:
                conn = self.dialect.connect()
            except Exception as exc:
                raise StoreError(f"cannot connect to the store at {self.url}: {exc}") from exc
        try:
            yield conn
        except BaseException as exc:
            if not self._reusable_after(exc):
                with suppress(Exception):
                    conn.close()
                raise
            self._give_back(conn)
            raise
        self._give_back(conn)

    def _write_all(self, statements: Sequence[Statement]) -> None:
        """`Dialect.write` on a pooled connection (`_checkout` without the context manager's
        cost: this runs twice per guarded call)."""
        if self._closed:
            raise StoreError(f"the store at {self.url} is closed; open a new Guard")
        with self._conns_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            try:
                conn = self.dialect.connect()
            except Exception as exc:
                raise StoreError(f"cannot connect to the store at {self.url}: {exc}") from exc
        try:
            self.dialect.write(conn, statements)
        except BaseException as exc:
            if self._reusable_after(exc):
                self._give_back(conn)
            else:
                with suppress(Exception):
                    conn.close()
            raise
        self._give_back(conn)

    def _give_back(self, conn: Any) -> None:
        with self._conns_lock:
            if not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        with suppress(Exception):
            conn.close()

    def _reusable_after(self, exc: BaseException) -> bool:
        """Whether a connection stays usable after ``exc`` (its transaction rolled back): our
        own refusals and a lost race on a key leave it healthy; anything else may mean it died."""
        if isinstance(exc, Broken):
            return False
        if isinstance(exc, Rejected | FenceLost | StoreError | GeneratorExit):
            return True
        return self.dialect.unique_table(exc) is not None

    # -- writes ------------------------------------------------------------------------------

    def transact(
        self, run_id: str, kind: str, writes: Sequence[Write], fence: Fence | None = None
    ) -> bool:
        """Commit ``writes`` and one journal entry for them, or nothing.

        Returns False (and commits nothing) when a write's ``expect`` did not hold; raises
        `Fenced` (and commits nothing) when the run is not at the ``fence``'s epoch and statuses.
        The run row is locked first (the fence, then updates of the run), so two writers of one
        run always take their locks in the same order.
        """
        rows = [bound_values(w.values) for w in writes]
        text = body(writes, rows)
        created = next((w for w in writes if w.insert and w.table == "runs"), None)
        for _ in range(20):
            try:
                head = (0, "", created.values.get("key_id")) if created else self._head(run_id)
                n, prev, kid = head[0] + 1, head[1], head[2]
                h = entry_hash(self.keys, kid, prev, kind, text)
                # a writer with a stale head collides on the journal's key, and retries
                entry = (run_id, n, time.time(), kind, text, prev, h)
                statements = self._statements(writes, rows, entry, fence, prev, h)
                if any(w.table == "runs" and "status" in w.values for w in writes):
                    notice = self.dialect.status_notice(run_id)  # (for waiters on PostgreSQL)
                    if notice is not None:
                        statements.append(notice)
                self._write_all(statements)
            except Rejected:
                return False
            except FenceLost:
                raise Fenced(run_id, kind) from None
            except StoreError as exc:
                if exc.run_id is None:  # no connection: say what could not be recorded
                    raise StoreError(
                        f"could not record {kind!r} for run {run_id}: {exc}", run_id=run_id
                    ) from exc
                raise
            except Exception as exc:
                self._heads.pop(run_id, None)
                table = self.dialect.unique_table(exc)
                if table == "journal" and created is None:
                    continue  # (a run created twice is a duplicate: its head is always 0)
                if table is not None:
                    raise _Duplicate(str(exc)) from exc
                raise StoreError(
                    f"could not record {kind!r} for run {run_id} in {self.url}: {exc}",
                    run_id=run_id,
                ) from exc
            self._heads[run_id] = (n, h, kid)
            if len(self._heads) > 4096:  # a cache of recent runs' heads, not of every run
                del self._heads[next(iter(self._heads))]
            return True
        raise StoreError(f"run {run_id}: too much contention on its journal", run_id=run_id)

    def _statements(
        self,
        writes: Sequence[Write],
        rows: list[dict[str, Any]],
        entry: tuple[Any, ...],
        fence: Fence | None,
        prev: str,
        h: str,
    ) -> list[Statement]:
        """The transaction: the run row locked first (by the fence, else by its updates), then
        the journal entry, then the other rows."""
        first: list[Statement] = []
        rest: list[Statement] = []
        for w, values in zip(writes, rows, strict=True):
            if w.table == "actions":
                values = {**values, "prev_hash": prev, "hash": h}
            (first if w.table == "runs" and not w.insert else rest).append(self._write(w, values))
        if fence is None:
            journal = self._cached(("journal",), _insert_journal)
            return [*first, Statement(journal, entry), *rest]
        # the fence rides with the journal entry: one statement checks the run and appends
        statuses, exclusive = len(fence.statuses), bool(first)
        sql = self._sql_cache.get(("fenced", statuses, exclusive))
        if sql is None:
            sql = self.dialect.fenced_journal(statuses, exclusive=exclusive)
            self._sql_cache[("fenced", statuses, exclusive)] = sql
        check = (entry[0], fence.epoch, *fence.statuses)
        return [Statement(sql, (*entry, *check), FENCE), *first, *rest]

    def _write(self, w: Write, values: dict[str, Any]) -> Statement:
        cols = tuple(values)
        if w.insert:
            sql = self._sql_cache.get((w.table, cols))
            if sql is None:
                names = [*w.key, *(COLUMN_NAMES.get(c, c) for c in cols)]
                sql = self.dialect.sql(
                    f"INSERT INTO {w.table} ({', '.join(names)}) "
                    f"VALUES ({', '.join('?' for _ in names)})"
                )
                self._sql_cache[(w.table, cols)] = sql
            return Statement(sql, (*w.key.values(), *values.values()))
        # the statement's shape: columns set, key, and per expected column how many values and
        # whether NULL is one of them (the values themselves are parameters)
        spec = tuple((c, len(vs), None in vs) for c, vs in w.expect.items())
        shape = (w.table, cols, tuple(w.key), spec)
        sql = self._sql_cache.get(shape)
        if sql is None:
            sql = self._sql_cache[shape] = self._update(w.table, cols, tuple(w.key), spec)
        expected = [v for vs in w.expect.values() for v in vs if v is not None]
        return Statement(sql, (*values.values(), *w.key.values(), *expected), EXPECT)

    def _update(
        self,
        table: str,
        cols: tuple[str, ...],
        key: tuple[str, ...],
        spec: tuple[tuple[str, int, bool], ...],
    ) -> str:
        where = [f"{k} = ?" for k in key]
        for c, count, nullable in spec:
            values = count - nullable
            test = [f"{c} IN ({', '.join('?' for _ in range(values))})"] if values else []
            test += [f"{c} IS NULL"] if nullable else []
            where.append("(" + " OR ".join(test) + ")")
        names = [COLUMN_NAMES.get(c, c) for c in cols]
        update = self.dialect.sql(
            f"UPDATE {table} SET {', '.join(f'{n} = ?' for n in names)} WHERE {' AND '.join(where)}"
        )
        return self.dialect.checked(update, EXPECT)

    def _cached(self, key: Any, sql: str) -> str:
        found = self._sql_cache.get(key)
        if found is None:
            found = self._sql_cache[key] = self.dialect.sql(sql)
        return found

    def _head(self, run_id: str) -> tuple[int, str, str | None]:
        """The newest journal entry of the run and the run's key: (n, hash, key id)."""
        cached = self._heads.get(run_id)
        if cached is not None:
            return cached
        rows = self._fetch(
            run_id,
            "SELECT n, hash, (SELECT key_id FROM runs WHERE id = ?) FROM journal "
            "WHERE run_id = ? ORDER BY n DESC LIMIT 1",
            (run_id, run_id),
        )
        if not rows:
            raise StoreError(f"run {run_id} does not exist in {self.url}", run_id=run_id)
        return int(rows[0][0]), str(rows[0][1]), rows[0][2]

    def heartbeat(self, owner: str, run_ids: Collection[str], now: float) -> None:
        """Renew the leases of the runs this owner is executing now (and no others: a run its
        owner gave up on, after a store fault, must expire so recovery can finish it)."""
        ids = list(run_ids)
        if not ids:
            return
        statements = [
            Statement(
                self.dialect.sql(
                    "UPDATE runs SET heartbeat_at = ? WHERE owner = ? "
                    "AND status IN ('running', 'compensating', 'aborting') "
                    f"AND id IN ({', '.join('?' for _ in chunk)})"
                ),
                (now, owner, *chunk),
                prepare=False,  # (a shape per number of runs)
            )
            for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500))
        ]
        try:
            self._write_all(statements)
        except StoreError:
            raise
        except Exception as exc:
            # (its connection is closed, not reused: a dead one kept would fail every later beat,
            # and other hosts would take this process's live runs for dead ones)
            raise StoreError(f"heartbeat of {owner} in {self.url} failed: {exc}") from exc

    def head(self, run_id: str) -> tuple[int, str] | None:
        """The run's newest journal entry: (how many entries, its hash); None if none."""
        cached = self._heads.get(run_id)
        if cached is not None:
            return cached[0], cached[1]
        rows = self._fetch(
            run_id,
            "SELECT n, hash FROM journal WHERE run_id = ? ORDER BY n DESC LIMIT 1",
            (run_id,),
        )
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    def forget(self, run_id: str) -> None:
        """Drop the cached chain head (another process may have written)."""
        self._heads.pop(run_id, None)

    def listener(self) -> Listener | None:
        """Notices of runs' status changes (PostgreSQL), or None (SQLite: poll)."""
        try:
            found: Listener | None = self.dialect.listener()
        except Exception as exc:
            raise StoreError(f"cannot listen on the store at {self.url}: {exc}") from exc
        return found

    def close(self) -> None:
        self._closed = True
        with self._conns_lock:
            conns, self._idle = self._idle, []
        for conn in conns:
            with suppress(Exception):
                conn.close()


_insert_journal = (
    "INSERT INTO journal (run_id, n, at, kind, body, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


class _Duplicate(StoreError):
    """A row with that key exists already (a concurrent writer recorded it first)."""
