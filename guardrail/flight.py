"""Guarded calls in flight, for adapters of frameworks that run a model turn's tool calls as
concurrent asyncio tasks and cancel the siblings when one of them raises (the OpenAI Agents SDK,
PydanticAI).

The guard makes a failing call wait for its running siblings before it halts. A halt can reach
the framework in other ways while siblings run (a call refused because the run has halted, an
approval gate met at call time): raising then would make the framework cancel the siblings
half-way through. So every ``RunHalted`` leaving a call waits, through :meth:`Flight.call`,
until no sibling is running; each sibling ends recorded, none is cut off.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from guardrail.errors import RunHalted
from guardrail.run import Run


@dataclass(eq=False)
class _Call:
    """One guarded call in flight; ``done`` once the guard has recorded its outcome."""

    done: asyncio.Event = field(default_factory=asyncio.Event)
    enclosing: tuple[_Call, ...] = ()


class Flight:
    """The guarded calls of one run now in flight in one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, paused_by: list[str]) -> None:
        self.loop = loop
        self.calls: list[_Call] = []
        self.paused_by = paused_by  # the tools whose approval requests paused this run

    @property
    def waiting_for(self) -> str:
        """The tools whose approval the run waits for, for a message (``a and b``)."""
        return " and ".join(self.paused_by) or "a call"

    @asynccontextmanager
    async def call(self) -> AsyncIterator[None]:
        """Around one guarded call: a ``RunHalted`` leaves only once no sibling runs."""
        call = _Call(enclosing=_enclosing.get())
        self.calls.append(call)
        token = _enclosing.set((*call.enclosing, call))
        try:
            yield
        except RunHalted:
            self._finish(call)
            await self._all_done(call)  # the framework cancels siblings still running
            raise
        finally:
            self._finish(call)
            _enclosing.reset(token)

    def _finish(self, call: _Call) -> None:
        if not call.done.is_set():
            call.done.set()
            self.calls.remove(call)

    async def _all_done(self, call: _Call) -> None:
        # A call enclosing this one (a tool running another agent) waits for it: never wait back.
        while waiting := [c for c in self.calls if c is not call and c not in call.enclosing]:
            await waiting[0].done.wait()


_flights: weakref.WeakKeyDictionary[Run, Flight] = weakref.WeakKeyDictionary()
_enclosing: ContextVar[tuple[_Call, ...]] = ContextVar("guardrail_enclosing", default=())


def flight(run: Run) -> Flight:
    """The run's calls in flight in the running event loop."""
    loop = asyncio.get_running_loop()
    found = _flights.get(run)
    if found is None or (found.loop is not loop and not found.calls):
        # asyncio primitives belong to one loop; run_sync and asyncio.run may bring a new one
        found = _flights[run] = Flight(loop, found.paused_by if found else [])
    return found
