"""The shop saga with its policies in a YAML file and an approval gate on large payments.

    python examples/policy_file.py            # approval, then a failing shipment
    guardrail policy check examples/shop_policies.yaml --tools examples.policy_file:TOOLKIT

An order over 1,000 needs a person's approval: the run halts in ``awaiting_approval``; "ann"
approves, the run resumes and the agent runs again on the same run (the order is not created
twice). Then the carrier fails: the payment and the order are undone by the undo tools the file
names, and the confirmation email is listed for a person. The carrier refused the connection,
which the policy file declares proves nothing was shipped (``not_done``): the shipment is a plain
failure, not a call a person must check.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guardrail import Guard, RunHalted

HERE = Path(__file__).resolve().parent
WORLD: dict[str, dict[str, Any]] = {"orders": {}, "payments": {}, "shipments": {}, "emails": {}}


def create_order(customer: str, item: str, amount: float) -> dict[str, Any]:
    order_id = f"ord_{len(WORLD['orders']) + 1:04d}"
    WORLD["orders"][order_id] = {"customer": customer, "item": item, "amount": amount}
    return {"order_id": order_id}


def cancel_order(order_id: str) -> None:
    WORLD["orders"].pop(order_id)


def charge_payment(order_id: str, amount: float, card: str) -> dict[str, Any]:
    payment_id = f"pay_{order_id}"
    WORLD["payments"][payment_id] = amount
    return {"payment_id": payment_id}


def refund_payment(payment_id: str) -> None:
    WORLD["payments"].pop(payment_id)


def send_confirmation(to: str, order_id: str) -> str:
    WORLD["emails"][order_id] = to
    return "sent"


def create_shipment(order_id: str, address: str) -> dict[str, str]:
    # a refused connection proves the request never reached the carrier: nothing was shipped
    # (the policy file declares it not_done; a timeout would leave the outcome unknown)
    raise ConnectionRefusedError("the carrier's API refused the connection")


def cancel_shipment(order_id: str) -> None:
    WORLD["shipments"].pop(order_id, None)


TOOLS: list[Callable[..., Any]] = [create_order, charge_payment, send_confirmation, create_shipment]
UNDO_TOOLS: list[Callable[..., Any]] = [cancel_order, refund_payment, cancel_shipment]
TOOLKIT = TOOLS + UNDO_TOOLS  # what `guardrail policy check --tools` should see


def main() -> None:
    store = f"sqlite:///{tempfile.mkdtemp()}/guardrail.db"
    with Guard(store=store) as guard:
        guard.load_policies(HERE / "shop_policies.yaml")
        tools = {fn.__name__: guard.tool(fn) for fn in TOOLS}
        for fn in UNDO_TOOLS:
            guard.register(fn)

        def agent() -> None:
            order = tools["create_order"](customer="ada", item="piano", amount=4200.0)
            tools["charge_payment"](
                order_id=order["order_id"], amount=4200.0, card="4242 4242 4242 4242"
            )
            tools["send_confirmation"](to="ada@example.com", order_id=order["order_id"])
            tools["create_shipment"](order_id=order["order_id"], address="1 Main St")

        try:
            with guard.run(agent="shop") as run:
                agent()
        except RunHalted as halt:
            print(f"1. halted: run {halt.run_id} is {halt.status}")
            (item,) = halt.review_items
            guard.approve(item, by="ann", note="known customer")
            guard.resume(run.id, by="ann")
            print(f"2. ann approved item {item} and resumed the run")
        try:
            with guard.run(run_id=run.id):
                agent()
        except RunHalted as halt:
            print(f"3. halted again: {halt}")
        log = guard.log(run.id)
        print("\naction log:")
        for a in log.actions:
            print(f"  {a.seq}  {a.tool:<18} {a.effect:<12} {a.state:<14} {a.external_ids}")
        print("compensations (newest first):")
        for c in sorted(log.compensations, key=lambda c: c.started_at):
            print(f"  action {c.seq}: {c.undo} -> {c.state}")
        print("review items:")
        for i in log.review_items:
            print(f"  {i.id}  action {i.seq}  {i.reason:<12} {i.status:<8} {i.resolution or ''}")
        print(f"\nworld after compensation: orders={WORLD['orders']} payments={WORLD['payments']}")
        assert not WORLD["orders"] and not WORLD["payments"]
        assert guard.verify(run.id).ok


if __name__ == "__main__":
    main()
