"""Deciding many runs at once: groups of like halts, a preview that changes nothing, and one
outcome per run, with the runs another reviewer decided meanwhile left alone."""

from __future__ import annotations

import pytest

from guardrail import Guard, GuardrailError, RunHalted
from guardrail.testing import ScriptedTool


class Shop:
    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.cancelled: list[str] = []
        guard.policy(
            "create_order",
            effect="reversible",
            undo=lambda action: self.cancelled.append(action.result["id"]),
        )
        guard.policy("ship", effect="read_only", on_failure="hold", retry={"attempts": 1})

    def halted(self, order: str, why: str) -> str:
        with pytest.raises(RunHalted), self.guard.run(agent="shop") as run:
            run.call("create_order", {"item": order}, fn=lambda item: {"id": item})
            run.call("ship", {"order": order}, fn=ScriptedTool([RuntimeError(why)]))
        return run.id


@pytest.fixture
def shop(guard: Guard) -> Shop:
    return Shop(guard)


def test_twenty_runs_halted_by_one_outage_are_one_group_aborted_at_once(shop: Shop) -> None:
    guard = shop.guard
    outage = [shop.halted(f"ord_{i}", f"carrier timeout after {i}s for ord_{i}") for i in range(20)]
    other = shop.halted("ord_x", "address 'Main St 5' not found")

    found = guard.groups()
    assert [len(g.run_ids) for g in found] == [20, 1]
    assert set(found[0].run_ids) == set(outage) and found[1].run_ids == [other]

    before = [guard.log(r).model_dump() for r in outage]
    previews = guard.preview(found[0].run_ids, "abort")
    assert [p.refused for p in previews] == [None] * 20
    assert {p.would for p in previews} == {"abort: undo 1 action(s), list 0 for review"}
    assert [guard.log(r).model_dump() for r in outage] == before  # a preview changes nothing

    outcomes = guard.decide(found[0].run_ids, "abort", by="ana", note="carrier outage")
    assert [(o.status, o.landed, o.error) for o in outcomes] == [("aborted", True, None)] * 20
    assert sorted(shop.cancelled) == sorted(f"ord_{i}" for i in range(20))
    assert guard.require_run(other).status == "pending_review"
    assert next((d.what, d.by, d.note) for d in guard.history(outage[0])) == (
        "abort",
        "ana",
        "carrier outage",
    )


def test_a_run_decided_meanwhile_is_left_alone_and_said_so(shop: Shop) -> None:
    guard = shop.guard
    runs = [shop.halted(f"o{i}", "carrier down") for i in range(3)]
    guard.resume(runs[1], by="bo")  # another reviewer, between preview and decision
    outcomes = guard.decide(runs, "abort", by="ana")
    assert [o.landed for o in outcomes] == [True, False, True]
    assert "running" in (outcomes[1].error or "")
    assert guard.require_run(runs[1]).status == "running"
    assert shop.cancelled.count("o1") == 0


def test_a_resume_waits_for_answers_about_in_doubt_calls(guard: Guard) -> None:
    guard.policy("pay", effect="irreversible")
    guard.policy("ship", effect="read_only", retry={"attempts": 1})
    with pytest.raises(RunHalted), guard.run() as run:
        run.call("pay", {"amount": 5}, fn=ScriptedTool([TimeoutError("gateway timeout")]))
    (preview,) = guard.preview([run.id], "resume")
    assert preview.refused is not None and "in-doubt" in preview.refused
    (outcome,) = guard.decide([run.id], "resume", by="ana")
    assert not outcome.landed and guard.require_run(run.id).status == "pending_review"

    (answer,) = guard.decide([run.id], "resolve", resolution="not_happened", by="ana")
    assert answer.landed
    (resumed,) = guard.decide([run.id], "resume", by="ana")
    assert resumed.landed and resumed.status == "running"


@pytest.mark.parametrize(
    ("decision", "resolution", "field"),
    [
        ("retry", None, "decision"),
        ("resolve", "approved", "resolution"),
        ("resolve", None, "resolution"),
    ],
)
def test_bad_bulk_decisions_are_refused_before_anything_changes(
    shop: Shop, decision: str, resolution: str | None, field: str
) -> None:
    run_id = shop.halted("o", "carrier down")
    with pytest.raises(GuardrailError) as refused:
        shop.guard.decide([run_id], decision, by="ana", resolution=resolution)
    assert refused.value.field == field
    assert shop.guard.require_run(run_id).status == "pending_review"
