"""How long the console takes to answer, in process (Starlette's TestClient).

Run: ``python benchmarks/bench_console.py [--actions 600 10000] [--failed-undos 6] [--repeats 5]``
and ``python benchmarks/bench_console.py --volume [--store-actions 1000000] [--repeats 5]``.

Long runs: each is a halted run of read-only lookups with reversible reservations spread over it
whose undos fail (the failed undos a person must find in a long run), ending in a failing call.
Prints the median time of GET /runs/RUN (and the page's size) per run length.

``--volume``: a store of 10,000 runs and 1,000,000 actions (`benchmarks/run.py`'s
``build_store``, about a minute; one run in ten halted by the same carrier outage). Prints the
median time of the inbox, a search by an order id, the groups page, a bulk preview of 20 runs
and a run's page.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def timed(call: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The median seconds of ``call`` over ``repeats``, and its last answer."""
    samples, answer = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        answer = call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), answer


def volume(actions: int, repeats: int) -> None:
    """The console's pages on a store of ``actions`` actions (100 per run)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import run as suite  # benchmarks/run.py

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "big.db"
        started = time.perf_counter()
        _, halted_id, counts = suite.build_store(path, actions)
        built = time.perf_counter() - started
        print(
            f"store: {counts['runs']:,} runs, {counts['actions']:,} actions, "
            f"{counts['file_mib']} MiB, built in {built:.0f} s"
        )
        db = sqlite3.connect(path)
        (order,) = db.execute(
            "SELECT value FROM external_ids ORDER BY run_id LIMIT 1 OFFSET 5000"
        ).fetchone()
        db.close()
        guard = Guard(store=f"sqlite:///{path}", strict=False)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with TestClient(create_app(guard, TOKEN), base_url="http://127.0.0.1:8765") as client:
            page = client.get("/?status=all", headers=headers)
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
            assert csrf is not None
            twenty = [r.id for r in guard.runs(status="pending_review")][:20]
            steps: list[tuple[str, Callable[[], Any]]] = [
                ("inbox: GET /", lambda: client.get("/", headers=headers)),
                (
                    f"search by an order id: GET /?q={order} (opens its run)",
                    lambda: client.get(f"/?q={order}", headers=headers),
                ),
                (
                    f"search by the start of one: GET /?q={order[:-2]}",
                    lambda: client.get(f"/?q={order[:-2]}", headers=headers),
                ),
                ("groups: GET /groups", lambda: client.get("/groups", headers=headers)),
                (
                    "bulk preview of 20 runs (abort): POST /bulk/preview",
                    lambda: client.post(
                        "/bulk/preview",
                        data={"csrf": csrf.group(1), "decision": "abort", "run": twenty},
                        headers=headers,
                    ),
                ),
                (
                    "run page: GET /runs/RUN (100 actions)",
                    lambda: client.get(f"/runs/{halted_id}", headers=headers),
                ),
            ]
            print(f"{'page':<62} {'median ms':>10} {'kB':>6}")
            for name, call in steps:
                median, answer = timed(call, repeats)
                assert answer.status_code == 200, (name, answer.status_code)
                print(f"{name:<62} {median * 1000:>10.1f} {len(answer.content) / 1000:>6.0f}")
        guard.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--actions", type=int, nargs="+", default=[600, 10_000])
    parser.add_argument("--failed-undos", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--volume", action="store_true", help="the pages on a big store")
    parser.add_argument("--store-actions", type=int, default=1_000_000)
    options = parser.parse_args()
    if options.volume:
        volume(options.store_actions, options.repeats)
        return 0
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
