"""Helpers for testing your own policies the way guardrail tests its own.

Crash points: guardrail calls :func:`crash_point` at the moments where a crash is most
interesting. Arm one with :func:`arm` (or the ``GUARDRAIL_CRASH_AT`` environment variable in a
child process) and the process kills itself with SIGKILL when it gets there, exactly as if the
machine had pulled the plug on it::

    # die after the tool ran, before its success is recorded
    GUARDRAIL_CRASH_AT=after_call python my_agent.py
    python -c "from guardrail import Guard; print(Guard(store=...).recover())"

Points: ``after_start`` (the ``started`` row is committed, the tool has not run),
``after_call`` (the tool returned, its success is not recorded), ``after_compensation_start``
(an undo is recorded as started, it has not run), ``after_undo`` (the undo ran, its success is not
recorded), ``after_abort_start`` (an abort is recorded, nothing undone yet). A point may be
qualified by a count, ``after_call:3``, to die on its third visit.

:class:`ScriptedTool` is a tool whose outcomes you script (return values, exceptions).
:class:`ManualClock` is a clock for ``Guard(clock=...)`` that the test moves by hand.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Iterable
from typing import Any

CRASH_POINTS = (
    "after_start",
    "after_call",
    "after_compensation_start",
    "after_undo",
    "after_abort_start",
)

_armed: tuple[str, int] | None = None
_visits: dict[str, int] = {}


def arm(point: str | None) -> None:
    """Die with SIGKILL at ``point`` (``name`` or ``name:count``); ``None`` disarms."""
    global _armed
    _visits.clear()
    if point is None:
        _armed = None
        return
    name, _, count = point.partition(":")
    if name not in CRASH_POINTS:
        raise ValueError(f"unknown crash point {name!r}; expected one of {', '.join(CRASH_POINTS)}")
    _armed = (name, int(count) if count else 1)


def crash_point(name: str) -> None:
    """Called by guardrail at each named point; kills the process if that point is armed."""
    if _armed is None or _armed[0] != name:
        return
    _visits[name] = _visits.get(name, 0) + 1
    if _visits[name] >= _armed[1]:
        os.kill(os.getpid(), signal.SIGKILL)


if os.environ.get("GUARDRAIL_CRASH_AT"):
    arm(os.environ["GUARDRAIL_CRASH_AT"])


class ScriptedTool:
    """A callable tool whose outcomes follow a script: values are returned, exceptions raised.

    When the script runs out, the last outcome repeats. ``calls`` records every call's kwargs.

    Example::

        flaky = ScriptedTool([TimeoutError("slow"), {"id": "o-1"}])
        flaky(item="book")   # raises TimeoutError
        flaky(item="book")   # returns {"id": "o-1"}
    """

    def __init__(self, outcomes: Iterable[Any] = (None,), *, name: str = "scripted") -> None:
        self.outcomes = list(outcomes) or [None]
        self.calls: list[dict[str, Any]] = []
        self.__name__ = name
        self.__qualname__ = name

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        index = min(len(self.calls) - 1, len(self.outcomes) - 1)
        outcome = self.outcomes[index]
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, type) and issubclass(outcome, BaseException):
            raise outcome()
        return outcome


class ManualClock:
    """A clock for ``Guard(clock=...)`` that stands still until the test moves it: approval
    expiry, lease expiry and recorded timestamps without sleeps.

    Example::

        clock = ManualClock()            # starts at the system time now
        guard = Guard(store=..., clock=clock)
        clock.advance(3601)              # an hour later: an approval with ttl=3600 expired
    """

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` on (back, if negative); returns the new time."""
        self.now += seconds
        return self.now


def tree_hash(root: str | os.PathLike[str]) -> str:
    """A digest of every folder, file name, file mode and byte under ``root``, in a stable order.

    For testing undos that restore files: take it before the agent runs and after the abort;
    equal digests mean the tree is byte-identical (modes included).
    """
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        h.update(b"D" + os.path.relpath(folder, root).encode())
        for name in sorted(files):
            path = os.path.join(folder, name)
            h.update(b"F" + os.path.relpath(path, root).encode())
            h.update(oct(os.stat(path).st_mode & 0o777).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


class FaultyStore:
    """A store whose writes fail on cue, to test what your agent does when the database does.

    Wraps a guard's store; :meth:`fail` arms a fault for the next write of a kind (``action.start``,
    ``action.succeed``, ``action.fail``, ``run.halt``, ``compensation.start``,
    ``compensation.done``, ``run.review``, ``run.abort``, ``run.aborted``...; ``*`` for any),
    which raises ``StoreError`` instead of committing, as a lost connection or a lock held past
    the busy timeout would. Reads and other writes pass through.

    Example::

        faulty = FaultyStore(guard)
        faulty.fail("action.succeed")     # the tool runs, its success cannot be recorded
        with pytest.raises(RunHalted):
            with guard.run(agent="shop"):
                create_order(item="book")
        faulty.heal()
    """

    def __init__(self, guard: Any) -> None:
        self.inner = guard.store
        self.url = self.inner.url
        self.kinds: list[str] = []  # every write attempted, in order
        self._armed: dict[str, list[int]] = {}
        guard.store = self

    def fail(self, kind: str = "*", *, nth: int = 1, times: int = 1) -> None:
        """Fail the ``nth`` next write of ``kind`` (and the ``times - 1`` after it)."""
        seen = sum(1 for k in self.kinds if kind in ("*", k))
        self._armed[kind] = [seen + nth + i for i in range(times)]

    def heal(self) -> None:
        self._armed.clear()

    def transact(self, run_id: str, kind: str, writes: Any, fence: Any = None) -> bool:
        from guardrail.errors import StoreError

        self.kinds.append(kind)
        for armed, visits in self._armed.items():
            if armed in ("*", kind) and sum(1 for k in self.kinds if armed in ("*", k)) in visits:
                raise StoreError(f"injected fault: {kind} for run {run_id}", run_id=run_id)
        return bool(self.inner.transact(run_id, kind, writes, fence))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
