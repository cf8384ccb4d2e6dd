"""A resume that continues: the halted agent's process waits for the decision and carries on
in place; decision events (a callable and the webhook) tell workers elsewhere."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from guardrail import Guard, RunHalted, RunNotFound
from guardrail.history import DecisionEvent
from guardrail.testing import ScriptedTool

WAIT = 60  # a deadline, never a sleep


def _agent(guard: Guard, made: list[str], ship: ScriptedTool, run_id: str | None = None) -> str:
    def create(item: str) -> dict[str, int]:
        made.append(item)
        return {"id": 1}

    with guard.run(agent="shop", run_id=run_id) as run:
        run.call("create_order", {"item": "book"}, fn=create)
        run.call("ship", {"order": 1}, fn=ship)
    return run.id


@pytest.fixture
def shop(guard: Guard) -> Guard:
    guard.policy("create_order", effect="reversible", undo=lambda action: None)
    guard.policy("ship", effect="read_only", on_failure="hold", retry={"attempts": 1})
    return guard


def test_the_halted_process_waits_for_the_resume_and_carries_on_in_place(shop: Guard) -> None:
    made: list[str] = []
    ship = ScriptedTool([RuntimeError("carrier is down"), "shipped"])
    with pytest.raises(RunHalted) as halted:
        _agent(shop, made, ship)
    run_id = halted.value.run_id
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(shop.wait_decision(run_id, poll=0.05)))
    waiter.start()
    shop.resume(run_id, by="ana")
    waiter.join(WAIT)
    assert [r.status for r in got] == ["running"]
    _agent(shop, made, ship, run_id=run_id)  # the same process carries on
    assert made == ["book"]  # the order made before the halt was not made again
    assert shop.require_run(run_id).status == "completed"


def test_an_abort_ends_the_wait_with_the_run_aborted(shop: Guard) -> None:
    with pytest.raises(RunHalted) as halted:
        _agent(shop, [], ScriptedTool([RuntimeError("carrier is down")]))
    shop.abort(halted.value.run_id, by="bo")
    assert shop.wait_decision(halted.value.run_id).status == "aborted"


def test_waiting_past_the_timeout_says_the_run_is_still_undecided(shop: Guard) -> None:
    with pytest.raises(RunHalted) as halted:
        _agent(shop, [], ScriptedTool([RuntimeError("carrier is down")]))
    with pytest.raises(TimeoutError, match="still pending_review"):
        shop.wait_decision(halted.value.run_id, timeout=0)
    with pytest.raises(RunNotFound):
        shop.wait_decision("no-such-run", timeout=0)


def test_the_async_wait(shop: Guard) -> None:
    with pytest.raises(RunHalted) as halted:
        _agent(shop, [], ScriptedTool([RuntimeError("carrier is down")]))
    run_id = halted.value.run_id

    async def main() -> str:
        waiting = asyncio.ensure_future(shop.await_decision(run_id, poll=0.05))
        await asyncio.sleep(0)  # (let the wait read the run once before the decision)
        shop.resume(run_id, by="ana")
        return (await asyncio.wait_for(waiting, WAIT)).status

    assert asyncio.run(main()) == "running"


def test_a_failing_decision_hook_does_not_undo_the_decision(shop: Guard) -> None:
    def broken(event: DecisionEvent) -> None:
        raise RuntimeError("pager down")

    shop.on_decision = broken
    with pytest.raises(RunHalted) as halted:
        _agent(shop, [], ScriptedTool([RuntimeError("carrier is down")]))
    assert shop.resume(halted.value.run_id, by="ana").landed
    assert shop.require_run(halted.value.run_id).status == "running"


def test_on_postgresql_a_decision_wakes_the_waiter_without_polling(
    shop: Guard, store_url: str
) -> None:
    """The wait listens for the store's notice of a status change: with a poll of an hour it
    still returns as soon as the run is resumed (on SQLite it reads the run instead)."""
    if not store_url.startswith("postgresql"):
        assert shop.store.listener() is None
        return
    with pytest.raises(RunHalted) as halted:
        _agent(shop, [], ScriptedTool([RuntimeError("carrier is down")]))
    run_id = halted.value.run_id
    listening = shop.store.listener()
    assert listening is not None
    try:
        assert not listening.wait(0)  # nothing yet
        got: list[Any] = []
        waiter = threading.Thread(
            target=lambda: got.append(shop.wait_decision(run_id, poll=3600, timeout=WAIT))
        )
        waiter.start()
        shop.resume(run_id, by="ana")
        waiter.join(WAIT)
        assert [r.status for r in got] == ["running"]
        assert listening.wait(WAIT)  # the notice reached every listener
    finally:
        listening.close()
