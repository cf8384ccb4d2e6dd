"""The SQL store: SQLModel for the schema and reads, the raw DBAPI connection for writes.

Writes are on the hot path of every guarded call, so they skip the ORM: one transaction holds
the row changes, the journal entry that chains them, and a compare-and-set of the run's chain
head. SQLite runs in WAL mode with ``synchronous=NORMAL`` (durability "process": survives a
process crash) or ``FULL`` (durability "power": survives power loss, about 4x slower).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from guardrail import keys
from guardrail.errors import StoreError
from guardrail.keys import Keys, KeySource
from guardrail.redact import canonical, digest
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
from guardrail.store import Fence, Fenced, JournalRow, Recorded, Write, migrate
from guardrail.store.schema import (
    COLUMN_NAMES,
    JSON_COLUMNS,
    Action,
    Compensation,
    Entry,
    ExternalId,
    OutboxEvent,
    ReviewItem,
    RunRecord,
)

T = TypeVar("T")
_DURABILITY = {"process": "NORMAL", "power": "FULL"}


def entry_hash(keys: Keys, kid: str | None, prev_hash: str, kind: str, body: str) -> str:
    """A journal entry's hash: HMAC under the run's key of the previous hash, kind and body."""
    return keys.mac(f"{prev_hash}\n{kind}\n{body}", kid)


class SQLStore:
    """The action log in SQLite or PostgreSQL."""

    def __init__(
        self,
        url: str,
        *,
        durability: str = "process",
        busy_timeout: float = 10.0,
        hash_key: KeySource | None = None,
    ):
        if durability not in _DURABILITY:
            raise StoreError(
                f"durability={durability!r} is not one of 'process' or 'power'", field="durability"
            )
        try:
            parsed: URL = make_url(url)
        except Exception as exc:
            raise StoreError(
                f"store URL {url!r} is not a database URL; expected sqlite:///path.db or "
                "postgresql+psycopg://user@host/db",
                field="store",
            ) from exc
        self.url = parsed.render_as_string(hide_password=True)
        if parsed.get_backend_name() not in ("sqlite", "postgresql"):
            raise StoreError(
                f"store URL {self.url!r} names a database guardrail does not support; expected "
                "sqlite:///path.db or postgresql+psycopg://user@host/db",
                field="store",
            )
        self._sqlite = parsed.get_backend_name() == "sqlite"
        self._busy_timeout = busy_timeout
        self._sync = _DURABILITY[durability]
        self._heads: dict[str, tuple[int, str, str | None]] = {}  # run -> (n, hash, key id)
        self._sql_cache: dict[tuple[Any, ...], str] = {}
        self._closed = False
        self._idle: list[Any] = []  # connections not in use (see _checkout)
        self.max_idle = 8
        self._conns_lock = threading.Lock()
        if self._sqlite:
            path = parsed.database or ""
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
            self._path = path
            self.keys = keys.load(hash_key, store_path=os.path.abspath(path))
            self._connect: Callable[[], Any] = self._connect_sqlite
            self._ph = "?"
            self.engine: Engine = create_engine(
                url, connect_args={"timeout": busy_timeout, "check_same_thread": False}
            )
        else:
            self.keys = keys.load(hash_key)
            self._connect = self._connect_postgres
            self._ph = "%s"
            self.engine = create_engine(parsed, pool_pre_ping=True)
            # the same connection parameters as the engine's (a DSN string rendered from the
            # URL would turn a space in `options=-c a=1 -c b=2` into a literal "+" for libpq)
            _, params = self.engine.dialect.create_connect_args(parsed)
            self._params = {k: v for k, v in params.items() if k != "context"}
        self._attach_pragmas()
        try:
            migrate.ensure(self.engine, self.url)
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot open the store at {self.url}: {getattr(exc, 'orig', None) or exc}"
            ) from exc

    # -- connections -------------------------------------------------------------------------

    def _attach_pragmas(self) -> None:
        if not self._sqlite:
            return
        sync = self._sync

        @event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute(f"PRAGMA synchronous={sync}")

    def _connect_sqlite(self) -> Any:
        conn = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, timeout=self._busy_timeout
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._sync}")
        conn.execute("PRAGMA wal_autocheckpoint=10000")
        return conn

    def _connect_postgres(self) -> Any:
        import psycopg

        conn = psycopg.connect(autocommit=True, **self._params)
        # Our transactions never wait on user code, so they last microseconds. A process paused
        # inside one (SIGSTOP, a VM pause) would hold its run's row lock for as long as it
        # sleeps and stall recovery: the server ends such a session instead, and nobody waits
        # on a lock for long (a recovery pass skips that run and comes back to it).
        conn.execute("SET idle_in_transaction_session_timeout = '5s'; SET lock_timeout = '5s'")
        return conn

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
                conn = self._connect()
            except Exception as exc:
                raise StoreError(f"cannot connect to the store at {self.url}: {exc}") from exc
        try:
            yield conn
        except BaseException as exc:
            if not _reusable_after(exc):
                with suppress(Exception):
                    conn.close()
                raise
            self._give_back(conn)
            raise
        self._give_back(conn)

    def _give_back(self, conn: Any) -> None:
        with self._conns_lock:
            if not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        with suppress(Exception):
            conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._checkout() as conn:
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE" if self._sqlite else "BEGIN")
            try:
                yield cur
            except BaseException:
                try:
                    cur.execute("ROLLBACK")
                except Exception as exc:
                    raise _Broken(str(exc)) from exc  # (closed by the checkout)
                raise
            else:
                cur.execute("COMMIT")

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
        prepared = [_prepare(w) for w in writes]
        first = [p for p in prepared if p[0].table == "runs" and not p[0].insert]
        rest = [p for p in prepared if not (p[0].table == "runs" and not p[0].insert)]
        body = canonical(
            [[w.table, w.key, journaled, int(w.insert)] for w, _, journaled in prepared]
        )
        created = next((w for w in writes if w.insert and w.table == "runs"), None)
        creates_run = created is not None
        # The fence rides with the journal entry: one statement fewer (on PostgreSQL, one
        # round trip fewer)
        fused = fence is not None
        for _ in range(20):
            head = (0, "", created.values.get("key_id")) if created else self._heads.get(run_id)
            try:
                with self._transaction() as cur:
                    if not fused:
                        self._apply_all(cur, first, "", "")
                    if head is None:
                        head = self._read_head(cur, run_id)
                    n, prev, kid = head[0] + 1, head[1], head[2]
                    h = entry_hash(self.keys, kid, prev, kind, body)
                    # The journal's primary key (run_id, n) is the compare-and-set: a writer
                    # with a stale head collides here, rolls back and retries from the real head.
                    entry = (run_id, n, time.time(), kind, body, prev, h)
                    if fused:
                        assert fence is not None
                        # one statement checks the run (on PostgreSQL locked FOR SHARE: a
                        # takeover waits for this commit) and appends the entry
                        check = (run_id, fence.epoch, *fence.statuses)
                        cur.execute(
                            self._fused_sql(len(fence.statuses), exclusive=bool(first)),
                            (*entry, *check) if self._sqlite else (*check, *entry),
                        )
                        if cur.rowcount != 1:
                            raise Fenced(run_id, kind)
                        self._apply_all(cur, first, "", "")
                    else:
                        cur.execute(
                            self._sql(
                                "INSERT INTO journal (run_id, n, at, kind, body, prev_hash, hash) "
                                "VALUES (?, ?, ?, ?, ?, ?, ?)"
                            ),
                            entry,
                        )
                    for w, values, _ in rest:
                        if not self._apply(cur, w, values, prev, h):
                            raise _Rejected
            except _Rejected:
                return False
            except Fenced:
                raise
            except StoreError as exc:
                if exc.run_id is None:  # no connection: say what could not be recorded
                    raise StoreError(
                        f"could not record {kind!r} for run {run_id}: {exc}", run_id=run_id
                    ) from exc
                raise
            except Exception as exc:
                self._heads.pop(run_id, None)
                if _is_journal_race(exc) and not creates_run:
                    continue  # (a run created twice is a duplicate: its head is always 0)
                if _is_integrity_error(exc):
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

    def _read_head(self, cur: Any, run_id: str) -> tuple[int, str, str | None]:
        """The newest journal entry of the run and the run's key: (n, hash, key id)."""
        cur.execute(
            self._sql(
                "SELECT n, hash, (SELECT key_id FROM runs WHERE id = ?) FROM journal "
                "WHERE run_id = ? ORDER BY n DESC LIMIT 1"
            ),
            (run_id, run_id),
        )
        row = cur.fetchall()
        if not row:
            raise StoreError(f"run {run_id} does not exist in {self.url}", run_id=run_id)
        return int(row[0][0]), str(row[0][1]), row[0][2]

    def _apply(self, cur: Any, w: Write, values: dict[str, Any], prev: str, h: str) -> bool:
        if w.table == "actions":
            values["prev_hash"], values["hash"] = prev, h
        cols = tuple(values)
        params = list(values.values())
        names = [COLUMN_NAMES.get(c, c) for c in cols]
        if w.insert:
            sql = self._sql_cache.get((w.table, "i", cols))
            if sql is None:
                allnames = [*w.key, *names]
                sql = self._sql(
                    f"INSERT INTO {w.table} ({', '.join(allnames)}) "
                    f"VALUES ({', '.join('?' for _ in allnames)})"
                )
                self._sql_cache[(w.table, "i", cols)] = sql
            cur.execute(sql, [*w.key.values(), *params])
            return True
        expect = {c: [v for v in vs if v is not None] for c, vs in w.expect.items()}
        nullable = tuple(c for c, vs in w.expect.items() if None in vs)
        exp = tuple((c, len(v)) for c, v in expect.items())
        key = (w.table, "u", cols, tuple(w.key), exp, nullable)
        sql = self._sql_cache.get(key)
        if sql is None:
            where = [f"{k} = ?" for k in w.key]
            for c, vs in expect.items():
                test = [f"{c} IN ({', '.join('?' for _ in vs)})"] if vs else []
                test += [f"{c} IS NULL"] if c in nullable else []
                where.append("(" + " OR ".join(test) + ")")
            sql = self._sql(
                f"UPDATE {w.table} SET {', '.join(f'{n} = ?' for n in names)} "
                f"WHERE {' AND '.join(where)}"
            )
            self._sql_cache[key] = sql
        expected = [v for vs in expect.values() for v in vs]
        cur.execute(sql, [*params, *w.key.values(), *expected])
        return bool(cur.rowcount == 1)

    def _sql(self, sql: str) -> str:
        return sql if self._sqlite else sql.replace("?", "%s")

    def _apply_all(
        self, cur: Any, prepared: list[tuple[Write, dict[str, Any], dict[str, Any]]], p: str, h: str
    ) -> None:
        for w, values, _ in prepared:
            if not self._apply(cur, w, values, p, h):
                raise _Rejected

    def _fused_sql(self, statuses: int, *, exclusive: bool) -> str:
        # FOR SHARE: calls of one run may record side by side, while a takeover's UPDATE waits
        # for them. FOR UPDATE when this transaction updates the run row itself, so that two
        # of them never both hold a share and wait for each other to upgrade it.
        sql = self._sql_cache.get(("fused", statuses, exclusive))
        if sql is None:
            marks = ", ".join("?" for _ in range(statuses))
            if self._sqlite:
                # the transaction holds the database's write lock (BEGIN IMMEDIATE): nobody
                # changes the run before it commits, no row lock is needed. (The statement
                # starts with INSERT: sqlite3 reports no rowcount for one starting with WITH.)
                sql = (
                    "INSERT INTO journal (run_id, n, at, kind, body, prev_hash, hash) "
                    "SELECT ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM runs WHERE id = ? "
                    f"AND epoch = ? AND status IN ({marks}))"
                )
            else:
                lock = "FOR UPDATE" if exclusive else "FOR SHARE"
                sql = self._sql(
                    "WITH fence AS (SELECT 1 FROM runs WHERE id = ? AND epoch = ? "
                    f"AND status IN ({marks}) {lock}) "
                    "INSERT INTO journal (run_id, n, at, kind, body, prev_hash, hash) "
                    "SELECT ?, ?, ?, ?, ?, ?, ? FROM fence"
                )
            self._sql_cache[("fused", statuses, exclusive)] = sql
        return sql

    def heartbeat(self, owner: str, run_ids: Collection[str], now: float) -> None:
        """Renew the leases of the runs this owner is executing now (and no others: a run its
        owner gave up on, after a store fault, must expire so recovery can finish it)."""
        ids = list(run_ids)
        if not ids:
            return
        try:
            with self._transaction() as cur:
                for i in range(0, len(ids), 500):
                    chunk = ids[i : i + 500]
                    cur.execute(
                        self._sql(
                            "UPDATE runs SET heartbeat_at = ? WHERE owner = ? "
                            "AND status IN ('running', 'compensating', 'aborting') "
                            f"AND id IN ({', '.join('?' for _ in chunk)})"
                        ),
                        (now, owner, *chunk),
                    )
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

    # -- reads -------------------------------------------------------------------------------

    def _read(self, fn: Callable[[Session], T]) -> T:
        if self._closed:
            raise StoreError(f"the store at {self.url} is closed; open a new Guard")
        try:
            with Session(self.engine) as session:
                return fn(session)
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot read the store at {self.url}: {getattr(exc, 'orig', None) or exc}"
            ) from exc

    def run(self, run_id: str) -> RunRecord | None:
        return self._read(lambda s: s.get(RunRecord, run_id))

    def runs(
        self,
        *,
        status: str | None = None,
        agent: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        q = select(RunRecord)
        if status is not None:
            q = q.where(RunRecord.status == status)
        if agent is not None:
            q = q.where(RunRecord.agent == agent)
        if since is not None:
            q = q.where(RunRecord.updated_at >= since)
        q = q.order_by(col(RunRecord.created_at).desc())
        if limit is not None:
            q = q.limit(limit)
        return self._read(lambda s: list(s.exec(q).all()))

    def actions(self, run_id: str) -> list[Action]:
        q = select(Action).where(Action.run_id == run_id).order_by(col(Action.seq))
        return self._read(lambda s: list(s.exec(q).all()))

    def next_seq(self, run_id: str) -> int:
        row = self._fetch(run_id, "SELECT MAX(seq) FROM actions WHERE run_id = ?", (run_id,))[0]
        return 1 if row[0] is None else int(row[0]) + 1

    def _fetch(self, run_id: str | None, sql: str, params: tuple[Any, ...]) -> list[Any]:
        try:
            with self._checkout() as conn:
                cur = conn.cursor()
                cur.execute(self._sql(sql), params)
                return list(cur.fetchall())
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"cannot read the store at {self.url}: {exc}", run_id=run_id) from exc

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
            f"AND state IN ({DONE_STATES}) ORDER BY seq",
            (run_id,),
        )
        return {str(key): int(seq) for key, seq in rows}

    def recorded_result(self, run_id: str, seq: int, key: str) -> Recorded | None:
        """The recorded call behind idempotency key ``key`` (action ``seq``) if it took effect
        (succeeded, or its undo failed) or may have (in doubt); else None."""
        rows = self._fetch(
            run_id,
            "SELECT tool, args_hash, result, result_note FROM actions WHERE run_id = ? "
            f"AND seq = ? AND idempotency_key = ? AND state IN ({DONE_STATES})",
            (run_id, seq, key),
        )
        if not rows:
            return None
        tool, args_hash, result, note = rows[0]
        # psycopg decodes json columns itself; sqlite3 hands back the text, except for a bare
        # number, which the column's numeric affinity already turned into one
        if self._sqlite and isinstance(result, str):
            result = json.loads(result)
        return Recorded(seq, tool, args_hash, result, note)

    def keyed_actions(self, run_id: str, key: str) -> list[Action]:
        q = (
            select(Action)
            .where(Action.run_id == run_id, Action.idempotency_key == key)
            .order_by(col(Action.seq))
        )
        return self._read(lambda s: list(s.exec(q).all()))

    def compensations(self, run_id: str) -> list[Compensation]:
        q = (  # in the order they ran (older rows, without a position: by their start)
            select(Compensation)
            .where(Compensation.run_id == run_id)
            .order_by(
                col(Compensation.position).asc().nulls_last(),
                col(Compensation.started_at),
                col(Compensation.seq),
            )
        )
        return self._read(lambda s: list(s.exec(q).all()))

    def review_items(
        self, *, run_id: str | None = None, status: str | None = None
    ) -> list[ReviewItem]:
        q = select(ReviewItem)
        if run_id is not None:
            q = q.where(ReviewItem.run_id == run_id)
        if status is not None:
            q = q.where(ReviewItem.status == status)
        q = q.order_by(col(ReviewItem.created_at))
        return self._read(lambda s: list(s.exec(q).all()))

    def review_item(self, item_id: str) -> ReviewItem | None:
        return self._read(lambda s: s.get(ReviewItem, item_id))

    def entries(self, run_id: str) -> list[Entry]:
        q = select(Entry).where(Entry.run_id == run_id).order_by(col(Entry.n))
        return self._read(lambda s: list(s.exec(q).all()))

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

    def external_ids(self, run_id: str) -> list[ExternalId]:
        q = select(ExternalId).where(ExternalId.run_id == run_id)
        return self._read(lambda s: list(s.exec(q).all()))

    def find(self, *, value: str, name: str | None = None) -> list[ExternalId]:
        q = select(ExternalId).where(ExternalId.value == value)
        if name is not None:
            q = q.where(ExternalId.name == name)
        return self._read(lambda s: list(s.exec(q).all()))

    def search_runs(self, query: RunQuery) -> Page:
        """A page of runs matching ``query``, newest first, with what matched its text."""
        dialect = "sqlite" if self._sqlite else "postgresql"
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
        page = page_of(self._fetch(None, sql, tuple(params)), query.limit)
        if needle is None or not page.run_ids:
            return page
        ids = page.run_ids
        marks = ", ".join("?" for _ in ids)
        runs = self._fetch(
            None, f"SELECT id, agent, reason FROM runs WHERE id IN ({marks})", tuple(ids)
        )
        eids = self._fetch(
            None,
            f"SELECT run_id, name, value FROM external_ids WHERE run_id IN ({marks}) AND "
            + prefix_match("lower(value)", dialect),
            (*ids, *prefix_params(needle)),
        )
        tools = self._fetch(
            None,
            f"SELECT DISTINCT run_id, tool FROM actions WHERE run_id IN ({marks}) AND "
            + prefix_match("lower(tool)", dialect),
            (*ids, *prefix_params(needle)),
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

    def _outbox_write(self, sql: str, params: tuple[Any, ...]) -> int:
        try:
            with self._transaction() as cur:
                cur.execute(self._sql(sql), params)
                return int(cur.rowcount)
        except StoreError:
            raise
        except Exception as exc:
            if _is_integrity_error(exc):
                return 0
            raise StoreError(f"cannot write the outbox in {self.url}: {exc}") from exc

    def queue_event(self, event: OutboxEvent) -> bool:
        """Keep ``event`` for delivery; False when an event with its id is queued already."""
        return (
            self._outbox_write(
                "INSERT INTO outbox (id, run_id, event, at, body, attempts, next_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (event.id, event.run_id, event.event, event.at, event.body, 0, event.next_at),
            )
            == 1
        )

    def due_events(self, now: float, limit: int) -> list[OutboxEvent]:
        q = (
            select(OutboxEvent)
            .where(col(OutboxEvent.delivered_at).is_(None), OutboxEvent.next_at <= now)
            .order_by(col(OutboxEvent.next_at))
            .limit(limit)
        )
        return self._read(lambda s: list(s.exec(q).all()))

    def claim_event(self, event_id: str, attempts: int, retry_at: float) -> bool:
        """Take the event for one delivery attempt (compare-and-set on its attempts): the next
        attempt, should this one never report, is at ``retry_at``."""
        return (
            self._outbox_write(
                "UPDATE outbox SET attempts = ?, next_at = ? WHERE id = ? AND attempts = ? "
                "AND delivered_at IS NULL",
                (attempts + 1, retry_at, event_id, attempts),
            )
            == 1
        )

    def event_outcome(self, event_id: str, delivered_at: float | None, error: str | None) -> None:
        self._outbox_write(
            "UPDATE outbox SET delivered_at = ?, last_error = ? WHERE id = ?",
            (delivered_at, error, event_id),
        )

    def events(self, *, run_id: str | None = None) -> list[OutboxEvent]:
        q = select(OutboxEvent)
        if run_id is not None:
            q = q.where(OutboxEvent.run_id == run_id)
        q = q.order_by(col(OutboxEvent.at), col(OutboxEvent.id))
        return self._read(lambda s: list(s.exec(q).all()))

    def close(self) -> None:
        self._closed = True
        with self._conns_lock:
            conns, self._idle = self._idle, []
        for conn in conns:
            with suppress(Exception):
                conn.close()
        self.engine.dispose()


def journal_value(column: str, value: Any) -> Any:
    """How a column's value appears in a journal entry: JSON columns by their canonical text,
    or that text's digest when it is long (the row holds the value; the journal proves it)."""
    if column not in JSON_COLUMNS:
        return value
    return _journal_text(canonical(value))


def _journal_text(text: str) -> str:
    return text if len(text) <= 64 else "sha256:" + digest(text)


def _prepare(w: Write) -> tuple[Write, dict[str, Any], dict[str, Any]]:
    """The row values to bind (JSON columns as text) and the values to journal."""
    # PostgreSQL text cannot hold NUL; escape it everywhere so both stores record the same
    values = {
        c: canonical(v)
        if c in JSON_COLUMNS
        else v.replace("\x00", "\\x00")
        if isinstance(v, str)
        else v
        for c, v in w.values.items()
    }
    journaled = {c: _journal_text(v) if c in JSON_COLUMNS else v for c, v in values.items()}
    return w, values, journaled


# the states whose call a replay must not run again (see done_keys)
DONE_STATES = "'succeeded', 'compensation_failed', 'in_doubt'"


class _Rejected(Exception):
    pass


class _StaleHead(Exception):
    pass


class _Broken(Exception):
    """A transaction could not even be rolled back: its connection is not reused."""


def _reusable_after(exc: BaseException) -> bool:
    """Whether a connection stays usable after ``exc`` (rolled back by the transaction): our
    own refusals and a lost race on a key leave it healthy; anything else may mean it died."""
    if isinstance(exc, _Broken):
        return False
    if isinstance(exc, _Rejected | Fenced | StoreError | GeneratorExit):
        return True
    return isinstance(exc, Exception) and _is_integrity_error(exc)


class _Duplicate(StoreError):
    """A row with that key exists already (a concurrent writer recorded it first)."""


def _is_journal_race(exc: Exception) -> bool:
    """Another writer appended to the run's journal first (our cached head was stale)."""
    return _is_integrity_error(exc) and ("journal.run_id" in str(exc) or "journal_pkey" in str(exc))


def _is_integrity_error(exc: Exception) -> bool:
    if isinstance(exc, sqlite3.IntegrityError):
        return "UNIQUE" in str(exc)
    return type(exc).__name__ == "UniqueViolation"
