"""LangChain tool calls, each on a new thread, hold no connection or descriptor afterwards:
``create_agent`` runs every tool call of a step on a new ToolNode thread (and, with a new thread
id per step, the middleware opens and completes a run per step), and callers of wrapped tools
often do the same. Open descriptors count the store's connections too (an SQLite connection
holds its database and WAL files, a PostgreSQL one a socket)."""

from __future__ import annotations

import contextvars
import importlib.util
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from guardrail import Guard
from guardrail.adapters.langchain import GuardrailMiddleware, wrap_tools


def _bench_agents() -> Any:
    """benchmarks/bench_agents.py: the same agent and tool as the benchmark measures."""
    path = Path(__file__).parent.parent / "benchmarks" / "bench_agents.py"
    spec = importlib.util.spec_from_file_location("guardrail_bench_agents", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _bench_agents()

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/fd").exists(), reason="counts descriptors in /proc"
)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def settled_growth(fn: Callable[[], object], warmup: int, times: int) -> int:
    for _ in range(warmup):  # pools fill, caches load
        fn()
    before = open_fds()
    for _ in range(times):
        fn()
    return open_fds() - before


def test_create_agent_steps_with_the_middleware(store_url: str) -> None:
    guard = Guard(store=store_url)
    guard.policy("lookup", effect="read_only")
    step = bench.agent_step([GuardrailMiddleware(guard)])
    grew = settled_growth(step, 20, 300)
    assert grew <= 2, f"{grew} descriptors more after 300 create_agent steps"
    runs = guard.runs()
    assert len(runs) == 320 and {r.status for r in runs} == {"completed"}
    guard.close()


def test_wrapped_tool_calls_each_on_a_new_thread(store_url: str) -> None:
    guard = Guard(store=store_url)
    guard.policy("lookup", effect="read_only")
    [wrapped] = wrap_tools(guard, [bench.lookup_tool()])
    counter = iter(range(10**6))

    def on_new_thread() -> None:
        i = next(counter)
        call = {"type": "tool_call", "name": "lookup", "args": {"item": f"b{i}"}, "id": f"c{i}"}
        thread = threading.Thread(
            target=contextvars.copy_context().run, args=(wrapped.invoke, call)
        )
        thread.start()
        thread.join()

    with guard.run() as run:
        grew = settled_growth(on_new_thread, 20, 300)
    assert grew <= 2, f"{grew} descriptors more after 300 wrapped calls on new threads"
    actions = guard.log(run.id).actions
    assert len(actions) == 320 and {a.state for a in actions} == {"succeeded"}
    guard.close()
