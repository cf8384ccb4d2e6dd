"""Policy files, approval gates, undo tools, precedence, hints and plan_undo, on the stored log."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from guardrail import CallRejected, Conflict, Guard, PolicyError, RunHalted, RunStateError

POLICY = """
tools:
  create_order:
    effect: reversible
    undo: {tool: cancel_order, args: {order_id: result.order_id, why: args.note}}
    external_ids: {order_id: result.order_id}
  charge:
    effect: reversible
    undo: {call: tests.test_policies.refund}
    approval: {when: "args.amount > 1000", ttl: 1h}
    retry: {attempts: 3, on: [TimeoutError], wait_initial: 0}
  update_bundle:
    effect: irreversible
    review: {kind: correct, owner: catalog}
    approval: {when: "size(args.remove) * 2 > size(args.items)"}
  send_email:
    effect: irreversible
    review: {kind: correct, owner: support, instructions: "Send a correction if needed"}
    redact: [args.body]
"""

REFUNDS: list[str] = []


def refund(result: dict[str, Any]) -> None:
    REFUNDS.append(result["charge_id"])


def refunds() -> list[str]:
    """The policy file imports this module by its dotted path, which pytest may import as
    another module object: read the list the undo really appended to."""
    return importlib.import_module("tests.test_policies").REFUNDS  # type: ignore[no-any-return]


class Shop:
    def __init__(self, guard: Guard) -> None:
        self.cancelled: list[tuple[str, str]] = []
        self.charged: list[int] = []
        self.bundles: list[list[str]] = []
        self.emails = 0
        refunds().clear()

        def cancel_order(order_id: str, why: str) -> None:
            self.cancelled.append((order_id, why))

        guard.register(cancel_order)

        @guard.tool
        def create_order(item: str, note: str = "") -> dict[str, str]:
            return {"order_id": f"o-{item}"}

        @guard.tool
        def charge(amount: int) -> dict[str, str]:
            self.charged.append(amount)
            return {"charge_id": f"c-{len(self.charged)}"}

        @guard.tool
        def update_bundle(items: list[str], remove: list[str]) -> str:
            self.bundles.append(remove)
            return "ok"

        @guard.tool
        def send_email(to: str, body: str) -> str:
            self.emails += 1
            return "sent"

        @guard.tool(effect="reversible", undo=lambda: None)
        def ship(fail: bool = False) -> str:
            if fail:
                raise RuntimeError("carrier down")
            return "shipped"

        self.create_order, self.charge, self.update_bundle = create_order, charge, update_bundle
        self.send_email, self.ship = send_email, ship


@pytest.fixture
def loaded(guard: Guard, tmp_path: Path) -> tuple[Guard, Shop]:
    path = tmp_path / "policies.yaml"
    path.write_text(POLICY)
    guard.load_policies(path)
    return guard, Shop(guard)


def test_undo_tool_and_dotted_undo_from_a_policy_file(loaded: tuple[Guard, Shop]) -> None:
    guard, shop = loaded
    with pytest.raises(RunHalted) as halted, guard.run(agent="shop") as run:
        shop.create_order(item="book", note="gift")
        shop.charge(amount=20)
        shop.send_email(to="a@example.com", body="secret body")
        shop.ship(fail=True)
    assert halted.value.status == "pending_review"
    assert shop.cancelled == [("o-book", "gift")]  # mapped from result.* and args.*
    assert refunds() == ["c-1"]
    log = guard.log(run.id)
    states = {a.tool: a.state for a in log.actions}
    assert states == {
        "create_order": "compensated",
        "charge": "compensated",
        "send_email": "succeeded",
        "ship": "failed",
    }
    assert {c.seq: c.undo for c in log.compensations} == {1: "cancel_order", 2: "refund"}
    assert [i.reason for i in log.review_items] == ["irreversible"]
    assert log.review_items[0].owner == "support"
    assert log.action(3).args["body"] == "[REDACTED]"
    assert guard.find("o-book")[0].tool == "create_order"


def test_a_missing_undo_tool_becomes_a_review_item(guard: Guard, tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        '[tools.create_order]\neffect = "reversible"\n'
        '[tools.create_order.undo]\ntool = "cancel_order"\n'
        '[tools.fail]\neffect = "read_only"\n'
    )
    guard.load_policies(path)
    guard.policy("create_order", effect="read_only")  # code: the file still wins

    @guard.tool
    def create_order(item: str) -> str:
        return "o-1"

    @guard.tool
    def fail() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RunHalted), guard.run() as run:
        create_order(item="x")
        fail()
    log = guard.log(run.id)
    assert log.action(1).state == "compensation_failed"
    assert "cancel_order" in (log.compensations[0].error or "")
    assert "not registered" in (log.compensations[0].error or "")
    assert [i.reason for i in log.review_items] == ["compensation_failed"]


def test_approval_not_needed_runs(loaded: tuple[Guard, Shop]) -> None:
    guard, shop = loaded
    with guard.run() as run:
        assert shop.charge(amount=999) == {"charge_id": "c-1"}
    assert guard.require_run(run.id).status == "completed"
    assert guard.log(run.id).review_items == []


def test_approve_then_resume_runs_the_call_once(loaded: tuple[Guard, Shop]) -> None:
    guard, shop = loaded

    def agent() -> None:
        shop.create_order(item="tv")
        shop.charge(amount=5000)
        shop.send_email(to="a@example.com", body="thanks")

    with pytest.raises(RunHalted) as halted, guard.run() as run:
        agent()
    assert halted.value.status == "awaiting_approval"
    assert shop.charged == [] and shop.emails == 0
    log = guard.log(run.id)
    assert log.run.status == "awaiting_approval"
    assert [(a.tool, a.state) for a in log.actions] == [
        ("create_order", "succeeded"),
        ("charge", "awaiting_approval"),
    ]
    (item,) = log.review_items
    assert (item.reason, item.kind, item.seq) == ("approval", "approve", 2)
    assert halted.value.review_items == (item.id,)

    with pytest.raises(RunStateError, match="approve or reject"):
        guard.resume(run.id, by="ann")
    decision = guard.approve(item.id, by="ann", note="known customer")
    assert decision.landed and decision.status == "approved"
    assert not guard.approve(item.id, by="ann").landed  # a repeat
    with pytest.raises(Conflict):
        guard.reject(item.id, by="bob")
    guard.resume(run.id, by="ann")
    with guard.run(run_id=run.id):
        agent()
    assert shop.charged == [5000] and shop.emails == 1
    log = guard.log(run.id)
    assert [(a.seq, a.tool, a.state) for a in log.actions] == [
        (1, "create_order", "succeeded"),
        (2, "charge", "succeeded"),
        (3, "send_email", "succeeded"),
    ]
    assert log.run.status == "completed"
    assert log.review_items[0].resolved_by == "ann"
    assert guard.verify(run.id).ok


def test_reject_is_seen_by_the_agent(loaded: tuple[Guard, Shop]) -> None:
    guard, shop = loaded
    with pytest.raises(RunHalted) as halted, guard.run() as run:
        shop.charge(amount=5000)
    guard.reject(halted.value.review_items[0], by="bob", reason="too expensive")
    guard.resume(run.id, by="bob")
    seen: list[str] = []
    with guard.run(run_id=run.id):
        try:
            shop.charge(amount=5000)
        except CallRejected as exc:  # an ordinary exception: the agent can change course
            seen.append(str(exc))
        shop.charge(amount=10)
    assert "rejected by bob: too expensive" in seen[0]
    assert shop.charged == [10]
    log = guard.log(run.id)
    assert [(a.tool, a.state) for a in log.actions] == [
        ("charge", "rejected"),
        ("charge", "succeeded"),
    ]
    assert log.review_items[0].resolution == "rejected"


def test_changed_arguments_need_a_new_approval(loaded: tuple[Guard, Shop]) -> None:
    guard, shop = loaded
    with pytest.raises(RunHalted) as first, guard.run() as run:
        shop.charge(amount=5000)
    guard.approve(first.value.review_items[0], by="ann")
    guard.resume(run.id, by="ann")
    with pytest.raises(RunHalted) as second, guard.run(run_id=run.id):
        shop.charge(amount=9000)  # the agent changed its mind: not what was approved
    assert second.value.status == "awaiting_approval"
    assert shop.charged == []
    new = second.value.review_items
    assert len(new) == 1 and new[0] != first.value.review_items[0]
    assert [a.state for a in guard.log(run.id).actions] == ["approved", "awaiting_approval"]


def test_the_same_call_id_with_edited_arguments_needs_a_new_approval(
    loaded: tuple[Guard, Shop],
) -> None:
    guard, _ = loaded
    charged: list[int] = []

    def charge(amount: int) -> str:
        charged.append(amount)
        return "ok"

    with pytest.raises(RunHalted) as first, guard.run() as run:
        run.call("charge", {"amount": 5000}, fn=charge, call_id="call-1")
    guard.approve(first.value.review_items[0], by="ann")
    guard.resume(run.id, by="ann")
    with pytest.raises(RunHalted), guard.run(run_id=run.id) as again:
        again.call("charge", {"amount": 7000}, fn=charge, call_id="call-1")
    assert charged == []


def test_an_approval_expires(loaded: tuple[Guard, Shop], monkeypatch: pytest.MonkeyPatch) -> None:
    guard, shop = loaded
    with pytest.raises(RunHalted) as first, guard.run() as run:
        shop.charge(amount=5000)
    guard.approve(first.value.review_items[0], by="ann")
    guard.resume(run.id, by="ann")
    import guardrail.call

    later = guardrail.call.now() + 3601  # the policy's ttl is 1h
    monkeypatch.setattr(guardrail.call, "now", lambda: later)
    with pytest.raises(RunHalted) as second, guard.run(run_id=run.id):
        shop.charge(amount=5000)
    assert shop.charged == []
    assert second.value.review_items != first.value.review_items
    assert [a.state for a in guard.log(run.id).actions] == ["expired", "awaiting_approval"]


def test_bundle_change_needs_approval_when_more_than_half_is_removed(
    loaded: tuple[Guard, Shop],
) -> None:
    guard, shop = loaded
    items = ["a", "b", "c", "d"]
    with guard.run():
        shop.update_bundle(items=items, remove=["a", "b"])  # half: fine
    with pytest.raises(RunHalted) as halted, guard.run():
        shop.update_bundle(items=items, remove=["a", "b", "c"])
    assert halted.value.status == "awaiting_approval"
    assert shop.bundles == [["a", "b"]]


def test_abort_while_awaiting_approval_rejects_the_request(loaded: tuple[Guard, Shop]) -> None:
    guard, shop = loaded
    with pytest.raises(RunHalted) as halted, guard.run() as run:
        shop.create_order(item="tv", note="")
        shop.charge(amount=5000)
    guard.abort(run.id, by="ann", reason="customer left")
    log = guard.log(run.id)
    assert log.run.status == "aborted"
    assert shop.charged == [] and shop.cancelled == [("o-tv", "")]
    assert [a.state for a in log.actions] == ["compensated", "rejected"]
    item = next(i for i in log.review_items if i.id == halted.value.review_items[0])
    assert (item.resolution, item.resolved_by, item.note) == ("rejected", "ann", "run aborted")


def test_a_condition_that_fails_at_run_time_asks_for_approval(guard: Guard) -> None:
    guard.policy("pay", effect="irreversible", approval="args.amount > 1000")
    ran: list[Any] = []

    @guard.tool
    def pay(amount: Any) -> None:
        ran.append(amount)

    with pytest.raises(RunHalted) as halted, guard.run() as run:
        pay(amount="a lot")  # a string: CEL cannot compare it with 1000
    assert ran == []
    assert "could not be evaluated" in (guard.log(run.id).review_items[0].instructions or "")
    assert "amount" in str(halted.value)


def test_plan_undo_changes_nothing(loaded: tuple[Guard, Shop]) -> None:
    guard, shop = loaded
    guard.policy("hold_me", effect="irreversible", on_failure="hold")

    @guard.tool
    def hold_me() -> None:
        raise RuntimeError("no")

    with pytest.raises(RunHalted), guard.run() as run:
        shop.create_order(item="a", note="")
        shop.send_email(to="x", body="y")
        hold_me()
    before = guard.log(run.id)
    plan = guard.plan_undo(run.id)
    assert [(s.seq, s.do, s.reason) for s in plan] == [
        (3, "nothing", None),
        (2, "review", "irreversible"),
        (1, "undo", None),
    ]
    assert "cancel_order" in plan[2].detail
    after = guard.log(run.id)
    assert [a.state for a in after.actions] == [a.state for a in before.actions]
    assert after.compensations == [] and shop.cancelled == []
    guard.abort(run.id, by="ann")
    assert [(s.seq, s.do) for s in guard.plan_undo(run.id)] == [
        (3, "nothing"),
        (2, "review"),  # still listed for a person: an irreversible action stays on the list
        (1, "nothing"),
    ]


def test_precedence_file_over_code_over_hints(guard: Guard, tmp_path: Path) -> None:
    guard.hint("a", read_only=True)
    guard.hint("b", destructive=True)
    guard.policy("b", effect="read_only")
    path = tmp_path / "p.yaml"
    path.write_text("tools:\n  c: {effect: irreversible, review: {kind: mark}}\n")
    guard.policy("c", effect="read_only")
    guard.load_policies(path)
    assert guard.find_policy("a").effect == "read_only"  # type: ignore[union-attr]
    assert guard.find_policy("b").effect == "read_only"  # type: ignore[union-attr]
    assert guard.find_policy("c").effect == "irreversible"  # type: ignore[union-attr]
    hinted = guard.hint("d", destructive=False, idempotent=True)
    assert (hinted.effect, hinted.idempotent, hinted.review.kind) == (  # type: ignore[union-attr]
        "irreversible",
        True,
        "mark",
    )
    assert guard.hint("e").review.kind == "isolate"  # type: ignore[union-attr]


def test_unknown_pack_and_options_on_files(guard: Guard, tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="neither a policy file"):
        guard.load_policies("no-such-pack")
    path = tmp_path / "p.yaml"
    path.write_text("tools: {}\n")
    with pytest.raises(PolicyError, match="options"):
        guard.load_policies(path, root_dir="/")
    with pytest.raises(PolicyError, match=r"options|unexpected"):
        guard.load_policies("langchain-file-management", nope=1)


def test_policies_from_a_mapping(guard: Guard) -> None:
    (policy,) = guard.load_policies({"tools": {"x": {"effect": "read_only"}}})
    assert policy.name == "x" and guard.find_policy("x") is policy
    with pytest.raises(PolicyError) as err:
        guard.load_policies({"tools": {"x": {"effect": "sometimes"}}})
    assert (err.value.tool, err.value.field) == ("x", "effect")
