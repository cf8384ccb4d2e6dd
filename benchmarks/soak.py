"""The soak: random agent runs killed with SIGKILL at random moments, recovered in new processes.

Run: ``python benchmarks/soak.py [--kills 1000] [--seed 1] [--store URL] [--max-seconds T]``.

Each round is one agent run drawn from the seed: a few calls of random tools (read-only,
reversible with undos that are or are not idempotent, some with a probe, irreversible), random
tool failures, random undo failures (once, then a retry works; or always), an agent that may
raise at the end, runs that hold their failure for a person. The run executes in a child process
that is killed with SIGKILL at a random moment: at a crash point of ``guardrail.testing`` (armed
with a random visit count), inside a tool or an undo right after its side effect, or by the
driver with ``os.kill`` after a random delay. Then ``guard.recover()`` runs in a NEW process
(which may itself be killed, and then recovered again), and so does a random abort of the halted
run (always for held runs; it too may be killed).

The tools write every side effect to a per-run "world" file (one appended line; a write survives
SIGKILL of its process, which is the failure simulated here, not a power loss). After each round
the driver holds the stored log against the world:

- no lost record: every side effect in the world has its action, recorded with an outcome; every
  action whose success was recorded has its side effect; a failed action has none;
- nothing done twice, nothing undone twice (the world says so; so does the compensation record);
- every reversible action that took effect in a halted or aborted run is compensated (its undo in
  the world) or has an open review item; irreversible ones have theirs;
- every run settled (pending_review, aborted or completed) and its hash chain valid
  (``guard.verify``).

Children are forked from the driver, which has imported guardrail but holds no open store
connection when it forks (the same "zygote" trick as tests/test_crash.py): each child is a new
process with its own pid, guard and connections, for a few milliseconds instead of a second.
Prints the counts; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import os
import random
import select
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guardrail import Guard, Retry, Review, RunHalted, testing

SETTLED = ("pending_review", "aborted", "completed")
CHILD_TIMEOUT = 120.0


# -- the tools ------------------------------------------------------------------------------


class ToolError(Exception):
    """A tool failed before it changed anything."""


class UndoError(Exception):
    """An undo failed before it changed anything."""


@dataclass(frozen=True)
class ToolSpec:
    name: str
    effect: str  # read_only | reversible | irreversible
    undo_idempotent: bool = False
    probe: bool = False


def catalog(rng: random.Random) -> list[ToolSpec]:
    """The soak's tools: one of each interesting kind, plus a few drawn at random."""
    tools = [
        ToolSpec("lookup", "read_only"),
        ToolSpec("create_order", "reversible", undo_idempotent=True, probe=True),
        ToolSpec("charge", "reversible", undo_idempotent=False),
        ToolSpec("reserve", "reversible", undo_idempotent=True),
        ToolSpec("send_email", "irreversible"),
    ]
    for i in range(3):
        effect = rng.choice(["read_only", "reversible", "reversible", "irreversible"])
        tools.append(
            ToolSpec(
                f"tool_{i}",
                effect,
                undo_idempotent=effect == "reversible" and rng.random() < 0.5,
                probe=effect != "read_only" and rng.random() < 0.3,
            )
        )
    return tools


class World:
    """The side effects, one line per effect in a file per run: ``do TOOL KEY``, ``undo TOOL KEY``.

    Keys are ``RUN.N``. An appended write lands in the page cache before ``write`` returns, so it
    survives SIGKILL of the writer (not a power loss, which is not what is simulated here)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, key: str) -> Path:
        return self.folder / f"{key.rsplit('.', 1)[0]}.log"

    def record(self, line: str, key: str) -> None:
        fd = os.open(self.path(key), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def lines(self, run_id: str) -> list[str]:
        try:
            return (self.folder / f"{run_id}.log").read_text().splitlines()
        except FileNotFoundError:
            return []

    def has(self, line: str, key: str) -> bool:
        try:
            return line in self.path(key).read_text().splitlines()
        except FileNotFoundError:
            return False


def build(store: str, world: World, tools: list[ToolSpec]) -> Guard:
    """A guard with every tool of the soak (any process can then recover any run)."""
    guard = Guard(store=store, heartbeat_interval=5.0)
    failed_once: set[str] = set()  # per process: "once" undos fail their first attempt here

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    for spec in tools:

        def tool(
            key: str,
            fail: bool = False,
            undo_fail: str = "never",
            die_in_tool: bool = False,
            die_in_undo: bool = False,
            note: str = "",
            spec: ToolSpec = spec,
        ) -> dict[str, Any]:
            if fail:
                raise ToolError(f"{spec.name} {key} failed")
            if spec.effect != "read_only":
                world.record(f"do {spec.name} {key}", key)
            if die_in_tool:
                die()
            return {"id": key, "tool": spec.name, "note": note[:20]}

        def undo(args: dict[str, Any], spec: ToolSpec = spec) -> None:
            key = args["key"]
            line = f"undo {spec.name} {key}"
            if args.get("undo_fail") == "always":
                raise UndoError(f"cannot undo {spec.name} {key}")
            if args.get("undo_fail") == "once" and key not in failed_once:
                failed_once.add(key)
                raise UndoError(f"undo of {spec.name} {key} failed once")
            if spec.undo_idempotent and world.has(line, key):
                return  # an idempotent undo: undoing it again changes nothing
            world.record(line, key)
            if args.get("die_in_undo"):
                die()

        def probe(args: dict[str, Any], spec: ToolSpec = spec) -> Any:
            key = args["key"]
            done = world.has(f"do {spec.name} {key}", key)
            return {"id": key, "tool": spec.name, "note": ""} if done else False

        fields: dict[str, Any] = {"effect": spec.effect}
        if spec.effect == "read_only":
            fields["retry"] = Retry(attempts=2, wait_initial=0.0005, wait_max=0.001)
        if spec.effect == "reversible":
            fields.update(
                undo=undo,
                undo_idempotent=spec.undo_idempotent,
                undo_retry=Retry(attempts=2, wait_initial=0.0005, wait_max=0.001),
                external_ids={"ref": "result.id"},
            )
        if spec.effect == "irreversible":
            fields["review"] = Review(kind="correct", owner="ops")
        if spec.probe and spec.effect != "read_only":
            fields["probe"] = probe
        guard.tool(name=spec.name, **fields)(tool)
    return guard


# -- one round ------------------------------------------------------------------------------


@dataclass
class Plan:
    run_id: str
    calls: list[tuple[str, dict[str, Any]]]
    hold: bool
    agent_raises: bool
    kill: str  # crash point "name:count", "raw", "tool", "undo" or "none"
    raw_delay: float = 0.0  # for "raw": when to kill, as a fraction of a typical run's time


def plan_round(rng: random.Random, run_id: str, tools: list[ToolSpec]) -> Plan:
    n = rng.randint(1, 10)
    calls = []
    for i in range(n):
        spec = rng.choice(tools)
        args: dict[str, Any] = {"key": f"{run_id}.{i}"}
        if rng.random() < 0.08:
            args["fail"] = True
        undo_fail = rng.choices(["never", "once", "always"], [0.8, 0.12, 0.08])[0]
        if undo_fail != "never":
            args["undo_fail"] = undo_fail
        if rng.random() < 0.3:
            args["note"] = "x" * rng.randint(1, 400)
        calls.append((spec.name, args))
    kill = rng.choices(["point", "raw", "tool", "undo", "none"], [0.38, 0.34, 0.1, 0.1, 0.08])[0]
    agent_raises = rng.random() < 0.35
    if kill == "point":
        point = rng.choice(["after_start", "after_call", "after_compensation_start", "after_undo"])
        visits = n if point in ("after_start", "after_call") else 3
        kill = f"{point}:{rng.randint(1, visits)}"
    elif kill == "tool":
        changing = [a for t, a in calls if _effect(tools, t) != "read_only" and not a.get("fail")]
        if changing:
            rng.choice(changing)["die_in_tool"] = True
    elif kill == "undo":
        undoable = [
            a for t, a in calls if _effect(tools, t) == "reversible" and not a.get("undo_fail")
        ]
        if undoable:
            rng.choice(undoable)["die_in_undo"] = True
            agent_raises = True  # make the run halt, so its undos run
    return Plan(
        run_id=run_id,
        calls=calls,
        hold=rng.random() < 0.2,
        agent_raises=agent_raises,
        kill=kill,
        raw_delay=rng.random() if kill == "raw" else 0.0,  # a fraction of the run's duration
    )


def _effect(tools: list[ToolSpec], name: str) -> str:
    return next(t.effect for t in tools if t.name == name)


class AgentError(Exception):
    """The agent itself failed (after its calls)."""


def agent(guard: Guard, plan: Plan) -> None:
    try:
        with guard.run(
            agent="soak", run_id=plan.run_id, on_failure="hold" if plan.hold else None
        ) as run:
            for name, args in plan.calls:
                run.call(name, args)
            if plan.agent_raises:
                raise AgentError("the agent lost its way")
    except (RunHalted, AgentError):
        pass


@dataclass
class Outcome:
    status: str  # ok | killed | error | hung
    detail: str = ""
    seconds: float = 0.0  # from the child's guard being ready to its exit


@dataclass
class Stats:
    rounds: int = 0
    kills: Counter[str] = field(default_factory=Counter)  # by how
    kills_in: Counter[str] = field(default_factory=Counter)  # agent | recovery | abort
    armed_not_reached: int = 0
    recoveries: int = 0
    recovered_runs: int = 0
    aborts: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    states: Counter[str] = field(default_factory=Counter)
    reviews: Counter[str] = field(default_factory=Counter)
    effects: int = 0
    undos: int = 0
    verified: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total_kills(self) -> int:
        return sum(self.kills.values())


class Soak:
    def __init__(self, store: str, folder: Path, seed: int) -> None:
        self.store = store
        self.world = World(folder / "world")
        self.world.folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.rng = random.Random(seed)
        self.seed = seed
        self.tools = catalog(self.rng)
        self.stats = Stats()
        self.run_seconds = 0.02  # how long an agent child takes from ready to exit (average)

    # children

    def child(
        self,
        act: Callable[[Guard], Any],
        *,
        arm: str | None = None,
        raw_delay: float | None = None,
    ) -> Outcome:
        """Run ``act`` in a forked child with a guard of its own; kill it as told."""
        started = time.monotonic()
        ready_r, ready_w = os.pipe()
        err = self.folder / f"error-{self.stats.rounds}-{time.monotonic_ns()}.txt"
        pid = os.fork()
        if pid == 0:  # the child: a new process with its own pid, guard and connections
            code = 0
            try:
                os.close(ready_r)
                if arm:
                    testing.arm(arm)
                guard = build(self.store, self.world, self.tools)
                os.write(ready_w, b"r")
                act(guard)
                guard.close()
            except BaseException:
                err.write_text(traceback.format_exc())
                code = 1
            os._exit(code)
        os.close(ready_w)
        pidfd = os.pidfd_open(pid)
        try:
            select.select([ready_r], [], [], CHILD_TIMEOUT)
            started = time.monotonic()
            if raw_delay is not None:
                time.sleep(raw_delay)  # the random moment of the kill
                os.kill(pid, signal.SIGKILL)  # harmless if it already exited (a zombie)
            done, _, _ = select.select([pidfd], [], [], CHILD_TIMEOUT)
            if not done:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return Outcome("hung", f"no answer in {CHILD_TIMEOUT:.0f} s")
            _, status = os.waitpid(pid, 0)
        finally:
            os.close(pidfd)
            os.close(ready_r)
        code = os.waitstatus_to_exitcode(status)
        if code == -signal.SIGKILL:
            return Outcome("killed")
        if code != 0:
            return Outcome("error", err.read_text() if err.exists() else f"exit code {code}")
        return Outcome("ok", seconds=time.monotonic() - started)

    def note_kill(self, where: str, how: str, outcome: Outcome, plan: Plan | None = None) -> bool:
        if outcome.status == "killed":
            if how == "none":
                how = "undo"  # nothing armed: it died in an undo marked to die (held runs)
            self.stats.kills[how] += 1
            self.stats.kills_in[where] += 1
            return True
        if outcome.status != "ok":
            self.problem(plan.run_id if plan else "-", f"{where} child {outcome.status}")
            if outcome.detail:
                self.stats.problems.append(outcome.detail)
        elif how not in ("none", "raw"):
            self.stats.armed_not_reached += 1
        return False

    def random_kill(self, points: list[str], p: float) -> tuple[str | None, float | None, str]:
        """(crash point to arm, raw kill delay, how) for a recovery or abort child."""
        roll = self.rng.random()
        if roll < p / 2:
            point = f"{self.rng.choice(points)}:{self.rng.randint(1, 2)}"
            return point, None, point.split(":")[0]
        if roll < p:
            return None, self.rng.uniform(0, 0.006), "raw"
        return None, None, "none"

    def recover(self, run_id: str) -> None:
        """Recover in new processes until one recovery runs to its end."""
        for attempt in range(20):
            p = 0.3 if attempt < 10 else 0.0
            arm, delay, how = self.random_kill(["after_compensation_start", "after_undo"], p)
            outcome = self.child(lambda g: g.recover(), arm=arm, raw_delay=delay)
            self.stats.recoveries += 1
            if not self.note_kill("recovery", how, outcome) and outcome.status == "ok":
                return
        self.problem(run_id, "recovery never finished")

    # a round

    def round(self) -> None:
        stats = self.stats
        run_id = f"s{self.seed}-{stats.rounds}"
        stats.rounds += 1
        plan = plan_round(self.rng, run_id, self.tools)
        arm = plan.kill if ":" in plan.kill else None
        how = plan.kill.split(":")[0]
        outcome = self.child(
            lambda g: agent(g, plan),
            arm=arm,
            # raw kills land anywhere in a run of typical length (learnt from unkilled runs)
            raw_delay=plan.raw_delay * self.run_seconds * 1.2 if plan.kill == "raw" else None,
        )
        if outcome.status == "ok":
            self.run_seconds = 0.9 * self.run_seconds + 0.1 * outcome.seconds
        self.note_kill("agent", how, outcome, plan)
        self.recover(run_id)
        status = self.status(run_id)
        if status == "pending_review" and (plan.hold or self.rng.random() < 0.3):
            arm, delay, how = self.random_kill(
                ["after_abort_start", "after_compensation_start", "after_undo"], 0.5
            )
            outcome = self.child(
                lambda g: g.abort(run_id, by="soak", reason="soak"), arm=arm, raw_delay=delay
            )
            stats.aborts += 1
            if self.note_kill("abort", how, outcome, plan):
                self.recover(run_id)
        self.check(plan)

    def status(self, run_id: str) -> str | None:
        with Guard(store=self.store, strict=False) as guard:
            run = guard.store.run(run_id)
            return run.status if run else None

    # the checks

    def problem(self, run_id: str, text: str) -> None:
        self.stats.problems.append(f"seed {self.seed} run {run_id}: {text}")

    def check(self, plan: Plan) -> None:
        run_id, stats = plan.run_id, self.stats
        lines = Counter(self.world.lines(run_id))
        with Guard(store=self.store, strict=False) as guard:
            run = guard.store.run(run_id)
            if run is None:
                # killed before the run's first record: then nothing may have happened
                stats.statuses["never started (killed first)"] += 1
                if lines:
                    self.problem(run_id, f"side effects without a run: {sorted(lines)}")
                return
            log = guard.log(run_id)
            verdict = guard.verify(run_id)
        stats.statuses[run.status] += 1
        stats.verified += verdict.ok
        if not verdict.ok:
            self.problem(run_id, f"hash chain: {verdict.problems}")
        if run.status not in SETTLED:
            self.problem(run_id, f"left {run.status}")
        for line, n in lines.items():
            if n > 1:
                self.problem(run_id, f"'{line}' happened {n} times")
        stats.effects += sum(1 for line in lines if line.startswith("do "))
        stats.undos += sum(1 for line in lines if line.startswith("undo "))
        items = log.review_items
        if len({(i.seq, i.reason) for i in items}) != len(items):
            self.problem(run_id, "duplicate review items")
        open_items = {(i.seq, i.reason) for i in items if i.status == "open"}
        for i in items:
            stats.reviews[i.reason] += 1
        comps = {c.seq: c for c in log.compensations}
        halted = run.status in ("pending_review", "aborted")
        held = any(reason == "held" for _, reason in open_items) and run.status != "aborted"
        recorded: Counter[str] = Counter()
        for a in log.actions:
            stats.states[a.state] += 1
            key = (a.args or {}).get("key", "")
            do, undo = f"do {a.tool} {key}", f"undo {a.tool} {key}"
            took_effect = do in lines and a.state != "failed"
            if took_effect:
                recorded[do] += 1
            if a.state == "failed" and do in lines:
                self.problem(run_id, f"action {a.seq} failed but '{do}' happened")
            if a.state in ("succeeded", "compensating", "compensated", "compensation_failed") and (
                a.effect != "read_only" and do not in lines
            ):
                self.problem(run_id, f"action {a.seq} ({a.state}) has no side effect '{do}'")
            if a.state in ("started", "compensating"):
                self.problem(run_id, f"action {a.seq} left {a.state}")
            if a.state == "in_doubt" and (a.seq, "in_doubt") not in open_items:
                self.problem(run_id, f"in-doubt action {a.seq} without a review item")
            if undo in lines and a.state not in ("compensated", "compensation_failed"):
                self.problem(run_id, f"'{undo}' happened but action {a.seq} is {a.state}")
            if a.state == "compensated" and (
                undo not in lines or comps[a.seq].state != "succeeded"
            ):
                self.problem(run_id, f"action {a.seq} compensated but not undone")
            if a.state == "compensation_failed" and not open_items & {
                (a.seq, "compensation_failed"),
                (a.seq, "compensation_in_doubt"),
            }:
                self.problem(run_id, f"action {a.seq}: failed undo without a review item")
            if not halted or held:
                continue
            if (
                a.effect == "reversible"
                and took_effect
                and a.state
                not in (
                    "compensated",
                    "compensation_failed",
                )
                and (a.seq, "in_doubt") not in open_items
            ):
                self.problem(
                    run_id, f"reversible action {a.seq} ({a.state}) neither undone nor listed"
                )
            if (
                a.effect == "irreversible"
                and a.state == "succeeded"
                and (
                    a.seq,
                    "irreversible",
                )
                not in open_items
            ):
                self.problem(run_id, f"irreversible action {a.seq} not listed for review")
        effects = Counter(line for line in lines if line.startswith("do "))
        if recorded != effects:
            self.problem(run_id, f"lost records: world {dict(effects)}, log {dict(recorded)}")

    def final(self) -> None:
        """A last recovery finds nothing to do."""
        outcome = self.child(lambda g: g.recover())
        if outcome.status != "ok":
            self.problem("-", f"final recovery: {outcome.status} {outcome.detail}")


def soak(
    store: str | None = None,
    *,
    kills: int = 1000,
    seed: int = 1,
    max_seconds: float | None = None,
    folder: Path | None = None,
    progress: bool = False,
) -> Stats:
    """Run rounds until ``kills`` processes were killed (or ``max_seconds`` passed)."""
    folder = folder or Path(tempfile.mkdtemp(prefix="guardrail-soak-"))
    store = store or f"sqlite:///{folder / 'soak.db'}"
    driver = Soak(store, folder, seed)
    Guard(store=store).close()  # create the schema once, before the children race to
    start = time.monotonic()
    while driver.stats.total_kills < kills:
        if max_seconds is not None and time.monotonic() - start > max_seconds:
            break
        driver.round()
        if progress and driver.stats.rounds % 50 == 0:
            s = driver.stats
            print(
                f"  {s.rounds} rounds, {s.total_kills} kills, {len(s.problems)} problems, "
                f"{time.monotonic() - start:.0f} s",
                flush=True,
            )
    driver.final()
    driver.stats.seconds = time.monotonic() - start
    return driver.stats


def summary(stats: Stats) -> str:
    out = [
        f"rounds (agent runs): {stats.rounds}; processes killed with SIGKILL: {stats.total_kills} "
        f"in {stats.seconds:.0f} s",
        "  killed while: " + ", ".join(f"{k} {v}" for k, v in stats.kills_in.most_common()),
        "  killed by: " + ", ".join(f"{k} {v}" for k, v in stats.kills.most_common()),
        f"  armed but the point was not reached: {stats.armed_not_reached}",
        f"recoveries (each in a new process): {stats.recoveries}; aborts: {stats.aborts}",
        "runs: " + ", ".join(f"{k} {v}" for k, v in stats.statuses.most_common()),
        "actions: " + ", ".join(f"{k} {v}" for k, v in stats.states.most_common()),
        "review items: " + ", ".join(f"{k} {v}" for k, v in stats.reviews.most_common()),
        f"side effects in the world: {stats.effects}; undos: {stats.undos}",
        f"hash chains valid: {stats.verified} of "
        f"{sum(n for s, n in stats.statuses.items() if s in SETTLED or s == 'running')}",
        f"lost records, double effects or undos, unlisted actions, other problems: "
        f"{len(stats.problems)}",
    ]
    out += [f"  PROBLEM {p}" for p in stats.problems[:30]]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=1000, help="stop after this many kills")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--store", help="store URL (default: a SQLite file in a temp folder)")
    parser.add_argument("--max-seconds", type=float, help="stop after this long, whatever")
    opts = parser.parse_args()
    print(f"soak: seed {opts.seed}, until {opts.kills} kills")
    stats = soak(
        opts.store, kills=opts.kills, seed=opts.seed, max_seconds=opts.max_seconds, progress=True
    )
    print(summary(stats))
    return 1 if stats.problems else 0


if __name__ == "__main__":
    sys.exit(main())
