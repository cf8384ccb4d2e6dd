"""The PydanticAI adapter, end to end with real PydanticAI objects: ``Agent``, function tools
taking a ``RunContext``, a toolset of another kind, and its offline models (``FunctionModel``
scripted call by call, ``TestModel``); no network.

Run as a script, this file is the worker of the restart test (see ``worker``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai import (
    Agent,
    DeferredToolRequests,
    DeferredToolResults,
    ModelMessagesTypeAdapter,
    RunContext,
    Tool,
    ToolReturn,
    capture_run_messages,
)
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.models.test import TestModel
from pydantic_ai.tools import ToolDefinition
from pydantic_ai.toolsets import AbstractToolset, FunctionToolset, ToolsetTool
from pydantic_core import SchemaValidator, core_schema

from guardrail import Approval, Guard, GuardrailError, Review, RunHalted, RunStateError, UndoTool
from guardrail.adapters.pydantic_ai import (
    GuardedToolset,
    GuardTools,
    apply_decisions,
    guard_toolset,
    history_for_resume,
)

ROOT = Path(__file__).resolve().parents[1]
SECRET = "DEPS-API-KEY-SENTINEL"  # lives in the deps; must never reach the store
UNDO_ID = (
    "guardrail-undo-cancel_order-" + hashlib.sha256(b'{"order_id": "ord_1001"}').hexdigest()[:12]
)


# -- the shop: side effects in a ledger that survives the process ---------------------------


class Shop:
    """A fake shop: every side effect and undo is appended to a ledger file, in order."""

    def __init__(self, ledger: Path) -> None:
        self.ledger = ledger
        self.fail_shipping = True

    def record(self, *event: Any) -> None:
        with self.ledger.open("a") as out:
            out.write(json.dumps(event) + "\n")

    @property
    def events(self) -> list[tuple[Any, ...]]:
        if not self.ledger.exists():
            return []
        return [tuple(json.loads(line)) for line in self.ledger.read_text().splitlines()]

    def count(self, kind: str) -> int:
        return sum(1 for e in self.events if e[0] == kind)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{1001 + sum(1 for e in self.events if e[0] in NEW_IDS)}"


NEW_IDS = ("create_order", "charge_payment", "create_shipment")


@dataclass
class Deps:
    """The agent's dependencies: a live object and a secret the tools use."""

    shop: Shop
    api_key: str = SECRET
    seen: list[str] = field(default_factory=list)


def lookup(ctx: RunContext[Deps], item: str) -> dict[str, Any]:
    """Look an item up in the catalogue (a sync tool: PydanticAI runs it in a thread)."""
    ctx.deps.shop.record("lookup", item)
    return {"item": item, "price": 12}


def create_order(ctx: RunContext[Deps], item: str, quantity: int) -> dict[str, Any]:
    """Create an order."""
    assert ctx.deps.api_key == SECRET
    order = ctx.deps.shop.new_id("ord")
    ctx.deps.shop.record("create_order", order)
    return {"id": order, "item": item, "quantity": quantity}


def cancel_order(ctx: RunContext[Deps], order_id: str) -> str:
    """Cancel an order."""
    ctx.deps.shop.record("cancel_order", order_id, ctx.tool_call_id)
    return "cancelled"


async def charge_payment(ctx: RunContext[Deps], amount: int) -> dict[str, Any]:
    """Charge the card (an async tool)."""
    payment = ctx.deps.shop.new_id("pay")
    ctx.deps.shop.record("charge_payment", payment)
    return {"id": payment, "amount": amount}


async def send_email(ctx: RunContext[Deps], to: str, body: str) -> str:
    """Send an email."""
    ctx.deps.shop.record("send_email", to)
    return "sent"


async def create_shipment(ctx: RunContext[Deps], order_id: str) -> ToolReturn[dict[str, Any]]:
    """Book the carrier; returns a ToolReturn whose metadata the model must not see."""
    ctx.deps.shop.record("create_shipment", order_id)
    if ctx.deps.shop.fail_shipping:
        raise ConnectionError("carrier API returned 503 Service Unavailable")
    shipment = ctx.deps.shop.new_id("shp")
    return ToolReturn({"id": shipment}, metadata={"label": "internal"})


TOOLS: list[Tool[Deps]] = [
    Tool(lookup),
    Tool(create_order),
    Tool(cancel_order),
    Tool(charge_payment),
    Tool(send_email),
    Tool(create_shipment),
]


def declare(guard: Guard, *, hold: bool = False) -> None:
    def refund(result: dict[str, Any], deps: Deps) -> None:
        deps.shop.record("refund", result["id"])  # the live deps, injected by name

    def cancel_shipment(result: dict[str, Any], ctx: RunContext[Deps]) -> None:
        ctx.deps.shop.record("cancel_shipment", result["return_value"]["id"])

    guard.policy("lookup", effect="read_only")
    guard.policy(
        "create_order",
        effect="reversible",
        undo=UndoTool(tool="cancel_order", args={"order_id": "result.id"}),  # an agent tool
        external_ids={"order_id": "result.id"},
    )
    guard.policy("cancel_order", effect="irreversible", review=Review(kind="handoff"))
    guard.policy(
        "charge_payment",
        effect="reversible",
        undo=refund,
        approval=Approval(when="args.amount > 1000"),
    )
    guard.policy(
        "send_email", effect="irreversible", review=Review(kind="correct", owner="support")
    )
    guard.policy(
        "create_shipment",
        effect="reversible",
        undo=cancel_shipment,
        not_done=[ConnectionError],  # the carrier refused the booking: nothing happened
        on_failure="hold" if hold else "compensate",
    )


# -- a scripted model ----------------------------------------------------------------------


Step = str | list[ToolCallPart]


def call(name: str, call_id: str, **args: Any) -> ToolCallPart:
    return ToolCallPart(name, args, tool_call_id=call_id)


class Script:
    """A ``FunctionModel`` answering with the given steps, one per model request, streamed or
    not; ``requests`` keeps the messages each request got."""

    def __init__(self, steps: list[Step]) -> None:
        self.steps = list(steps)
        self.requests: list[list[ModelMessage]] = []
        self.model = FunctionModel(self.respond, stream_function=self.stream)

    def _next(self, messages: list[ModelMessage]) -> Step:
        self.requests.append(list(messages))
        assert self.steps, "the model was called more often than scripted"
        return self.steps.pop(0)

    def respond(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        step = self._next(messages)
        return ModelResponse(parts=[TextPart(step)] if isinstance(step, str) else list(step))

    async def stream(
        self, messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[str | DeltaToolCalls]:
        step = self._next(messages)
        if isinstance(step, str):
            yield step
            return
        for index, part in enumerate(step):
            yield {
                index: DeltaToolCall(
                    name=part.tool_name,
                    json_args=part.args_as_json_str(),
                    tool_call_id=part.tool_call_id,
                )
            }

    @property
    def remaining(self) -> int:
        return len(self.steps)

    def told(self) -> dict[str, ToolReturnPart]:
        """What the model was told each call returned, by call id, in its latest request."""
        return {
            part.tool_call_id: part
            for message in self.requests[-1]
            if isinstance(message, ModelRequest)
            for part in message.parts
            if isinstance(part, ToolReturnPart)
        }


CHECKOUT: list[Step] = [
    [call("lookup", "c1", item="book")],
    [call("create_order", "c2", item="book", quantity=1)],
    [call("charge_payment", "c3", amount=12), call("send_email", "c4", to="a@x", body="thanks")],
    [call("create_shipment", "c5", order_id="ord_1001")],
    "Your book is on its way.",
]


def agent_for(guard: Guard, steps: list[Step]) -> tuple[Agent[Deps, Any], Script]:
    script = Script(steps)
    agent: Agent[Deps, Any] = Agent(
        script.model,
        deps_type=Deps,
        output_type=[str, DeferredToolRequests],
        tools=TOOLS,
        capabilities=[GuardTools(guard)],
    )
    return agent, script


@pytest.fixture
def shop(tmp_path: Path) -> Shop:
    return Shop(tmp_path / "ledger.jsonl")


@pytest.fixture(autouse=True)
def _fresh_event_loop() -> Iterator[None]:
    # run_sync keeps a per-thread default loop; give each test its own.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    asyncio.set_event_loop(None)
    loop.close()


def dump(url: str) -> str:
    """Every row of the SQLite store as text."""
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        return "\n".join(conn.iterdump())


# -- calls ----------------------------------------------------------------------------------


ENTRIES = ["run_sync", "run", "run_stream", "iter", "run_stream_events"]


def run_agent(guard: Guard, agent: Agent[Deps, Any], entry: str, deps: Deps, **kw: Any) -> str:
    """Run the agent inside a guard run through one of PydanticAI's entry points; the sync one
    in a ``with`` block, the async ones in ``async with``. Returns the run id."""
    if entry == "run_sync":
        with guard.run(agent="shop", **kw) as run:
            agent.run_sync("buy a book", deps=deps)
        return run.id

    ran: list[str] = []

    async def main() -> None:
        async with guard.run(agent="shop", **kw) as run:
            ran.append(run.id)
            if entry == "run":
                await agent.run("buy a book", deps=deps)
            elif entry == "run_stream":
                async with agent.run_stream("buy a book", deps=deps) as streamed:
                    async for _ in streamed.stream_output():
                        pass
            elif entry == "iter":
                async with agent.iter("buy a book", deps=deps) as agent_run:
                    async for _ in agent_run:
                        pass
            else:
                async with agent.run_stream_events("buy a book", deps=deps) as events:
                    async for _ in events:
                        pass

    try:
        asyncio.run(main())
    finally:
        if ran:
            _last_run.append(ran[0])
    return ran[0]


_last_run: list[str] = []


@pytest.mark.parametrize("entry", ENTRIES)
def test_every_call_is_recorded_with_its_call_id(guard: Guard, shop: Shop, entry: str) -> None:
    declare(guard)
    shop.fail_shipping = False
    agent, script = agent_for(guard, CHECKOUT)

    run_id = run_agent(guard, agent, entry, Deps(shop))

    log = guard.log(run_id)
    assert log.run.status == "completed"
    assert [(a.seq, a.tool, a.call_id, a.state) for a in log.actions] == [
        (1, "lookup", "c1", "succeeded"),
        (2, "create_order", "c2", "succeeded"),
        (3, "charge_payment", "c3", "succeeded"),
        (4, "send_email", "c4", "succeeded"),
        (5, "create_shipment", "c5", "succeeded"),
    ]
    assert log.action(2).args == {"item": "book", "quantity": 1}
    assert log.action(2).result == {"id": "ord_1001", "item": "book", "quantity": 1}
    assert log.action(2).external_ids == {"order_id": "ord_1001"}
    assert script.remaining == 0
    told = script.told()
    assert told["c5"].content == {"id": "shp_1004"}  # a ToolReturn: its metadata stays out
    assert told["c5"].metadata == {"label": "internal"}


def test_an_agent_is_guarded_for_one_run(guard: Guard) -> None:
    calls: list[str] = []
    guard.policy("ping", effect="read_only")
    guard.policy("book", effect="reversible", undo=lambda args: None)
    toolset: FunctionToolset[None] = FunctionToolset()

    @toolset.tool_plain
    def ping(host: str) -> str:
        calls.append(f"ping {host}")
        return "pong"

    @toolset.tool_plain
    async def book(seat: int) -> str:
        calls.append(f"book {seat}")
        return "booked"

    agent = Agent(TestModel(), toolsets=[toolset])  # an agent built without the guard
    with guard.run(agent="test") as run:
        result = agent.run_sync("go", capabilities=[GuardTools(guard)])  # guarded for a run

    ids = {
        part.tool_name: part.tool_call_id
        for message in result.all_messages()
        if isinstance(message, ModelResponse)
        for part in message.parts
        if isinstance(part, ToolCallPart)
    }
    log = guard.log(run.id)
    assert sorted((a.tool, a.call_id, a.state) for a in log.actions) == sorted(
        [("ping", ids["ping"], "succeeded"), ("book", ids["book"], "succeeded")]
    )
    assert sorted(calls) == ["book 0", "ping a"]
    assert log.run.status == "completed"


def test_a_tool_called_outside_a_run_fails_the_agent_run(guard: Guard, shop: Shop) -> None:
    declare(guard)
    agent, _ = agent_for(guard, CHECKOUT)
    with pytest.raises(GuardrailError, match="outside a run of this guard"):
        agent.run_sync("buy", deps=Deps(shop))
    assert shop.events == []


def test_arguments_the_tool_refuses_never_reach_the_guard(guard: Guard, shop: Shop) -> None:
    declare(guard)
    steps: list[Step] = [
        [call("create_order", "b1", item="book", quantity="many")],  # not an integer
        "Sorry.",
    ]
    agent, _ = agent_for(guard, steps)
    with guard.run(agent="shop") as run:
        result = agent.run_sync("buy", deps=Deps(shop))
    assert result.output == "Sorry."
    assert shop.events == []
    assert guard.log(run.id).actions == []  # nothing recorded, the run went on
    assert guard.log(run.id).run.status == "completed"


# -- a failure halts the agent run ----------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_failing_tool_halts_the_run_and_compensates_newest_first(
    guard: Guard, shop: Shop, entry: str
) -> None:
    declare(guard)
    steps: list[Step] = [*CHECKOUT[:4], [call("lookup", "c6", item="pen")], "done"]
    agent, script = agent_for(guard, steps)

    with pytest.raises(RunHalted) as halted:
        run_agent(guard, agent, entry, Deps(shop))

    run_id = halted.value.run_id
    assert run_id is not None
    assert halted.value.status == "pending_review"
    assert halted.value.tool == "create_shipment"
    assert script.remaining == 2  # the model was not called again
    assert shop.events == [
        ("lookup", "book"),
        ("create_order", "ord_1001"),
        ("charge_payment", "pay_1002"),
        ("send_email", "a@x"),
        ("create_shipment", "ord_1001"),
        ("refund", "pay_1002"),  # newest first; the undo got the live deps by name
        ("cancel_order", "ord_1001", UNDO_ID),  # the agent's own tool, by name
    ]
    log = guard.log(run_id)
    assert log.run.status == "pending_review"
    assert [(a.tool, a.state) for a in log.actions] == [
        ("lookup", "succeeded"),
        ("create_order", "compensated"),
        ("charge_payment", "compensated"),
        ("send_email", "succeeded"),
        ("create_shipment", "failed"),
    ]
    # the guard saw the tool's own exception
    assert log.action(5).error == "ConnectionError: carrier API returned 503 Service Unavailable"
    # in the order they ran: newest action first
    assert [(c.position, c.seq, c.state) for c in log.compensations] == [
        (1, 3, "succeeded"),
        (2, 2, "succeeded"),
    ]
    assert [(i.seq, i.reason, i.status) for i in log.review_items] == [(4, "irreversible", "open")]
    assert guard.verify(run_id).ok


@pytest.mark.parametrize("declared", [False, True])
def test_a_model_retry_from_the_tool_halts_the_run(
    guard: Guard, shop: Shop, declared: bool
) -> None:
    """The guard cannot know by itself that a tool raising ModelRetry did nothing: the call's
    outcome is unknown unless its policy says ModelRetry proves nothing happened. Either way
    the run halts."""
    from pydantic_ai import ModelRetry

    guard.policy("reserve", effect="reversible", undo=lambda args: shop.record("release"))
    guard.policy("pay", effect="irreversible", not_done=[ModelRetry] if declared else [])
    toolset: FunctionToolset[None] = FunctionToolset()

    @toolset.tool_plain
    def reserve(sku: str) -> str:
        shop.record("reserve", sku)
        return sku

    @toolset.tool_plain
    def pay(amount: int) -> str:
        raise ModelRetry("try a smaller amount")

    script = Script([[call("reserve", "r1", sku="A")], [call("pay", "p1", amount=5)], "ok"])
    agent = Agent(script.model, toolsets=[toolset], capabilities=[GuardTools(guard)])
    with pytest.raises(RunHalted), guard.run(agent="shop") as run:
        agent.run_sync("go")
    assert shop.events == [("reserve", "A"), ("release",)]
    assert script.remaining == 1
    paid = guard.log(run.id).action(2)
    assert (paid.state, paid.error) == (
        ("failed", "ModelRetry: try a smaller amount")
        if declared
        else ("in_doubt", "outcome unknown: ModelRetry: try a smaller amount")
    )


# -- the RunContext and deps are injected, never stored ---------------------------------------


def test_run_context_and_deps_never_reach_the_store(sqlite_url: str, shop: Shop) -> None:
    guard = Guard(store=sqlite_url)
    declare(guard)
    agent, _ = agent_for(guard, CHECKOUT)
    deps = Deps(shop)
    with pytest.raises(RunHalted), guard.run(agent="shop") as run:
        agent.run_sync("buy a book", deps=deps)
    stored = dump(sqlite_url)
    assert run.id in stored  # the dump holds the run...
    for leak in (SECRET, "RunContext", "Deps(", "api_key", "tool_call_approved"):
        assert leak not in stored, leak  # ...and nothing of the context or the deps
    for action in guard.log(run.id).actions:
        assert "ctx" not in (action.args or {}) and "deps" not in (action.args or {})
    guard.close()
    wal = Path(sqlite_url.removeprefix("sqlite:///") + "-wal")
    if wal.exists():
        assert SECRET.encode() not in wal.read_bytes()


# -- parallel calls in one model turn -------------------------------------------------------


def test_parallel_calls_are_recorded_and_compensated_none_cut_off(guard: Guard) -> None:
    """Four calls in one turn. book_carrier fails while reserve A is still running; the halt
    waits for it. reserve C starts after the failure and is refused, and its RunHalted waits
    too: raised at once, it would make PydanticAI cancel A and the halting call half-way."""
    events: list[str] = []
    guard.policy(
        "reserve", effect="reversible", undo=lambda args: events.append(f"release {args['sku']}")
    )
    guard.policy("book_carrier", effect="reversible", undo=lambda args: events.append("unbook"))
    failed = asyncio.Event()
    toolset: FunctionToolset[None] = FunctionToolset()

    @toolset.tool_plain
    async def reserve(sku: str) -> str:
        events.append(f"reserve {sku} started")
        if sku == "A":
            await failed.wait()  # still running when book_carrier fails
        events.append(f"reserve {sku} done")
        return sku

    @toolset.tool_plain
    async def book_carrier(order: str) -> str:
        events.append("book_carrier started")
        failed.set()
        raise TimeoutError("carrier timed out")

    script = Script(
        [
            [
                call("reserve", "p1", sku="A"),
                call("reserve", "p2", sku="B"),
                call("book_carrier", "p3", order="o1"),
                call("reserve", "p4", sku="C"),  # starts after the failure: refused
            ],
            "done",
        ]
    )
    agent = Agent(script.model, toolsets=[guard_toolset(guard, toolset)])

    async def main() -> str:
        async with guard.run(agent="stock") as run:
            await agent.run("reserve and ship")
        return run.id

    with pytest.raises(RunHalted) as halted:
        asyncio.run(main())

    assert halted.value.run_id is not None
    log = guard.log(halted.value.run_id)
    assert [(a.seq, a.call_id, a.state) for a in log.actions] == [
        (1, "p1", "compensated"),
        (2, "p2", "compensated"),
        (3, "p3", "in_doubt"),  # a timeout: the carrier may have booked it
    ]
    assert events == [
        "reserve A started",
        "reserve B started",
        "reserve B done",
        "book_carrier started",
        "reserve A done",  # still in flight when book_carrier failed: the halt waited for it
        "release B",  # then newest first
        "release A",
    ]
    assert log.run.status == "pending_review"
    assert script.remaining == 1


# -- resume after a halt --------------------------------------------------------------------


def test_resume_from_the_prompt_does_not_repeat_what_stands(sqlite_url: str, shop: Shop) -> None:
    """Restart after review from the prompt with a model that repeats its calls: held failures
    keep every done call, and each is found by its call id instead of running again."""
    first = Guard(store=sqlite_url)
    declare(first, hold=True)
    agent, _ = agent_for(first, CHECKOUT)
    with pytest.raises(RunHalted), first.run(agent="shop") as run:
        agent.run_sync("buy a book", deps=Deps(shop))
    first.close()

    shop.fail_shipping = False
    second = Guard(store=sqlite_url)
    declare(second, hold=True)
    second.resume(run.id, by="ann", note="carrier is back")
    agent, script = agent_for(second, CHECKOUT)
    with second.run(run_id=run.id):
        result = agent.run_sync("buy a book", deps=Deps(shop))
    assert result.output == "Your book is on its way."
    for done_once in ("lookup", "create_order", "charge_payment", "send_email"):
        assert shop.count(done_once) == 1, done_once
    assert shop.count("create_shipment") == 2  # failed once, then succeeded
    assert "ord_1001" in json.dumps(script.told()["c2"].content)  # the recorded result
    log = second.log(run.id)
    assert log.run.status == "completed"
    assert [(a.call_id, a.state) for a in log.actions] == [
        ("c1", "succeeded"),
        ("c2", "succeeded"),
        ("c3", "succeeded"),
        ("c4", "succeeded"),
        ("c5", "failed"),
        ("c5", "succeeded"),
    ]
    second.close()


@pytest.mark.parametrize("where", ["same process", "elsewhere"])
def test_an_abort_undoes_through_the_agent_tool_where_its_context_is(
    sqlite_url: str, shop: Shop, where: str
) -> None:
    """Outside an agent run, an undo naming an agent tool needs the RunContext of the call it
    undoes: the process that made the call has it; elsewhere the undo waits for a person."""
    guard = Guard(store=sqlite_url)
    declare(guard, hold=True)
    agent, _ = agent_for(guard, CHECKOUT)
    with pytest.raises(RunHalted), guard.run(agent="shop") as run:
        agent.run_sync("buy a book", deps=Deps(shop))
    assert guard.log(run.id).compensations == []  # held
    aborter = guard if where == "same process" else Guard(store=sqlite_url)
    if aborter is not guard:
        declare(aborter, hold=True)
    aborter.abort(run.id, by="ann", reason="customer cancelled")
    log = aborter.log(run.id)
    undo = {c.seq: c for c in log.compensations}[2]
    if where == "same process":
        assert undo.state == "succeeded"
        assert ("cancel_order", "ord_1001", UNDO_ID) in shop.events
        assert ("refund", "pay_1002") in shop.events  # a plain undo asking for `deps`
    else:  # nothing here knows the agent's tools or has its deps: people take over
        assert undo.state == "failed" and "cancel_order" in (undo.error or "")
        assert shop.count("cancel_order") == 0 and shop.count("refund") == 0
        assert sorted(
            i.seq or 0 for i in log.review_items if i.reason == "compensation_failed"
        ) == [
            2,
            3,
        ]
        refund = {c.seq: c for c in log.compensations}[3]
        assert "`deps`" in (refund.error or "")
    guard.close()


def worker(phase: str, store_url: str, folder: Path) -> None:
    """One process of the restart test: ``halt`` runs the agent until the carrier fails and
    saves its messages; ``continue`` (a new process, after a person resumed) continues it."""
    shop = Shop(folder / "ledger.jsonl")
    guard = Guard(store=store_url)
    declare(guard, hold=True)
    saved = folder / "messages.json"
    if phase == "halt":
        agent, _ = agent_for(guard, CHECKOUT)
        with capture_run_messages() as messages:
            try:
                with guard.run(agent="shop", on_failure="hold") as run:
                    agent.run_sync("buy a book", deps=Deps(shop))
            except RunHalted as halt:
                print(f"halted {halt.run_id}")
        saved.write_bytes(ModelMessagesTypeAdapter.dump_json(messages))
        (folder / "run_id").write_text(run.id)
    else:
        shop.fail_shipping = False
        history = ModelMessagesTypeAdapter.validate_json(saved.read_bytes())
        agent, script = agent_for(guard, [CHECKOUT[-1]])
        with guard.run(run_id=(folder / "run_id").read_text()):
            result = agent.run_sync(message_history=history_for_resume(history), deps=Deps(shop))
        told = script.told()
        print(f"output {result.output}")
        print(f"told c3 {json.dumps(told['c3'].content)}")
        print(f"told c5 {json.dumps(told['c5'].content)}")
    guard.close()


def test_resume_from_history_in_a_new_process(sqlite_url: str, tmp_path: Path) -> None:
    def process(phase: str) -> str:
        done = subprocess.run(
            [sys.executable, __file__, phase, sqlite_url, str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "halted" in process("halt")
    shop = Shop(tmp_path / "ledger.jsonl")
    run_id = (tmp_path / "run_id").read_text()
    reviewer = Guard(store=sqlite_url)
    assert reviewer.log(run_id).run.status == "pending_review"
    assert not reviewer.log(run_id).compensations  # held: nothing undone
    reviewer.resume(run_id, by="ann", note="carrier is back")
    reviewer.close()

    out = process("continue")

    assert "output Your book is on its way." in out
    assert 'told c3 {"id": "pay_1002", "amount": 12}' in out  # history, not re-run
    assert 'told c5 {"id": "shp_1005"}' in out  # the halted call ran again
    for done_once in ("lookup", "create_order", "charge_payment", "send_email"):
        assert shop.count(done_once) == 1, done_once
    assert shop.count("create_shipment") == 2
    third = Guard(store=sqlite_url)
    log = third.log(run_id)
    assert log.run.status == "completed"
    assert [(a.call_id, a.state) for a in log.actions][-2:] == [
        ("c5", "failed"),
        ("c5", "succeeded"),
    ]
    assert third.verify(run_id).ok
    third.close()


def test_a_halted_turn_runs_again_and_its_done_calls_replay(guard: Guard, shop: Shop) -> None:
    """Two calls in the halted turn: the one that succeeded is replayed from the log when the
    turn runs again, only the failed one runs again."""
    declare(guard, hold=True)
    steps: list[Step] = [
        [
            call("send_email", "e1", to="a@x", body="hi"),
            call("create_shipment", "s1", order_id="o"),
        ],
        "Shipped.",
    ]
    agent, _ = agent_for(guard, steps)
    with capture_run_messages() as messages, pytest.raises(RunHalted), guard.run() as run:
        agent.run_sync("ship it", deps=Deps(shop))
    assert isinstance(messages[-1], ModelRequest) and messages[-1].state == "interrupted"
    guard.resume(run.id, by="ann")
    shop.fail_shipping = False
    agent, script = agent_for(guard, steps[1:])
    with guard.run(run_id=run.id):
        result = agent.run_sync(message_history=history_for_resume(messages), deps=Deps(shop))
    assert result.output == "Shipped."
    assert shop.count("send_email") == 1
    assert shop.count("create_shipment") == 2
    assert script.told()["e1"].content == "sent"


# -- approvals: the guard's gate is a deferred tool approval ---------------------------------


BIG_ORDER: list[Step] = [
    [call("create_order", "a1", item="laptop", quantity=3)],
    [call("charge_payment", "a2", amount=4500), call("lookup", "a3", item="bag")],
    "Paid.",
]


@pytest.mark.parametrize("decision", ["approve", "reject", "edit", "reply"])
def test_an_approval_gate_defers_the_call_and_resumes_with_the_decision(
    store_url: str, shop: Shop, decision: str
) -> None:
    guard = Guard(store=store_url)
    declare(guard)
    agent, _ = agent_for(guard, BIG_ORDER)
    with guard.run(agent="shop") as run:
        result = agent.run_sync("buy three laptops", deps=Deps(shop))

    # PydanticAI's own pause, not an exception
    requests = result.output
    assert isinstance(requests, DeferredToolRequests)
    assert [(c.tool_name, c.tool_call_id) for c in requests.approvals] == [("charge_payment", "a2")]
    log = guard.log(run.id)
    (item,) = [i for i in log.review_items if i.reason == "approval"]
    assert requests.metadata["a2"]["guardrail"]["review_item"] == item.id
    assert log.run.status == "awaiting_approval"
    assert [(a.tool, a.state) for a in log.actions] == [
        ("create_order", "succeeded"),
        ("charge_payment", "awaiting_approval"),
    ]
    assert shop.count("charge_payment") == 0
    assert shop.count("lookup") == 0  # its sibling did not run while the run waits
    saved = ModelMessagesTypeAdapter.dump_json(result.all_messages())  # kept anywhere
    guard.close()

    # a person decides in guardrail; the application restarts
    reviewer = Guard(store=store_url)
    if decision == "approve":
        reviewer.approve(item.id, by="ann", note="known customer")
    elif decision == "edit":
        reviewer.approve(item.id, by="ann", note="a deposit first", args={"amount": 450})
    elif decision == "reply":
        reviewer.reply(item.id, "Take a deposit of 450 first", by="ann")
    else:
        reviewer.reject(item.id, by="ann", reason="card looks stolen")
    reviewer.resume(run.id, by="ann")
    reviewer.close()

    guard = Guard(store=store_url)
    declare(guard)
    agent, script = agent_for(guard, BIG_ORDER[2:])
    results = apply_decisions(guard, run.id, requests)
    assert requests.remaining(results) is None
    assert results.answered_by == {"a2": "ann"}
    with guard.run(run_id=run.id):
        result = agent.run_sync(
            message_history=ModelMessagesTypeAdapter.validate_json(saved),
            deferred_tool_results=results,
            deps=Deps(shop),
        )

    assert result.output == "Paid."
    told = script.told()
    assert told["a3"].outcome == "failed"
    assert "did not run" in str(told["a3"].content)
    assert "charge_payment" in str(told["a3"].content)
    log = guard.log(run.id)
    assert log.run.status == "completed"
    if decision in ("approve", "edit"):
        assert shop.count("charge_payment") == 1  # exactly once, on the approved action
        assert [(a.tool, a.call_id, a.state) for a in log.actions] == [
            ("create_order", "a1", "succeeded"),
            ("charge_payment", "a2", "succeeded"),
        ]
        assert log.action(2).args["amount"] == (450 if decision == "edit" else 4500)
    elif decision == "reply":
        assert shop.count("charge_payment") == 0
        assert told["a2"].outcome == "denied"
        assert str(told["a2"].content) == "Take a deposit of 450 first"
        assert log.action(2).state == "rejected"
    else:
        assert shop.count("charge_payment") == 0
        assert told["a2"].outcome == "denied"
        assert "rejected by ann: card looks stolen" in str(told["a2"].content)
        assert log.action(2).state == "rejected"
    guard.close()


def test_approving_only_in_pydantic_ai_does_not_get_past_the_guard(
    guard: Guard, shop: Shop
) -> None:
    declare(guard)
    agent, _ = agent_for(guard, BIG_ORDER)
    with guard.run(agent="shop") as run:
        result = agent.run_sync("buy three laptops", deps=Deps(shop))
    requests = result.output
    assert isinstance(requests, DeferredToolRequests)
    results = apply_decisions(guard, run.id, requests)
    assert results.approvals == {}  # nobody decided in guardrail
    assert requests.remaining(results) == requests
    results.approvals["a2"] = True  # the application approves on its own...
    with pytest.raises(RunStateError, match="awaiting_approval"), guard.run(run_id=run.id):
        agent.run_sync(
            message_history=result.all_messages(), deferred_tool_results=results, deps=Deps(shop)
        )
    assert shop.count("charge_payment") == 0  # ...and nothing ran


def test_an_inline_handler_cannot_approve_for_the_guard(guard: Guard, shop: Shop) -> None:
    from pydantic_ai.capabilities import HandleDeferredToolCalls

    declare(guard)
    script = Script(BIG_ORDER)
    agent: Agent[Deps, Any] = Agent(
        script.model,
        deps_type=Deps,
        output_type=[str, DeferredToolRequests],
        tools=TOOLS,
        capabilities=[
            GuardTools(guard),
            HandleDeferredToolCalls(lambda ctx, requests: requests.build_results(approve_all=True)),
        ],
    )
    with guard.run(agent="shop") as run:
        result = agent.run_sync("buy three laptops", deps=Deps(shop))
    requests = result.output  # approved inline, the call asked the guard again: still waiting
    assert isinstance(requests, DeferredToolRequests)
    assert [c.tool_call_id for c in requests.approvals] == ["a2"]
    assert shop.count("charge_payment") == 0
    assert guard.log(run.id).run.status == "awaiting_approval"  # still a person's decision
    assert len([i for i in guard.log(run.id).review_items if i.reason == "approval"]) == 1


def test_every_gated_call_of_a_turn_is_asked_at_once(guard: Guard, shop: Shop) -> None:
    declare(guard)
    turn: list[Step] = [
        [
            call("charge_payment", "b1", amount=4500),
            call("lookup", "b2", item="bag"),
            call("charge_payment", "b3", amount=2500),
        ],
        "Paid twice.",
    ]
    agent, _ = agent_for(guard, turn)
    with guard.run(agent="shop") as run:
        result = agent.run_sync("pay both", deps=Deps(shop))
    requests = result.output
    assert isinstance(requests, DeferredToolRequests)
    assert sorted(c.tool_call_id for c in requests.approvals) == ["b1", "b3"]
    items = [i for i in guard.log(run.id).review_items if i.reason == "approval"]
    assert len(items) == 2
    assert {requests.metadata[c]["guardrail"]["review_item"] for c in ("b1", "b3")} == {
        i.id for i in items
    }
    with pytest.raises(RunStateError, match="approve or reject them first"):
        guard.resume(run.id, by="ann")  # one decision is not enough: both are asked
    guard.approve(items[0].id, by="ann")
    guard.reject(items[1].id, by="bob", reason="duplicate")
    guard.resume(run.id, by="ann")
    results = apply_decisions(guard, run.id, requests)
    assert requests.remaining(results) is None
    agent, script = agent_for(guard, turn[1:])
    with guard.run(run_id=run.id):
        agent.run_sync(
            message_history=result.all_messages(), deferred_tool_results=results, deps=Deps(shop)
        )
    told = script.told()
    assert told["b1"].outcome != "denied" and told["b3"].outcome == "denied"
    assert "did not run" in str(told["b2"].content)
    assert shop.count("charge_payment") == 1
    assert guard.require_run(run.id).status == "completed"


def test_a_call_the_guard_rejected_is_denied_even_if_approved_in_pydantic_ai(
    guard: Guard, shop: Shop
) -> None:
    declare(guard)
    agent, _ = agent_for(guard, BIG_ORDER)
    with guard.run(agent="shop") as run:
        result = agent.run_sync("buy three laptops", deps=Deps(shop))
    (item,) = [i for i in guard.log(run.id).review_items if i.reason == "approval"]
    guard.reject(item.id, by="ann", reason="over budget")
    guard.resume(run.id, by="ann")
    agent, script = agent_for(guard, BIG_ORDER[2:])
    with guard.run(run_id=run.id):
        agent.run_sync(
            message_history=result.all_messages(),
            deferred_tool_results=DeferredToolResults(approvals={"a2": True}),
            deps=Deps(shop),
        )
    told = script.told()["a2"]
    assert told.outcome == "denied"
    assert "rejected by ann: over budget" in str(told.content)
    assert shop.count("charge_payment") == 0


def test_pydantic_ai_approvals_are_asked_before_the_guard_records(guard: Guard) -> None:
    """``requires_approval`` and ``.approval_required()`` stay outside the guard: nothing is
    recorded until the application approved; then the call is guarded as usual."""
    ran: list[str] = []
    guard.policy("deploy", effect="irreversible")
    guard.policy("restart", effect="irreversible")
    toolset: FunctionToolset[None] = FunctionToolset()

    @toolset.tool_plain(requires_approval=True)
    def deploy(target: str) -> str:
        ran.append(f"deploy {target}")
        return "deployed"

    @toolset.tool_plain
    def restart(service: str) -> str:
        ran.append(f"restart {service}")
        return "restarted"

    steps: list[Step] = [[call("deploy", "d1", target="prod"), call("restart", "r1", service="db")]]
    script = Script([*steps, "Done."])
    agent = Agent(
        script.model,
        output_type=[str, DeferredToolRequests],
        toolsets=[
            toolset.approval_required(lambda ctx, tool_def, args: tool_def.name == "restart")
        ],
        capabilities=[GuardTools(guard)],
    )
    with guard.run(agent="ops") as run:
        result = agent.run_sync("ship it")
    requests = result.output
    assert isinstance(requests, DeferredToolRequests)
    assert sorted(c.tool_call_id for c in requests.approvals) == ["d1", "r1"]
    assert guard.log(run.id).actions == [] and ran == []
    results = apply_decisions(guard, run.id, requests)
    assert results.approvals == {}  # none of them is the guard's
    results.approvals.update({"d1": True, "r1": True})
    # the guard knew nothing to wait for, so its run completed: continue in a new one
    assert guard.log(run.id).run.status == "completed"
    with guard.run(agent="ops") as second:
        agent.run_sync(message_history=result.all_messages(), deferred_tool_results=results)
    assert sorted(ran) == ["deploy prod", "restart db"]
    assert sorted((a.tool, a.call_id) for a in guard.log(second.id).actions) == [
        ("deploy", "d1"),
        ("restart", "r1"),
    ]


# -- toolsets: leaves are guarded, wrappers stay outside ------------------------------------


class Notes(AbstractToolset[Any]):
    """A toolset of another kind than function tools, shaped like an MCP server's: tools from
    JSON schemas, arguments passed through as JSON."""

    ANY = SchemaValidator(core_schema.any_schema())

    def __init__(self) -> None:
        self.notes: dict[str, str] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    @property
    def id(self) -> str | None:
        return "notes"

    async def get_tools(self, ctx: RunContext[Any]) -> dict[str, ToolsetTool[Any]]:
        schemas = {
            "create_note": {"text": {"type": "string"}},
            "delete_note": {"note_id": {"type": "string"}},
            "publish": {"note_id": {"type": "string"}},
        }
        return {
            name: ToolsetTool(
                toolset=self,
                tool_def=ToolDefinition(
                    name=name,
                    parameters_json_schema={"type": "object", "properties": properties},
                ),
                max_retries=1,
                args_validator=self.ANY,
            )
            for name, properties in schemas.items()
        }

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        self.calls.append((name, tool_args))
        if name == "create_note":
            note_id = f"n{len(self.notes) + 1}"
            self.notes[note_id] = tool_args["text"]
            return {"id": note_id}
        if name == "delete_note":
            self.notes.pop(tool_args["note_id"])
            return "deleted"
        raise RuntimeError("the publishing service is down")


def test_other_toolsets_are_guarded_under_their_own_tool_names(guard: Guard) -> None:
    guard.policy(
        "create_note",
        effect="reversible",
        undo=UndoTool(tool="delete_note", args={"note_id": "result.id"}),  # through the toolset
    )
    guard.policy("delete_note", effect="irreversible")
    guard.policy("publish", effect="irreversible")
    notes = Notes()
    script = Script(
        [
            [call("notes_create_note", "n1", text="draft")],
            [call("notes_publish", "n2", note_id="n1")],
            "done",
        ]
    )
    agent = Agent(
        script.model, toolsets=[notes.prefixed("notes")], capabilities=[GuardTools(guard)]
    )
    with pytest.raises(RunHalted), guard.run(agent="notes") as run:
        agent.run_sync("publish a note")
    assert notes.notes == {}
    assert notes.calls == [
        ("create_note", {"text": "draft"}),
        ("publish", {"note_id": "n1"}),
        ("delete_note", {"note_id": "n1"}),
    ]
    log = guard.log(run.id)
    assert [(a.tool, a.call_id, a.state) for a in log.actions] == [
        ("create_note", "n1", "compensated"),  # the tool's own name, not the prefixed one
        ("publish", "n2", "in_doubt"),
    ]


def test_a_toolset_guarded_twice_records_each_call_once(guard: Guard) -> None:
    guard.policy("ping", effect="read_only")
    toolset: FunctionToolset[None] = FunctionToolset()

    @toolset.tool_plain
    def ping(host: str) -> str:
        return "pong"

    script = Script([[call("ping", "h1", host="db")], "up"])
    agent = Agent(
        script.model,
        toolsets=[GuardedToolset(guard_toolset(guard, toolset), guard)],
        capabilities=[GuardTools(guard)],
    )
    with guard.run(agent="ops") as run:
        agent.run_sync("is db up?")
    assert [(a.tool, a.call_id) for a in guard.log(run.id).actions] == [("ping", "h1")]


def test_a_guard_tool_function_given_to_a_guarded_agent_is_refused(guard: Guard) -> None:
    @guard.tool(effect="read_only")
    def ping(host: str) -> str:
        return "pong"

    script = Script([[call("ping", "h1", host="db")], "up"])
    agent = Agent(script.model, tools=[ping], capabilities=[GuardTools(guard)])
    with pytest.raises(GuardrailError, match="recorded twice"), guard.run(agent="ops"):
        agent.run_sync("is db up?")


# -- the example ----------------------------------------------------------------------------


def test_the_example_runs_offline() -> None:
    done = subprocess.run(
        [sys.executable, "examples/pydantic_ai_agent.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OPENAI_API_KEY": ""},
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "the agent run paused for approval of charge_payment" in out
    assert "RunHalted: run" in out
    assert "undo of 3 (charge_payment) via refund: succeeded" in out
    assert "undo of 2 (create_order) via cancel_order: succeeded" in out
    assert "orders={'ord_1001': 'cancelled'} payments={'pay_1002': 'refunded'}" in out


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
