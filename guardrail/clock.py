"""Time, as the core sees it: a clock injected into the guard (``Guard(clock=...)``).

A clock is a callable returning epoch seconds (``time.time`` unless the guard was given another).
Every time the core reads (leases, heartbeats, approval expiry) and every timestamp it records
comes from the guard's clock, so a test moves time by moving its clock, not by patching modules.

Transitions stay pure: a record's timestamp is written as `NOW`, and `stamp` puts the clock's
time there when the transition is committed (one reading for the whole transaction).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Final

from guardrail.errors import GuardrailError
from guardrail.store import Write

Clock = Callable[[], float]
SYSTEM: Final[Clock] = time.time


class _Now:
    """Stands in a write's values for the moment its transaction commits."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOW"


NOW: Final = _Now()


def stamp(writes: Iterable[Write], at: float) -> None:
    """Put ``at`` (epoch seconds) wherever one of ``writes`` holds `NOW`."""
    for write in writes:
        for name, value in write.values.items():
            if value is NOW:
                write.values[name] = at


def check_clock(clock: object) -> Clock:
    """``clock`` if it is a callable that returns a number now; else a clear error."""
    if not callable(clock):
        raise GuardrailError(
            f"clock={clock!r} is not callable; pass a function returning epoch seconds "
            "(time.time by default)",
            field="clock",
        )
    reading = clock()
    if isinstance(reading, bool) or not isinstance(reading, int | float):
        raise GuardrailError(
            f"clock={clock!r} returned {reading!r}, not epoch seconds (a float)", field="clock"
        )
    return clock
