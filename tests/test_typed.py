"""Typed values through the store (results, snapshots, external ids), the ``capture`` hook, a
refused call kept in the log, and a rejection that is not asked again."""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
from typing import Any

import pytest
from pydantic import BaseModel

from guardrail import Approval, CallRefused, CallRejected, Guard, ResultWarning, RunHalted


class Status(enum.Enum):
    OPEN = "open"
    PAID = "paid"


class Order(BaseModel):
    id: str
    placed: dt.datetime
    status: Status
    tags: set[str]


class Lossy(BaseModel):
    value: float

    def __eq__(self, other: object) -> bool:
        return False  # never equal to what its JSON gives back

    __hash__ = None  # type: ignore[assignment]


PLACED = dt.datetime(2026, 12, 1, 9, 30, tzinfo=dt.UTC)


def _fail() -> None:
    raise RuntimeError("carrier down")


def test_a_replayed_result_comes_back_as_the_declared_type(guard: Guard) -> None:
    made: list[str] = []
    ship_ok = {"ok": False}

    @guard.tool(effect="irreversible")
    def place(item: str) -> Order:
        made.append(item)
        return Order(id=f"o-{item}", placed=PLACED, status=Status.OPEN, tags={"a", "b"})

    @guard.tool(effect="irreversible")
    def stamp(item: str) -> tuple[dt.datetime, set[int]]:
        return PLACED, {1, 2}

    @guard.tool(effect="read_only")
    def ship() -> str:
        if not ship_ok["ok"]:
            _fail()
        return "shipped"

    def agent() -> tuple[Order, tuple[dt.datetime, set[int]]]:
        order = place("book")
        when = stamp("book")
        ship()
        return order, when

    with pytest.raises(RunHalted), guard.run() as run:
        agent()
    guard.resume(run.id, by="ada")
    ship_ok["ok"] = True
    with guard.run(run_id=run.id):
        order, when = agent()
    assert made == ["book"]
    assert isinstance(order, Order) and order.placed == PLACED and order.status is Status.PAID.OPEN
    assert order.tags == {"a", "b"}
    assert when == (PLACED, {1, 2})


def test_a_result_that_does_not_come_back_equal_is_caught_when_recorded(guard: Guard) -> None:
    @guard.tool(effect="read_only")
    def measure() -> Lossy:
        return Lossy(value=1.0)

    with pytest.warns(ResultWarning, match="does not come back"), guard.run() as run:
        measure()
    action = guard.log(run.id).actions[0]
    assert action.result_note == "not_json"


def test_external_ids_keep_their_json_types_and_lists_are_searchable(guard: Guard) -> None:
    @guard.tool(
        effect="irreversible",
        external_ids={"txn": "result.txn", "marked": "args.ids", "total": "result.total"},
    )
    def mark_read(ids: list[int]) -> dict[str, Any]:
        return {"txn": 40021, "total": 2.5}

    with guard.run() as run:
        mark_read([7, 8])
    action = guard.log(run.id).actions[0]
    assert action.external_ids == {"txn": 40021, "marked": [7, 8], "total": 2.5}
    assert [a.seq for a in guard.find("40021")] == [1]
    assert [a.seq for a in guard.find("8", name="marked.1")] == [1]
    assert guard.verify(run.id).ok


def test_capture_reads_ids_the_result_does_not_carry(guard: Guard) -> None:
    calendar: dict[str, Any] = {"events": [], "invites": []}
    undone: list[Any] = []

    def cancel(external_ids: dict[str, Any]) -> None:
        undone.append(external_ids)

    def find_ids(args: dict[str, Any], result: str) -> dict[str, Any]:
        event = calendar["events"][-1]
        return {"event_id": event["id"], "invite_emails": calendar["invites"]}

    @guard.tool(effect="reversible", undo=cancel, capture=find_ids)
    def book(title: str) -> str:
        calendar["events"].append({"id": 91, "title": title})
        calendar["invites"].extend(["m-1", "m-2"])
        return "booked"  # the id is not in the result

    @guard.tool(effect="read_only")
    def fail() -> None:
        _fail()

    with pytest.raises(RunHalted), guard.run() as run:
        book("standup")
        fail()
    assert undone == [{"event_id": 91, "invite_emails": ["m-1", "m-2"]}]
    assert [a.seq for a in guard.find("m-2")] == [1]
    assert guard.log(run.id).actions[0].error is None


def test_a_failing_capture_leaves_a_note_and_the_call_stands(guard: Guard) -> None:
    booked: list[str] = []

    def broken(result: str) -> dict[str, Any]:
        raise LookupError("calendar API timed out")

    @guard.tool(effect="reversible", undo=lambda args: booked.remove(args["title"]), capture=broken)
    def book(title: str) -> str:
        booked.append(title)
        return "booked"

    with guard.run() as run:
        assert book("standup") == "booked"
    action = guard.log(run.id).actions[0]
    assert action.state == "succeeded" and booked == ["standup"]
    assert "capture hook failed" in (action.error or "")
    assert "calendar API timed out" in (action.error or "")


def test_an_async_capture_hook(guard: Guard) -> None:
    async def find_ids(result: dict[str, Any]) -> dict[str, Any]:
        return {"order": result["n"] * 10}

    @guard.tool(effect="irreversible", capture=find_ids)
    async def place() -> dict[str, Any]:
        return {"n": 4}

    async def agent() -> str:
        async with guard.run() as run:
            await place()
        return run.id

    run_id = asyncio.run(agent())
    assert guard.log(run_id).actions[0].external_ids == {"order": 40}


def test_a_typed_snapshot_reaches_the_undo_as_its_type(guard: Guard) -> None:
    state = {"due": PLACED}
    seen: list[Any] = []

    def before(days: int) -> dict[str, dt.datetime]:
        return {"due": state["due"]}

    def restore(snapshot: dict[str, dt.datetime]) -> None:
        seen.append(snapshot["due"])
        state["due"] = snapshot["due"]

    @guard.tool(effect="reversible", undo=restore, snapshot=before)
    def postpone(days: int) -> None:
        state["due"] = state["due"] + dt.timedelta(days=days)

    @guard.tool(effect="read_only")
    def fail() -> None:
        _fail()

    with pytest.raises(RunHalted), guard.run():
        postpone(3)
        fail()
    assert seen == [PLACED] and state["due"] == PLACED


def test_a_failed_snapshot_is_kept_in_the_log_as_a_refused_call(guard: Guard) -> None:
    ran: list[int] = []

    def before(args: dict[str, Any]) -> dict[str, Any]:
        raise PermissionError("cannot read the file")

    @guard.tool(effect="reversible", undo=lambda: None, snapshot=before)
    def overwrite(n: int) -> None:
        ran.append(n)

    with guard.run() as run, pytest.raises(CallRefused, match="cannot read the file"):
        overwrite(1)
    assert ran == []
    action = guard.log(run.id).actions[0]
    assert (action.tool, action.state, action.attempts) == ("overwrite", "refused", 0)
    assert "cannot read the file" in (action.error or "")
    assert guard.require_run(run.id).status == "completed"
    assert guard.verify(run.id).ok


def test_a_rejected_call_is_not_asked_again_under_a_new_call_id(guard: Guard) -> None:
    refunds: list[int] = []

    def refund(amount: int) -> str:
        refunds.append(amount)
        return "ok"

    guard.policy("refund", effect="irreversible", approval=Approval(when="args.amount > 100"))
    with pytest.raises(RunHalted), guard.run() as run:
        run.call("refund", {"amount": 500}, fn=refund, call_id="turn-1")
    item = guard.store.review_items(run_id=run.id, status="open")[0]
    guard.reject(item.id, by="ada", reason="too much")
    guard.resume(run.id, by="ada")
    with guard.run(run_id=run.id) as again:
        with pytest.raises(CallRejected, match="without asking"):
            again.call("refund", {"amount": 500}, fn=refund, call_id="turn-2")
        with pytest.raises(RunHalted):  # other arguments are a new question
            again.call("refund", {"amount": 400}, fn=refund, call_id="turn-3")
    approvals = [i for i in guard.store.review_items(run_id=run.id) if i.reason == "approval"]
    assert len(approvals) == 2 and refunds == []


def test_compensations_carry_the_order_they_ran_in(guard: Guard) -> None:
    undone: list[int] = []

    @guard.tool(effect="reversible", undo=lambda args: undone.append(args["n"]))
    def step(n: int) -> int:
        return n

    @guard.tool(effect="read_only")
    def fail() -> None:
        _fail()

    with pytest.raises(RunHalted), guard.run() as run:
        for n in (1, 2, 3):
            step(n)
        fail()
    log = guard.log(run.id)
    assert undone == [3, 2, 1]
    assert [(c.position, c.seq) for c in log.compensations] == [(1, 3), (2, 2), (3, 1)]
    assert guard.verify(run.id).ok
