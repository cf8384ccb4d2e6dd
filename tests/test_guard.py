"""The guarded call, halt and compensation, asserted on the stored log."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from guardrail import Guard, Retry, Review, RunHalted, RunStateError
from guardrail.testing import ScriptedTool

FAST = Retry(attempts=3, wait_initial=0)


class CarrierDown(RuntimeError):
    """The carrier refused the shipment: nothing was shipped (declared ``not_done``)."""


class World:
    """Side effects the tools make, and undo counts, outside the guard's store."""

    def __init__(self) -> None:
        self.orders: dict[str, str] = {}
        self.undone: list[str] = []
        self.emails: list[str] = []
        self.calls: dict[str, int] = {}

    def count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1


def shop(guard: Guard, world: World, *, undo_script: list[Any] | None = None) -> dict[str, Any]:
    """Declare a small shop's tools on ``guard``."""
    cancel = ScriptedTool(undo_script or [None], name="cancel_order")

    def cancel_order(external_ids: dict[str, str]) -> None:
        cancel(order_id=external_ids["order_id"])
        world.orders.pop(external_ids["order_id"])
        world.undone.append(external_ids["order_id"])

    @guard.tool(
        effect="reversible",
        undo=cancel_order,
        undo_retry=FAST,
        external_ids={"order_id": "result.id"},
    )
    def create_order(item: str) -> dict[str, str]:
        world.count("create_order")
        order_id = f"o-{len(world.orders) + len(world.undone) + 1}"
        world.orders[order_id] = item
        return {"id": order_id, "item": item}

    @guard.tool(effect="irreversible", review=Review(kind="correct", owner="support"))
    def send_email(to: str, body: str) -> str:
        world.count("send_email")
        world.emails.append(to)
        return "sent"

    @guard.tool(effect="read_only")
    def lookup(item: str) -> int:
        world.count("lookup")
        return 3

    @guard.tool(effect="reversible", undo=lambda: None, not_done=[CarrierDown])
    def ship(order_id: str, fail: bool = False) -> str:
        world.count("ship")
        if fail:
            raise CarrierDown("carrier is down")
        return "shipped"

    return {
        "create_order": create_order,
        "send_email": send_email,
        "lookup": lookup,
        "ship": ship,
        "cancel": cancel,
    }


def test_success_records_every_call_and_completes(guard: Guard) -> None:
    world = World()
    t = shop(guard, world)
    with guard.run(agent="shop") as run:
        order = t["create_order"]("book")
        assert t["lookup"](item="book") == 3
        t["ship"](order["id"])
    log = guard.log(run.id)
    assert log.run.status == "completed"
    assert [(a.seq, a.tool, a.state) for a in log.actions] == [
        (1, "create_order", "succeeded"),
        (2, "lookup", "succeeded"),
        (3, "ship", "succeeded"),
    ]
    first = log.action(1)
    assert first.args == {"item": "book"}
    assert first.result == {"id": "o-1", "item": "book"}
    assert first.external_ids == {"order_id": "o-1"}
    assert [a.tool for a in guard.find("o-1")] == ["create_order"]
    assert guard.find("o-1", name="other") == []
    assert guard.verify(run.id).ok


def test_failure_compensates_newest_first_and_lists_irreversible(guard: Guard) -> None:
    world = World()
    t = shop(guard, world)
    with pytest.raises(RunHalted) as halted, guard.run(agent="shop") as run:
        a = t["create_order"]("book")
        b = t["create_order"]("pen")
        t["send_email"]("ann@example.com", "thanks")
        t["lookup"]("book")
        try:
            t["ship"](a["id"], fail=True)
        except Exception:  # an agent's generic handler must not swallow the halt
            pytest.fail("RunHalted was caught by `except Exception`")
        pytest.fail(f"the agent went on after the halt with {b}")
    assert halted.value.run_id == run.id
    assert halted.value.status == "pending_review"
    # the tool's exception is not chained (its text may hold secrets); its redacted text is
    assert halted.value.__cause__ is None and "CarrierDown: carrier is down" in str(halted.value)
    assert world.orders == {}
    assert world.undone == ["o-2", "o-1"]  # newest first
    log = guard.log(run.id)
    assert log.run.status == "pending_review"
    assert [a.state for a in log.actions] == [
        "compensated",
        "compensated",
        "succeeded",
        "succeeded",
        "failed",
    ]
    comps = sorted(log.compensations, key=lambda c: c.started_at)
    assert [c.seq for c in comps] == [2, 1]
    assert all(c.state == "succeeded" and c.attempts == 1 for c in comps)
    items = log.review_items
    assert [(i.seq, i.reason, i.kind, i.owner) for i in items] == [
        (3, "irreversible", "correct", "support")
    ]
    assert halted.value.review_items == (items[0].id,)
    assert "carrier is down" in (log.run.reason or "")
    assert guard.verify(run.id).ok


def test_compensation_that_fails_twice_then_succeeds(guard: Guard) -> None:
    world = World()
    t = shop(guard, world, undo_script=[TimeoutError("slow"), TimeoutError("slow"), None])
    with pytest.raises(RunHalted), guard.run() as run:
        t["create_order"]("book")
        t["ship"]("o-1", fail=True)
    log = guard.log(run.id)
    assert log.action(1).state == "compensated"
    assert log.compensations[0].attempts == 3
    assert log.compensations[0].state == "succeeded"
    assert len(t["cancel"].calls) == 3
    assert log.review_items == []
    assert log.run.status == "pending_review"


def test_compensation_that_always_fails_becomes_a_review_item(guard: Guard) -> None:
    world = World()
    t = shop(guard, world, undo_script=[ConnectionError("refund API down")])
    with pytest.raises(RunHalted), guard.run() as run:
        t["create_order"]("book")
        t["ship"]("o-1", fail=True)
    log = guard.log(run.id)
    assert log.run.status == "pending_review"
    assert log.action(1).state == "compensation_failed"  # never claimed as rolled back
    assert log.compensations[0].state == "failed"
    assert log.compensations[0].attempts == 3
    assert "refund API down" in (log.compensations[0].error or "")
    [item] = log.review_items
    assert (item.seq, item.reason, item.status) == (1, "compensation_failed", "open")
    assert world.orders == {"o-1": "book"}


def test_resume_replays_without_running_done_calls_again(guard: Guard) -> None:
    world = World()
    guard.policy(
        "ship_held",
        effect="reversible",
        undo=lambda: None,
        on_failure="hold",
        not_done=[CarrierDown],
    )
    fail = {"now": True}

    @guard.tool(name="ship_held")
    def ship_held(order_id: str) -> str:
        world.count("ship")
        if fail["now"]:
            raise CarrierDown("carrier is down")
        return "shipped"

    t = shop(guard, world)

    def agent() -> None:
        order = t["create_order"]("book")
        t["send_email"]("ann@example.com", "order placed")
        ship_held(order["id"])

    with pytest.raises(RunHalted) as halted, guard.run(agent="shop") as run:
        agent()
    assert halted.value.status == "pending_review"
    log = guard.log(run.id)
    assert [i.reason for i in log.review_items] == ["held"]
    assert world.orders == {"o-1": "book"}  # on hold: nothing undone

    with pytest.raises(RunStateError):
        guard.run(run_id=run.id).__enter__()  # not resumed yet

    decision = guard.resume(run.id, by="ann", note="carrier is back")
    assert decision.landed and decision.status == "running"
    [held] = guard.log(run.id).review_items  # the resume is what the held item asked for
    assert (held.status, held.resolution, held.resolved_by) == ("resolved", "resumed", "ann")
    fail["now"] = False
    with guard.run(run_id=run.id):
        agent()
    assert world.calls == {"create_order": 1, "send_email": 1, "ship": 2}
    log = guard.log(run.id)
    assert log.run.status == "completed"
    assert log.run.decided_by == "ann"
    assert [(a.tool, a.state) for a in log.actions] == [
        ("create_order", "succeeded"),
        ("send_email", "succeeded"),
        ("ship_held", "failed"),
        ("ship_held", "succeeded"),
    ]
    assert guard.verify(run.id).ok


def test_identical_calls_in_one_run_both_run(guard: Guard) -> None:
    world = World()
    t = shop(guard, world)
    with guard.run():
        t["create_order"]("book")
        t["create_order"]("book")
    assert world.calls["create_order"] == 2


def test_call_id_is_the_idempotency_key(guard: Guard) -> None:
    world = World()
    shop(guard, world)
    with guard.run() as run:
        first = run.call("create_order", {"item": "a"}, call_id="call-1")
        again = run.call("create_order", {"item": "a"}, call_id="call-1")
        other = run.call("create_order", {"item": "a"}, call_id="call-2")
    assert first == again != other
    assert world.calls["create_order"] == 2


def test_retry_only_what_is_safe(guard: Guard) -> None:
    flaky_read = ScriptedTool([TimeoutError(), TimeoutError(), 7], name="read")
    flaky_write = ScriptedTool([TimeoutError(), "ok"], name="write")
    guard.policy("read", effect="read_only", retry=FAST)
    guard.policy("write", effect="irreversible")
    with pytest.raises(RunHalted), guard.run() as run:
        assert run.call("read", {}, fn=flaky_read) == 7
        run.call("write", {}, fn=flaky_write)
    assert len(flaky_read.calls) == 3
    assert len(flaky_write.calls) == 1  # irreversible: never retried by default
    log = guard.log(run.id)
    # a timeout of a write proves nothing: it may have happened, so a person must say
    assert [(a.state, a.attempts) for a in log.actions] == [("succeeded", 3), ("in_doubt", 1)]
    assert [(i.seq, i.reason) for i in log.review_items] == [(2, "in_doubt")]


def test_declared_retry_on_listed_exceptions(guard: Guard) -> None:
    tool = ScriptedTool([TimeoutError(), ValueError("bad"), "ok"], name="charge")
    guard.policy(
        "charge",
        effect="reversible",
        undo=lambda: None,
        retry=Retry(attempts=3, on=(TimeoutError,), wait_initial=0),
    )
    with pytest.raises(RunHalted), guard.run():
        guard.run  # noqa: B018
        from guardrail import current_run

        run = current_run()
        assert run is not None
        run.call("charge", {"amount": 5}, fn=tool)
    assert len(tool.calls) == 2  # retried the timeout, not the ValueError


def test_agent_error_halts_and_compensates(guard: Guard) -> None:
    world = World()
    t = shop(guard, world)
    with pytest.raises(KeyError), guard.run() as run:
        t["create_order"]("book")
        raise KeyError("the agent itself broke")
    assert guard.log(run.id).run.status == "pending_review"
    assert world.undone == ["o-1"]


def test_redaction_of_declared_fields_and_secrets(guard: Guard) -> None:
    @guard.tool(effect="irreversible", redact=["args.body", "result.token"])
    def send(to: str, body: str, api_key: str, header: str) -> dict[str, str]:
        return {"token": "t-123", "status": "ok"}

    with guard.run() as run:
        send("a@b.c", "private text", "k-1", "Bearer abcdefghijklmnopqrstuvwxyz")
        send("a@b.c", "other private text", "k-1", "Bearer abcdefghijklmnopqrstuvwxyz")
    actions = guard.log(run.id).actions
    assert actions[0].args == {
        "to": "a@b.c",
        "body": "[REDACTED]",
        "api_key": "[REDACTED]",
        "header": "Bearer [REDACTED]",
    }
    assert actions[0].result == {"token": "[REDACTED]", "status": "ok"}
    assert actions[0].args_hash != actions[1].args_hash  # hashes still tell them apart
    rows = guard.store.entries(run.id)
    assert not any("private text" in e.body or "t-123" in e.body for e in rows)


def test_async_tools_and_async_run(guard: Guard) -> None:
    world = World()
    undone: list[str] = []

    async def cancel(external_ids: dict[str, str]) -> None:
        await asyncio.sleep(0)
        undone.append(external_ids["order_id"])

    @guard.tool(effect="reversible", undo=cancel, external_ids={"order_id": "result.id"})
    async def create(item: str) -> dict[str, str]:
        await asyncio.sleep(0)
        world.count("create")
        return {"id": f"a-{world.calls['create']}"}

    @guard.tool(effect="reversible", undo=lambda: None, not_done=[CarrierDown])
    async def fail() -> None:
        raise CarrierDown("boom")

    async def agent() -> str:
        async with guard.run(agent="async") as run:
            await asyncio.gather(create("x"), create("y"))
            await fail()
        return run.id

    with pytest.raises(RunHalted):
        asyncio.run(agent())
    [run] = guard.runs(agent="async")
    assert run.status == "pending_review"
    assert sorted(undone) == ["a-1", "a-2"]
    log = guard.log(run.id)
    assert [a.state for a in log.actions] == ["compensated", "compensated", "failed"]


def test_async_undo_during_sync_abort(guard: Guard) -> None:
    undone: list[str] = []

    async def cancel(args: dict[str, Any]) -> None:
        undone.append(args["item"])

    guard.policy("create", effect="reversible", undo=cancel, on_failure="hold")
    with pytest.raises(RunHalted), guard.run() as run:
        run.call("create", {"item": "a"}, fn=lambda item: item)
        run.call("create", {"item": "b"}, fn=ScriptedTool([RuntimeError("x")]))
    assert guard.abort(run.id, by="bob").landed
    assert undone == ["a"]
    assert guard.log(run.id).run.status == "aborted"


def test_spans_follow_genai_conventions(guard: Guard) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    from guardrail import telemetry

    original = telemetry._tracer
    telemetry._tracer = provider.get_tracer("guardrail")
    try:
        world = World()
        t = shop(guard, world)
        with pytest.raises(RunHalted), guard.run() as run:
            t["create_order"]("secret-item")
            t["ship"]("o-1", fail=True)
    finally:
        telemetry._tracer = original
    spans = {s.name: s for s in exporter.get_finished_spans()}
    tool = spans["execute_tool create_order"]
    assert tool.attributes is not None
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "create_order"
    assert tool.attributes["guardrail.run.id"] == run.id
    assert tool.attributes["guardrail.external_ids"] == "order_id=o-1"
    failed = spans["execute_tool ship"]
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "CarrierDown"
    assert "compensate create_order" in spans
    assert "guardrail pending_review" in spans
    everything = repr([dict(s.attributes or {}) for s in exporter.get_finished_spans()])
    assert "secret-item" not in everything  # no arguments in spans
    action = guard.log(run.id).action(1)
    assert action.trace_id == format(tool.context.trace_id, "032x")
    assert trace.get_tracer_provider() is not provider


def test_on_halt_hook(store_url: str) -> None:
    seen: list[tuple[str, str]] = []
    with Guard(store=store_url, on_halt=lambda r: seen.append((r.id, r.status))) as guard:
        world = World()
        t = shop(guard, world)
        with pytest.raises(RunHalted), guard.run() as run:
            t["ship"]("o-1", fail=True)
    assert seen == [(run.id, "pending_review")]


def test_runs_filters(guard: Guard) -> None:
    world = World()
    t = shop(guard, world)
    with guard.run(agent="a"):
        t["lookup"]("x")
    with pytest.raises(RunHalted), guard.run(agent="b"):
        t["ship"]("o", fail=True)
    assert [r.agent for r in guard.runs(status="pending_review")] == ["b"]
    assert [r.agent for r in guard.runs(agent="a")] == ["a"]
    assert len(guard.runs()) == 2


def test_two_parallel_failures_halt_once_without_waiting_for_each_other(guard: Guard) -> None:
    guard.policy(
        "flaky",
        effect="reversible",
        undo=lambda args: None,
        retry={"attempts": 1},
        not_done=[CarrierDown],
    )
    guard.policy("make", effect="reversible", undo=lambda args: undone.append(args["n"]))
    undone: list[int] = []

    async def scenario() -> list[BaseException]:
        barrier = asyncio.Barrier(2)

        async def flaky(n: int) -> None:
            await barrier.wait()  # both are running when both fail
            raise CarrierDown(n)

        async with guard.run() as run:
            await run.acall("make", {"n": 0}, fn=lambda n: n)
            results = await asyncio.gather(
                run.acall("flaky", {"n": 1}, fn=flaky),
                run.acall("flaky", {"n": 2}, fn=flaky),
                return_exceptions=True,
            )
            runs.append(run.id)
            raise results[0]

    runs: list[str] = []
    with pytest.raises(RunHalted):
        asyncio.run(asyncio.wait_for(scenario(), timeout=30))  # the old code waited 60 s
    log = guard.log(runs[0])
    assert log.run.status == "pending_review"
    assert [a.state for a in log.actions] == ["compensated", "failed", "failed"]
    assert undone == [0]  # compensated once, by one halt
    assert len(log.compensations) == 1
