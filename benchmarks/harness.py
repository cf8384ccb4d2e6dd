"""What the benchmarks share: a per-call measure, interleaved batches, and the guarded tools."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Measure:
    """One per-call measurement: ``fn`` is called ``calls`` times per batch."""

    label: str
    fn: Callable[[], Any]
    calls: int
    samples: list[float] = field(default_factory=list)  # wall time, us per call
    cpu_samples: list[float] = field(default_factory=list)  # this process's CPU time (all threads)
    group: str = "sqlite"

    @property
    def us(self) -> float:
        return statistics.median(self.samples)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpu_samples)

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median, a noise indicator."""
        if len(self.samples) < 4:
            return 0.0
        q = statistics.quantiles(self.samples, n=4)
        return (q[2] - q[0]) / self.us


def interleave(measures: list[Measure], batches: int, warmup: bool = True) -> None:
    """Time batch i of every measure before batch i+1 of any: load hits all of them alike."""
    if warmup:
        for m in measures:
            for _ in range(max(1, m.calls // 10)):
                m.fn()
    for _ in range(batches):
        for m in measures:
            cpu, start = time.process_time(), time.perf_counter()
            for _ in range(m.calls):
                m.fn()
            m.samples.append((time.perf_counter() - start) / m.calls * 1e6)
            m.cpu_samples.append((time.process_time() - cpu) / m.calls * 1e6)


def bare(item: str) -> dict[str, str]:
    return {"id": "o-1", "item": item}


def shop_tools(guard: Any, undo: Callable[..., None] | None = None) -> dict[str, Any]:
    """The three guarded kinds over the same function."""
    from guardrail import Review

    return {
        "read_only": guard.tool(name="lookup", effect="read_only")(bare),
        "reversible": guard.tool(
            name="create_order",
            effect="reversible",
            undo=undo or (lambda external_ids: None),
            external_ids={"order_id": "result.id"},
        )(bare),
        "irreversible": guard.tool(
            name="notify", effect="irreversible", review=Review(kind="correct")
        )(bare),
    }
