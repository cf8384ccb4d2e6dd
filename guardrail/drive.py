"""One implementation of the logic, two drivers (sync and async).

The guarded call, compensation and recovery are written once, as generators that *yield* the
two things that differ between sync and async code: calling user code (`Invoke`) and waiting
(`Sleep`). `drive` runs such a generator in plain Python, `adrive` inside an event loop. Store
writes are plain calls in both: SQLite commits take microseconds, a thread hop would cost more.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from guardrail import telemetry
from guardrail.errors import GuardrailError
from guardrail.policy import Retry

T = TypeVar("T")


@dataclass(slots=True)
class Invoke:
    """Call user code (a tool, an undo, a probe) with keyword arguments."""

    fn: Callable[..., Any]
    kwargs: dict[str, Any]
    span: telemetry.Span | None = None


@dataclass(slots=True)
class Sleep:
    seconds: float


Step = Invoke | Sleep
Steps = Generator[Step, Any, T]


def drive(steps: Steps[T]) -> T:
    """Run ``steps`` synchronously. Async user code is run to completion with ``asyncio.run``."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        value = error = None
        try:
            if isinstance(step, Invoke):
                with telemetry.current(step.span):
                    value = step.fn(**step.kwargs)
                    if inspect.isawaitable(value):
                        value = _run_awaitable(value, step.fn)
            else:
                time.sleep(step.seconds)
        except BaseException as exc:
            error = exc


async def adrive(steps: Steps[T]) -> T:
    """Run ``steps`` in the running event loop; sync user code is called directly."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        value = error = None
        try:
            if isinstance(step, Invoke):
                with telemetry.current(step.span):
                    value = step.fn(**step.kwargs)
                    if inspect.isawaitable(value):
                        value = await value
            else:
                await asyncio.sleep(step.seconds)
        except BaseException as exc:
            error = exc


def _run_awaitable(awaitable: Any, fn: Callable[..., Any]) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:

        async def wait() -> Any:
            return await awaitable

        return asyncio.run(wait())
    awaitable.close()
    raise GuardrailError(
        f"{getattr(fn, '__qualname__', fn)!r} is async but was called from sync code inside a "
        "running event loop; use the async API (acall, aresume, aabort, arecover)"
    )


# -- retries: tenacity's stop, wait and retry predicates, driven as steps ---------------------

_RETRYING = Retrying()


@dataclass(slots=True)
class Outcome:
    value: Any = None
    error: Exception | None = None
    attempts: int = 0


def attempts(
    retry: Retry,
    invoke: Invoke,
    on_retry: Callable[[int, Exception], None] | None = None,
    before_retry: Callable[[], None] | None = None,
) -> Steps[Outcome]:
    """Invoke until success, a non-retryable error, or the attempts run out.

    ``before_retry`` runs before every attempt after the first and may raise to stop (a worker
    that lost its run must not try again). Only ``Exception`` is caught: ``RunHalted``,
    ``KeyboardInterrupt`` and friends pass through.
    """
    if retry.attempts == 1:
        try:
            return Outcome(value=(yield invoke), attempts=1)
        except Exception as exc:
            return Outcome(error=exc, attempts=1)
    state = RetryCallState(retry_object=_RETRYING, fn=None, args=(), kwargs={})
    stop = stop_after_attempt(retry.attempts)
    wait = wait_exponential(multiplier=retry.wait_initial, max=retry.wait_max)
    retryable = retry_if_exception_type(retry.on)
    while True:
        try:
            return Outcome(value=(yield invoke), attempts=state.attempt_number)
        except Exception as exc:
            state.set_exception((type(exc), exc, exc.__traceback__))
            if not retryable(state) or stop(state):
                return Outcome(error=exc, attempts=state.attempt_number)
            if on_retry is not None:
                on_retry(state.attempt_number, exc)
            delay = wait(state)
            state.prepare_for_next_attempt()
            if delay > 0:
                yield Sleep(delay)
            if before_retry is not None:
                before_retry()
