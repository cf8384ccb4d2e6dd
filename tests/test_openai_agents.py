"""The OpenAI Agents SDK adapter, end to end with real SDK objects: ``Agent``, ``Runner``,
``FunctionTool``s made by ``@function_tool`` and the SDK's own scripted model (no network)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, FunctionTool, RunConfig, Runner, RunState, function_tool
from agents.exceptions import UserError
from agents.testing import ScriptedModel, assistant_message, function_call

from guardrail import Approval, Guard, Review, RunHalted, RunStateError, UndoTool
from guardrail.adapters.openai_agents import apply_decisions, wrap_tool, wrap_tools

NO_TRACES = RunConfig(tracing_disabled=True)


class CarrierUnavailable(ConnectionError):
    """The carrier answered 503: it refused the request, nothing was booked (``not_done``)."""


class Broke(ValueError):
    """A tool that refused before doing anything (declared ``not_done``)."""


class Shop:
    """A fake shop: every side effect and undo lands in ``events``, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.fail_shipping = True
        self.ids = 1000

    def new_id(self, prefix: str) -> str:
        self.ids += 1
        return f"{prefix}_{self.ids}"

    def tools(self) -> dict[str, Any]:
        shop = self

        @function_tool
        def lookup(item: str) -> dict[str, Any]:
            """Look an item up in the catalogue."""
            shop.events.append(("lookup", item))
            return {"item": item, "price": 12}

        @function_tool
        def create_order(item: str, quantity: int) -> dict[str, Any]:
            """Create an order (sync tool: the SDK runs it in a worker thread)."""
            order = shop.new_id("ord")
            shop.events.append(("create_order", order))
            return {"id": order, "item": item, "quantity": quantity}

        @function_tool(name_override="cancel_order")
        def cancel(order_id: str) -> str:
            """Cancel an order."""
            shop.events.append(("cancel_order", order_id))
            return "cancelled"

        @function_tool
        async def charge_payment(amount: int) -> dict[str, Any]:
            """Charge the card (async tool)."""
            payment = shop.new_id("pay")
            shop.events.append(("charge_payment", payment))
            return {"id": payment, "amount": amount}

        @function_tool
        async def send_email(to: str, body: str) -> str:
            """Send an email."""
            shop.events.append(("send_email", to))
            return "sent"

        @function_tool
        async def create_shipment(order_id: str) -> dict[str, Any]:
            """Book the carrier."""
            shop.events.append(("create_shipment", order_id))
            if shop.fail_shipping:
                raise CarrierUnavailable("carrier API returned 503 Service Unavailable")
            return {"id": shop.new_id("shp")}

        return {
            t.name: t
            for t in (lookup, create_order, cancel, charge_payment, send_email, create_shipment)
        }

    def declare(self, guard: Guard) -> None:
        guard.policy("lookup", effect="read_only")
        guard.policy(
            "create_order",
            effect="reversible",
            undo=UndoTool(tool="cancel_order", args={"order_id": "result.id"}),
            external_ids={"order_id": "result.id"},
        )
        guard.policy(
            "charge_payment",
            effect="reversible",
            undo=lambda result: self.events.append(("refund", result["id"])),
            approval=Approval(when="args.amount > 1000"),
        )
        guard.policy(
            "send_email", effect="irreversible", review=Review(kind="correct", owner="support")
        )
        guard.policy(
            "create_shipment",
            effect="reversible",
            undo=lambda result: self.events.append(("cancel_shipment", result["id"])),
            not_done=[CarrierUnavailable],
        )


@pytest.fixture
def shop(guard: Guard) -> Shop:
    shop = Shop()
    shop.declare(guard)
    return shop


def agent_for(guard: Guard, shop: Shop, steps: list[Any]) -> tuple[Agent[Any], ScriptedModel]:
    model = ScriptedModel(steps)
    tools = wrap_tools(guard, list(shop.tools().values()))
    return Agent(name="shop", instructions="Sell things.", model=model, tools=tools), model


def call(name: str, call_id: str, **args: Any) -> Any:
    return function_call(name, args, call_id=call_id)


def outputs(model: ScriptedModel) -> dict[str, str]:
    """What the model was told each call returned, by call id, in its latest request."""
    last = model.last_call
    assert last is not None and isinstance(last.input, list)
    return {
        item["call_id"]: item["output"]
        for item in last.input
        if isinstance(item, dict) and item.get("type") == "function_call_output"
    }


CHECKOUT = [
    [call("lookup", "c1", item="book")],
    [call("create_order", "c2", item="book", quantity=1)],
    [call("charge_payment", "c3", amount=12), call("send_email", "c4", to="a@x", body="thanks")],
    [call("create_shipment", "c5", order_id="ord_1001")],
    [assistant_message("Your book is on its way.")],
]


# -- the wrapped tools look exactly like the originals ---------------------------------------


def test_names_descriptions_and_schemas_are_kept(guard: Guard) -> None:
    @function_tool(strict_mode=False, name_override="find_items")
    def search(query: str, limit: int = 5) -> list[str]:
        """Search the catalogue.

        Args:
            query: what to look for.
            limit: at most this many.
        """
        return [query] * limit

    tools = [*Shop().tools().values(), search]
    for original, wrapped in zip(tools, wrap_tools(guard, tools), strict=True):
        assert wrapped is not original
        assert wrapped.name == original.name
        assert wrapped.description == original.description
        assert wrapped.params_json_schema == original.params_json_schema
        assert wrapped.strict_json_schema == original.strict_json_schema
    wrapped_search = wrap_tool(guard, search)
    assert wrapped_search.name == "find_items"
    assert wrapped_search.strict_json_schema is False
    assert "limit" not in wrapped_search.params_json_schema.get("required", [])
    assert wrap_tool(guard, wrapped_search) is wrapped_search  # never guarded twice


def test_hosted_tools_are_refused(guard: Guard) -> None:
    from agents import WebSearchTool

    with pytest.raises(TypeError, match="cannot be guarded"):
        wrap_tools(guard, [WebSearchTool()])  # type: ignore[list-item]


# -- calls ----------------------------------------------------------------------------------


@pytest.mark.parametrize("runner", ["run_sync", "run"])
def test_sync_and_async_tools_are_recorded_with_call_ids(
    guard: Guard, shop: Shop, runner: str
) -> None:
    shop.fail_shipping = False
    agent, model = agent_for(guard, shop, CHECKOUT)

    with guard.run(agent="shop") as run:
        if runner == "run_sync":
            result = Runner.run_sync(agent, "buy a book", run_config=NO_TRACES)
        else:
            result = asyncio.run(Runner.run(agent, "buy a book", run_config=NO_TRACES))

    assert result.final_output == "Your book is on its way."
    log = guard.log(run.id)
    assert log.run.status == "completed"
    assert [(a.seq, a.tool, a.call_id, a.state) for a in log.actions] == [
        (1, "lookup", "c1", "succeeded"),
        (2, "create_order", "c2", "succeeded"),
        (3, "charge_payment", "c3", "succeeded"),
        (4, "send_email", "c4", "succeeded"),
        (5, "create_shipment", "c5", "succeeded"),
    ]
    assert log.action(2).result == {"id": "ord_1001", "item": "book", "quantity": 1}
    assert log.action(2).external_ids == {"order_id": "ord_1001"}
    assert outputs(model)["c5"] == str({"id": "shp_1003"})  # the model saw the results
    model.assert_complete()


def test_a_tool_called_outside_a_run_fails_the_agent_run(guard: Guard, shop: Shop) -> None:
    agent, _ = agent_for(guard, shop, CHECKOUT)
    with pytest.raises(UserError, match=r"outside a run of this guard"):
        Runner.run_sync(agent, "buy", run_config=NO_TRACES)
    assert shop.events == []


def test_arguments_the_tool_refuses_are_not_a_failure(guard: Guard, shop: Shop) -> None:
    steps = [
        [call("create_order", "b1", item="book", quantity="many")],  # not an integer
        [call("create_order", "b2", item="book")],  # quantity missing
        [assistant_message("Sorry.")],
    ]
    agent, model = agent_for(guard, shop, steps)
    with guard.run(agent="shop") as run:
        result = Runner.run_sync(agent, "buy", run_config=NO_TRACES)
    assert result.final_output == "Sorry."
    assert shop.events == []  # nothing ran
    assert guard.log(run.id).actions == []  # nothing recorded, the run went on
    assert guard.log(run.id).run.status == "completed"
    told = outputs(model)
    assert told["b2"] == "An error occurred while running the tool. Please try again."


def test_a_hand_made_function_tool_is_guarded_too(guard: Guard) -> None:
    seen: list[str] = []

    async def on_invoke(ctx: Any, arguments: str) -> str:
        seen.append(arguments)
        return "pong"

    ping = FunctionTool(
        name="ping",
        description="Ping a host.",
        params_json_schema={
            "type": "object",
            "properties": {"host": {"type": "string"}},
            "required": ["host"],
            "additionalProperties": False,
        },
        on_invoke_tool=on_invoke,
    )
    guard.policy("ping", effect="read_only")
    model = ScriptedModel([[call("ping", "h1", host="db")], [assistant_message("up")]])
    agent = Agent(name="ops", model=model, tools=wrap_tools(guard, [ping]))
    with guard.run(agent="ops") as run:
        Runner.run_sync(agent, "is db up?", run_config=NO_TRACES)
    assert seen == ['{"host":"db"}']
    (action,) = guard.log(run.id).actions
    assert (action.tool, action.call_id, action.args, action.result) == (
        "ping",
        "h1",
        {"host": "db"},
        "pong",
    )


# -- a failure halts the agent run ----------------------------------------------------------


@pytest.mark.parametrize("runner", ["run_sync", "run", "run_streamed"])
def test_a_failing_tool_halts_the_run_and_compensates_newest_first(
    guard: Guard, shop: Shop, runner: str
) -> None:
    steps = [
        *CHECKOUT[:4],
        [call("lookup", "c6", item="pen")],  # must never run
        [assistant_message("done")],
    ]
    agent, model = agent_for(guard, shop, steps)

    async def streamed() -> None:
        result = Runner.run_streamed(agent, "buy a book", run_config=NO_TRACES)
        async for _ in result.stream_events():
            pass

    with pytest.raises(RunHalted) as halted, guard.run(agent="shop") as run:
        if runner == "run_sync":
            Runner.run_sync(agent, "buy a book", run_config=NO_TRACES)
        elif runner == "run":
            asyncio.run(Runner.run(agent, "buy a book", run_config=NO_TRACES))
        else:
            asyncio.run(streamed())

    assert halted.value.run_id == run.id
    assert halted.value.status == "pending_review"
    assert halted.value.tool == "create_shipment"
    assert model.remaining_steps == 2  # the model was not called again
    assert shop.events == [
        ("lookup", "book"),
        ("create_order", "ord_1001"),
        ("charge_payment", "pay_1002"),
        ("send_email", "a@x"),
        ("create_shipment", "ord_1001"),
        ("refund", "pay_1002"),  # newest first
        ("cancel_order", "ord_1001"),  # its undo is the SDK tool cancel_order, by name
    ]
    log = guard.log(run.id)
    assert log.run.status == "pending_review"
    assert [(a.tool, a.state) for a in log.actions] == [
        ("lookup", "succeeded"),
        ("create_order", "compensated"),
        ("charge_payment", "compensated"),
        ("send_email", "succeeded"),
        ("create_shipment", "failed"),
    ]
    # the guard saw the tool's own exception, not the SDK's "An error occurred" text
    assert log.action(5).error == "CarrierUnavailable: carrier API returned 503 Service Unavailable"
    # in the order they ran: newest first
    assert [(c.seq, c.state) for c in log.compensations] == [(3, "succeeded"), (2, "succeeded")]
    assert [(i.seq, i.reason, i.status) for i in log.review_items] == [(4, "irreversible", "open")]
    assert guard.verify(run.id).ok


# -- parallel calls in one model turn -------------------------------------------------------


def test_parallel_calls_are_logged_and_compensated_in_the_order_they_started(
    guard: Guard,
) -> None:
    """Four calls in one turn. book_carrier times out while reserve A is still in flight; the
    halt waits for it, so it is recorded and compensated, not cut off. reserve C starts after the
    failure and is refused, but its RunHalted waits too: raised at once, it would make the SDK
    cancel A and the halting call half-way. The timeout leaves book_carrier in doubt (it may
    have booked): it is not undone but listed for a person."""
    events: list[str] = []
    guard.policy(
        "reserve", effect="reversible", undo=lambda args: events.append(f"release {args['sku']}")
    )
    guard.policy("book_carrier", effect="reversible", undo=lambda args: events.append("unbook"))
    failed = asyncio.Event()

    @function_tool
    async def reserve(sku: str) -> str:
        """Reserve stock."""
        events.append(f"reserve {sku} started")
        if sku == "A":
            await failed.wait()  # still running when book_carrier fails
        events.append(f"reserve {sku} done")
        return sku

    @function_tool
    async def book_carrier(order: str) -> str:
        """Book the carrier."""
        events.append("book_carrier started")
        failed.set()
        raise TimeoutError("carrier timed out")

    model = ScriptedModel(
        [
            [
                call("reserve", "p1", sku="A"),
                call("reserve", "p2", sku="B"),
                call("book_carrier", "p3", order="o1"),
                call("reserve", "p4", sku="C"),  # starts after the failure: refused
            ],
            [assistant_message("done")],
        ]
    )
    agent = Agent(name="stock", model=model, tools=wrap_tools(guard, [reserve, book_carrier]))

    with pytest.raises(RunHalted), guard.run(agent="stock") as run:
        Runner.run_sync(agent, "reserve and ship", run_config=NO_TRACES)

    log = guard.log(run.id)
    assert [(a.seq, a.call_id, a.state) for a in log.actions] == [
        (1, "p1", "compensated"),
        (2, "p2", "compensated"),
        (3, "p3", "in_doubt"),
    ]
    assert [(i.seq, i.reason) for i in log.review_items] == [(3, "in_doubt")]
    assert events == [
        "reserve A started",
        "reserve B started",
        "reserve B done",
        "book_carrier started",
        "reserve A done",  # still in flight when book_carrier failed: the halt waited for it
        "release B",  # then newest first
        "release A",
    ]
    assert [c.seq for c in sorted(log.compensations, key=lambda c: c.started_at)] == [2, 1]
    assert log.run.status == "pending_review"
    assert model.remaining_steps == 1


def test_two_parallel_failures_halt_once_and_record_both(
    guard: Guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two failing siblings each wait in the core for the other to finish until SIBLING_WAIT
    # (60 s) runs out (a core issue, reported); a short wait keeps this test fast.
    monkeypatch.setattr("guardrail.failure.SIBLING_WAIT", 0.3)
    undone: list[str] = []

    def undo_of(name: str) -> Any:
        return lambda args: undone.append(name)

    for name in ("a", "b", "c"):
        guard.policy(name, effect="reversible", undo=undo_of(name), not_done=[Broke])
    arrived: list[str] = []
    both_running = asyncio.Event()

    def make(name: str, fails: bool) -> Any:
        async def tool(x: int) -> int:
            if fails:  # b and c are both in flight before either fails
                arrived.append(name)
                if len(arrived) == 2:
                    both_running.set()
                await both_running.wait()
                raise Broke(f"{name} broke")
            return x

        return function_tool(tool, name_override=name)

    model = ScriptedModel(
        [
            [call("a", "q1", x=1), call("b", "q2", x=2), call("c", "q3", x=3)],
            [assistant_message("done")],
        ]
    )
    tools = wrap_tools(guard, [make("a", False), make("b", True), make("c", True)])
    agent = Agent(name="abc", model=model, tools=tools)

    with pytest.raises(RunHalted) as halted, guard.run(agent="abc") as run:
        Runner.run_sync(agent, "go", run_config=NO_TRACES)

    log = guard.log(run.id)
    assert halted.value.status == "pending_review"
    assert [(a.tool, a.state) for a in log.actions] == [
        ("a", "compensated"),
        ("b", "failed"),
        ("c", "failed"),
    ]
    assert undone == ["a"]  # compensated exactly once
    assert len(log.compensations) == 1
    assert log.run.status == "pending_review"
    assert guard.verify(run.id).ok


# -- resume after a halt, in a new process --------------------------------------------------


def test_resume_after_a_restart_does_not_repeat_side_effects(store_url: str) -> None:
    shop = Shop()
    first = Guard(store=store_url)
    shop.declare(first)
    first.policy(  # hold: nothing is undone, so every done call must be found on resume
        "create_shipment",
        effect="reversible",
        undo=lambda args: None,
        on_failure="hold",
        not_done=[CarrierUnavailable],
    )
    agent, _ = agent_for(first, shop, CHECKOUT)
    with pytest.raises(RunHalted), first.run(agent="shop") as run:
        Runner.run_sync(agent, "buy a book", run_config=NO_TRACES)
    run_id = run.id
    first.close()
    assert [e[0] for e in shop.events].count("create_shipment") == 1

    # "after a restart": a new Guard on the same store, the agent replays the conversation
    shop.fail_shipping = False
    second = Guard(store=store_url)
    shop.declare(second)
    second.policy(
        "create_shipment",
        effect="reversible",
        undo=lambda args: None,
        on_failure="hold",
        not_done=[CarrierUnavailable],
    )
    second.resume(run_id, by="ann", note="carrier is back")
    agent, model = agent_for(second, shop, CHECKOUT)
    with second.run(run_id=run_id):
        result = Runner.run_sync(agent, "buy a book", run_config=NO_TRACES)
    second.close()

    assert result.final_output == "Your book is on its way."
    kinds = [e[0] for e in shop.events]
    for done_once in ("lookup", "create_order", "charge_payment", "send_email"):
        assert kinds.count(done_once) == 1, done_once
    assert kinds.count("create_shipment") == 2  # failed once, then succeeded
    # the replayed calls got their recorded results
    assert "ord_1001" in outputs(model)["c2"]
    third = Guard(store=store_url)
    log = third.log(run_id)
    assert log.run.status == "completed"
    assert [(a.call_id, a.state) for a in log.actions] == [
        ("c1", "succeeded"),
        ("c2", "succeeded"),
        ("c3", "succeeded"),
        ("c4", "succeeded"),
        ("c5", "failed"),
        ("c5", "succeeded"),
    ]
    [held] = log.review_items  # closed by the resume it asked for
    assert (held.reason, held.resolution, held.resolved_by) == ("held", "resumed", "ann")
    third.close()


# -- approvals: the guard's gate is the SDK's interruption -----------------------------------


BIG_ORDER = [
    [call("create_order", "a1", item="laptop", quantity=3)],
    [call("charge_payment", "a2", amount=4500), call("lookup", "a3", item="bag")],
    [assistant_message("Paid.")],
]


@pytest.mark.parametrize("decision", ["approve", "reject", "edit", "reply"])
def test_an_approval_gate_pauses_the_sdk_run_and_resumes_from_its_state(
    store_url: str, decision: str
) -> None:
    shop = Shop()
    guard = Guard(store=store_url)
    shop.declare(guard)
    agent, model = agent_for(guard, shop, BIG_ORDER)

    with guard.run(agent="shop") as run:
        result = Runner.run_sync(agent, "buy three laptops", run_config=NO_TRACES)

    # the SDK's own pause, not an exception: charge_payment waits for a person
    assert [(i.tool_name, i.call_id) for i in result.interruptions] == [("charge_payment", "a2")]
    saved = result.to_state().to_string()
    log = guard.log(run.id)
    assert log.run.status == "awaiting_approval"
    assert [(a.tool, a.state) for a in log.actions] == [
        ("create_order", "succeeded"),
        ("charge_payment", "awaiting_approval"),
    ]
    (request,) = [i for i in log.review_items if i.reason == "approval"]
    assert not [e for e in shop.events if e[0] == "charge_payment"]
    guard.close()

    # a person decides in guardrail; the application restarts and resumes the SDK state
    reviewer = Guard(store=store_url)
    if decision == "approve":
        reviewer.approve(request.id, by="ann", note="known customer")
    elif decision == "edit":
        reviewer.approve(request.id, by="ann", note="a deposit first", args={"amount": 450})
    elif decision == "reply":
        reviewer.reply(request.id, "Take a deposit of 450 first", by="ann")
    else:
        reviewer.reject(request.id, by="ann", reason="card looks stolen")
    reviewer.resume(run.id, by="ann")
    reviewer.close()

    guard = Guard(store=store_url)
    shop.declare(guard)
    agent, model = agent_for(guard, shop, BIG_ORDER[2:])
    state = asyncio.run(RunState.from_string(agent, saved))
    assert apply_decisions(guard, run.id, state) == []
    with guard.run(run_id=run.id):
        result = Runner.run_sync(agent, state, run_config=NO_TRACES)

    assert result.final_output == "Paid."
    told = outputs(model)
    # the sibling of the gated call did not run while the run waited; the model was told
    assert "did not run" in told["a3"] and "charge_payment" in told["a3"]
    assert ("lookup", "bag") not in shop.events
    log = guard.log(run.id)
    assert log.run.status == "completed"
    charges = [e for e in shop.events if e[0] == "charge_payment"]
    if decision in ("approve", "edit"):
        assert len(charges) == 1  # exactly once, on the approved action
        assert [(a.tool, a.state) for a in log.actions] == [
            ("create_order", "succeeded"),
            ("charge_payment", "succeeded"),
        ]
        assert log.action(2).args["amount"] == (450 if decision == "edit" else 4500)
    elif decision == "reply":
        assert charges == []
        assert told["a2"] == "Take a deposit of 450 first"  # the model reads the reply
        assert log.action(2).state == "rejected"
    else:
        assert charges == []
        assert "rejected by ann: card looks stolen" in told["a2"]
        assert log.action(2).state == "rejected"
    guard.close()


def test_undecided_requests_stay_paused(guard: Guard, shop: Shop) -> None:
    agent, _ = agent_for(guard, shop, BIG_ORDER)
    with guard.run(agent="shop") as run:
        result = Runner.run_sync(agent, "buy three laptops", run_config=NO_TRACES)
    state = result.to_state()
    (waiting,) = apply_decisions(guard, run.id, state)
    assert waiting.call_id == "a2"
    assert guard.runs(status="awaiting_approval")[0].id == run.id


def test_every_gated_call_of_a_turn_is_asked_at_once(store_url: str) -> None:
    shop = Shop()
    guard = Guard(store=store_url)
    shop.declare(guard)
    turn = [
        [
            call("charge_payment", "b1", amount=4500),
            call("lookup", "b2", item="bag"),
            call("charge_payment", "b3", amount=2500),
        ],
        [assistant_message("Paid twice.")],
    ]
    agent, _ = agent_for(guard, shop, turn)
    with guard.run(agent="shop") as run:
        result = Runner.run_sync(agent, "pay both", run_config=NO_TRACES)
    assert sorted(i.call_id for i in result.interruptions) == ["b1", "b3"]
    requests = [i for i in guard.store.review_items(run_id=run.id) if i.reason == "approval"]
    assert len(requests) == 2 and guard.require_run(run.id).status == "awaiting_approval"
    with pytest.raises(RunStateError, match="approve or reject them first"):
        guard.resume(run.id, by="ann")  # one decision is not enough: both are asked
    for item in requests:
        guard.approve(item.id, by="ann")
    guard.resume(run.id, by="ann")

    state = result.to_state()
    assert apply_decisions(guard, run.id, state) == []
    agent, _ = agent_for(guard, shop, turn[1:])
    with guard.run(run_id=run.id):
        result = Runner.run_sync(agent, state, run_config=NO_TRACES)
    assert result.final_output == "Paid twice."
    charges = [e for e in shop.events if e[0] == "charge_payment"]
    assert len(charges) == 2  # each approved call ran once
    done = [(a.call_id, a.args["amount"]) for a in guard.log(run.id).actions if a.tool != "lookup"]
    assert sorted(done) == [("b1", 4500), ("b3", 2500)]
    assert guard.require_run(run.id).status == "completed"
    guard.close()


# -- a timeout is recorded; it leaves the call in doubt ------------------------------------


def test_a_timeout_is_recorded_and_leaves_the_call_in_doubt(guard: Guard) -> None:
    guard.policy("slow", effect="reversible", undo=lambda args: None)
    never = asyncio.Event()

    @function_tool(timeout=0.05)
    async def slow() -> str:
        """Never answers."""
        await never.wait()
        return "late"

    model = ScriptedModel([[call("slow", "t1")], [assistant_message("done")]])
    agent = Agent(name="slow", model=model, tools=wrap_tools(guard, [slow]))
    with pytest.raises(RunHalted), guard.run(agent="slow") as run:
        Runner.run_sync(agent, "go", run_config=NO_TRACES)
    log = guard.log(run.id)
    (action,) = log.actions
    # the SDK gave up waiting; whether the call took effect is unknown: a person must say
    assert action.state == "in_doubt"
    assert action.error is not None and "TimeoutError" in action.error
    assert [(i.seq, i.reason) for i in log.review_items] == [(1, "in_doubt")]
    with pytest.raises(RunStateError, match="outcome is unknown"):
        guard.resume(run.id, by="ann")


def test_the_example_runs_offline() -> None:
    done = subprocess.run(
        [sys.executable, "examples/openai_agents_shop.py"],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OPENAI_API_KEY": ""},
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "paused for approval of charge_payment" in out
    assert "RunHalted: run" in out
    assert "undo of 3 (charge_payment) via refund: succeeded" in out
    assert "undo of 2 (create_order) via cancel_order: succeeded" in out
    assert "orders={'ord_1001': 'cancelled'} payments={'pay_1002': 'refunded'}" in out


@pytest.fixture(autouse=True)
def _fresh_event_loop() -> Iterator[None]:
    # Runner.run_sync keeps a per-thread default loop; give each test its own.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    asyncio.set_event_loop(None)
    loop.close()
