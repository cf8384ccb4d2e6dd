"""Waiting for a person's decision on a halted run, so the agent's process can carry on.

A halted run waits in ``pending_review`` or ``awaiting_approval``. The process that ran it may
wait for the decision and go on in place: after a resume it enters the run again (nothing done
runs twice), after an abort it stops. On PostgreSQL the wait listens for the store's notice
that a run's status changed (LISTEN/NOTIFY), and reads the run when one comes (and at least
every ``poll`` seconds); on SQLite it reads the run, backing off from 50 ms to ``poll`` seconds.
One check (`_looked`) decides; a sync and an async loop around it differ only in how they wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from guardrail.errors import RunNotFound
from guardrail.store import Listener, RunRecord, Store

DECIDED = ("running", "aborted", "completed")  # a person decided (an abort is finished)
FIRST_WAIT = 0.05


def _looked(
    store: Store, run_id: str, deadline: float | None, timeout: float | None, now: float
) -> RunRecord | None:
    """The run if it is decided; None to wait on; TimeoutError past the deadline."""
    run = store.run(run_id)
    if run is None:
        raise RunNotFound(f"no run {run_id!r} in {store.url}", run_id=run_id)
    if run.status in DECIDED:
        return run
    if deadline is not None and now >= deadline:
        raise TimeoutError(
            f"run {run_id} is still {run.status} after {timeout} s: nobody decided yet"
        )
    return None


def _start(poll: float, timeout: float | None, clock: Callable[[], float]) -> float | None:
    if poll <= 0:
        raise ValueError(f"poll={poll!r}: expected a number of seconds above 0")
    return None if timeout is None else clock() + timeout


def _pause(delay: float, poll: float, deadline: float | None, now: float) -> float:
    return min(delay, poll) if deadline is None else max(0.0, min(delay, poll, deadline - now))


def wait_decision(
    store: Store, run_id: str, timeout: float | None, poll: float, clock: Callable[[], float]
) -> RunRecord:
    """The run once it is decided; TimeoutError when ``timeout`` seconds pass first."""
    deadline = _start(poll, timeout, clock)
    listener = store.listener()
    try:
        delay = poll if listener is not None else FIRST_WAIT
        while True:
            run = _looked(store, run_id, deadline, timeout, clock())
            if run is not None:
                return run
            pause = _pause(delay, poll, deadline, clock())
            if listener is not None:
                listener.wait(pause)
            else:
                time.sleep(pause)
                delay *= 2
    finally:
        if listener is not None:
            listener.close()


async def await_decision(
    store: Store, run_id: str, timeout: float | None, poll: float, clock: Callable[[], float]
) -> RunRecord:
    """`wait_decision` for an event loop (a listener's wait runs in a worker thread)."""
    deadline = _start(poll, timeout, clock)
    listener: Listener | None = store.listener()
    try:
        delay = poll if listener is not None else FIRST_WAIT
        while True:
            run = _looked(store, run_id, deadline, timeout, clock())
            if run is not None:
                return run
            pause = _pause(delay, poll, deadline, clock())
            if listener is not None:
                await asyncio.to_thread(listener.wait, pause)
            else:
                await asyncio.sleep(pause)
                delay *= 2
    finally:
        if listener is not None:
            listener.close()
