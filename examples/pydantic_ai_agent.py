"""A PydanticAI shop agent under guardrail, with a scripted model (offline, no API key).

    python examples/pydantic_ai_agent.py

The agent looks up a laptop, creates an order, and charges 4,500: over the 1,000 limit, so the
guard's approval gate defers the call and the agent run ends with ``DeferredToolRequests``. The
message history is saved as JSON; "after a restart" a person approves in guardrail, the
decision becomes PydanticAI's ``deferred_tool_results`` and the run continues: the charge runs
once. The agent then sends the confirmation email and books the carrier in one turn; the
carrier fails. The guard halts the run, refunds the payment and cancels the order (newest
first; the cancel is the agent's own tool, called with the ``RunContext`` of the order), lists
the email for a person, and ``RunHalted`` ends ``agent.run_sync``: the model is not called
again. The tools' ``RunContext`` and ``deps`` never reach the store.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_ai import Agent, DeferredToolRequests, ModelMessagesTypeAdapter, RunContext, Tool
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from guardrail import Approval, Guard, Review, RunHalted, UndoTool
from guardrail.adapters.pydantic_ai import GuardTools, apply_decisions


class Shop:
    """Stand-ins for the shop's systems, so the demo shows what changed in the world."""

    def __init__(self) -> None:
        self.ids = itertools.count(1001)
        self.orders: dict[str, str] = {}
        self.payments: dict[str, str] = {}
        self.outbox: list[str] = []

    def state(self) -> str:
        return f"orders={self.orders} payments={self.payments} emails_sent={len(self.outbox)}"


@dataclass
class Deps:
    shop: Shop
    api_key: str = "sk-shop-live-0000"  # the tools use it; guardrail never records it


def lookup(ctx: RunContext[Deps], item: str) -> dict[str, Any]:
    """Find an item and its price."""
    return {"item": item, "price": 1500}


def create_order(ctx: RunContext[Deps], item: str, quantity: int) -> dict[str, Any]:
    """Create an order (a sync tool: PydanticAI runs it in a worker thread)."""
    order_id = f"ord_{next(ctx.deps.shop.ids)}"
    ctx.deps.shop.orders[order_id] = "open"
    return {"id": order_id, "item": item, "quantity": quantity}


def cancel_order(ctx: RunContext[Deps], order_id: str) -> str:
    """Cancel an order."""
    ctx.deps.shop.orders[order_id] = "cancelled"
    return "cancelled"


async def charge_payment(ctx: RunContext[Deps], order_id: str, amount: int) -> dict[str, Any]:
    """Charge the customer's card (an async tool)."""
    payment_id = f"pay_{next(ctx.deps.shop.ids)}"
    ctx.deps.shop.payments[payment_id] = "captured"
    return {"id": payment_id, "amount": amount}


async def send_email(ctx: RunContext[Deps], to: str, body: str) -> str:
    """Email the customer."""
    ctx.deps.shop.outbox.append(to)
    return "sent"


async def create_shipment(ctx: RunContext[Deps], order_id: str) -> dict[str, Any]:
    """Book the carrier."""
    raise ConnectionError("carrier API returned 503 Service Unavailable")


TOOLS: list[Tool[Deps]] = [
    Tool(lookup),
    Tool(create_order),
    Tool(cancel_order),
    Tool(charge_payment),
    Tool(send_email),
    Tool(create_shipment),
]


def declare(guard: Guard) -> None:
    def refund(result: dict[str, Any], deps: Deps) -> None:
        deps.shop.payments[result["id"]] = "refunded"  # `deps`: the live object, by name

    guard.policy("lookup", effect="read_only")
    guard.policy(
        "create_order",
        effect="reversible",
        undo=UndoTool(tool="cancel_order", args={"order_id": "result.id"}),  # the agent's tool
        external_ids={"order_id": "result.id"},
    )
    guard.policy(
        "cancel_order", effect="irreversible", review=Review(kind="handoff", owner="sales")
    )
    guard.policy(
        "charge_payment",
        effect="reversible",
        undo=refund,
        external_ids={"payment_id": "result.id"},
        approval=Approval(when="args.amount > 1000"),
    )
    guard.policy(
        "send_email",
        effect="irreversible",
        review=Review(kind="correct", owner="support", instructions="Tell the customer why"),
    )
    guard.policy("create_shipment", effect="reversible", undo=lambda args: None)


class ScriptedModel:
    """The model's answers, one per request (what an LLM would say), as a ``FunctionModel``."""

    def __init__(self) -> None:
        def call(name: str, call_id: str, **args: Any) -> ToolCallPart:
            return ToolCallPart(name, args, tool_call_id=call_id)

        self.steps: list[list[ToolCallPart] | str] = [
            [call("lookup", "call_1", item="laptop")],
            [call("create_order", "call_2", item="laptop", quantity=3)],
            [call("charge_payment", "call_3", order_id="ord_1001", amount=4500)],
            # after the approval, one turn with two calls (PydanticAI runs them concurrently)
            [
                call("send_email", "call_4", to="ann@example.com", body="3 laptops on the way"),
                call("create_shipment", "call_5", order_id="ord_1001"),
            ],
            "Your laptops are on the way.",
        ]
        self.model = FunctionModel(self.respond)

    def respond(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        step = self.steps.pop(0)
        return ModelResponse(parts=[TextPart(step)] if isinstance(step, str) else step)


def make_agent(guard: Guard, model: ScriptedModel) -> Agent[Deps, str | DeferredToolRequests]:
    return Agent(
        model.model,
        deps_type=Deps,
        output_type=[str, DeferredToolRequests],  # approvals end the run with the requests
        tools=TOOLS,
        capabilities=[GuardTools(guard)],  # every tool of the agent, for every run
    )


def show(guard: Guard, run_id: str) -> None:
    log = guard.log(run_id)
    print(f"\nrun {run_id}: {log.run.status}" + (f" ({log.run.reason})" if log.run.reason else ""))
    for a in log.actions:
        ids = ", ".join(f"{k}={v}" for k, v in a.external_ids.items())
        print(f"  {a.seq}  {a.tool:16} {a.call_id or '':7} {a.state:18} {ids}".rstrip())
        if a.error:
            print(f"        error: {a.error}")
    tools = {a.seq: a.tool for a in log.actions}
    for c in sorted(log.compensations, key=lambda c: c.started_at):
        print(f"  undo of {c.seq} ({tools[c.seq]}) via {c.undo}: {c.state}")
    for i in log.review_items:
        note = f" by {i.resolved_by}" if i.resolved_by else ""
        print(f"  review [{i.id}] action {i.seq}: {i.reason} -> {i.status}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", help="a store URL (default: a temporary SQLite file)")
    store = parser.parse_args().store
    if store is None:
        store = f"sqlite:///{Path(tempfile.mkdtemp()) / 'guardrail.db'}"

    shop = Shop()
    model = ScriptedModel()

    # 1. the agent runs until the charge needs a person's approval
    guard = Guard(store=store)
    declare(guard)
    agent = make_agent(guard, model)
    with guard.run(agent="shop") as run:
        result = agent.run_sync("Three laptops for ann@example.com", deps=Deps(shop))
    requests = result.output
    assert isinstance(requests, DeferredToolRequests)
    paused = ", ".join(f"{c.tool_name}({c.args_as_json_str()})" for c in requests.approvals)
    print(f"the agent run paused for approval of {paused}; run is {run.status}")
    saved_messages = ModelMessagesTypeAdapter.dump_json(result.all_messages())  # keep anywhere
    guard.close()

    # 2. a person approves in guardrail (here the API; or `guardrail approve ITEM --resume`)
    reviewer = Guard(store=store)
    (item,) = [i for i in reviewer.log(run.id).review_items if i.status == "open"]
    reviewer.approve(item.id, by="ann", note="a known customer")
    reviewer.resume(run.id, by="ann")
    reviewer.close()

    # 3. "after a restart": load the history, turn the decision into deferred tool results
    guard = Guard(store=store)
    declare(guard)
    agent = make_agent(guard, model)
    results = apply_decisions(guard, run.id, requests)
    try:
        with guard.run(run_id=run.id):
            agent.run_sync(
                message_history=ModelMessagesTypeAdapter.validate_json(saved_messages),
                deferred_tool_results=results,
                deps=Deps(shop),
            )
    except RunHalted as halt:
        print(f"RunHalted: {halt}")
        print(f"the model was not called again: {len(model.steps)} scripted step(s) unused")
    show(guard, run.id)
    print(f"\nthe world now: {shop.state()}")
    guard.close()


if __name__ == "__main__":
    main()
