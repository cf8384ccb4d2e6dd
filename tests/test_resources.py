"""Nothing per thread outlives the call: frameworks (``create_agent``) run each tool call on a
new thread, and a store that kept a connection per thread ran out of file descriptors."""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from guardrail import Guard


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def on_new_threads(fn: Callable[[], object], times: int) -> None:
    """As frameworks do: each call on a new thread, with a copy of the caller's context."""
    for _ in range(times):
        thread = threading.Thread(target=contextvars.copy_context().run, args=(fn,))
        thread.start()
        thread.join()


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts descriptors in /proc")
def test_a_call_per_new_thread_holds_no_connection_or_descriptor_afterwards(
    store_url: str,
) -> None:
    guard = Guard(store=store_url)

    @guard.tool(effect="reversible", undo=lambda args: None, external_ids={"id": "result"})
    def create(n: int) -> str:
        return f"o-{n}"

    counter = iter(range(10**6))
    with guard.run(agent="threads") as run:
        on_new_threads(lambda: create(next(counter)), 20)  # warm up: pools fill, caches load
        before = open_fds()
        on_new_threads(lambda: create(next(counter)), 300)
        after = open_fds()
    assert len(guard.log(run.id).actions) == 320
    assert after - before <= 2, f"{after - before} descriptors more after 300 threads"
    store = guard.store
    assert len(store._idle) <= store.max_idle  # type: ignore[attr-defined]
    guard.close()
    assert store._idle == []  # type: ignore[attr-defined]


def test_parallel_threads_share_a_bounded_pool(sqlite_url: str) -> None:
    guard = Guard(store=sqlite_url)

    @guard.tool(effect="read_only")
    def read(n: int) -> int:
        return n

    barrier = threading.Barrier(16)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            for i in range(20):
                read(i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with guard.run() as run:
        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(worker,))
            for _ in range(16)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert len(guard.log(run.id).actions) == 320
    assert len(guard.store._idle) <= guard.store.max_idle  # type: ignore[attr-defined]
    guard.close()


def test_importing_guardrail_does_not_load_cel() -> None:
    """CEL (whose import loads its own CLI) is loaded when a condition is compiled, not by
    every process that imports guardrail (the CLI's read paths, a worker without gates)."""
    import subprocess
    import sys

    code = "import guardrail, sys; print('cel' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
