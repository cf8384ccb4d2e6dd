"""Overhead of a guarded call on PostgreSQL against two raw psycopg autocommit commits.

Run: ``python benchmarks/bench_postgres.py [--url URL] [--batches 11] [--calls 50]
[--synchronous-commit off]`` (URL defaults to GUARDRAIL_TEST_POSTGRES_URL; everything happens in
a scratch schema that is dropped afterwards).

Measured in the same run, batches interleaved so that load on the machine hits every measure
alike, median of the batches (microseconds per call):
- the bare function call;
- two raw psycopg commits in autocommit mode (an INSERT, then an UPDATE of the same row): the
  floor any durable write-ahead log on the server pays per call;
- guarded calls (read-only, reversible with an external id, irreversible) through `@guard.tool`.
``--synchronous-commit off`` sets it for both (the server no longer waits for its WAL flush), to
show the cost without the disk.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from urllib.parse import quote

import psycopg
from harness import bare, shop_tools  # benchmarks/harness.py, beside this file

from guardrail import Guard


def batch_us(fn: Callable[[], None], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def raw_commits(dsn: str, options: str) -> Callable[[], None]:
    conn = psycopg.connect(dsn, autocommit=True, options=options)
    conn.execute("CREATE TABLE raw_floor (id BIGINT PRIMARY KEY, state TEXT, body TEXT)")
    counter = iter(range(10**9))

    def two_commits() -> None:
        i = next(counter)
        conn.execute("INSERT INTO raw_floor VALUES (%s, 'started', %s)", (i, '{"item":"book"}'))
        conn.execute(
            "UPDATE raw_floor SET state = 'succeeded', body = %s WHERE id = %s", ('{"id":1}', i)
        )

    return two_commits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default=os.environ.get("GUARDRAIL_TEST_POSTGRES_URL"))
    parser.add_argument("--batches", type=int, default=11)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--synchronous-commit", choices=("on", "off"), default="on")
    opts = parser.parse_args()
    if not opts.url:
        parser.error("pass --url postgresql+psycopg://... or set GUARDRAIL_TEST_POSTGRES_URL")
    base = opts.url.split("?")[0]
    admin = base.replace("postgresql+psycopg://", "postgresql://")
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    options = f"-csearch_path={schema} -csynchronous_commit={opts.synchronous_commit}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        guard = Guard(store=f"{base}?options={quote(options)}")

        tools = shop_tools(guard)
        lookup, create, notify = tools["read_only"], tools["reversible"], tools["irreversible"]
        counter = iter(range(10**9))

        def guarded(tool: Callable[..., object]) -> Callable[[], None]:
            def call() -> None:
                tool(item=f"book-{next(counter)}")  # distinct args: nothing is deduplicated

            return call

        def bare_call() -> None:
            bare(item="book")

        measures: dict[str, Callable[[], None]] = {
            "bare call": bare_call,
            "two raw psycopg commits (floor)": raw_commits(admin, options),
            "guarded read_only": guarded(lookup),
            "guarded reversible (+1 external id)": guarded(create),
            "guarded irreversible": guarded(notify),
        }
        samples: dict[str, list[float]] = {label: [] for label in measures}
        with guard.run(agent="bench"):
            for fn in measures.values():  # warm up: connections, statement caches
                batch_us(fn, 5)
            for _ in range(opts.batches):
                for label, fn in measures.items():
                    samples[label].append(batch_us(fn, opts.calls))
        guard.close()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")

    results = {label: statistics.median(s) for label, s in samples.items()}
    floor = results["two raw psycopg commits (floor)"]
    bare_us = results["bare call"]
    print(
        f"PostgreSQL, synchronous_commit={opts.synchronous_commit}: median of {opts.batches} "
        f"batches of {opts.calls} calls\n"
    )
    print(f"{'measure':40} {'us/call':>10} {'overhead us':>12} {'- floor us':>11} {'x floor':>8}")
    for label, us in results.items():
        print(f"{label:40} {us:10.1f} {us - bare_us:12.1f} {us - floor:11.1f} {us / floor:8.2f}")
    worst = max(v for k, v in results.items() if k.startswith("guarded")) - bare_us
    print(f"\nworst guarded overhead: {worst:.0f} us (target <= 1500 us on PostgreSQL)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
