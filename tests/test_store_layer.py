"""The store's own guarantees, written straight through `Store.transact` on SQLite and PostgreSQL:
a failed check (the fence, a write's ``expect``) commits nothing and leaves the connection
usable; a stale chain head retries; a run created twice is a duplicate; reading an existing store
imports no database toolkit; store URLs are parsed without one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import pytest

from guardrail import Guard, StoreError
from guardrail.store import Fence, Fenced, Store, Write, open_store
from guardrail.store.url import parse, shown


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    yield s
    s.close()


def start(store: Store, run_id: str | None = None) -> str:
    run_id = run_id or uuid.uuid4().hex[:20]
    values = {
        "agent": "shop",
        "key_id": store.keys.current,
        "status": "running",
        "owner": "w1",
        "epoch": 1,
        "meta": {"who": "test"},
        "created_at": 1.0,
        "updated_at": 1.0,
    }
    assert store.transact(run_id, "run.start", [Write("runs", {"id": run_id}, values, True)])
    return run_id


def action(run_id: str, seq: int) -> Write:
    values = {
        "tool": "create_order",
        "idempotency_key": f"k{seq}",
        "effect": "reversible",
        "state": "started",
        "attempts": 0,
        "external_ids": {},
        "args": {"item": "book", "n": seq},
        "args_hash": "h",
        "started_at": 2.0,
    }
    return Write("actions", {"run_id": run_id, "seq": seq}, values, insert=True)


def snapshot(store: Store, run_id: str) -> tuple[object, ...]:
    run = store.run(run_id)
    return (
        run.model_dump() if run else None,
        [a.model_dump() for a in store.actions(run_id)],
        [e.hash for e in store.entries(run_id)],
    )


def test_a_write_and_its_journal_entry_land_together(store: Store) -> None:
    run_id = start(store)
    assert store.transact(run_id, "action.start", [action(run_id, 1)], Fence(1, ("running",)))
    run = store.run(run_id)
    assert run is not None and run.meta == {"who": "test"} and run.epoch == 1
    (recorded,) = store.actions(run_id)
    assert recorded.args == {"item": "book", "n": 1} and recorded.result is None
    assert recorded.external_ids == {} and recorded.snapshot is None
    entries = store.entries(run_id)
    assert [e.kind for e in entries] == ["run.start", "action.start"]
    assert recorded.hash == entries[-1].hash and recorded.prev_hash == entries[0].hash
    assert store.head(run_id) == (2, entries[-1].hash)


def touch(run_id: str, at: float) -> Write:
    return Write("runs", {"id": run_id}, {"updated_at": at})


# psycopg prepares a statement server-side on its 5th use: 4 uses before the failing transaction
# make its skipped part hold statements being prepared, which must not be taken as prepared after
PREPARED_ON = 5


@pytest.mark.parametrize("epoch, status", [(2, "running"), (1, "pending_review")])
def test_a_lost_fence_raises_and_commits_nothing(store: Store, epoch: int, status: str) -> None:
    run_id = start(store)
    fence = Fence(1, ("running",))
    for seq in range(1, PREPARED_ON):
        assert store.transact(
            run_id, "action.start", [touch(run_id, seq), action(run_id, seq)], fence
        )
    before = snapshot(store, run_id)
    writes = [touch(run_id, 9.0), action(run_id, PREPARED_ON)]
    for _ in range(PREPARED_ON + 1):  # (the rollbacks too are run often enough to be prepared)
        with pytest.raises(Fenced):
            store.transact(run_id, "action.start", writes, Fence(epoch, (status,)))
    assert snapshot(store, run_id) == before
    # the connection goes on: nothing taken as prepared that was not, no transaction left open
    for seq in range(PREPARED_ON, PREPARED_ON + 3):
        assert store.transact(
            run_id, "action.start", [touch(run_id, seq), action(run_id, seq)], fence
        )
    assert [a.seq for a in store.actions(run_id)] == list(range(1, PREPARED_ON + 3))


def test_an_expect_that_does_not_hold_returns_false_and_commits_nothing(store: Store) -> None:
    run_id = start(store)
    for seq in range(1, PREPARED_ON):
        assert store.transact(run_id, "action.start", [action(run_id, seq), touch(run_id, seq)])
    before = snapshot(store, run_id)
    writes = [
        Write("runs", {"id": run_id}, {"status": "completed"}, expect={"status": ("aborted",)}),
        action(run_id, PREPARED_ON),  # would land: the whole transaction is refused
        touch(run_id, 9.0),
    ]
    assert store.transact(run_id, "run.complete", writes) is False
    # an update of a row that does not exist is refused the same way
    missing = Write("actions", {"run_id": run_id, "seq": 99}, {"state": "succeeded"})
    assert store.transact(run_id, "action.succeed", [missing, action(run_id, PREPARED_ON)]) is False
    assert snapshot(store, run_id) == before
    for seq in range(PREPARED_ON, PREPARED_ON + 3):
        assert store.transact(run_id, "action.start", [action(run_id, seq), touch(run_id, seq)])
    lands = Write("runs", {"id": run_id}, {"status": "completed"}, expect={"owner": ("w1", None)})
    assert store.transact(run_id, "run.complete", [lands])
    run = store.run(run_id)
    assert run is not None and run.status == "completed"


def test_a_run_created_twice_is_a_duplicate(store: Store) -> None:
    run_id = start(store)
    before = snapshot(store, run_id)
    with pytest.raises(StoreError):
        start(store, run_id)
    assert snapshot(store, run_id) == before
    assert store.transact(run_id, "action.start", [action(run_id, 1)])  # the connection lives


def test_a_stale_chain_head_retries_from_the_real_one(store_url: str) -> None:
    a, b = open_store(store_url), open_store(store_url)
    try:
        run_id = start(a)
        assert a.transact(run_id, "action.start", [action(run_id, 1)])  # a caches head 2
        assert b.transact(run_id, "action.start", [action(run_id, 2)])  # b appends entry 3
        assert a.transact(run_id, "action.start", [action(run_id, 3)])  # a collides, retries
        entries = b.entries(run_id)
        assert [e.n for e in entries] == [1, 2, 3, 4]
        assert all(e.prev_hash == p.hash for p, e in pairwise(entries))
        assert [act.prev_hash for act in b.actions(run_id)] == [e.hash for e in entries[:3]]
    finally:
        a.close()
        b.close()


def test_reading_an_existing_store_imports_no_database_toolkit(store_url: str) -> None:
    with Guard(store=store_url) as guard:

        @guard.tool(effect="reversible", undo=lambda args: None)
        def create_order(item: str) -> dict[str, str]:
            return {"id": f"o-{item}"}

        with guard.run(agent="shop") as run:
            create_order(item="book")
    script = textwrap.dedent(
        f"""
        import sys
        import guardrail
        guard = guardrail.Guard(store={store_url!r})
        runs = guard.runs()
        assert [r.id for r in runs] == [{run.id!r}], runs
        assert [a.tool for a in guard.store.actions(runs[0].id)] == ["create_order"]
        log = guard.log(runs[0].id)
        assert log.actions[0].result == {{"id": "o-book"}}, log
        assert guard.verify(runs[0].id).ok
        guard.close()
        loaded = [m for m in ("sqlalchemy", "sqlmodel", "alembic", "cel", "celpy")
                  if m in sys.modules]
        assert not loaded, loaded
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_store_urls_are_parsed_without_a_toolkit() -> None:
    assert parse("sqlite:///rel/guardrail.db").database == "rel/guardrail.db"
    assert parse("sqlite:////abs/guardrail.db").database == "/abs/guardrail.db"
    url = parse("postgresql+psycopg://ann:s%40cret@db.example:6543/shop?options=-c%20a%3D1")
    assert url.connect_args() == {
        "user": "ann",
        "password": "s@cret",
        "host": "db.example",
        "port": 6543,
        "dbname": "shop",
        "options": "-c a=1",
    }
    assert url.shown() == "postgresql+psycopg://ann:***@db.example:6543/shop?options=-c%20a%3D1"
    assert parse("postgresql://ann@/shop").connect_args() == {"user": "ann", "dbname": "shop"}
    assert shown("mysql://root:pw@host/db") == "mysql://root:***@host/db"
    for bad in ("sqlite:/x.db", "sqlite://x.db", "mysql://h/db", "postgres://h/db", "x"):
        with pytest.raises(StoreError) as err:
            parse(bad)
        assert err.value.field == "store"


def test_a_write_survives_its_prepared_statements_being_dropped(store: Store) -> None:
    if not store.url.startswith("postgresql"):
        pytest.skip("PostgreSQL prepares each statement shape once per connection")
    run_id = start(store)
    fence = Fence(1, ("running",))
    assert store.transact(run_id, "action.start", [action(run_id, 1)], fence)
    for conn in store._idle:  # type: ignore[attr-defined]
        conn.execute("DEALLOCATE ALL")  # (as a pooler or an operator might)
    assert store.transact(run_id, "action.start", [action(run_id, 2)], fence)
    assert [a.seq for a in store.actions(run_id)] == [1, 2]


def test_the_audit_uses_the_journal_rules_not_the_sql_store() -> None:
    script = (
        "import sys, guardrail.audit\n"
        "assert 'guardrail.store.journal' in sys.modules\n"
        "assert not {'guardrail.store.sql', 'guardrail.store.schema', 'sqlalchemy'} & set("
        "sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_postgres_record_is_one_message(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    if not store.url.startswith("postgresql"):
        pytest.skip("SQLite runs in process: no round trips")
    import psycopg

    sent: list[str] = []

    class Counting(psycopg.ClientCursor):
        def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
            sent.append(str(query))
            return super().execute(query, params, **kw)

    run_id = start(store)
    fence = Fence(1, ("running",))
    assert store.transact(run_id, "action.start", [action(run_id, 1)], fence)  # prepares
    monkeypatch.setattr(psycopg, "ClientCursor", Counting)
    done = Write("actions", {"run_id": run_id, "seq": 1}, {"state": "succeeded"}, expect={})
    external = Write(
        "external_ids", {"run_id": run_id, "seq": 1, "name": "id"}, {"value": "o"}, True
    )
    assert store.transact(run_id, "action.succeed", [done, external], fence)  # new shapes
    sent.clear()
    for seq in (2, 3):
        assert store.transact(run_id, "action.start", [action(run_id, seq)], fence)
    assert len(sent) == 2 and all(q.startswith("EXECUTE ") for q in sent), sent
    with pytest.raises(Fenced):
        store.transact(run_id, "action.start", [action(run_id, 4)], Fence(2, ("running",)))
    assert len(sent) == 3
