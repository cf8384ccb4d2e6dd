"""Bad input gets a clear error and loses nothing already recorded.

Malformed policies, unknown tools, non-JSON results, huge arguments and results, unknown ids,
closed, unreachable or vanishing databases, and edited or deleted log rows: each test asserts the
error a person or program gets, that the tool did not run when it must not, and, on the stored
log (``guard.log``, ``guard.verify``), that what was recorded before is intact.
"""

from __future__ import annotations

import socket
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from guardrail import (
    CallRefused,
    Guard,
    PolicyError,
    ResultNotReplayable,
    ResultWarning,
    Review,
    RunHalted,
    RunNotFound,
    StoreError,
    UnknownTool,
)
from guardrail.redact import canonical
from guardrail.store.sql import SQLStore
from guardrail.testing import ScriptedTool


class World:
    """Side effects outside the guard's store: every call a tool made and every undo."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.undone: list[str] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class Refused(RuntimeError):
    """A tool that refused before doing anything: declared ``not_done`` (nothing happened)."""


class Widget:
    """A tool result with no JSON form."""

    def __repr__(self) -> str:
        return "Widget(42)"


class Credentials:
    def __repr__(self) -> str:
        return "Credentials(api_key='sk-live0123456789abcdefghijklmnop')"


RESULTS: dict[str, Any] = {
    "object": Widget(),
    "bytes": b"\x00\x01",
    "int-enum": socket.AF_INET,
    "set": {"b", "a", "c"},
    "tuple": ("x", 1),
    "credentials": Credentials(),
    "nan": {"ratio": float("nan")},
}


def shop(guard: Guard, world: World) -> dict[str, Callable[..., Any]]:
    """A reversible tool (its undo uses the external id), an irreversible one, a free-form one."""

    def cancel_order(external_ids: dict[str, str]) -> None:
        world.undone.append(external_ids["order_id"])

    @guard.tool(effect="reversible", undo=cancel_order, external_ids={"order_id": "result.id"})
    def create_order(item: str) -> dict[str, str]:
        world.calls.append(("create_order", item))
        return {"id": f"o-{item}", "item": item}

    @guard.tool(effect="irreversible", review=Review(kind="correct", owner="support"))
    def send_email(to: str, body: str = "hello") -> str:
        world.calls.append(("send_email", to))
        return "sent"

    @guard.tool(effect="irreversible")
    def returns(what: str) -> Any:
        """Returns ``RESULTS[what]``: the arguments stay JSON, the result need not be."""
        world.calls.append(("returns", what))
        return RESULTS[what]

    @guard.tool(effect="irreversible")
    def take(value: Any) -> str:
        world.calls.append(("take", None))
        return "taken"

    return {
        "create_order": create_order,
        "send_email": send_email,
        "returns": returns,
        "take": take,
    }


def states(guard: Guard, run_id: str) -> list[tuple[str, str]]:
    return [(a.tool, a.state) for a in guard.log(run_id).actions]


@pytest.fixture
def local_guard(sqlite_url: str) -> Iterator[Guard]:
    """For what the store has no part in (policies, refusals before anything is stored)."""
    with Guard(store=sqlite_url) as g:
        yield g


def dump(guard: Guard, run_id: str) -> dict[str, Any]:
    """Everything stored about a run, as plain data to compare before and after."""
    log = guard.log(run_id)
    return {
        "run": log.run.model_dump(exclude={"heartbeat_at"}),
        "actions": [a.model_dump() for a in log.actions],
        "compensations": [c.model_dump() for c in log.compensations],
        "review_items": [i.model_dump() for i in log.review_items],
        "journal": [e.model_dump() for e in guard.store.entries(run_id)],
    }


def assert_verifies(guard: Guard, run_id: str) -> None:
    verification = guard.verify(run_id)
    assert verification.ok, verification.problems


# -- results that are not JSON ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "type_name", "stored_repr"),
    [
        ("object", "Widget", "Widget(42)"),
        ("bytes", "bytes", "b'\\x00\\x01'"),
        ("int-enum", "AddressFamily", None),  # an IntEnum is an int: stored as JSON
    ],
    ids=["object", "bytes", "int-enum"],
)
def test_non_json_result_is_recorded_as_its_repr_with_a_warning(
    guard: Guard, what: str, type_name: str, stored_repr: str | None
) -> None:
    world = World()
    t = shop(guard, world)
    value = RESULTS[what]
    with guard.run() as run:
        t["create_order"]("book")
        if stored_repr is None:
            assert t["returns"](what) == value
        else:
            with pytest.warns(ResultWarning, match=rf"returns returned a {type_name}") as seen:
                assert t["returns"](what) is value  # the agent still gets the real value
            assert run.id in str(seen[0].message)
        t["send_email"]("ann@example.com")
    assert world.names() == ["create_order", "returns", "send_email"]
    log = guard.log(run.id)
    assert log.run.status == "completed"
    assert states(guard, run.id) == [
        ("create_order", "succeeded"),
        ("returns", "succeeded"),
        ("send_email", "succeeded"),
    ]
    action = log.action(2)
    if stored_repr is None:
        assert (action.result, action.result_note) == (int(value), None)
    else:
        assert action.result == {"type": type_name, "repr": stored_repr}
        assert action.result_note == "not_json"
    assert_verifies(guard, run.id)


def test_set_and_tuple_results_are_stored_as_lists(local_guard: Guard) -> None:
    guard = local_guard
    world = World()
    t = shop(guard, world)
    with guard.run() as run:
        t["returns"]("set")
        t["returns"]("tuple")
    log = guard.log(run.id)
    assert sorted(log.action(1).result) == ["a", "b", "c"]
    assert log.action(2).result == ["x", 1]
    assert [a.result_note for a in log.actions] == [None, None]
    assert_verifies(guard, run.id)


def test_a_non_json_result_cannot_be_replayed_and_says_why(guard: Guard) -> None:
    world = World()
    t = shop(guard, world)
    with guard.run() as run:
        with pytest.warns(ResultWarning):
            run.call("returns", {"what": "object"}, call_id="call-1")
        with pytest.raises(ResultNotReplayable) as err:
            run.call("returns", {"what": "object"}, call_id="call-1")
        t["send_email"]("ann@example.com")  # the run goes on
    assert (err.value.tool, err.value.field, err.value.run_id) == ("returns", "result", run.id)
    assert "returns already succeeded as action 1" in str(err.value)
    assert "not json" in str(err.value)
    assert world.names() == ["returns", "send_email"]  # not called a second time
    assert states(guard, run.id) == [("returns", "succeeded"), ("send_email", "succeeded")]
    assert_verifies(guard, run.id)


def test_the_repr_of_a_non_json_result_is_redacted(local_guard: Guard) -> None:
    guard = local_guard
    world = World()
    t = shop(guard, world)
    with guard.run() as run, pytest.warns(ResultWarning):
        t["returns"]("credentials")
    stored = guard.log(run.id).action(1).result
    assert stored["type"] == "Credentials"
    assert "sk-live0123456789abcdefghijklmnop" not in repr(stored)


def test_a_non_finite_float_result_is_recorded_as_not_json(guard: Guard) -> None:
    world = World()
    t = shop(guard, world)
    with guard.run() as run:
        t["create_order"]("book")
        with pytest.warns(ResultWarning, match="returns"):
            t["returns"]("nan")
        t["send_email"]("ann@example.com")
    assert states(guard, run.id) == [
        ("create_order", "succeeded"),
        ("returns", "succeeded"),
        ("send_email", "succeeded"),
    ]
    assert guard.log(run.id).action(2).result_note == "not_json"
    assert_verifies(guard, run.id)


# -- arguments: too large, not JSON ----------------------------------------------------------


def test_ten_megabyte_args_are_refused_before_the_tool_runs(guard: Guard) -> None:
    world = World()
    t = shop(guard, world)
    huge = "x" * 10_000_000
    with guard.run() as run:
        t["create_order"]("book")
        with pytest.raises(CallRefused) as err:
            t["send_email"]("ann@example.com", body=huge)
        t["send_email"]("ann@example.com", body="short")  # the agent goes on
    refused = err.value
    assert (refused.tool, refused.field, refused.run_id) == ("send_email", "args", run.id)
    message = str(refused)
    assert "send_email" in message
    assert "10,000,0" in message  # the size
    assert "1,000,000" in message and "max_args_bytes" in message  # the limit and the knob
    assert "nothing ran" in message
    assert world.names() == ["create_order", "send_email"]
    assert [c for c in world.calls if c[0] == "send_email"] == [("send_email", "ann@example.com")]
    log = guard.log(run.id)
    assert [(a.seq, a.tool, a.state) for a in log.actions] == [
        (1, "create_order", "succeeded"),
        (2, "send_email", "succeeded"),  # the refused call used no seq
    ]
    assert log.action(2).args == {"to": "ann@example.com", "body": "short"}
    assert not any(huge[:1000] in e.body for e in guard.store.entries(run.id))
    assert_verifies(guard, run.id)


def test_the_args_limit_is_a_setting(store_url: str) -> None:
    with Guard(store=store_url, max_args_bytes=100) as guard:
        world = World()
        t = shop(guard, world)
        with guard.run() as run:
            t["send_email"]("a@b.c", body="x" * 50)
            with pytest.raises(CallRefused, match=r"over the limit of 100 "):
                t["send_email"]("a@b.c", body="x" * 100)
        assert states(guard, run.id) == [("send_email", "succeeded")]
        assert world.names() == ["send_email"]


def test_a_refused_call_the_agent_does_not_catch_halts_the_run(guard: Guard) -> None:
    world = World()
    t = shop(guard, world)
    with pytest.raises(CallRefused), guard.run() as run:
        t["create_order"]("book")
        t["send_email"]("ann@example.com")
        t["create_order"]("x" * 2_000_000)
    log = guard.log(run.id)
    assert log.run.status == "pending_review"
    assert "CallRefused" in (log.run.reason or "")
    assert states(guard, run.id) == [("create_order", "compensated"), ("send_email", "succeeded")]
    assert world.undone == ["o-book"]
    assert [(i.seq, i.reason) for i in log.review_items] == [(2, "irreversible")]
    assert_verifies(guard, run.id)


@pytest.mark.parametrize(
    ("make", "type_name"),
    [
        (object, "object"),
        (lambda: socket.socket(), "socket"),
        (lambda: b"raw", "bytes"),
        (lambda: {"nested": [1, {"deep": object()}]}, "object"),
    ],
    ids=["object", "socket", "bytes", "nested"],
)
def test_non_json_args_are_refused_before_the_tool_runs(
    local_guard: Guard, make: Callable[[], Any], type_name: str
) -> None:
    guard = local_guard
    world = World()
    t = shop(guard, world)
    value = make()
    try:
        with guard.run() as run:
            t["create_order"]("book")
            with pytest.raises(CallRefused) as err:
                t["take"](value)
    finally:
        if isinstance(value, socket.socket):
            value.close()
    assert (err.value.tool, err.value.field, err.value.run_id) == ("take", "args", run.id)
    assert "the arguments of take are not JSON" in str(err.value)
    assert type_name in str(err.value)
    assert world.names() == ["create_order"]
    assert states(guard, run.id) == [("create_order", "succeeded")]
    assert guard.log(run.id).run.status == "completed"
    assert_verifies(guard, run.id)


def test_non_finite_float_args_are_refused_as_not_json(guard: Guard) -> None:
    world = World()
    t = shop(guard, world)
    with guard.run() as run:
        with pytest.raises(CallRefused, match="not JSON"):
            t["take"](float("inf"))
        t["send_email"]("ann@example.com")
    assert world.names() == ["send_email"]
    assert states(guard, run.id) == [("send_email", "succeeded")]


# -- huge results ----------------------------------------------------------------------------


def test_huge_result_is_capped_with_a_note_and_keeps_its_external_ids(store_url: str) -> None:
    world = World()
    blob = "y" * 50_000
    with Guard(store=store_url, max_result_bytes=10_000) as guard:

        def cancel_order(external_ids: dict[str, str], result: Any) -> None:
            world.undone.append(external_ids["order_id"])
            world.calls.append(("undo saw", result))

        @guard.tool(effect="reversible", undo=cancel_order, external_ids={"order_id": "result.id"})
        def create_order(item: str) -> dict[str, str]:
            world.calls.append(("create_order", item))
            return {"id": f"o-{item}", "blob": blob}

        fail = ScriptedTool([RuntimeError("carrier is down")], name="ship")
        guard.policy("ship", effect="irreversible")
        with pytest.raises(RunHalted), guard.run() as run:
            full = run.call("create_order", {"item": "book"}, fn=create_order, call_id="c-1")
            assert full["blob"] == blob  # the agent gets the whole result
            with pytest.raises(ResultNotReplayable, match="truncated"):
                run.call("create_order", {"item": "book"}, fn=create_order, call_id="c-1")
            run.call("ship", {}, fn=fail)

        size = len(canonical({"id": "o-book", "blob": blob}))
        action = guard.log(run.id).action(1)
        assert action.result_note == "truncated"
        assert action.result == {"truncated": True, "bytes": size}
        assert action.external_ids == {"order_id": "o-book"}
        assert [a.tool for a in guard.find("o-book")] == ["create_order"]
        # compensation still works from the external id
        assert action.state == "compensated"
        assert world.undone == ["o-book"]
        assert world.calls == [
            ("create_order", "book"),
            ("undo saw", {"truncated": True, "bytes": size}),
        ]
        assert not any(blob[:100] in e.body for e in guard.store.entries(run.id))
        assert_verifies(guard, run.id)


# -- unknown ids -----------------------------------------------------------------------------


def test_unknown_run_id_is_named_for_every_operation(guard: Guard) -> None:
    world = World()
    t = shop(guard, world)
    guard.policy("boom", effect="irreversible", not_done=[Refused])
    with pytest.raises(RunHalted), guard.run() as run:
        t["send_email"]("ann@example.com")
        run.call("boom", {}, fn=ScriptedTool([Refused("x")]))
    before = dump(guard, run.id)

    operations: dict[str, Callable[[], Any]] = {
        "log": lambda: guard.log("no-such-run"),
        "verify": lambda: guard.verify("no-such-run"),
        "resume": lambda: guard.resume("no-such-run", by="ann"),
        "abort": lambda: guard.abort("no-such-run", by="ann", reason="typo"),
    }
    for name, operation in operations.items():
        with pytest.raises(RunNotFound) as err:
            operation()
        assert err.value.run_id == "no-such-run", name
        assert "no run 'no-such-run'" in str(err.value), name
        assert guard.store.url in str(err.value), name
    with pytest.raises(RunNotFound, match="no review item 'no-such-item'"):
        guard.resolve("no-such-item", "done_manually", by="ann")

    assert [r.id for r in guard.runs()] == [run.id]  # nothing was created
    assert dump(guard, run.id) == before  # nothing changed: the open item is still open
    assert [i.status for i in guard.log(run.id).review_items] == ["open"]
    assert_verifies(guard, run.id)


# -- unknown tools and malformed policies ----------------------------------------------------


def test_strict_guard_refuses_an_unknown_tool_before_it_runs(guard: Guard) -> None:
    world = World()
    t = shop(guard, world)
    mystery = ScriptedTool(["done"], name="mystery")
    with guard.run() as run:
        t["create_order"]("book")
        with pytest.raises(UnknownTool) as err:
            run.call("mystery", {"x": 1}, fn=mystery)
        t["send_email"]("ann@example.com")
    assert (err.value.tool, err.value.run_id, err.value.field) == ("mystery", run.id, "policy")
    assert "guard.policy('mystery', effect=...)" in str(err.value)
    assert mystery.calls == []
    assert states(guard, run.id) == [("create_order", "succeeded"), ("send_email", "succeeded")]
    assert_verifies(guard, run.id)


def test_strict_guard_refuses_to_decorate_a_tool_without_policy(local_guard: Guard) -> None:
    guard = local_guard
    with pytest.raises(PolicyError) as err:

        @guard.tool
        def undeclared() -> None: ...

    assert (err.value.tool, err.value.field) == ("undeclared", "effect")
    assert "effect=" in str(err.value)


def test_a_tool_registered_without_callable_is_named(local_guard: Guard) -> None:
    guard = local_guard
    guard.policy("ghost", effect="read_only")
    with (
        guard.run() as run,
        pytest.raises(UnknownTool, match="no callable is registered for tool 'ghost'"),
    ):
        run.call("ghost", {})
    assert guard.log(run.id).actions == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"effect": "reversible"}, "undo"),
        ({"effect": "reversable", "undo": print}, "effect"),
        ({"effect": "irreversible", "undo": print}, "undo"),
        ({"effect": "irreversible", "external_ids": {"order_id": "response.id"}}, "external_ids"),
        ({"effect": "irreversible", "redact": ["body"]}, "redact"),
        ({"effect": "irreversible", "idempotency_key": "args..id"}, "idempotency_key"),
        ({"effect": "irreversible", "on_failure": "panic"}, "on_failure"),
        ({"effect": "irreversible", "colour": "red"}, "colour"),
        ({"effect": "reversible", "undo": {"tool": "create_order"}}, "undo.tool"),
        pytest.param(
            {"effect": "irreversible", "retry": {"attempts": 0}},
            "retry",
        ),
        pytest.param(
            {"effect": "irreversible", "review": {"kind": "shrug"}},
            "review",
        ),
        pytest.param(
            {"effect": "reversible", "undo": {"tool": ""}},
            "undo",
        ),
    ],
    ids=[
        "reversible-without-undo",
        "effect-typo",
        "undo-on-irreversible",
        "external-id-bad-path",
        "redact-bad-path",
        "idempotency-key-bad-path",
        "on-failure-typo",
        "unknown-field",
        "undo-is-itself",
        "retry-zero-attempts",
        "review-kind-typo",
        "undo-tool-empty",
    ],
)
def test_malformed_code_policy_names_tool_and_field_and_keeps_the_old_one(
    local_guard: Guard, fields: dict[str, Any], field: str
) -> None:
    guard = local_guard
    world = World()
    t = shop(guard, world)
    declared = guard.find_policy("create_order")
    with pytest.raises(PolicyError) as err:
        guard.policy("create_order", **fields)
    assert err.value.tool == "create_order"
    assert err.value.field is not None and err.value.field.startswith(field)
    assert "'create_order'" in str(err.value)
    assert guard.find_policy("create_order") is declared  # the good policy is still in force
    with guard.run() as run:
        t["create_order"]("book")
    action = guard.log(run.id).action(1)
    assert (action.effect, action.state) == ("reversible", "succeeded")


# -- a closed guard, an unreachable database -------------------------------------------------


def test_a_closed_guard_refuses_calls_and_loses_nothing(store_url: str) -> None:
    world = World()
    guard = Guard(store=store_url)
    t = shop(guard, world)
    with pytest.raises(StoreError) as err, guard.run() as run:
        t["create_order"]("book")
        guard.close()
        t["send_email"]("ann@example.com")
    assert "is closed; open a new Guard" in str(err.value)
    assert guard.store.url in str(err.value)
    assert world.names() == ["create_order"]  # the second tool never ran
    for operation in (lambda: guard.log(run.id), guard.runs, lambda: guard.run().__enter__()):
        with pytest.raises(StoreError, match="closed"):
            operation()
    with Guard(store=store_url) as reopened:
        assert states(reopened, run.id) == [("create_order", "succeeded")]
        assert reopened.log(run.id).action(1).external_ids == {"order_id": "o-book"}
        assert_verifies(reopened, run.id)


def test_unreachable_postgres_is_a_store_error_without_the_password() -> None:
    url = "postgresql+psycopg://postgres:hunter2@127.0.0.1:1/nothing"
    with pytest.raises(StoreError) as err:
        Guard(store=url)
    message = str(err.value)
    assert "postgresql+psycopg://postgres:***@127.0.0.1:1/nothing" in message
    assert "Is the server running" in message  # what to check
    chain: list[BaseException] = []
    cause: BaseException | None = err.value
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    assert not any("hunter2" in str(e) for e in chain)


def test_sqlite_in_a_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "guardrail.db"
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a directory")
    for path in (missing, a_file / "guardrail.db"):
        with pytest.raises(StoreError) as err:
            Guard(store=f"sqlite:///{path}")
        assert f"sqlite:///{path}" in str(err.value)
    assert not (tmp_path / "no").exists()  # nothing half-created


def test_sqlite_in_a_missing_directory_says_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "guardrail.db"
    with pytest.raises(StoreError) as err:
        Guard(store=f"sqlite:///{missing}")
    assert f"directory {missing.parent} does not exist" in str(err.value)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(
            "postgres://postgres@127.0.0.1:1/nothing",
        ),
        pytest.param(
            "mysql://root@127.0.0.1:1/nothing",
        ),
        "not a url",
    ],
    ids=["postgres-scheme", "mysql", "garbage"],
)
def test_an_unsupported_store_url_is_a_store_error(url: str) -> None:
    with pytest.raises(StoreError) as err:
        Guard(store=url)
    assert "sqlite:///" in str(err.value) and "postgresql+psycopg://" in str(err.value)
    assert err.value.field == "store"


# -- a database that goes away mid-run -------------------------------------------------------


class Outage:
    """Makes the store unusable for the guard, then brings it back.

    SQLite: another process holds the write lock (reads still work in WAL mode) and the guard
    waits only 50 ms for it. PostgreSQL: every connection of the guard is terminated, as a server
    restart or a failover would; the guard reconnects on its next use.
    """

    def __init__(self, url: str) -> None:
        self.sqlite = url.startswith("sqlite")
        self.lock: sqlite3.Connection | None = None
        if self.sqlite:
            self.url = url
            self.path = url.removeprefix("sqlite:///")
        else:
            self.app = f"guardrail_outage_{uuid.uuid4().hex[:12]}"
            self.url = f"{url}&application_name={self.app}"
            self.admin = url.split("?")[0].replace("postgresql+psycopg://", "postgresql://")

    def guard(self) -> Guard:
        return Guard(store=SQLStore(self.url, busy_timeout=0.05) if self.sqlite else self.url)

    def begin(self) -> None:
        if self.sqlite:
            self.lock = sqlite3.connect(self.path, isolation_level=None)
            self.lock.execute("BEGIN IMMEDIATE")
            return
        import psycopg

        with psycopg.connect(self.admin, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (self.app,),
            ).fetchall()
        assert killed and all(ok for (ok,) in killed)

    def end(self) -> None:
        if self.lock is not None:
            self.lock.execute("ROLLBACK")
            self.lock.close()
            self.lock = None

    def before_next_write_ahead(self, guard: Guard) -> None:
        """Begin the outage right after the next call's dedup check, before its `started` row."""
        store: Any = guard.store
        write = store.transact

        def fail_then_write(*args: Any, **kwargs: Any) -> Any:
            del store.transact  # once
            self.begin()
            return write(*args, **kwargs)

        store.transact = fail_then_write


@pytest.fixture
def outage(store_url: str) -> Iterator[Outage]:
    o = Outage(store_url)
    yield o
    o.end()


@pytest.mark.parametrize("when", ["before_the_call", "before_the_write_ahead"])
def test_store_outage_before_a_call_refuses_it_and_loses_nothing(outage: Outage, when: str) -> None:
    world = World()
    with outage.guard() as guard:
        t = shop(guard, world)
        with guard.run() as run:
            t["create_order"]("book")
            t["send_email"]("ann@example.com")
            if when == "before_the_call":
                outage.begin()
            else:
                outage.before_next_write_ahead(guard)
            with pytest.raises(StoreError) as err:
                t["create_order"]("pen")
            assert world.names() == ["create_order", "send_email"]  # pen was never ordered
            outage.end()
            assert states(guard, run.id) == [
                ("create_order", "succeeded"),
                ("send_email", "succeeded"),
            ]
            t["create_order"]("pen")  # the agent retries once the store is back
        assert err.value.run_id == run.id
        assert guard.store.url in str(err.value)
        assert world.names() == ["create_order", "send_email", "create_order"]
    with outage.guard() as reopened:
        log = reopened.log(run.id)
        assert log.run.status == "completed"
        assert states(reopened, run.id) == [
            ("create_order", "succeeded"),
            ("send_email", "succeeded"),
            ("create_order", "succeeded"),
        ]
        assert [a.external_ids for a in log.actions] == [
            {"order_id": "o-book"},
            {},
            {"order_id": "o-pen"},
        ]
        assert_verifies(reopened, run.id)


def test_store_outage_at_the_write_ahead_names_the_tool_that_did_not_run(
    outage: Outage,
) -> None:
    with outage.guard() as guard:
        t = shop(guard, World())
        with guard.run():
            outage.before_next_write_ahead(guard)
            with pytest.raises(StoreError) as err:
                t["send_email"]("ann@example.com")
            outage.end()
    assert err.value.tool == "send_email"
    assert "send_email did not run" in str(err.value)


def test_store_outage_then_retry_does_not_make_resume_repeat_a_call(outage: Outage) -> None:
    world = World()
    carrier = {"down": True}
    with outage.guard() as guard:
        t = shop(guard, world)
        guard.policy("ship", effect="irreversible", on_failure="hold", not_done=[Refused])

        @guard.tool(name="ship")
        def ship() -> str:
            if carrier["down"]:
                raise Refused("carrier is down")
            return "shipped"

        def agent(first_time: bool) -> None:
            t["send_email"]("ann@example.com")
            if first_time:
                outage.before_next_write_ahead(guard)
                with pytest.raises(StoreError):
                    t["send_email"]("bob@example.com")
                outage.end()
            t["send_email"]("bob@example.com")  # the retry after the store came back
            ship()

        with pytest.raises(RunHalted), guard.run() as run:
            agent(first_time=True)
        guard.resume(run.id, by="ann", note="carrier is back")
        carrier["down"] = False
        with guard.run(run_id=run.id):
            agent(first_time=False)  # a replay: done calls must not run again
        assert world.calls == [
            ("send_email", "ann@example.com"),
            ("send_email", "bob@example.com"),
        ]
        assert guard.log(run.id).run.status == "completed"


def test_store_outage_after_the_tool_ran_leaves_a_review_item(outage: Outage) -> None:
    world = World()
    with outage.guard() as guard:
        t = shop(guard, world)

        @guard.tool(effect="irreversible")
        def charge(amount: int) -> str:
            world.calls.append(("charge", amount))
            outage.begin()  # the database goes away while the payment API answers
            return "ch-1"

        with guard.run() as run:
            t["create_order"]("book")
            try:
                with pytest.raises(RunHalted) as halted:
                    charge(5)
            finally:
                outage.end()
            # never a retryable error: the agent is stopped, and this process calls nothing more
            assert "charge ran but its outcome could not be recorded" in str(halted.value)
            with pytest.raises(RunHalted):
                t["create_order"]("pen")
        assert world.names() == ["create_order", "charge"]
        if outage.sqlite:
            # the lock is held until the call returns: the halt could not be written either.
            # The run's lease is no longer renewed, and once it expires recovery finishes the
            # halt (here: as if stale_after had passed)
            assert guard.log(run.id).action(2).state == "started"
            guard.stale_after = -1.0
            assert guard.recover() == [run.id]
        # (PostgreSQL: the connection was lost once; the guard reconnected and halted at once)
        log = guard.log(run.id)
        assert log.run.status == "pending_review"
        assert log.action(1).state == "compensated"
        assert log.action(2).state == "in_doubt"
        assert [(i.seq, i.reason) for i in log.review_items] == [(2, "in_doubt")]
        assert_verifies(guard, run.id)


@pytest.mark.parametrize(
    "store_url",
    [
        "sqlite",
        pytest.param(
            "postgres",
            marks=[
                pytest.mark.postgres,
            ],
        ),
    ],
    indirect=True,
)
@pytest.mark.parametrize("declared", [True, False], ids=["not_done", "unknown"])
def test_an_error_message_with_a_nul_byte_is_recorded(guard: Guard, declared: bool) -> None:
    """As a failure (the exception is declared not_done) and as an unknown outcome, whose
    review item quotes the error for a person."""
    world = World()
    t = shop(guard, world)
    boom = ScriptedTool([Refused("bad\x00data")], name="boom")
    guard.policy("boom", effect="irreversible", not_done=[Refused] if declared else [])
    with pytest.raises(RunHalted) as halted, guard.run() as run:
        t["create_order"]("book")
        run.call("boom", {}, fn=boom)
    assert halted.value.status == "pending_review"
    log = guard.log(run.id)
    state = "failed" if declared else "in_doubt"
    assert states(guard, run.id) == [("create_order", "compensated"), ("boom", state)]
    assert "bad" in (log.action(2).error or "") and "data" in (log.action(2).error or "")
    if not declared:
        [item] = log.review_items
        assert (item.seq, item.reason) == (2, "in_doubt")
        assert "bad" in (item.instructions or "") and "data" in (item.instructions or "")
    else:
        assert log.review_items == []
    assert_verifies(guard, run.id)


# -- the hash chain: edited, deleted, reordered rows -----------------------------------------


def completed_run(guard: Guard) -> str:
    """A completed run of three actions: create_order, send_email, create_order."""
    t = shop(guard, World())
    with guard.run() as run:
        t["create_order"]("book")
        t["send_email"]("ann@example.com")
        t["create_order"]("pen")
    return run.id


def tamper(store_url: str, run_id: str, *statements: str) -> None:
    """Change the store behind guardrail's back, through a connection of its own."""
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement), {"r": run_id})
    finally:
        engine.dispose()


LAST_ENTRY = "(SELECT MAX(n) FROM journal WHERE run_id = :r)"
SWAP_ACTIONS = (
    "UPDATE actions SET seq = -1 WHERE run_id = :r AND seq = 1",
    "UPDATE actions SET seq = 1 WHERE run_id = :r AND seq = 3",
    "UPDATE actions SET seq = 3 WHERE run_id = :r AND seq = -1",
)
SWAP_ENTRIES = (
    "UPDATE journal SET n = -1 WHERE run_id = :r AND n = 2",
    "UPDATE journal SET n = 2 WHERE run_id = :r AND n = 3",
    "UPDATE journal SET n = 3 WHERE run_id = :r AND n = -1",
)
TAMPERING: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # name: (statements, fragments the problems must contain; {r} is the run id)
    "edit-args": (
        ("""UPDATE actions SET args = '{"item":"forged"}' WHERE run_id = :r AND seq = 2""",),
        ("actions row {r}/2: args was changed",),
    ),
    "edit-result": (
        ("""UPDATE actions SET result = '{"id":"o-x"}' WHERE run_id = :r AND seq = 3""",),
        ("actions row {r}/3: result was changed",),
    ),
    "edit-state": (
        ("UPDATE actions SET state = 'compensated' WHERE run_id = :r AND seq = 1",),
        ("actions row {r}/1: state was changed",),
    ),
    "edit-external-id": (
        ("UPDATE external_ids SET value = 'o-forged' WHERE run_id = :r AND seq = 1",),
        ("external_ids row {r}/1/order_id: value was changed",),
    ),
    "delete-action": (
        ("DELETE FROM actions WHERE run_id = :r AND seq = 2",),
        ("actions row {r}/2 was deleted",),
    ),
    "delete-last-entry": (
        (f"DELETE FROM journal WHERE run_id = :r AND n = {LAST_ENTRY}",),
        ("runs row {r}: status was changed",),
    ),
    "delete-middle-entry": (
        ("DELETE FROM journal WHERE run_id = :r AND n = 3",),
        ("journal entry 3 is missing", "journal entry 4 does not follow"),
    ),
    "edit-entry": (
        ("UPDATE journal SET kind = 'action.fail' WHERE run_id = :r AND n = 3",),
        ("journal entry 3 (action.fail) was edited",),
    ),
    "reorder-actions": (
        SWAP_ACTIONS,
        ("actions row {r}/1: args was changed", "actions row {r}/3: args was changed"),
    ),
    "reorder-entries": (
        SWAP_ENTRIES,
        ("journal entry 2 does not follow", "journal entry 3 does not follow"),
    ),
    "forge-row": (
        ("INSERT INTO external_ids (run_id, seq, name, value) VALUES (:r, 2, 'ticket', 't-1')",),
        ("external_ids row {r}/2/ticket is not in the journal",),
    ),
}


def test_tampering_with_the_stored_log_is_detected(guard: Guard, store_url: str) -> None:
    """Each kind of tampering on a run of its own, all in one store, next to an untouched run."""
    runs = {case: completed_run(guard) for case in TAMPERING}
    untouched = completed_run(guard)
    for run_id in runs.values():
        assert_verifies(guard, run_id)
    for case, (statements, _) in TAMPERING.items():
        tamper(store_url, runs[case], *statements)

    missed: dict[str, Any] = {}
    for case, (_, expected) in TAMPERING.items():
        run_id = runs[case]
        verification = guard.verify(run_id)
        wanted = [f.format(r=run_id) for f in expected]
        if verification.ok or not all(any(w in p for p in verification.problems) for w in wanted):
            missed[case] = (wanted, verification.problems)
        guard.log(run_id)  # a tampered log is still readable for the investigation
    assert missed == {}
    assert_verifies(guard, untouched)  # other runs are unaffected


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE actions SET error = 'card declined' WHERE run_id = :r AND seq = 1",
        "UPDATE runs SET decided_by = 'mallory', decision_note = 'approved' WHERE id = :r",
    ],
    ids=["action-error", "run-decided-by"],
)
def test_forging_a_column_guardrail_never_wrote_is_detected(
    guard: Guard, store_url: str, statement: str
) -> None:
    run_id = completed_run(guard)
    tamper(store_url, run_id, statement)
    assert not guard.verify(run_id).ok
