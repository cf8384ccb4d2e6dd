"""The decision history of a run: who decided what and when, read back from its journal."""

from __future__ import annotations

from typing import Any

import pytest

from guardrail import Guard, RunHalted
from guardrail.history import decisions
from guardrail.testing import ScriptedTool


def _held(guard: Guard) -> str:
    guard.policy("create", effect="reversible", undo=lambda action: None)
    guard.policy("ship", effect="read_only", on_failure="hold", retry={"attempts": 1})
    with pytest.raises(RunHalted), guard.run(agent="shop") as run:
        run.call("create", {"item": "book"}, fn=lambda item: {"item": item})
        run.call("ship", {"order": "book"}, fn=ScriptedTool([RuntimeError("carrier is down")]))
    return run.id


def test_every_decision_is_in_the_history_in_order_with_who_and_note(guard: Guard) -> None:
    guard.policy("pay", effect="irreversible", approval="args.amount > 1000")
    paid: list[Any] = []

    @guard.tool
    def pay(amount: int) -> None:
        paid.append(amount)

    with pytest.raises(RunHalted) as halted, guard.run() as run:
        pay(amount=5000)
    item = halted.value.review_items[0]
    guard.approve(item, by="ana", note="known customer")
    guard.resume(run.id, by="bo", note="go on")

    history = decisions(run.id, guard.store.entries(run.id))
    assert [(d.what, d.by, d.note, d.item_id) for d in history] == [
        ("approved", "ana", "known customer", item),
        ("resume", "bo", "go on", None),
    ]
    assert history[0].at <= history[1].at and history[0].n < history[1].n


def test_an_abort_and_what_it_decided_for_open_approvals_are_both_listed(guard: Guard) -> None:
    guard.policy("pay", effect="irreversible", approval="args.amount > 1000")

    @guard.tool
    def pay(amount: int) -> None:
        pass

    with pytest.raises(RunHalted) as halted, guard.run() as run:
        pay(amount=5000)
    guard.abort(run.id, by="cy", reason="customer left")
    history = decisions(run.id, guard.store.entries(run.id))
    assert [(d.what, d.by, d.note) for d in history] == [
        ("abort", "cy", "customer left"),
        ("rejected", "cy", "run aborted"),
    ]
    assert history[1].item_id == halted.value.review_items[0]


def test_a_repeated_decision_that_did_not_land_is_not_in_the_history(guard: Guard) -> None:
    run_id = _held(guard)
    assert guard.resume(run_id, by="ana").landed
    assert not guard.resume(run_id, by="ana").landed
    history = decisions(run_id, guard.store.entries(run_id))
    assert [(d.what, d.by) for d in history] == [("resume", "ana")]


def test_the_machine_s_own_transitions_are_not_decisions(guard: Guard) -> None:
    run_id = _held(guard)
    assert decisions(run_id, guard.store.entries(run_id)) == []
