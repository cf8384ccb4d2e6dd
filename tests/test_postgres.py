"""Many workers on one PostgreSQL action log: load, racing reviewers, racing recovery,
kill -9 mid-call, connection loss, and `guardrail recover --watch`.

Every test runs in a fresh schema of its own. Worker processes are forked from the test process
(guardrail is imported already; each child opens its own guard and connections), so they start
in milliseconds. The tools write each side effect as one line to a "world" file (O_APPEND, one
write per line) that survives a SIGKILL, and every check holds the stored log against it:

- ``do ITEM``: a tool took effect (items are unique per planned call; a replay after resume
  re-runs what was compensated, so an item may appear as often as it has executed actions);
- ``fail ITEM``: one failed attempt of a tool (no effect);
- ``undo RUN:SEQ`` / ``undo_fail RUN:SEQ``: an undo took effect / one failed attempt of it.

Set ``GUARDRAIL_PG_WORKERS`` and ``GUARDRAIL_PG_CALLS`` to change the load test's 8 x 500.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from guardrail import Conflict, Decision, Guard, Retry, Review, RunHalted, StoreError, testing
from guardrail.audit import ActionLog

POSTGRES_URL = os.environ.get("GUARDRAIL_TEST_POSTGRES_URL")
pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        not POSTGRES_URL,
        reason="PostgreSQL tests need GUARDRAIL_TEST_POSTGRES_URL, e.g. "
        "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    ),
]

ROOT = Path(__file__).resolve().parent.parent
FORK = multiprocessing.get_context("fork")
WAIT = 120.0  # the most any child, barrier or queue is waited for: a deadline, never a sleep
WORKERS = int(os.environ.get("GUARDRAIL_PG_WORKERS", "8"))
CALLS = int(os.environ.get("GUARDRAIL_PG_CALLS", "500"))
SEED = 20240606
QUICK = Retry(attempts=2, wait_initial=0, wait_max=0)  # retries without waiting
TOOLS = ("reserve", "charge", "notify", "lookup")
EXECUTED = ("succeeded", "compensating", "compensated", "compensation_failed")
SETTLED = ("completed", "pending_review", "aborted")


# -- the database ----------------------------------------------------------------------------


@dataclass
class Postgres:
    """One test's schema: the store URL for it, and an admin connection string."""

    url: str
    schema: str
    admin: str

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        import psycopg

        with psycopg.connect(self.admin, autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def as_role(self, role: str, app: str) -> str:
        """The store URL for ``role``, with an application name to find its backends by."""
        assert POSTGRES_URL is not None
        base = POSTGRES_URL.split("?")[0]
        user = base.split("://", 1)[1].split("@", 1)
        host = user[1] if len(user) == 2 else user[0]
        return (
            f"postgresql+psycopg://{role}@{host}?options={quote(f'-csearch_path={self.schema}')}"
            f"&application_name={app}"
        )


@pytest.fixture
def pg() -> Iterator[Postgres]:
    assert POSTGRES_URL is not None
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = POSTGRES_URL.split("?")[0].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield Postgres(
            f"{POSTGRES_URL}{sep}options={quote(f'-csearch_path={schema}')}", schema, admin
        )
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


# -- the world and the shop ------------------------------------------------------------------


class ServiceDown(RuntimeError):
    """A service refused a call before doing anything (``fail``): every policy of the shop
    declares it ``not_done``, so the action is failed, not in doubt."""


class World:
    """Side effects as lines in a file; each line is one write(2) with O_APPEND, so processes
    can share the file and a line written before a SIGKILL is kept."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._file: Any = None

    def write(self, kind: str, ref: str) -> None:
        if self._file is None:
            self._file = open(self.path, "a", buffering=1)  # noqa: SIM115
        self._file.write(f"{kind} {ref}\n")

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []


def shop(
    guard: Guard,
    world: World,
    *,
    fixed: set[str] | None = None,
    die: Callable[[str, str], bool] | None = None,
) -> dict[str, Callable[..., Any]]:
    """Four tools: ``reserve`` and ``charge`` (reversible), ``notify`` (irreversible) and
    ``lookup`` (read-only). A call fails when its args say ``fail`` (until its item is in
    ``fixed``); an undo fails when the action's args say ``undo_fails``. ``die(tool, item)``
    kills the process with SIGKILL right after the effect."""
    fixed = fixed if fixed is not None else set()

    def tool(name: str) -> Callable[..., Any]:
        def call(item: str, fail: bool = False, undo_fails: bool = False) -> dict[str, str]:
            if fail and item not in fixed:
                world.write("fail", item)
                raise ServiceDown(f"{name} {item}: the service is down")
            world.write("do", item)
            if die is not None and die(name, item):
                os.kill(os.getpid(), signal.SIGKILL)
            return {"id": f"{name}-{item}"}

        call.__name__ = name
        return call

    def undo(args: dict[str, Any], action: Any) -> None:
        ref = f"{action.run_id}:{action.seq}"
        if args.get("undo_fails"):
            world.write("undo_fail", ref)
            raise RuntimeError(f"cannot undo {ref}")
        world.write("undo", ref)

    for name in ("reserve", "charge"):
        guard.policy(
            name,
            effect="reversible",
            undo=undo,
            undo_retry=QUICK,
            external_ids={name: "result.id"},
            not_done=[ServiceDown],
        )
    guard.policy(
        "notify",
        effect="irreversible",
        review=Review(kind="correct", owner="support"),
        not_done=[ServiceDown],
    )
    guard.policy("lookup", effect="read_only", retry=QUICK, not_done=[ServiceDown])
    return {name: tool(name) for name in TOOLS}


# -- what must hold ---------------------------------------------------------------------------


def check_world(
    guard: Guard, world: list[str], *, in_doubt_ran: bool = False
) -> dict[str, ActionLog]:
    """The guarantees over every run in the store, against the world's lines.

    Every effect is recorded by exactly one action with an outcome (and every such action took
    effect once); every reversible action of a halted run was compensated exactly once or is a
    review item; nothing was undone twice; every hash chain and row checks out; no run was
    claimed by recovery more than once. ``in_doubt_ran``: whether the in-doubt actions (left by
    a kill) took effect.
    """
    parsed = [line.split(" ", 1) for line in world]
    world_counts = {
        kind: Counter(ref for k, ref in parsed if k == kind)
        for kind in ("do", "fail", "undo", "undo_fail")
    }
    undone = world_counts["undo"]
    assert all(n == 1 for n in undone.values()), f"undone twice: {undone.most_common(3)}"
    runs = guard.runs()
    # reading and verifying waits on round trips: a few threads overlap them
    with ThreadPoolExecutor(max_workers=4) as pool:
        checked = list(
            pool.map(lambda run: _check_run(guard, run.id, world_counts, in_doubt_ran), runs)
        )
    recorded = {kind: Counter[str]() for kind in world_counts}
    for _, counts in checked:
        for kind, counter in counts.items():
            recorded[kind].update(counter)
    assert recorded["do"] == world_counts["do"], "the world and the log disagree on effects"
    assert recorded["fail"] == world_counts["fail"], "... on failed attempts"
    assert recorded["undo"] == undone, "the world and the log disagree on what was undone"
    assert recorded["undo_fail"] == world_counts["undo_fail"], "... on failed undos"
    return {log.run.id: log for log, _ in checked}


def _check_run(
    guard: Guard, run_id: str, world: dict[str, Counter[str]], in_doubt_ran: bool
) -> tuple[ActionLog, dict[str, Counter[str]]]:
    """One run's part of `check_world`: what its log says happened, by the world's kinds."""
    counts = {kind: Counter[str]() for kind in world}
    log = guard.log(run_id)
    verdict = guard.verify(run_id)
    assert verdict.ok, (run_id, verdict.problems)
    run = log.run
    assert run.status in SETTLED, f"run {run_id} was left {run.status}"
    kinds = [e.kind for e in guard.store.entries(run_id)]
    assert kinds.count("run.claim") <= 1, f"run {run_id} was recovered twice"
    keys = [(i.seq, i.reason) for i in log.review_items]
    assert len(keys) == len(set(keys)), f"run {run_id}: duplicate review items {keys}"
    items = set(keys)
    comps = {c.seq: c for c in log.compensations}
    halts = [k for k in kinds if k in ("run.hold", "run.review")]
    halted = run.status == "aborted" or (
        run.status == "pending_review" and halts[-1:] == ["run.review"]
    )
    undone, undo_fails = world["undo"], world["undo_fail"]
    for a in log.actions:
        item, ref = a.args["item"], f"{run_id}:{a.seq}"
        assert a.state not in ("started", "compensating"), f"{ref} left {a.state}"
        if a.state in EXECUTED:
            counts["do"][item] += 1
        elif a.state == "failed":
            counts["fail"][item] += a.attempts
        elif a.state == "in_doubt":
            assert (a.seq, "in_doubt") in items, f"in-doubt {ref} is not flagged"
            counts["do"][item] += int(in_doubt_ran)
        if a.state == "compensated":
            counts["undo"][ref] += 1
            assert undone[ref] == 1 and undo_fails[ref] == 0, ref
            assert (comps[a.seq].state, comps[a.seq].attempts) == ("succeeded", 1)
        elif a.state == "compensation_failed":
            comp = comps[a.seq]
            if comp.state == "failed":  # the undo failed on every attempt
                counts["undo_fail"][ref] += comp.attempts
                assert undone[ref] == 0 and undo_fails[ref] == comp.attempts, ref
                assert (a.seq, "compensation_failed") in items, ref
            else:  # a crash interrupted the undo: did it take effect? a person checks
                assert comp.state == "interrupted", ref
                counts["undo"][ref] += undone[ref]
                assert (a.seq, "compensation_in_doubt") in items, ref
        else:
            assert a.seq not in comps and undone[ref] == 0 and undo_fails[ref] == 0, ref
        if halted and a.effect == "reversible":
            assert a.state != "succeeded", f"{ref} was neither undone nor listed"
        if halted and a.effect == "irreversible" and a.state == "succeeded":
            assert (a.seq, "irreversible") in items, f"{ref} is not listed for review"
    return log, counts


# -- children ---------------------------------------------------------------------------------


def child(target: Callable[..., Any], *args: Any) -> Any:
    """Start ``target(*args, results)`` in a forked process; it reports on ``results``."""
    process = FORK.Process(target=_reporting, args=(target, *args), daemon=True)
    process.start()
    return process


def _reporting(target: Callable[..., Any], *args: Any) -> None:
    results = args[-1]
    try:
        target(*args)
    except BaseException:
        results.put(("error", traceback.format_exc()))
        raise


def collect(results: Any, n: int) -> list[Any]:
    got = []
    for _ in range(n):
        item = results.get(timeout=WAIT)
        assert item[0] != "error", item[1]
        got.append(item[1])
    return got


def join(*processes: Any, code: int = 0) -> None:
    for p in processes:
        p.join(timeout=WAIT)
        assert p.exitcode == code, f"child {p.pid} exited with {p.exitcode}"


# -- 1. many workers on one run set ---------------------------------------------------------


@dataclass
class Planned:
    tool: str
    args: dict[str, Any]


@dataclass
class Live:
    run: Any
    plan: list[Planned]
    hold: bool
    pos: int = 0


@dataclass
class Load:
    """What one worker does: ``calls`` guarded calls over runs it starts, a few at a time."""

    worker: int
    calls: int
    fail_rate: float = 0.012
    die_after: int | None = None  # SIGKILL inside the first tool run from this call on (1-based)
    crash_at: str | None = None  # or arm a guardrail crash point
    expected: dict[str, str] = field(default_factory=dict)


def plan_run(rng: random.Random, prefix: str, fail_rate: float) -> list[Planned]:
    calls: list[Planned] = []
    for i in range(rng.randint(5, 40)):
        tool = rng.choices(TOOLS, weights=(3, 2, 2, 3))[0]
        item = f"{prefix}-c{i}"
        if tool == "lookup" and calls and calls[-1].tool == "lookup" and rng.random() < 0.3:
            item = calls[-1].args["item"]  # the same lookup twice: two actions, one key each
        args: dict[str, Any] = {"item": item}
        if rng.random() < fail_rate:
            args["fail"] = True
        if tool in ("reserve", "charge") and rng.random() < 0.1:
            args["undo_fails"] = True
        calls.append(Planned(tool, args))
    return calls


def load_worker(url: str, world_path: str, load: Load, barrier: Any, results: Any) -> None:
    """Run ``load.calls`` guarded calls; halted runs are resumed and replayed, aborted, or
    left for a person. Reports the status each of its runs must end in."""
    rng = random.Random(SEED * 1000 + load.worker)
    fixed: set[str] = set()
    made = 0

    def die(tool: str, item: str) -> bool:
        return load.die_after is not None and made + 1 >= load.die_after

    if load.crash_at:
        testing.arm(load.crash_at)
    guard = Guard(store=url, heartbeat_interval=0.2)
    tools = shop(guard, World(world_path), fixed=fixed, die=die)
    barrier.wait(timeout=WAIT)
    start = time.perf_counter()
    live: list[Live] = []
    n = 0
    while made < load.calls or live:
        if made < load.calls and len(live) < 3:
            n += 1
            hold = rng.random() < 0.3
            run = guard.run(
                agent=f"worker-{load.worker}", on_failure="hold" if hold else None
            ).start()
            plan = plan_run(rng, f"w{load.worker}-r{n}", load.fail_rate)
            live.append(Live(run, plan, hold))
            load.expected[run.id] = "running"
        current = rng.choice(live)
        if made >= load.calls or current.pos == len(current.plan):
            current.run.complete()
            load.expected[current.run.id] = "completed"
            live.remove(current)
            continue
        step = current.plan[current.pos]
        try:
            current.run.call(step.tool, dict(step.args), fn=tools[step.tool])
            made += 1
            current.pos += 1
            continue
        except RunHalted:
            made += 1
        run_id = current.run.id
        choice = rng.random()
        if choice < 0.4:  # a person fixed the cause and resumes: the agent replays the run
            guard.resume(run_id, by=f"worker-{load.worker}")
            fixed.add(step.args["item"])
            on_failure = "hold" if current.hold else None
            current.run = guard.run(run_id=run_id, on_failure=on_failure).start()
            current.pos = 0
            continue
        if choice < 0.7:
            decision = guard.abort(run_id, by=f"worker-{load.worker}", reason="give up")
            assert decision.landed and decision.status == "aborted"
            load.expected[run_id] = "aborted"
        else:
            load.expected[run_id] = "pending_review"
        live.remove(current)
    elapsed = time.perf_counter() - start
    guard.close()
    results.put(
        (
            "ok",
            {"worker": load.worker, "calls": made, "elapsed": elapsed, "expected": load.expected},
        )
    )


def recover_watcher(url: str, stop: Any, results: Any) -> None:
    """``guard.recover()`` over and over while the workers run: it must never take a live run."""
    guard = Guard(store=url)
    taken: list[str] = []
    passes = 0
    while not stop.is_set():
        taken += guard.recover()
        passes += 1
        stop.wait(0.05)
    guard.close()
    results.put(("ok", {"taken": taken, "passes": passes}))


def test_many_workers_many_runs(pg: Postgres, tmp_path: Path, capsys: Any) -> None:
    """8 worker processes x 500 guarded calls with random failures, undos that fail, resumes,
    aborts and a recovery watcher polling all the while: every action recorded once, every
    chain valid, every compensation exactly once."""
    results = FORK.Queue()
    barrier = FORK.Barrier(WORKERS + 1)
    workers = [
        child(
            load_worker, pg.url, str(tmp_path / f"world-{w}.log"), Load(w, CALLS), barrier, results
        )
        for w in range(WORKERS)
    ]
    barrier.wait(timeout=WAIT)  # every worker has opened its guard (and the schema exists)
    start = time.perf_counter()
    stop = FORK.Event()
    watcher_results = FORK.Queue()
    watcher = child(recover_watcher, pg.url, stop, watcher_results)
    reports = collect(results, WORKERS)
    elapsed = time.perf_counter() - start
    stop.set()
    [watched] = collect(watcher_results, 1)
    join(*workers, watcher)

    assert watched["taken"] == [], "a recovery worker took a live run"
    world = [line for w in range(WORKERS) for line in World(tmp_path / f"world-{w}.log").lines()]
    with Guard(store=pg.url) as guard:
        logs = check_world(guard, world)
    expected = {run_id: s for r in reports for run_id, s in r["expected"].items()}
    assert {run_id: log.run.status for run_id, log in logs.items()} == expected
    calls = sum(r["calls"] for r in reports)
    assert calls == WORKERS * CALLS
    statuses = Counter(expected.values())
    actions = Counter(a.state for log in logs.values() for a in log.actions)
    if calls >= 2000:  # the default load meets every path (the seed makes it repeatable)
        assert statuses["aborted"] and statuses["pending_review"] and statuses["completed"]
        assert actions["compensated"] and actions["compensation_failed"] and actions["failed"]
    with capsys.disabled():
        print(
            f"\n[postgres load] {WORKERS} workers x {CALLS} guarded calls = {calls} in "
            f"{elapsed:.2f} s: {calls / elapsed:.0f} calls/s; {len(logs)} runs "
            f"{dict(statuses)}; actions {dict(actions)}; recovery watcher passes "
            f"{watched['passes']}"
        )


# -- 2. racing reviewers in different processes ---------------------------------------------

REVIEWERS = 6
RUN_ROLES = ("resume", "abort", "resume", "abort", "resolve:done_manually", "resolve:skipped")


def held_run(guard: Guard, tools: dict[str, Callable[..., Any]], n: int) -> tuple[str, str]:
    """A run held in ``pending_review`` after reserve (reversible), notify (irreversible) and a
    failed charge; returns the run and its ``held`` review item."""
    with pytest.raises(RunHalted) as halted, guard.run(agent="shop", on_failure="hold") as run:
        run.call("reserve", {"item": f"h{n}-a"}, fn=tools["reserve"])
        run.call("notify", {"item": f"h{n}-b"}, fn=tools["notify"])
        run.call("charge", {"item": f"h{n}-c", "fail": True}, fn=tools["charge"])
    [item] = halted.value.review_items
    return run.id, item


def approval_run(guard: Guard, n: int) -> tuple[str, str]:
    """A run awaiting a person's approval of a large transfer; returns the run and the item."""
    with pytest.raises(RunHalted) as halted, guard.run(agent="bank") as run:
        run.call("transfer", {"item": f"t{n}", "amount": 5000}, fn=lambda item, amount: item)
    [item] = halted.value.review_items
    return run.id, item


def reviewer(
    url: str,
    world_path: str,
    me: int,
    rounds: list[tuple[str, str, str]],
    barrier: Any,
    results: Any,
) -> None:
    """One reviewer: for each round meet the others at the barrier, then decide at once."""
    guard = Guard(store=url)
    shop(guard, World(world_path))
    by = f"reviewer-{me}"
    for run_id, item_id, role in rounds:
        barrier.wait(timeout=WAIT)
        try:
            if role == "resume":
                d: Decision = guard.resume(run_id, by=by, note=role)
            elif role == "abort":
                d = guard.abort(run_id, by=by, reason=role)
            elif role.startswith("resolve:"):
                d = guard.resolve(item_id, role.split(":")[1], by=by, note=role)
            elif role == "approve":
                d = guard.approve(item_id, by=by, note=role)
            else:
                d = guard.reject(item_id, by=by, reason=role)
            outcome = ("landed" if d.landed else "repeat", d.status)
        except Conflict as exc:
            outcome = ("conflict", str(exc))
        except Exception as exc:
            outcome = ("other", f"{type(exc).__name__}: {exc}")
        results.put(("ok", (run_id, by, role, *outcome)))
    guard.close()


def test_reviewers_racing_across_processes(pg: Postgres, tmp_path: Path) -> None:
    """Six reviewers, each in its own process, decide on the same run at the same instant:
    two resume, two abort, two resolve its ``held`` review item differently. Exactly one run
    decision lands; an identical decision is a repeat, a different one a Conflict. The held item
    is resolved exactly once: by a resolver, or, when the run decision got there first, by the
    decision itself (``resumed``/``aborted``, by its decider), and then both resolvers get a
    Conflict. The store holds exactly one of each. The same for approve against reject."""
    world = World(tmp_path / "world.log")
    with Guard(store=pg.url) as guard:
        tools = shop(guard, world)
        guard.policy("transfer", effect="irreversible", approval="args.amount > 1000")
        held = [held_run(guard, tools, n) for n in range(8)]
        approvals = [approval_run(guard, n) for n in range(4)]
    plans: list[list[tuple[str, str, str]]] = [[] for _ in range(REVIEWERS)]
    for r, (run_id, item_id) in enumerate(held):
        for p in range(REVIEWERS):  # every reviewer plays every role over the rounds
            plans[p].append((run_id, item_id, RUN_ROLES[(p + r) % REVIEWERS]))
    for r, (run_id, item_id) in enumerate(approvals):
        for p in range(REVIEWERS):
            plans[p].append((run_id, item_id, "approve" if (p + r) % 2 else "reject"))
    results = FORK.Queue()
    barrier = FORK.Barrier(REVIEWERS)
    procs = [
        child(reviewer, pg.url, str(world.path), p, plans[p], barrier, results)
        for p in range(REVIEWERS)
    ]
    outcomes: dict[str, list[tuple[str, str, str, str]]] = {}
    for run_id, by, role, kind, detail in collect(results, REVIEWERS * len(plans[0])):
        outcomes.setdefault(run_id, []).append((by, role, kind, detail))
    join(*procs)

    undone = Counter(
        line.split()[1].split(":")[0] for line in world.lines() if line.startswith("undo ")
    )
    with Guard(store=pg.url) as guard:
        for run_id, item_id in held:
            got = outcomes[run_id]
            assert not [o for o in got if o[2] == "other"], got
            decisions = [o for o in got if o[1] in ("resume", "abort")]
            [winner] = [o for o in decisions if o[2] == "landed"]
            for by, role, kind, _ in decisions:
                if by != winner[0]:
                    assert kind == ("repeat" if role == winner[1] else "conflict"), got
            resolutions = [o for o in got if o[1].startswith("resolve:")]
            landed = [o for o in resolutions if o[2] == "landed"]
            assert len(landed) <= 1, got
            assert all(o[2] == "conflict" for o in resolutions if o not in landed), got

            log = guard.log(run_id)
            kinds = Counter(e.kind for e in guard.store.entries(run_id))
            assert kinds["run.resume"] + kinds["run.abort"] == 1, kinds
            assert kinds["review.resolve"] == len(landed), kinds  # else in the run decision
            assert log.run.decided_by == winner[0] and log.run.decision_note == winner[1]
            [item] = [i for i in log.review_items if i.id == item_id]
            if landed:
                assert (item.resolved_by, item.resolution) == (landed[0][0], landed[0][1][8:])
            else:  # the run decision closed it first
                closed = "resumed" if winner[1] == "resume" else "aborted"
                assert (item.resolved_by, item.resolution) == (winner[0], closed)
            if winner[1] == "resume":
                assert log.run.status == "running" and undone[run_id] == 0
                assert log.action(1).state == "succeeded"
            else:
                assert log.run.status == "aborted" and undone[run_id] == 1
                assert [(c.seq, c.state) for c in log.compensations] == [(1, "succeeded")]
            assert guard.verify(run_id).ok
        for run_id, item_id in approvals:
            got = outcomes[run_id]
            [winner] = [o for o in got if o[2] == "landed"]
            for by, role, kind, _ in got:
                if by != winner[0]:
                    assert kind == ("repeat" if role == winner[1] else "conflict"), got
            kinds = Counter(e.kind for e in guard.store.entries(run_id))
            assert kinds["approval.approved"] + kinds["approval.rejected"] == 1, kinds
            stored = guard.store.review_item(item_id)
            assert stored is not None
            assert (stored.resolved_by, stored.resolution) == (
                winner[0],
                f"{winner[1]}d" if winner[1] == "approve" else "rejected",
            )
            assert guard.verify(run_id).ok


# -- 3. racing recovery workers ---------------------------------------------------------------

RECOVERERS = 4


def die_with_runs(url: str, world_path: str, runs: int, results: Any) -> None:
    """Start ``runs`` runs, do a few calls in each, and die by SIGKILL inside the last call."""
    guard = Guard(store=url)
    last = f"dead-{runs - 1}-a"
    tools = shop(guard, World(world_path), die=lambda tool, item: item == last)
    opened = [guard.run(agent="doomed").start() for _ in range(runs)]
    results.put(("ok", [run.id for run in opened]))
    for n, run in enumerate(opened):
        for tool, suffix in (("charge", "c"), ("notify", "n"), ("lookup", "l"), ("reserve", "a")):
            run.call(tool, {"item": f"dead-{n}-{suffix}"}, fn=tools[tool])
    raise AssertionError("the last call should have killed this process")


def die_compensating(url: str, world_path: str, results: Any) -> None:
    """A run whose halt is killed right after its first undo: left ``compensating``."""
    guard = Guard(store=url)
    tools = shop(guard, World(world_path))
    testing.arm("after_undo:1")
    with guard.run(agent="doomed") as run:
        results.put(("ok", run.id))
        for tool, item in (("reserve", "cmp-a"), ("charge", "cmp-c"), ("notify", "cmp-n")):
            run.call(tool, {"item": item}, fn=tools[tool])
        run.call("lookup", {"item": "cmp-l", "fail": True}, fn=tools["lookup"])


def die_aborting(url: str, world_path: str, run_id: str, results: Any) -> None:
    """An abort killed as soon as it is recorded: the run is left ``aborting``."""
    guard = Guard(store=url)
    shop(guard, World(world_path))
    testing.arm("after_abort_start")
    results.put(("ok", run_id))
    guard.abort(run_id, by="ops", reason="stop")


def recoverer(url: str, world_path: str, barrier: Any, results: Any) -> None:
    guard = Guard(store=url)
    shop(guard, World(world_path))
    barrier.wait(timeout=WAIT)
    recovered = guard.recover()
    guard.close()
    results.put(("ok", recovered))


def dead_runs(pg: Postgres, world: World, runs: int = 6) -> list[str]:
    """Runs whose owner died: ``runs`` left ``running`` (one mid-call), one ``compensating``
    and one ``aborting``."""
    results = FORK.Queue()
    doomed = child(die_with_runs, pg.url, str(world.path), runs, results)
    [running] = collect(results, 1)
    join(doomed, code=-signal.SIGKILL)
    doomed = child(die_compensating, pg.url, str(world.path), results)
    [compensating] = collect(results, 1)
    join(doomed, code=-signal.SIGKILL)
    with Guard(store=pg.url) as guard:
        run_id, _ = held_run(guard, shop(guard, world), 99)
    doomed = child(die_aborting, pg.url, str(world.path), run_id, results)
    [aborting] = collect(results, 1)
    join(doomed, code=-signal.SIGKILL)
    with Guard(store=pg.url) as guard:
        assert guard.require_run(compensating).status == "compensating"
        assert guard.require_run(aborting).status == "aborting"
        assert {guard.require_run(r).status for r in running} == {"running"}
    return [*running, compensating, aborting]


def test_recovery_workers_racing(pg: Postgres, tmp_path: Path) -> None:
    """Four processes run `guard.recover()` at the same instant over runs whose owner died
    (running, mid-call, compensating, aborting): each run is recovered by exactly one of
    them, every undo ran once, and a recovery afterwards finds nothing."""
    world = World(tmp_path / "world.log")
    dead = dead_runs(pg, world)
    results = FORK.Queue()
    barrier = FORK.Barrier(RECOVERERS)
    procs = [child(recoverer, pg.url, str(world.path), barrier, results) for _ in range(RECOVERERS)]
    recovered = collect(results, RECOVERERS)
    join(*procs)
    everything = [run_id for got in recovered for run_id in got]
    assert sorted(everything) == sorted(dead), recovered
    with Guard(store=pg.url) as guard:
        shop(guard, world)
        logs = check_world(guard, world.lines(), in_doubt_ran=True)
        for run_id in dead:
            kinds = [e.kind for e in guard.store.entries(run_id)]
            assert kinds.count("run.claim") == 1
        assert logs[dead[-1]].run.status == "aborted"
        assert {logs[r].run.status for r in dead[:-1]} == {"pending_review"}
        assert guard.recover() == []


# -- 4. kill -9 of a worker mid-call, recovery by another process ----------------------------


@pytest.mark.parametrize(
    ("kill", "in_doubt_ran"),
    [
        pytest.param(Load(0, 150, die_after=70), True, id="sigkill-inside-a-tool"),
        pytest.param(Load(0, 150, crash_at="after_start:50"), False, id="after_start"),
        pytest.param(Load(0, 150, crash_at="after_call:50"), True, id="after_call"),
    ],
)
def test_worker_killed_mid_call(
    pg: Postgres, tmp_path: Path, kill: Load, in_doubt_ran: bool
) -> None:
    """Three workers share the store; one is killed with SIGKILL in the middle of a call. The
    others finish untouched; another process recovers exactly the dead worker's live runs."""
    results = FORK.Queue()
    barrier = FORK.Barrier(3)
    paths = [str(tmp_path / f"world-{w}.log") for w in range(3)]
    loads = [kill, Load(1, 150), Load(2, 150)]
    procs = [child(load_worker, pg.url, paths[w], loads[w], barrier, results) for w in range(3)]
    reports = collect(results, 2)
    join(procs[0], code=-signal.SIGKILL)
    join(*procs[1:])
    survivors = {run_id: s for r in reports for run_id, s in r["expected"].items()}
    with Guard(store=pg.url) as guard:
        live = {r.id for r in guard.runs() if r.status in ("running", "compensating", "aborting")}
        assert live and not live & set(survivors)

    recovery = FORK.Queue()
    proc = child(recoverer, pg.url, paths[0], FORK.Barrier(1), recovery)
    [recovered] = collect(recovery, 1)
    join(proc)
    assert sorted(recovered) == sorted(live)
    world = [line for path in paths for line in World(path).lines()]
    with Guard(store=pg.url) as guard:
        logs = check_world(guard, world, in_doubt_ran=in_doubt_ran)
        doubts = [a for log in logs.values() for a in log.actions if a.state == "in_doubt"]
        assert len(doubts) == 1 and doubts[0].run_id in live
    for run_id, status in survivors.items():
        assert logs[run_id].run.status == status


# -- 5. connection loss ---------------------------------------------------------------------


@dataclass
class Outage:
    """The database goes away for one role: its backends are terminated (as a server restart
    or failover would) and it may not log in again until `end`."""

    pg: Postgres
    role: str
    url: str

    def begin(self) -> int:
        self.pg.execute(f"ALTER ROLE {self.role} NOLOGIN")
        killed = self.pg.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE usename = %s",
            (self.role,),
        )
        assert all(ok for (ok,) in killed)
        return len(killed)

    def end(self) -> None:
        self.pg.execute(f"ALTER ROLE {self.role} LOGIN")


@pytest.fixture
def outage(pg: Postgres) -> Iterator[Outage]:
    role = f"gr_{uuid.uuid4().hex[:10]}"
    pg.execute(f"CREATE ROLE {role} LOGIN")
    pg.execute(f"GRANT ALL ON SCHEMA {pg.schema} TO {role}")
    o = Outage(pg, role, pg.as_role(role, role))
    Guard(store=o.url).close()  # the tables, owned by the role
    yield o
    o.end()
    pg.execute(
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE usename = %s",
        (role,),
    )
    pg.execute(f"DROP OWNED BY {role} CASCADE")
    pg.execute(f"DROP ROLE {role}")


def test_connection_loss_then_the_run_continues(outage: Outage, tmp_path: Path) -> None:
    """The guard's backends are terminated mid-run and the database stays away: each call is
    refused with a StoreError naming the run and the tool, and the tool does not run. Once
    the database is back, the agent's retry runs the call once and the run completes."""
    world = World(tmp_path / "world.log")
    with Guard(store=outage.url) as guard:
        tools = shop(guard, world)
        with guard.run(agent="shop") as run:
            run.call("reserve", {"item": "a"}, fn=tools["reserve"])
            assert outage.begin() >= 1
            for _ in range(2):
                with pytest.raises(StoreError) as err:
                    run.call("charge", {"item": "b"}, fn=tools["charge"])
                assert (err.value.run_id, err.value.tool) == (run.id, "charge")
                assert "charge did not run" in str(err.value)
            assert world.lines() == ["do a"]
            outage.end()
            run.call("charge", {"item": "b"}, fn=tools["charge"])
        assert world.lines() == ["do a", "do b"]
        logs = check_world(guard, world.lines())
        assert logs[run.id].run.status == "completed"
        assert [(a.tool, a.state) for a in logs[run.id].actions] == [
            ("reserve", "succeeded"),
            ("charge", "succeeded"),
        ]


def test_heartbeat_and_reads_come_back_after_a_connection_loss(outage: Outage) -> None:
    """A terminated connection is dropped and replaced, also for heartbeats: else a worker
    whose heartbeat connection died would look dead to other hosts and lose its live runs."""
    with Guard(store=outage.url, heartbeat_interval=3600) as guard:
        guard.policy("lookup", effect="read_only")
        with guard.run(agent="shop") as run:
            run.call("lookup", {"item": "a"}, fn=lambda item: item)
            guard.store.heartbeat(guard.owner, [run.id], 1.0)
            outage.begin()
            with pytest.raises(StoreError):
                guard.store.heartbeat(guard.owner, [run.id], 2.0)
            with pytest.raises(StoreError):
                guard.store.next_seq(run.id)
            outage.end()
            guard.store.heartbeat(guard.owner, [run.id], 3.0)
            assert guard.store.next_seq(run.id) == 2
            assert guard.require_run(run.id).heartbeat_at == 3.0


def lose_the_database(outage: Outage, world_path: str, during: bool, results: Any) -> None:
    """An agent whose database goes away between two calls (or while a tool runs) and does not
    come back before the process ends."""
    guard = Guard(store=outage.url)
    world = World(world_path)
    tools = shop(guard, world)

    def charge(item: str) -> dict[str, str]:
        world.write("do", item)
        outage.begin()  # the database goes away while the payment service answers
        return {"id": item}

    errors = []
    try:
        with guard.run(agent="shop") as run:
            results.put(("ok", run.id))
            run.call("reserve", {"item": "a"}, fn=tools["reserve"])
            run.call("notify", {"item": "n"}, fn=tools["notify"])
            if during:
                run.call("charge", {"item": "c"}, fn=charge)
            else:
                outage.begin()
                try:
                    run.call("charge", {"item": "c"}, fn=tools["charge"])
                except StoreError as exc:
                    errors.append(f"call: {exc}")
                    raise
    except StoreError as exc:  # the halt could not be recorded either
        errors.append(f"halt: {exc}")
    except RunHalted as exc:  # the outcome could not be recorded: the agent is stopped
        errors.append(f"halted: {exc}")
    results.put(("ok", errors))


@pytest.mark.parametrize("during", [False, True], ids=["between-calls", "during-a-call"])
def test_connection_loss_then_recovery_finishes_the_job(
    outage: Outage, tmp_path: Path, during: bool
) -> None:
    """The database goes away and the agent's process ends before it returns. Once it is back,
    recovery in another process halts the run and undoes what took effect; a call whose
    outcome could not be recorded is in doubt, for a person."""
    world = World(tmp_path / "world.log")
    results = FORK.Queue()
    proc = child(lose_the_database, outage, str(world.path), during, results)
    run_id, errors = collect(results, 2)
    join(proc)
    assert errors and all(run_id in e for e in errors), errors
    if not during:
        assert "charge did not run" in errors[0]
    assert world.lines() == ["do a", "do n", *(["do c"] if during else [])]
    outage.end()
    recovery = FORK.Queue()
    proc = child(recoverer, outage.url, str(world.path), FORK.Barrier(1), recovery)
    assert collect(recovery, 1) == [[run_id]]
    join(proc)
    with Guard(store=outage.url) as guard:
        logs = check_world(guard, world.lines(), in_doubt_ran=during)
        log = logs[run_id]
        assert log.run.status == "pending_review"
        states = [(a.tool, a.state) for a in log.actions]
        assert states[:2] == [("reserve", "compensated"), ("notify", "succeeded")]
        assert states[2:] == ([("charge", "in_doubt")] if during else [])


# -- two workers starting the same run ------------------------------------------------------


def start_run(url: str, run_id: str, barrier: Any, results: Any) -> None:
    guard = Guard(store=url)
    guard.policy("lookup", effect="read_only")
    barrier.wait(timeout=WAIT)
    try:
        run = guard.run(agent="shop", run_id=run_id).start()
        run.call("lookup", {"item": "a"}, fn=lambda item: item)
        outcome = "started"
    except Conflict as exc:
        outcome = f"conflict: {exc}"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    results.put(("ok", outcome))
    barrier.wait(timeout=WAIT)  # stay alive (the owner) until every starter has answered
    guard.close()


def test_two_workers_starting_the_same_run(pg: Postgres) -> None:
    """One run, one agent: when two processes start the same new run id at once (two workers
    picking up one thread), one starts it and the other gets a Conflict, not a store error."""
    for n in range(5):
        results = FORK.Queue()
        barrier = FORK.Barrier(2)
        procs = [child(start_run, pg.url, f"thread-{n}", barrier, results) for _ in range(2)]
        outcomes = sorted(collect(results, 2))
        join(*procs)
        assert outcomes[1] == "started", outcomes
        assert outcomes[0].startswith("conflict: ") and f"thread-{n}" in outcomes[0], outcomes


# -- guardrail recover --watch on several hosts --------------------------------------------

UNDO_MODULE = '''
import os


def undo(args, action):
    """The shop's undo, for a watcher process: one line in the world file per undo."""
    with open(os.environ["GUARDRAIL_TEST_WORLD"], "a") as world:
        world.write(f"undo {action.run_id}:{action.seq}\\n")
'''

POLICY_FILE = """
tools:
  reserve: {effect: reversible, undo: {call: pg_shop_undo.undo}}
  charge: {effect: reversible, undo: {call: pg_shop_undo.undo}}
  notify: {effect: irreversible, review: {kind: correct, owner: support}}
  lookup: {effect: read_only}
"""


def test_two_recover_watchers(pg: Postgres, tmp_path: Path) -> None:
    """`guardrail recover --watch` in two processes (as on two hosts) over ten runs whose
    owner died: every run is recovered by exactly one watcher, each undo runs once, and each
    watcher prints one JSON line per pass that recovered something."""
    world = World(tmp_path / "world.log")
    results = FORK.Queue()
    doomed = child(die_with_runs, pg.url, str(world.path), 10, results)
    [dead] = collect(results, 1)
    join(doomed, code=-signal.SIGKILL)
    (tmp_path / "pg_shop_undo.py").write_text(UNDO_MODULE)
    (tmp_path / "policies.yaml").write_text(POLICY_FILE)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        "GUARDRAIL_TEST_WORLD": str(world.path),
        "GUARDRAIL_POLICY_ALLOW": "pg_shop_undo",  # the file names app code: the operator allows it
    }
    command = [
        sys.executable,
        "-m",
        "guardrail.cli",
        "recover",
        "--watch",
        "--interval",
        "0.05",
        "--iterations",
        "3",
        "--json",
        "--store",
        pg.url,
        "--policy",
        str(tmp_path / "policies.yaml"),
    ]
    watchers = [
        subprocess.Popen(
            command,
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=WAIT) for w in watchers]
    assert [w.returncode for w in watchers] == [0, 0], outputs
    lines = [json.loads(line) for out, _ in outputs for line in out.splitlines()]
    assert all(line["recovered"] for line in lines), lines
    recovered = [run_id for line in lines for run_id in line["recovered"]]
    assert sorted(recovered) == sorted(dead), outputs
    with Guard(store=pg.url) as guard:
        logs = check_world(guard, world.lines(), in_doubt_ran=True)
        assert {logs[r].run.status for r in dead} == {"pending_review"}
        assert sum(a.state == "compensated" for r in dead for a in logs[r].actions) == 19


def test_a_url_with_several_connection_options(pg: Postgres) -> None:
    """libpq options with a space (two settings) reach every connection the same way: the
    writes land in the schema the reads look at."""
    options = quote(f"-csearch_path={pg.schema} -cstatement_timeout=30000")
    url = f"{pg.url.split('?')[0]}?options={options}&application_name=two_options"
    with Guard(store=url) as guard:
        guard.policy("lookup", effect="read_only")
        with guard.run(agent="shop") as run:
            assert run.call("lookup", {"item": "a"}, fn=lambda item: item) == "a"
        assert [a.state for a in guard.log(run.id).actions] == ["succeeded"]
    [(count,)] = pg.execute(f"SELECT count(*) FROM {pg.schema}.actions")
    assert count == 1


# -- a new worker taking over the run of a dead one ----------------------------------------


def die_in_notify(url: str, world_path: str, results: Any) -> None:
    guard = Guard(store=url)
    tools = shop(guard, World(world_path), die=lambda tool, item: tool == "notify")
    run = guard.run(agent="shop").start()
    results.put(("ok", run.id))
    run.call("reserve", {"item": "a"}, fn=tools["reserve"])
    run.call("notify", {"item": "n"}, fn=tools["notify"])


def restart_run(url: str, world_path: str, run_id: str, results: Any) -> None:
    """A restarted agent process replays its calls on the same run."""
    guard = Guard(store=url)
    tools = shop(guard, World(world_path))
    try:
        with guard.run(agent="shop", run_id=run_id) as run:
            run.call("reserve", {"item": "a"}, fn=tools["reserve"])
            run.call("notify", {"item": "n"}, fn=tools["notify"])
        outcome = "completed"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    results.put(("ok", outcome))


def test_restarting_a_dead_workers_run_does_not_repeat_its_call_in_doubt(
    pg: Postgres, tmp_path: Path
) -> None:
    """A worker dies inside an irreversible call; a new process restarts the agent on the same
    run. The call whose outcome is unknown must not run again behind a person's back: the new
    process is told to recover the run first, and recovery flags the call for review."""
    world = World(tmp_path / "world.log")
    results = FORK.Queue()
    proc = child(die_in_notify, pg.url, str(world.path), results)
    [run_id] = collect(results, 1)
    join(proc, code=-signal.SIGKILL)
    proc = child(restart_run, pg.url, str(world.path), run_id, results)
    [outcome] = collect(results, 1)
    join(proc)
    assert world.lines() == ["do a", "do n"], "the call in doubt ran again"
    assert outcome.startswith("RunStateError: ") and "recover" in outcome, outcome
    assert run_id in outcome and "notify" in outcome
    recovery = FORK.Queue()
    proc = child(recoverer, pg.url, str(world.path), FORK.Barrier(1), recovery)
    assert collect(recovery, 1) == [[run_id]]
    join(proc)
    with Guard(store=pg.url) as guard:
        log = check_world(guard, world.lines(), in_doubt_ran=True)[run_id]
        assert [a.state for a in log.actions] == ["compensated", "in_doubt"]
