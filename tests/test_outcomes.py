"""Unknown outcomes: a call that raised may still have happened.

An exception proves a call did nothing only when the policy says so (``not_done``); otherwise a
reversible or irreversible call that raised is ``in_doubt``: its probe, else a person, says
whether it happened, and nothing runs it again before that."""

from __future__ import annotations

from typing import Any

import pytest

from guardrail import Guard, Review, RunHalted, RunStateError
from guardrail.errors import PolicyError
from guardrail.policy import ErrorResult, make_policy


class Payments:
    """A payment API whose refunds time out after the request was sent (so they happen)."""

    def __init__(self) -> None:
        self.refunds: list[int] = []
        self.charges: dict[str, int] = {}
        self.timeouts = 1  # how many calls still time out

    def refund(self, amount: int) -> dict[str, Any]:
        self.refunds.append(amount)  # the money moved...
        if self.timeouts:
            self.timeouts -= 1
            raise TimeoutError("no answer from the bank in 30 s")  # ...but we never heard
        return {"refund": f"re_{len(self.refunds)}"}

    def charge(self, order: str, amount: int) -> dict[str, Any]:
        self.charges[order] = amount
        if self.timeouts:
            self.timeouts -= 1
            raise TimeoutError("read timed out")
        return {"charge": f"ch_{order}"}

    def uncharge(self, args: dict[str, Any]) -> None:
        self.charges.pop(args["order"])


REFUND_REVIEW = Review(kind="mark", owner="finance", instructions="Check the bank's refund list")


def shop(guard: Guard, pay: Payments, **refund: Any) -> tuple[Any, Any]:
    @guard.tool(effect="irreversible", review=REFUND_REVIEW, **refund)
    def refund_order(amount: int) -> dict[str, Any]:
        return pay.refund(amount)

    @guard.tool(effect="read_only")
    def lookup(order: str) -> str:
        return order

    return refund_order, lookup


def open_items(guard: Guard, run_id: str) -> list[Any]:
    return guard.store.review_items(run_id=run_id, status="open")


def test_a_timeout_of_an_irreversible_call_is_in_doubt_with_the_review_instructions(
    guard: Guard,
) -> None:
    pay = Payments()
    refund_order, _ = shop(guard, pay)
    with pytest.raises(RunHalted, match="may or may not have taken effect"), guard.run() as run:
        refund_order(40)
    log = guard.log(run.id)
    assert log.run.status == "pending_review"
    assert [(a.tool, a.state) for a in log.actions] == [("refund_order", "in_doubt")]
    assert "TimeoutError" in (log.actions[0].error or "")
    [item] = open_items(guard, run.id)
    assert (item.reason, item.kind, item.owner) == ("in_doubt", "mark", "finance")
    text = item.instructions or ""
    assert "Check the bank's refund list" in text  # the policy's review instructions
    assert "TimeoutError" in text and '{"amount":40}' in text  # the error and the arguments
    assert [s.do for s in guard.plan_undo(run.id)] == ["review"]  # not "nothing to undo"


def test_resume_waits_for_a_persons_word_and_never_runs_it_twice_without_it(
    guard: Guard,
) -> None:
    pay = Payments()
    refund_order, _ = shop(guard, pay)
    with pytest.raises(RunHalted), guard.run() as run:
        refund_order(40)
    with pytest.raises(RunStateError, match="happened"):
        guard.resume(run.id, by="ann")  # nobody said whether the refund happened
    [item] = open_items(guard, run.id)
    guard.resolve(item.id, "happened", by="ann", note="the bank lists re_1")
    guard.resume(run.id, by="ann")
    with guard.run(run_id=run.id):
        assert refund_order(40) is None  # the replay does not refund again
    assert pay.refunds == [40]
    assert guard.log(run.id).actions[0].state == "succeeded"


def test_a_person_saying_it_did_not_happen_lets_the_replay_run_it(guard: Guard) -> None:
    pay = Payments()
    refund_order, _ = shop(guard, pay)
    with pytest.raises(RunHalted), guard.run() as run:
        refund_order(40)
    pay.refunds.clear()  # the bank says: no refund arrived
    [item] = open_items(guard, run.id)
    guard.resolve(item.id, "not_happened", by="ann")
    guard.resume(run.id, by="ann")
    with guard.run(run_id=run.id):
        assert refund_order(40) == {"refund": "re_1"}
    assert pay.refunds == [40]
    assert [a.state for a in guard.log(run.id).actions] == ["failed", "succeeded"]


def test_a_declared_not_done_exception_is_a_plain_failure(guard: Guard) -> None:
    class Declined(Exception):
        pass

    @guard.tool(effect="irreversible", not_done=[Declined])
    def charge(amount: int) -> None:
        raise Declined("card declined")

    with pytest.raises(RunHalted, match="failed"), guard.run() as run:
        charge(5)
    assert guard.log(run.id).actions[0].state == "failed"
    assert open_items(guard, run.id) == []  # nothing to check: it did not happen


def test_unknown_wins_over_not_done_and_read_only_failures_prove_nothing_happened(
    guard: Guard,
) -> None:
    policy = make_policy(
        "t", effect="reversible", undo=lambda: None, not_done=[OSError], unknown=[TimeoutError]
    )
    assert policy.outcome_of(TimeoutError()) == "unknown"  # a subclass of OSError
    assert policy.outcome_of(ConnectionRefusedError()) == "not_done"
    assert policy.outcome_of(ValueError()) == "unknown"
    assert make_policy("r", effect="read_only").outcome_of(ValueError()) == "not_done"


@pytest.mark.parametrize(
    ("verdict", "state", "undone"),
    [
        ({"charge": "ch_o1"}, "compensated", True),  # it happened: undone like a success
        (False, "failed", False),  # it did not: nothing to undo
        (None, "in_doubt", False),  # cannot tell: a person checks
    ],
)
def test_a_probe_settles_a_reversible_call_with_an_unknown_outcome(
    guard: Guard, verdict: Any, state: str, undone: bool
) -> None:
    pay = Payments()
    asked: list[dict[str, Any]] = []

    def probe(args: dict[str, Any]) -> Any:
        asked.append(args)
        return verdict

    @guard.tool(effect="reversible", undo=pay.uncharge, probe=probe)
    def charge(order: str, amount: int) -> dict[str, Any]:
        return pay.charge(order, amount)

    with pytest.raises(RunHalted), guard.run() as run:
        charge("o1", 12)
    assert asked == [{"order": "o1", "amount": 12}]
    assert guard.log(run.id).actions[0].state == state
    assert ("o1" not in pay.charges) is undone
    reasons = [i.reason for i in open_items(guard, run.id)]
    assert reasons == (["in_doubt"] if state == "in_doubt" else [])


def test_abort_undoes_an_in_doubt_call_only_once_a_person_says_it_happened(
    guard: Guard,
) -> None:
    pay = Payments()

    @guard.tool(effect="reversible", undo=pay.uncharge)
    def charge(order: str, amount: int) -> dict[str, Any]:
        return pay.charge(order, amount)

    with pytest.raises(RunHalted), guard.run(on_failure="hold") as run:
        charge("o1", 12)
    assert [s.do for s in guard.plan_undo(run.id)] == ["review"]
    [doubt] = [i for i in open_items(guard, run.id) if i.reason == "in_doubt"]
    guard.resolve(doubt.id, "happened", by="ann")
    assert [s.do for s in guard.plan_undo(run.id)] == ["undo"]
    guard.abort(run.id, by="ann")
    guard.abort(run.id, by="ann")
    assert pay.charges == {}
    assert guard.log(run.id).actions[0].state == "compensated"


def test_an_error_result_returned_to_the_model_does_not_halt(guard: Guard) -> None:
    calls: list[str] = []

    @guard.tool(
        effect="irreversible",
        error_result=ErrorResult(
            when="result.startsWith('Error:')", means="not_done", then="return"
        ),
    )
    def send(to: str) -> str:
        calls.append(to)
        return "Error: unknown recipient" if "@" not in to else "sent"

    with guard.run() as run:
        assert send("bob") == "Error: unknown recipient"  # the model corrects itself
        assert send("bob@example.com") == "sent"
    assert [a.state for a in guard.log(run.id).actions] == ["failed", "succeeded"]
    assert guard.require_run(run.id).status == "completed"


def test_an_error_result_of_unknown_meaning_halts_in_doubt(guard: Guard) -> None:
    guard.policy(
        "post",
        effect="irreversible",
        error_result={"when": "result.isError == true"},  # an MCP-style error result
    )
    with pytest.raises(RunHalted), guard.run() as run:
        run.call("post", {"n": 1}, fn=lambda n: {"isError": True, "content": "502"})
    action = guard.log(run.id).actions[0]
    assert action.state == "in_doubt" and "502" in (action.error or "")
    assert [i.reason for i in open_items(guard, run.id)] == ["in_doubt"]


def test_returning_an_error_whose_outcome_is_unknown_is_refused() -> None:
    with pytest.raises(PolicyError, match="means='not_done'"):
        make_policy("t", effect="read_only", error_result={"when": "true", "then": "return"})


def test_a_policy_file_declares_outcomes(tmp_path: Any, guard: Guard) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(
        """
tools:
  refund:
    effect: irreversible
    not_done: [ValueError, ConnectionRefusedError]
    unknown: [TimeoutError]
    injected: [bank]
  send:
    effect: irreversible
    error_result: {when: "result.startsWith('Error:')", means: not_done, then: return}
"""
    )
    [refund, send] = sorted(guard.load_policies(path), key=lambda p: p.name)
    assert refund.not_done == (ValueError, ConnectionRefusedError)
    assert refund.unknown == (TimeoutError,) and refund.injected == ("bank",)
    assert refund.outcome_of(ValueError()) == "not_done"
    assert send.error_result is not None and send.error_result.then == "return"
    bad = tmp_path / "bad.yaml"
    bad.write_text("tools:\n  t:\n    effect: irreversible\n    not_done: [os.system]\n")
    with pytest.raises(PolicyError, match="not_done"):
        guard.load_policies(bad)


def test_a_not_done_failure_can_go_back_to_the_agent_instead_of_halting(guard: Guard) -> None:
    class BadDate(ValueError):
        pass

    booked: list[str] = []

    @guard.tool(effect="irreversible", not_done=[BadDate], on_not_done="raise")
    def book(day: str) -> str:
        if day == "yesterday":
            raise BadDate("cannot book in the past")  # checked before anything is booked
        booked.append(day)
        return f"booked {day}"

    with guard.run() as run:
        with pytest.raises(BadDate, match="in the past"):  # the agent (and its model) sees it
            book("yesterday")
        assert book("monday") == "booked monday"  # the run goes on
    log = guard.log(run.id)
    assert [a.state for a in log.actions] == ["failed", "succeeded"]
    assert log.run.status == "completed" and booked == ["monday"]


def test_an_unknown_outcome_still_halts_when_not_done_failures_are_raised(guard: Guard) -> None:
    @guard.tool(effect="irreversible", not_done=[ValueError], on_not_done="raise")
    def book(day: str) -> str:
        raise TimeoutError("no answer")

    with pytest.raises(RunHalted), guard.run() as run:
        book("monday")
    assert guard.log(run.id).actions[0].state == "in_doubt"
