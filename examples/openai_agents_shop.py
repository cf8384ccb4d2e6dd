"""An OpenAI Agents SDK shop agent under guardrail, with a scripted model (offline, no API key).

    python examples/openai_agents_shop.py

The agent looks up a laptop, creates an order, and charges 4,500: over the 1,000 limit, so the
guard's approval gate pauses the SDK run (``result.interruptions``). The paused state is saved
as JSON; "after a restart" a person approves in guardrail, the state is loaded, the decision is
applied and the run resumes: the charge runs once. The agent then sends the confirmation email
and books the carrier in one turn; the carrier fails. The guard halts the run, refunds the
payment and cancels the order (newest first), lists the email for a person, and ``RunHalted``
ends ``Runner.run_sync``: the model is not called again.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
from pathlib import Path
from typing import Any

from agents import Agent, RunConfig, Runner, RunState, function_tool
from agents.testing import ScriptedModel, assistant_message, function_call

from guardrail import Approval, Guard, Review, RunHalted, UndoTool
from guardrail.adapters.openai_agents import apply_decisions, wrap_tools

NO_TRACES = RunConfig(tracing_disabled=True)  # the SDK would export traces to OpenAI


class CarrierUnavailable(ConnectionError):
    """The carrier answered 503: it refused the request, so nothing was booked."""


class Shop:
    """Stand-ins for the shop's systems, so the demo shows what changed in the world."""

    def __init__(self) -> None:
        self.ids = itertools.count(1001)
        self.orders: dict[str, str] = {}
        self.payments: dict[str, str] = {}
        self.outbox: list[str] = []

    def state(self) -> str:
        return f"orders={self.orders} payments={self.payments} emails_sent={len(self.outbox)}"


def tools(shop: Shop) -> list[Any]:
    @function_tool
    def lookup(item: str) -> dict[str, Any]:
        """Find an item and its price."""
        return {"item": item, "price": 1500}

    @function_tool
    def create_order(item: str, quantity: int) -> dict[str, Any]:
        """Create an order (a sync tool: the SDK runs it in a worker thread)."""
        order_id = f"ord_{next(shop.ids)}"
        shop.orders[order_id] = "open"
        return {"id": order_id, "item": item, "quantity": quantity}

    @function_tool
    def cancel_order(order_id: str) -> str:
        """Cancel an order."""
        shop.orders[order_id] = "cancelled"
        return "cancelled"

    @function_tool
    async def charge_payment(order_id: str, amount: int) -> dict[str, Any]:
        """Charge the customer's card (an async tool)."""
        payment_id = f"pay_{next(shop.ids)}"
        shop.payments[payment_id] = "captured"
        return {"id": payment_id, "amount": amount}

    @function_tool
    async def send_email(to: str, body: str) -> str:
        """Email the customer."""
        shop.outbox.append(to)
        return "sent"

    @function_tool
    async def create_shipment(order_id: str) -> dict[str, Any]:
        """Book the carrier."""
        raise CarrierUnavailable("carrier API returned 503 Service Unavailable")

    return [lookup, create_order, cancel_order, charge_payment, send_email, create_shipment]


def declare(guard: Guard, shop: Shop) -> None:
    def refund(result: dict[str, Any]) -> None:
        shop.payments[result["id"]] = "refunded"

    guard.policy("lookup", effect="read_only")
    guard.policy(
        "create_order",
        effect="reversible",
        undo=UndoTool(tool="cancel_order", args={"order_id": "result.id"}),  # the SDK tool
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
    # A 503 proves the carrier refused the request: nothing was booked (not_done). Any other
    # error (a timeout after the request left) would leave the outcome unknown, for a person.
    guard.policy(
        "create_shipment",
        effect="reversible",
        undo=lambda args: None,
        not_done=[CarrierUnavailable],
    )


def script() -> list[Any]:
    def call(name: str, call_id: str, **args: Any) -> Any:
        return function_call(name, args, call_id=call_id)

    return [
        [call("lookup", "call_1", item="laptop")],
        [call("create_order", "call_2", item="laptop", quantity=3)],
        [call("charge_payment", "call_3", order_id="ord_1001", amount=4500)],
        # after the approval, one turn with two calls (the SDK runs them concurrently)
        [
            call("send_email", "call_4", to="ann@example.com", body="3 laptops are on the way"),
            call("create_shipment", "call_5", order_id="ord_1001"),
        ],
        [assistant_message("Your laptops are on the way.")],
    ]


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
    model = ScriptedModel(script())

    # 1. the agent runs until the charge needs a person's approval
    guard = Guard(store=store)
    declare(guard, shop)
    agent = Agent(name="shop", model=model, tools=wrap_tools(guard, tools(shop)))
    with guard.run(agent="shop") as run:
        result = Runner.run_sync(agent, "Three laptops for ann@example.com", run_config=NO_TRACES)
    paused = [f"{i.tool_name}({i.arguments})" for i in result.interruptions]
    print(f"the SDK run paused for approval of {', '.join(paused)}; run is {run.status}")
    saved = result.to_state().to_string()  # keep it anywhere: a file, a database
    guard.close()

    # 2. a person approves in guardrail (here the API; or `guardrail approve ITEM --resume`)
    reviewer = Guard(store=store)
    (item,) = [i for i in reviewer.log(run.id).review_items if i.status == "open"]
    reviewer.approve(item.id, by="ann", note="a known customer")
    reviewer.resume(run.id, by="ann")
    reviewer.close()

    # 3. "after a restart": load the state, apply the decision, resume the SDK run
    guard = Guard(store=store)
    declare(guard, shop)
    agent = Agent(name="shop", model=model, tools=wrap_tools(guard, tools(shop)))
    state = asyncio.run(RunState.from_string(agent, saved))
    apply_decisions(guard, run.id, state)
    try:
        with guard.run(run_id=run.id):
            Runner.run_sync(agent, state, run_config=NO_TRACES)
    except RunHalted as halt:
        print(f"RunHalted: {halt}")
        print(f"the model was not called again: {model.remaining_steps} scripted step(s) unused")
    show(guard, run.id)
    print(f"\nthe world now: {shop.state()}")
    guard.close()


if __name__ == "__main__":
    main()
