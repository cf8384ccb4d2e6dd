"""Approvals answered with more than yes or no: approved with edited arguments (recorded, and
run once with them), or answered with a reply the agent gets instead of the call."""

from __future__ import annotations

from typing import Any

import pytest

from guardrail import Conflict, Guard, PolicyError, RunHalted


class Payments:
    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.paid: list[tuple[int, str]] = []
        guard.policy(
            "pay",
            effect="irreversible",
            approval="args.amount > 1000",
            redact=["args.card"],
        )

    def pay(self, amount: int, to: str, card: str) -> dict[str, Any]:
        self.paid.append((amount, to))
        return {"paid": amount, "to": to}

    def agent(self, run_id: str | None = None) -> tuple[str, Any]:
        with self.guard.run(agent="billing", run_id=run_id) as run:
            result = run.call(
                "pay", {"amount": 5000, "to": "acme", "card": "4111111111111111"}, fn=self.pay
            )
        return run.id, result

    def halted(self) -> tuple[str, str]:
        with pytest.raises(RunHalted) as halted:
            self.agent()
        return halted.value.run_id, halted.value.review_items[0]


@pytest.fixture
def payments(guard: Guard) -> Payments:
    return Payments(guard)


def test_an_approval_with_edited_arguments_runs_once_with_them(payments: Payments) -> None:
    guard = payments.guard
    run_id, item = payments.halted()
    decision = guard.approve(item, by="ana", note="cap it", args={"amount": 900})
    assert decision.landed and decision.status == "approved"
    guard.resume(run_id, by="ana")
    _, result = payments.agent(run_id)  # the agent asks for 5000 again, as before
    assert payments.paid == [(900, "acme")]
    assert result == {"paid": 900, "to": "acme"}

    (action,) = guard.log(run_id).actions
    assert (action.state, action.args["amount"], action.args["card"]) == (
        "succeeded",
        900,
        "[REDACTED]",
    )
    (approved, _resume) = guard.history(run_id)
    assert (approved.what, approved.by, approved.answer) == (
        "approved",
        "ana",
        {"args": {"amount": 900}},
    )
    assert guard.verify(run_id).ok


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        ({"amount": 900, "currency": "EUR"}, "no argument currency"),
        ({"card": "4000056655665556"}, "redacted"),
        ({"to": "sk_live_51HqLyjWDarjtT1zdp7dcXYZabc"}, "redacted"),
        ({"amount": object()}, "not JSON"),
    ],
)
def test_edits_the_log_could_not_keep_are_refused_and_nothing_changes(
    payments: Payments, edit: dict[str, Any], words: str
) -> None:
    guard = payments.guard
    run_id, item = payments.halted()
    before = guard.log(run_id).model_dump()
    with pytest.raises(PolicyError, match=words) as refused:
        guard.approve(item, by="ana", args=edit)
    assert refused.value.field == "args"
    assert guard.log(run_id).model_dump() == before


def test_a_reply_is_what_the_agent_gets_and_the_tool_never_runs(payments: Payments) -> None:
    guard = payments.guard
    run_id, item = payments.halted()
    guard.reply(item, "Pay acme through the EU entity instead", by="bo", note="policy")
    guard.resume(run_id, by="bo")
    _, result = payments.agent(run_id)
    assert result == "Pay acme through the EU entity instead"
    assert payments.paid == []
    (action,) = guard.log(run_id).actions
    assert (action.state, action.result) == ("rejected", "Pay acme through the EU entity instead")
    assert guard.require_run(run_id).status == "completed"
    assert [e.what for e in guard.history(run_id)] == ["replied", "resume"]


def test_two_reviewers_with_different_edits_land_exactly_one(payments: Payments) -> None:
    guard = payments.guard
    _, item = payments.halted()
    assert guard.approve(item, by="ana", args={"amount": 900}).landed
    assert not guard.approve(item, by="ana", args={"amount": 900}).landed  # a repeat
    with pytest.raises(Conflict, match="another answer"):
        guard.approve(item, by="bo", args={"amount": 800})
    with pytest.raises(Conflict, match="already approved"):
        guard.reply(item, "no", by="bo")


def test_only_an_approval_edits_and_a_reply_must_be_json(payments: Payments) -> None:
    guard = payments.guard
    _, item = payments.halted()
    with pytest.raises(PolicyError, match="not JSON"):
        guard.reply(item, object(), by="bo")
    from guardrail import decisions

    with pytest.raises(PolicyError, match="only an approval"):
        decisions.decide(guard.core, item, False, "bo", None, edit={"amount": 1})


def test_a_replay_after_the_edited_call_returns_its_result_without_paying_again(
    payments: Payments,
) -> None:
    guard = payments.guard
    guard.policy("ship", effect="read_only", on_failure="hold", retry={"attempts": 1})
    down = [True]

    def ship() -> str:
        if down[0]:
            raise RuntimeError("carrier is down")
        return "shipped"

    def agent(run_id: str | None = None) -> str:
        with guard.run(agent="billing", run_id=run_id) as run:
            run.call("pay", {"amount": 5000, "to": "acme", "card": "4111"}, fn=payments.pay)
            run.call("ship", {}, fn=ship)
        return run.id

    with pytest.raises(RunHalted) as halted:
        agent()
    run_id = halted.value.run_id
    guard.approve(halted.value.review_items[0], by="ana", args={"amount": 900})
    guard.resume(run_id, by="ana")
    with pytest.raises(RunHalted):
        agent(run_id)  # pays 900, then the carrier is down: held
    guard.resume(run_id, by="ana")
    down[0] = False
    agent(run_id)  # the agent starts over: the payment is not made again
    assert payments.paid == [(900, "acme")]
    assert guard.require_run(run_id).status == "completed"
