"""A guarded tool that runs another agent in the same run: the inner calls are enclosed by the
outer one, and a failing inner call must not wait for its own enclosing call to finish."""

from __future__ import annotations

import threading

import pytest

from guardrail import Guard, RunHalted


def test_a_failing_inner_call_does_not_wait_for_the_call_enclosing_it(
    guard: Guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("guardrail.failure.SIBLING_WAIT", 600.0)  # a wait would hang the test
    undone: list[str] = []

    @guard.tool(effect="reversible", undo=lambda args: undone.append(args["item"]))
    def reserve(item: str) -> str:
        return item

    class Down(Exception):
        pass

    @guard.tool(effect="irreversible", not_done=[Down])
    def ship(item: str) -> None:
        raise Down("carrier down")

    @guard.tool(effect="irreversible", not_done=[Down])
    def delegate(task: str) -> None:  # runs a sub-agent whose tools are guarded too
        reserve(task)
        ship(task)

    outcome: list[BaseException] = []

    def agent() -> None:
        try:
            with guard.run(agent="outer"):
                delegate("book")
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=agent, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the inner halt waited for the call enclosing it"
    assert len(outcome) == 1 and isinstance(outcome[0], RunHalted)
    assert undone == ["book"]
