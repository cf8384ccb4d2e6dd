"""Waiting for a person's decision on a halted run, so the agent's process can carry on.

A halted run waits in ``pending_review`` or ``awaiting_approval``. The process that ran it may
wait for the decision and go on in place: after a resume it enters the run again (nothing done
runs twice), after an abort it stops. The wait reads the run's status, backing off from 50 ms to
``poll`` seconds between reads; it is written once and driven sync or async.
"""

from __future__ import annotations

from collections.abc import Callable

from guardrail.drive import Sleep, Steps
from guardrail.errors import RunNotFound
from guardrail.store import RunRecord, Store

DECIDED = ("running", "aborted", "completed")  # a person decided (an abort is finished)
FIRST_WAIT = 0.05


def wait_decision(
    store: Store, run_id: str, timeout: float | None, poll: float, clock: Callable[[], float]
) -> Steps[RunRecord]:
    """The run once it is decided; TimeoutError when ``timeout`` seconds pass first."""
    if poll <= 0:
        raise ValueError(f"poll={poll!r}: expected a number of seconds above 0")
    deadline = None if timeout is None else clock() + timeout
    delay = FIRST_WAIT
    while True:
        run = store.run(run_id)
        if run is None:
            raise RunNotFound(f"no run {run_id!r} in {store.url}", run_id=run_id)
        if run.status in DECIDED:
            return run
        left = None if deadline is None else deadline - clock()
        if left is not None and left <= 0:
            raise TimeoutError(
                f"run {run_id} is still {run.status} after {timeout} s: nobody decided yet"
            )
        yield Sleep(min(delay, poll) if left is None else min(delay, poll, left))
        delay *= 2
