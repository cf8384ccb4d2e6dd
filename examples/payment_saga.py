"""The classic saga: order -> payment -> inventory -> confirmation email -> shipment.

Each step that changes the world declares how to take it back (its undo), except the email,
which cannot be unsent: it is irreversible and names what a person should do instead. With
``--fail-shipment`` the carrier fails; guardrail halts the run, undoes inventory, payment and
order newest first, and lists the email for review.

    python examples/payment_saga.py --fail-shipment
    python examples/payment_saga.py                    # the happy path
"""

from __future__ import annotations

import argparse
import itertools
from datetime import datetime
from typing import Any

from guardrail import Guard, Retry, Review, RunHalted


class Services:
    """Stand-ins for the shop's real systems, so the demo shows what changed in the world."""

    def __init__(self) -> None:
        self.ids = itertools.count(1001)
        self.orders: dict[str, dict[str, Any]] = {}
        self.payments: dict[str, dict[str, Any]] = {}
        self.stock: dict[str, int] = {"book": 5, "pen": 40}
        self.outbox: list[str] = []
        self.shipments: dict[str, str] = {}
        self.undo_log: list[str] = []

    def state(self) -> str:
        orders = {k: v["status"] for k, v in self.orders.items()}
        payments = {k: v["status"] for k, v in self.payments.items()}
        return (
            f"orders={orders} payments={payments} stock={self.stock} "
            f"emails_sent={len(self.outbox)} shipments={self.shipments}"
        )


class CarrierUnavailable(ConnectionError):
    """The carrier answered 503: it refused the request, so nothing was shipped."""


def build(guard: Guard, svc: Services, *, fail_shipment: bool) -> Any:
    # -- undos: each receives what it asks for by name (args, result, external_ids) ----------
    def cancel_order(external_ids: dict[str, str]) -> None:
        svc.orders[external_ids["order_id"]]["status"] = "cancelled"
        svc.undo_log.append(f"cancel_order {external_ids['order_id']}")

    def refund_payment(external_ids: dict[str, str]) -> None:
        svc.payments[external_ids["payment_id"]]["status"] = "refunded"
        svc.undo_log.append(f"refund_payment {external_ids['payment_id']}")

    def release_stock(args: dict[str, Any]) -> None:
        svc.stock[args["item"]] += args["quantity"]
        svc.undo_log.append(f"release_stock {args['quantity']} x {args['item']}")

    # -- tools -------------------------------------------------------------------------------
    @guard.tool(effect="reversible", undo=cancel_order, external_ids={"order_id": "result.id"})
    def create_order(customer: str, item: str, quantity: int) -> dict[str, Any]:
        order_id = f"ord_{next(svc.ids)}"
        svc.orders[order_id] = {"customer": customer, "item": item, "status": "open"}
        return {"id": order_id}

    @guard.tool(
        effect="reversible",
        undo=refund_payment,
        external_ids={"payment_id": "result.id"},
        redact=["args.card"],
        retry=Retry(attempts=3, on=(TimeoutError,)),  # the gateway dedups by order id
    )
    def charge_payment(order_id: str, amount: float, card: str) -> dict[str, Any]:
        payment_id = f"pay_{next(svc.ids)}"
        svc.payments[payment_id] = {"order": order_id, "amount": amount, "status": "captured"}
        return {"id": payment_id, "amount": amount}

    @guard.tool(effect="reversible", undo=release_stock)
    def reserve_stock(item: str, quantity: int) -> dict[str, Any]:
        svc.stock[item] -= quantity
        return {"item": item, "left": svc.stock[item]}

    @guard.tool(
        effect="irreversible",
        review=Review(
            kind="correct",
            owner="support",
            instructions="Send the customer a correction: the order was cancelled and refunded",
        ),
    )
    def send_confirmation(to: str, order_id: str) -> dict[str, str]:
        svc.outbox.append(f"to {to}: order {order_id} confirmed")
        return {"message_id": f"msg_{next(svc.ids)}"}

    # A 503 proves the carrier refused the request: nothing was shipped (not_done). Any other
    # error (a timeout after the request left) would leave the outcome unknown, for a person.
    @guard.tool(
        effect="reversible",
        undo=lambda args: svc.shipments.pop(args["order_id"]),
        not_done=[CarrierUnavailable],
    )
    def create_shipment(order_id: str, address: str) -> dict[str, str]:
        if fail_shipment:
            raise CarrierUnavailable("carrier API returned 503 Service Unavailable")
        svc.shipments[order_id] = "label printed"
        return {"tracking": f"trk_{next(svc.ids)}"}

    def agent() -> None:
        """What an LLM agent would decide to do, step by step."""
        order = create_order(customer="ann@example.com", item="book", quantity=2)
        charge_payment(order_id=order["id"], amount=42.0, card="4242 4242 4242 4242")
        reserve_stock(item="book", quantity=2)
        send_confirmation(to="ann@example.com", order_id=order["id"])
        create_shipment(order_id=order["id"], address="1 Main St")

    return agent


def show(guard: Guard, run_id: str) -> None:
    log = guard.log(run_id)
    run = log.run
    print(f"\nrun {run.id}  agent={run.agent}  status={run.status.upper()}")
    if run.reason:
        print(f"  reason: {run.reason}")
    print("\naction log (in the order things happened)")
    print(f"  {'seq':>3}  {'tool':18} {'effect':12} {'state':20} external ids")
    for a in log.actions:
        ids = ", ".join(f"{k}={v}" for k, v in a.external_ids.items()) or "-"
        print(f"  {a.seq:>3}  {a.tool:18} {a.effect:12} {a.state:20} {ids}")
        if a.error:
            print(f"       error: {a.error}")
    if log.compensations:
        print("\ncompensations (in the order they ran: newest action first)")
        tools = {a.seq: a.tool for a in log.actions}
        for c in sorted(log.compensations, key=lambda c: c.started_at):
            when = datetime.fromtimestamp(c.started_at).strftime("%H:%M:%S.%f")[:-3]
            print(
                f"  {when}  undo of #{c.seq} {tools[c.seq]:18} via {c.undo:16} "
                f"{c.state} after {c.attempts} attempt(s)"
            )
    if log.review_items:
        print("\nreview items (what a person must decide)")
        for i in log.review_items:
            print(
                f"  [{i.id}] #{i.seq} {i.reason}: kind={i.kind} owner={i.owner} "
                f"status={i.status}\n      {i.instructions}"
            )
    verdict = guard.verify(run_id)
    chain = "intact" if verdict.ok else "BROKEN: " + "; ".join(verdict.problems)
    print(f"\nhash chain: {verdict.entries} entries, {chain}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fail-shipment", action="store_true", help="make the carrier fail")
    parser.add_argument("--store", default="sqlite:///guardrail-demo.db")
    opts = parser.parse_args()

    svc = Services()
    with Guard(store=opts.store) as guard:
        agent = build(guard, svc, fail_shipment=opts.fail_shipment)
        print(f"world before: {svc.state()}")
        try:
            with guard.run(agent="checkout", metadata={"customer": "ann@example.com"}) as run:
                agent()
            print("\nthe run completed")
        except RunHalted as halt:
            print(f"\nHALTED: {halt}")
        show(guard, run.id)
        print(f"\nworld after:  {svc.state()}")
        if svc.undo_log:
            print(f"undos ran:    {' -> '.join(svc.undo_log)}")
        if run.status == "pending_review":
            items = [i.id for i in guard.log(run.id).review_items]
            print(
                "\nnext, a person decides: "
                f"guard.resolve({items[0]!r}, 'done_manually', by='you') for each item, then "
                f"guard.abort({run.id!r}, by='you') or guard.resume({run.id!r}, by='you')"
            )


if __name__ == "__main__":
    main()
