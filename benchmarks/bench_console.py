"""How long the console takes to render a long run's page, in process (Starlette's TestClient).

Run: ``python benchmarks/bench_console.py [--actions 600 10000] [--failed-undos 6] [--repeats 5]``.

Each run is a halted run of read-only lookups with reversible reservations spread over it whose
undos fail (the failed undos a person must find in a long run), ending in a failing call. Prints
the median time of GET /runs/RUN (and the page's size) per run length.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from starlette.testclient import TestClient

from guardrail import Guard, Retry, RunHalted
from guardrail.web import create_app

TOKEN = "bench-token-0123456789abcdef"


def long_run(guard: Guard, actions: int, failed_undos: int) -> str:
    """A halted run of ``actions`` actions whose failed undos need a person."""

    def release(args: dict[str, str]) -> None:
        raise RuntimeError(f"the warehouse API refused to release {args['sku']}")

    @guard.tool(effect="read_only")
    def lookup(sku: str) -> dict[str, str]:
        return {"sku": sku, "stock": "12"}

    @guard.tool(effect="reversible", undo=release, undo_retry=Retry(attempts=1))
    def reserve(sku: str) -> dict[str, str]:
        return {"reservation": f"res_{sku}"}

    @guard.tool(effect="read_only")
    def ship(sku: str) -> None:
        raise ConnectionError("carrier API returned 503")

    every = max(1, actions // max(1, failed_undos))
    try:
        with guard.run(agent="bench") as run:
            for n in range(1, actions):
                failing_undo = n % every == 14 and n // every < failed_undos
                (reserve if failing_undo else lookup)(sku=f"sku-{n:05d}")
            ship(sku="last")
    except RunHalted:
        pass
    return run.id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--actions", type=int, nargs="+", default=[600, 10_000])
    parser.add_argument("--failed-undos", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        guard = Guard(store=f"sqlite:///{Path(folder) / 'bench.db'}")
        print(f"{'actions':>8} {'build s':>8} {'page ms':>9} {'page kB':>8}")
        for count in options.actions:
            started = time.perf_counter()
            run_id = long_run(guard, count, options.failed_undos)
            built = time.perf_counter() - started
            with TestClient(create_app(guard, TOKEN)) as client:
                headers = {"Authorization": f"Bearer {TOKEN}"}
                samples, size = [], 0
                for _ in range(options.repeats):
                    started = time.perf_counter()
                    page = client.get(f"/runs/{run_id}", headers=headers)
                    samples.append(time.perf_counter() - started)
                    assert page.status_code == 200, page.status_code
                    size = len(page.content)
            median = statistics.median(samples) * 1000
            print(f"{count:>8} {built:>8.1f} {median:>9.1f} {size / 1000:>8.0f}")
        guard.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
