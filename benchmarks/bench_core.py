"""Overhead of a guarded call on SQLite against the bare call and the physical floor.

Run: ``python benchmarks/bench_core.py [--batches 15] [--calls 400]``.

Measured in the same run, median of repeated batches (microseconds per call):
- the bare function call;
- two raw sqlite3 commits (WAL, synchronous=NORMAL): the floor any durable write-ahead log pays;
- guarded calls (read-only, reversible, irreversible) through `@guard.tool`.
Prints a table and the ratios the targets in docs/benchmarks.md are stated in.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Annotated, Any

from harness import bare, shop_tools  # benchmarks/harness.py, beside this file
from pydantic import BaseModel
from run import raw_sqlite_floor  # benchmarks/run.py, beside this file

from guardrail import Guard, Injected


def per_call_us(fn: Callable[[], None], calls: int, batches: int) -> float:
    samples = []
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


class Conn:
    """A live object a tool takes next to its arguments: injected, never recorded."""


class Order(BaseModel):
    id: str
    item: str


def hooked_tools(guard: Guard) -> dict[str, Callable[..., Any]]:
    """The reversible tool again, with each newer hook: what each one adds to a call."""
    conn = Conn()

    def cancel(args: dict[str, Any]) -> None: ...

    @guard.tool(name="with_injected", effect="reversible", undo=cancel)
    def with_injected(item: str, conn: Annotated[Conn, Injected]) -> dict[str, str]:
        return {"id": f"ord-{item}"}

    @guard.tool(
        name="with_capture",
        effect="reversible",
        undo=cancel,
        capture=lambda result: {"order_id": result["id"]},
    )
    def with_capture(item: str) -> dict[str, str]:
        return {"id": f"ord-{item}"}

    @guard.tool(name="typed_result", effect="reversible", undo=cancel)
    def typed_result(item: str) -> Order:
        return Order(id=f"ord-{item}", item=item)

    return {
        "guarded reversible + injected parameter": lambda item: with_injected(item, conn=conn),
        "guarded reversible + capture hook": with_capture,
        "guarded reversible + typed (model) result": typed_result,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--calls", type=int, default=400)
    opts = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="guardrail-bench-")
    guard = Guard(store=f"sqlite:///{os.path.join(tmp, 'bench.db')}")

    tools = shop_tools(guard)
    lookup, create, notify = tools["read_only"], tools["reversible"], tools["irreversible"]

    results: dict[str, float] = {}
    results["bare call"] = per_call_us(lambda: bare(item="book"), opts.calls, opts.batches)
    results["two raw sqlite3 commits (floor)"] = per_call_us(
        raw_sqlite_floor(os.path.join(tmp, "raw.db")), opts.calls, opts.batches
    )
    counter = iter(range(10**9))
    for label, tool in (
        ("guarded read_only", lookup),
        ("guarded reversible (+1 external id)", create),
        ("guarded irreversible", notify),
    ):
        with guard.run(agent="bench"):
            # distinct args: no call is deduplicated against an earlier one
            results[label] = per_call_us(
                lambda tool=tool: tool(item=f"book-{next(counter)}"), opts.calls, opts.batches
            )
    hooks = hooked_tools(guard)
    for label, tool in hooks.items():
        with guard.run(agent="bench"):
            results[label] = per_call_us(
                lambda tool=tool: tool(item=f"book-{next(counter)}"), opts.calls, opts.batches
            )
    guard.close()

    floor = results["two raw sqlite3 commits (floor)"]
    base = results["bare call"]
    print(f"{'measure':40} {'us/call':>10} {'overhead us':>12} {'x floor':>8}")
    for label, us in results.items():
        overhead = us - base
        print(f"{label:40} {us:10.1f} {overhead:12.1f} {us / floor:8.2f}")
    worst = max(v for k, v in results.items() if k.startswith("guarded")) - base
    print(f"\nworst guarded overhead: {worst:.1f} us (target <= 200 us on SQLite NORMAL)")
    per_second = 1e6 / results["guarded reversible (+1 external id)"]
    print(f"guarded calls per second (one core, reversible): {per_second:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
