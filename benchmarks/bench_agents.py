"""The agent-framework part of the benchmark suite (used by benchmarks/run.py).

- ``create_agent`` steps (a scripted model asks for one tool call, the tool runs, the model
  answers; each step on a new thread id, no checkpointer) without middleware, with a
  pass-through middleware (what LangGraph charges for any middleware that wraps tool calls and
  ends the agent) and with ``GuardrailMiddleware``; plus the guard's own share of such a step
  (open a run, one guarded call, complete the run, on a new thread as ``ToolNode`` does);
- agent-saga (PyPI ``agent-saga``) in COMPENSABLE mode, where every step's intent and outcome
  are made durable (fsync'd) in its file write-ahead log: a saga of one step and the marginal
  step of a ten-step saga;
- the resource soak: N tool calls, each on a new thread, under ``create_agent`` with the
  middleware, through ``wrap_tools`` and as plain ``@guard.tool`` calls; open file descriptors,
  the store's pooled connections, threads and traced memory along the way.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import itertools
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# -- create_agent ---------------------------------------------------------------------------


def _model(calls_per_step: int) -> Any:
    """A chat model that asks for ``calls_per_step`` tool calls (one per turn), then answers;
    forever, with a fresh tool-call id each time (no network)."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    class Scripted(GenericFakeChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> Scripted:
            return self

    def script() -> Iterator[AIMessage]:
        for i in itertools.count():
            for j in range(calls_per_step):
                call = {"name": "lookup", "args": {"item": f"b{i}-{j}"}, "id": f"c{i}-{j}"}
                yield AIMessage(content="", tool_calls=[call])
            yield AIMessage(content="done")

    return Scripted(messages=script())


def lookup_tool() -> Any:
    from langchain_core.tools import tool

    @tool
    def lookup(item: str) -> dict[str, str]:
        """Look up an item."""
        return {"id": "o-1", "item": item}

    return lookup


def passthrough_middleware() -> Any:
    """A middleware with the same hooks as GuardrailMiddleware that does nothing: the part of
    the added cost that is LangGraph's, whoever the middleware is."""
    from langchain.agents.middleware import AgentMiddleware

    class PassThrough(AgentMiddleware):  # type: ignore[type-arg]
        def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
            return handler(request)

        def after_agent(self, state: Any, runtime: Any) -> None:
            return None

    return PassThrough()


def agent_step(middleware: list[Any]) -> Callable[[], Any]:
    """One ``create_agent`` step with one tool call, on a new thread id each time."""
    from langchain.agents import create_agent

    agent = create_agent(_model(1), [lookup_tool()], middleware=middleware)
    counter = itertools.count()
    prefix = uuid.uuid4().hex[:8]  # thread ids (so run ids) of their own, whatever shares the store
    messages = [{"role": "user", "content": "look it up"}]

    def step() -> Any:
        config = {"configurable": {"thread_id": f"t-{prefix}-{next(counter)}"}}
        return agent.invoke({"messages": messages}, config)  # type: ignore[arg-type]

    return step


def on_new_thread(fn: Callable[[], Any]) -> Callable[[], None]:
    """``fn`` on a new thread with a copy of the caller's context, as frameworks run tools."""

    def call() -> None:
        thread = threading.Thread(target=contextvars.copy_context().run, args=(fn,))
        thread.start()
        thread.join()

    return call


def guard_share(guard: Any) -> Callable[[], None]:
    """What GuardrailMiddleware asks of the guard in a one-call step: open the thread's run,
    one guarded call with a tool-call id, complete the run; on a new thread each time."""
    counter = itertools.count()

    def bare(item: str) -> dict[str, str]:
        return {"id": "o-1", "item": item}

    def step() -> None:
        i = next(counter)
        run = guard.run("agent", run_id=f"share-{i}", on_failure="hold").start()
        run.call("lookup", {"item": f"b{i}"}, fn=bare, call_id=f"c{i}")
        run.complete()

    return on_new_thread(step)


def create_agent_measures(guard: Any) -> dict[str, Callable[[], Any]]:
    from guardrail.adapters.langchain import GuardrailMiddleware

    return {
        "create_agent step, 1 tool call, no middleware": agent_step([]),
        "create_agent step, 1 tool call, a pass-through middleware": agent_step(
            [passthrough_middleware()]
        ),
        "create_agent step, 1 tool call, GuardrailMiddleware": agent_step(
            [GuardrailMiddleware(guard)]
        ),
        "the guard's share: run start + 1 guarded call + complete, on a new thread": (
            guard_share(guard)
        ),
    }


def middleware_split(guard: Any, steps: int) -> dict[str, float]:
    """Where GuardrailMiddleware's time goes in a one-call step, per step (thread CPU time, us):
    opening the thread's run, the guarded call without the tool, completing the run (its
    after_agent hook), and the middleware's own code around them."""
    from guardrail.adapters.langchain import GuardrailMiddleware

    spent = dict.fromkeys(("open", "call", "complete", "wrap", "tool"), 0.0)

    def timed(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def inner(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.thread_time() - start

        return inner

    class Timed(GuardrailMiddleware):
        def _open(self, run_id: str) -> Any:
            run = timed("open", super()._open)(run_id)
            run.call = timed("call", type(run).call.__get__(run))
            return run

        def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
            return timed("wrap", super().wrap_tool_call)(request, timed("tool", handler))

        def after_agent(self, state: Any, runtime: Any) -> None:
            timed("complete", super().after_agent)(state, runtime)

    step = agent_step([Timed(guard)])
    for _ in range(max(1, steps // 10)):
        step()
    for key in spent:
        spent[key] = 0.0
    for _ in range(steps):
        step()
    per = {k: v / steps * 1e6 for k, v in spent.items()}
    return {
        "run start": per["open"],
        "guarded call (without the tool)": per["call"] - per["tool"],
        "run complete (after_agent)": per["complete"],
        "the middleware's own code": per["wrap"] - per["open"] - per["call"],
        "the tool through ToolNode's handler": per["tool"],
    }


# -- agent-saga (a child process: it keeps process-wide state) ------------------------------


def saga_child(calls: int, batches: int) -> dict[str, Any]:
    """agent-saga's COMPENSABLE steps on its file WAL, against a guarded reversible call."""
    from harness import Measure, interleave, shop_tools

    try:
        from agent_saga import saga_scope, tool
        from agent_saga.registry import compensator
        from agent_saga.semantics import ActionSemantics, Compensation
        from agent_saga.wal import FileWAL
    except ImportError as exc:
        return {"skipped": f"agent-saga is not installed ({exc}); pip install -e '.[bench]'"}
    from importlib import metadata

    from guardrail import Guard

    logging.getLogger("agent_saga").setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="guardrail-bench-saga-"))

    @compensator("bench.cancel_order")
    def cancel_order(order_id: str) -> None:
        return None

    def compensation(result: dict[str, str]) -> Compensation:
        return Compensation(
            fn=cancel_order,
            kwargs={"order_id": result["id"]},
            description="cancel the order",
            handler="bench.cancel_order",  # recoverable by another process from the WAL
        )

    @tool("create_order", semantics=ActionSemantics.COMPENSABLE, compensate=compensation)
    async def create_order(item: str) -> dict[str, str]:
        return {"id": "o-1", "item": item}

    loop = asyncio.new_event_loop()
    wal = FileWAL(tmp / "saga.wal")
    loop.run_until_complete(wal.start())
    counter = itertools.count()

    async def saga_of(steps: int) -> None:
        async with saga_scope(name="bench", wal=wal):
            for _ in range(steps):
                await create_order(item=f"b{next(counter)}")

    guard = Guard(store=f"sqlite:///{tmp / 'guard.db'}")
    guarded = shop_tools(guard)["reversible"]
    try:
        one = Measure("one", lambda: loop.run_until_complete(saga_of(1)), calls)
        ten = Measure("ten", lambda: loop.run_until_complete(saga_of(10)), max(2, calls // 5))
        ref = Measure("guarded", lambda: guarded(item=f"b{next(counter)}"), calls * 10)
        with guard.run(agent="bench"):
            interleave([one, ten, ref], batches)
        return {
            "version": metadata.version("agent-saga"),
            "saga_1_step_us": one.us,
            "saga_1_step_cpu": one.cpu,
            "marginal_step_us": (ten.us - one.us) / 9,
            "marginal_step_cpu": (ten.cpu - one.cpu) / 9,
            "guarded_reversible_us": ref.us,
            "guarded_reversible_cpu": ref.cpu,
        }
    finally:
        loop.run_until_complete(wal.close())
        loop.close()
        guard.close()
        shutil.rmtree(tmp, ignore_errors=True)


# -- the resource soak (a child process per mode) -------------------------------------------

MODES = ("create_agent", "wrap_tools", "plain")


def open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def pooled(store: Any) -> int | None:
    """Connections the store keeps open between calls (its idle pool), when it says."""
    idle = getattr(store, "_idle", None)
    return len(idle) if isinstance(idle, list) else None


def resources_child(calls: int, mode: str, store_url: str | None = None) -> dict[str, Any]:
    """``calls`` tool calls in ``mode``, each on a new thread; resources at 10 points.

    create_agent: one step per call with GuardrailMiddleware (ToolNode runs the call on a new
    thread; each step a new thread id, so a new run). wrap_tools and plain: a wrapped LangChain
    tool invoked with a tool call, or a ``@guard.tool`` function, on a new thread each, in runs
    of 100 calls (a run keeps its call ids in memory until it ends, by design).

    Memory is judged on the interpreter's allocated blocks over the second half of the calls
    (every live object, after bounded caches are full). Traced bytes per call come from a
    shorter traced pass after it; tracemalloc counts a cache entry that replaces an untraced one
    as growth, so they overstate a bounded cache until it has turned over under tracing.
    """
    from guardrail import Guard
    from guardrail.adapters.langchain import GuardrailMiddleware, wrap_tools

    tmp = Path(tempfile.mkdtemp(prefix="guardrail-bench-res-"))
    guard = Guard(store=store_url or f"sqlite:///{tmp / 'res.db'}")
    guard.policy("lookup", effect="read_only")
    counter = itertools.count()
    made = itertools.count()
    run: Any = None

    if mode == "create_agent":
        step = agent_step([GuardrailMiddleware(guard)])

        def one() -> None:
            step()

    elif mode in ("wrap_tools", "plain"):
        if mode == "wrap_tools":
            wrapped = wrap_tools(guard, [lookup_tool()])[0]

            def body() -> None:
                i = next(counter)
                call = {"type": "tool_call", "name": "lookup", "args": {"item": f"b{i}"}}
                wrapped.invoke({**call, "id": f"c{i}"})

        else:

            @guard.tool(name="create_order", effect="reversible", undo=lambda args: None)
            def create_order(item: str) -> dict[str, str]:
                return {"id": "o-1", "item": item}

            def body() -> None:
                create_order(item=f"b{next(counter)}")

        threaded = on_new_thread(body)

        def one() -> None:
            nonlocal run
            if next(made) % 100 == 0:
                if run is not None:
                    run.__exit__(None, None, None)
                run = guard.run(agent="soak")
                run.__enter__()
            threaded()

    else:
        raise ValueError(f"mode {mode!r}: expected one of {MODES}")

    def pooled_now() -> int | None:
        return pooled(guard.store)

    for _ in range(min(500, calls // 10)):  # warm up: pools fill, caches load
        one()
    # untraced: descriptors, pooled connections, threads, RSS at 10 points of the N calls
    untraced = _points(one, calls, pooled_now, traced=False)
    # then traced (tracemalloc slows LangGraph tenfold: fewer calls), after the N calls, so
    # bounded caches (the store's per-run heads, 4096 runs) are full: steady state
    traced_calls = min(calls, 1000 if mode == "create_agent" else 2000)
    tracemalloc.start(1)
    traced = _points(one, traced_calls, pooled_now, traced=True)
    top = tracemalloc.take_snapshot().statistics("lineno")[:3]
    tracemalloc.stop()
    if run is not None:
        run.__exit__(None, None, None)
    max_idle = getattr(guard.store, "max_idle", None)
    guard.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "mode": mode,
        "calls": calls,
        "seconds": untraced["seconds"],
        "fds_first_last": [untraced["points"][0]["fds"], untraced["points"][-1]["fds"]],
        "fds_spread": _spread(untraced["points"], "fds"),
        "pooled_max": _max(untraced["points"], "pooled"),
        "max_idle": max_idle,
        "threads_max": _max(untraced["points"], "threads"),
        "rss_kib_first_last": [untraced["points"][0]["rss_kib"], untraced["points"][-1]["rss_kib"]],
        # the second half of the untraced calls: after settling and after bounded caches fill
        # (the store keeps the heads of its 4,096 latest runs)
        "rss_bytes_per_call": _growth(untraced["points"][5:], "rss_kib", 1024),
        "blocks_per_call": _growth(untraced["points"][5:], "blocks", 1),
        "traced_calls": traced_calls,
        "bytes_per_call": _growth(traced["points"][2:], "traced", 1),
        "top_allocations": [str(s) for s in top],
    }


def _points(
    one: Callable[[], None], calls: int, pooled_now: Callable[[], int | None], *, traced: bool
) -> dict[str, Any]:
    gc.collect()
    points: list[dict[str, Any]] = []
    start = time.perf_counter()
    step = max(1, calls // 10)
    for i in range(calls):
        one()
        if (i + 1) % step == 0:
            gc.collect()
            points.append(
                {
                    "calls": i + 1,
                    "fds": open_fds(),
                    "pooled": None if traced else pooled_now(),
                    "threads": threading.active_count(),
                    "traced": tracemalloc.get_traced_memory()[0] if traced else None,
                    "rss_kib": _rss_kib(),
                    # every live allocation, strings too, and immune to tracemalloc's view
                    # (a bounded cache replacing old entries is flat here)
                    "blocks": sys.getallocatedblocks(),
                }
            )
    return {"seconds": time.perf_counter() - start, "points": points}


def _growth(points: list[dict[str, Any]], key: str, unit: int) -> float | None:
    ys = [p[key] for p in points]
    if len(ys) < 2 or any(y is None for y in ys):
        return None
    return _slope([float(p["calls"]) for p in points], [float(y) * unit for y in ys])


def _spread(points: list[dict[str, Any]], key: str) -> int | None:
    ys = [p[key] for p in points]
    return None if any(y is None for y in ys) else int(max(ys) - min(ys))


def _max(points: list[dict[str, Any]], key: str) -> int | None:
    ys = [p[key] for p in points]
    return None if any(y is None for y in ys) else int(max(ys))


def _rss_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _slope(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0
