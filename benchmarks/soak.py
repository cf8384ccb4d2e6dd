"""The soak: random agent runs killed with SIGKILL at random moments, recovered in new processes.

Run: ``python benchmarks/soak.py [--kills 1000] [--seed 1] [--store URL] [--max-seconds T]``,
or with more kinds of faults: ``python benchmarks/soak.py --faults 1000 [--store sqlite|postgres]``.
Each round's draws come from the seed and its number alone: ``--seed S --round N`` replays the
round whose run is ``sS-N`` (with ``--faults 1`` for a round of a fault soak).

Each round is one agent run drawn from the seed: a few calls of random tools (read-only,
reversible with undos that are or are not idempotent, some with a probe, irreversible), random
tool failures, random undo failures (once, then a retry works; or always), an agent that may
raise at the end, runs that hold their failure for a person. The run executes in a child process
that is killed with SIGKILL at a random moment: at a crash point of ``guardrail.testing`` (armed
with a random visit count), inside a tool or an undo right after its side effect, or by the
driver with ``os.kill`` after a random delay. Then ``guard.recover()`` runs in a NEW process
(which may itself be killed, and then recovered again), and so does a random abort of the halted
run (always for held runs; it too may be killed).

``--faults N`` mixes those kill rounds with three more kinds of fault, until N were injected.
Every process then beats every ``--heartbeat`` seconds (0.05: a lease expires after 0.3 s), and a
recovery watcher (a process calling ``guard.recover()`` in a loop, as ``guardrail recover --watch``
does, with the soak's undos and probes registered) runs beside the agent:

- pause: the agent's process is stopped with SIGSTOP (at a crash point, inside a tool or an undo
  right after its side effect, or by the driver after a random delay) and stays stopped until the
  watcher has taken its run over (the lease expired: the run's epoch grew), then SIGCONT at once
  (racing the recovery) or once the watcher has settled the run. The woken agent must be told it
  lost the run (``OwnershipLost``) and run nothing more;
- store: the agent's store fails a random write (``guardrail.testing.FaultyStore``: once, a few
  times, or for the rest of the run). When the agent is done, its process stays alive (it holds
  no lease any more) until the watcher has finished any run it left behind;
- pgterm (PostgreSQL only): the agent's connections are terminated (``pg_terminate_backend`` of
  the backends with its ``application_name``) once or a few times during the run; the agent's
  process lingers as after a store fault.

The tools write every side effect to a per-run "world" file (one appended line; a write survives
SIGKILL of its process, which is the failure simulated here, not a power loss) and to a ledger
beside it (time, owner, line). After each round the driver holds the stored log against both:

- no lost record: every side effect in the world has its action, recorded with an outcome; every
  action whose success was recorded has its side effect; a failed action has none;
- nothing done twice, nothing undone twice (the world says so; so does the compensation record);
- every reversible action that took effect in a halted or aborted run is compensated (its undo in
  the world) or has an open review item; irreversible ones have theirs;
- every run settled (pending_review, aborted or completed) and its hash chain valid
  (``guard.verify``);
- no side effect by a process after it lost the run: the journal says who owned the run when
  (start, takeovers, aborts, the end of its work), the ledger who did what when. Only the one
  call (or undo) a paused process had begun in its spell may land after the takeover (fencing
  stops its next write, not a tool already past its intent), and the log must agree with it as
  with any effect (in doubt with a review item, or found by the probe and compensated); anything
  more is a violation;
- with ``--faults``: a paused agent whose run was taken over was told ``OwnershipLost``; a run
  left behind by a lingering agent was taken over; and after a final recovery (leases expired)
  no run of the store is running, compensating or aborting, none holds a ``started`` action, and
  every hash chain verifies.

Children are forked from the driver, which has imported guardrail but holds no open store
connection when it forks (the same "zygote" trick as tests/test_crash.py): each child is a new
process with its own pid, guard and connections, for a few milliseconds instead of a second.
Prints the counts; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import random
import select
import signal
import sqlite3
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from guardrail import Guard, OwnershipLost, Retry, Review, RunHalted, testing
from guardrail.errors import StoreError
from guardrail.store import RunRecord

SETTLED = ("pending_review", "aborted", "completed")
LIVE = ("running", "compensating", "aborting")  # statuses in which someone executes the run
CHILD_TIMEOUT = 120.0
SETTLE_WAIT = 30.0  # seconds a run may take to settle once its agent is gone
TAKEOVER_WAIT = 10.0  # seconds, beyond its lease, a paused agent's run may take to change hands
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# How a problem of one kind is labelled: recovery believed a probe's "not done" while the
# worker that started the call still lived (fixed: such an action stays in doubt).
KNOWN_PROBE_BUG = "[probe believed while its worker lived]"


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
    survives SIGKILL of the writer (not a power loss, which is not what is simulated here). Each
    effect also goes to the run's ledger (``RUN.who``): ``TIME<tab>OWNER<tab>LINE``, who did it
    and when."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, key: str) -> Path:
        return self.folder / f"{key.rsplit('.', 1)[0]}.log"

    def record(self, line: str, key: str, owner: str = "") -> None:
        path = self.path(key)
        _append(path, line)
        _append(path.with_suffix(".who"), f"{time.time():.6f}\t{owner}\t{line}")

    def record_once(self, line: str, key: str, owner: str = "") -> bool:
        """Record ``line`` unless it is there already, as one step (an idempotent undo: its
        system makes the check and the change atomic; here a lock on the run does)."""
        fd = os.open(self.path(key).with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel if the holder is killed
            if self.has(line, key):
                return False
            self.record(line, key, owner)
            return True
        finally:
            os.close(fd)

    def lines(self, run_id: str) -> list[str]:
        try:
            return (self.folder / f"{run_id}.log").read_text().splitlines()
        except FileNotFoundError:
            return []

    def ledger(self, run_id: str) -> list[tuple[float, str, str]]:
        """(time, owner, line) of every effect of the run."""
        try:
            text = (self.folder / f"{run_id}.who").read_text()
        except FileNotFoundError:
            return []
        out = []
        for row in text.splitlines():
            at, owner, line = row.split("\t")
            out.append((float(at), owner, line))
        return out

    def has(self, line: str, key: str) -> bool:
        try:
            return line in self.path(key).read_text().splitlines()
        except FileNotFoundError:
            return False


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class _Pauses:
    """In an agent's process of a pause round: tools and undos marked to stop there may."""

    enabled = False


def pause_here() -> None:
    if _Pauses.enabled:
        os.kill(os.getpid(), signal.SIGSTOP)


def build(store: str, world: World, tools: list[ToolSpec], heartbeat: float = 5.0) -> Guard:
    """A guard with every tool of the soak (any process can then recover any run)."""
    guard = Guard(store=store, heartbeat_interval=heartbeat)
    owner = guard.owner
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
            stop_in_tool: bool = False,
            stop_in_undo: bool = False,
            note: str = "",
            spec: ToolSpec = spec,
        ) -> dict[str, Any]:
            if fail:
                raise ToolError(f"{spec.name} {key} failed")
            if spec.effect != "read_only":
                world.record(f"do {spec.name} {key}", key, owner)
            if die_in_tool:
                die()
            if stop_in_tool:
                pause_here()
            return {"id": key, "tool": spec.name, "note": note[:20]}

        def undo(args: dict[str, Any], spec: ToolSpec = spec) -> None:
            key = args["key"]
            line = f"undo {spec.name} {key}"
            if args.get("undo_fail") == "always":
                raise UndoError(f"cannot undo {spec.name} {key}")
            if args.get("undo_fail") == "once" and key not in failed_once:
                failed_once.add(key)
                raise UndoError(f"undo of {spec.name} {key} failed once")
            if spec.undo_idempotent:
                if not world.record_once(line, key, owner):
                    return  # an idempotent undo: undoing it again changes nothing
            else:
                world.record(line, key, owner)
            if args.get("die_in_undo"):
                die()
            if args.get("stop_in_undo"):
                pause_here()

        def probe(args: dict[str, Any], spec: ToolSpec = spec) -> Any:
            key = args["key"]
            done = world.has(f"do {spec.name} {key}", key)
            return {"id": key, "tool": spec.name, "note": ""} if done else False

        # ToolError is raised before the tool changes anything: it proves nothing happened
        fields: dict[str, Any] = {"effect": spec.effect, "not_done": [ToolError]}
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
    raw_delay: float = 0.0  # for "raw": when to kill (or stop), as a fraction of a run's time
    fault: str = "kill"  # kill | pause | store | pgterm
    pause: str = ""  # for "pause": crash point "name:count", "tool", "undo" or "raw"
    wake: str = ""  # for "pause": wake the agent at the "takeover" or once the run "settled"
    store_fault: tuple[str, int, int] | None = None  # FaultyStore.fail(kind, nth=, times=)
    pgterm: tuple[float, ...] = ()  # when to terminate the agent's backends (fractions)
    watcher: bool = False  # a recovery watcher runs beside the agent

    def describe(self) -> str:
        what = {
            "kill": f"kill {self.kill}",
            "pause": f"pause {self.pause}, woken at the {self.wake}",
            "store": f"store fault {self.store_fault}",
            "pgterm": f"backends terminated at {[round(t, 2) for t in self.pgterm]}",
        }[self.fault]
        return (
            f"{what}; {len(self.calls)} calls, hold={self.hold}, agent raises={self.agent_raises}"
            + (", watcher" if self.watcher else "")
        )


def plan_calls(rng: random.Random, run_id: str, tools: list[ToolSpec]) -> list[Any]:
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
    return calls


def plan_round(rng: random.Random, run_id: str, tools: list[ToolSpec]) -> Plan:
    calls = plan_calls(rng, run_id, tools)
    n = len(calls)
    kill = rng.choices(["point", "raw", "tool", "undo", "none"], [0.38, 0.34, 0.1, 0.1, 0.08])[0]
    agent_raises = rng.random() < 0.35
    if kill == "point":
        point = rng.choice(["after_start", "after_call", "after_compensation_start", "after_undo"])
        visits = n if point in ("after_start", "after_call") else 3
        kill = f"{point}:{rng.randint(1, visits)}"
    elif kill == "tool":
        changing = _changing(tools, calls)
        if changing:
            rng.choice(changing)["die_in_tool"] = True
    elif kill == "undo":
        undoable = _undoable(tools, calls)
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


STORE_KINDS = [
    "action.start",
    "action.succeed",
    "action.fail",
    "action.in_doubt",
    "run.halt",
    "run.hold",
    "compensation.start",
    "compensation.done",
    "run.review",
    "run.complete",
]


def plan_fault(rng: random.Random, run_id: str, tools: list[ToolSpec], fault: str) -> Plan:
    """A round of ``--faults``: a pause, a store fault or terminated backends."""
    calls = plan_calls(rng, run_id, tools)
    n = len(calls)
    plan = Plan(
        run_id=run_id,
        calls=calls,
        hold=rng.random() < 0.2,
        agent_raises=rng.random() < 0.35,
        kill="none",
        fault=fault,
        watcher=True,
    )
    if fault == "pause":
        how = rng.choices(["point", "tool", "undo", "raw"], [0.45, 0.15, 0.1, 0.3])[0]
        changing, undoable = _changing(tools, calls), _undoable(tools, calls)
        if how == "point":
            point = rng.choice(
                ["after_start", "after_call", "after_compensation_start", "after_undo"]
            )
            visits = n if point in ("after_start", "after_call") else 3
            if point in ("after_compensation_start", "after_undo"):
                plan.agent_raises = True  # the agent's own compensation is where it stops
            plan.pause = f"{point}:{rng.randint(1, visits)}"
        elif how == "tool" and changing:
            rng.choice(changing)["stop_in_tool"] = True
            plan.pause = "tool"
        elif how == "undo" and undoable:
            rng.choice(undoable)["stop_in_undo"] = True
            plan.agent_raises = True
            plan.pause = "undo"
        else:
            plan.pause = "raw"
            plan.raw_delay = rng.random()
        plan.wake = rng.choice(["takeover", "settled"])
    elif fault == "store":
        if rng.random() < 0.6:
            kind, nth = "*", rng.randint(1, 2 * n + 3)  # any write: start, calls, halt, undos
        else:
            kind, nth = rng.choice(STORE_KINDS), rng.randint(1, 2)
        times = rng.choices([1, 2, 3, 1000], [0.6, 0.15, 0.1, 0.15])[0]  # 1000: the store is gone
        plan.store_fault = (kind, nth, times)
    elif fault == "pgterm":
        plan.pgterm = tuple(sorted(rng.random() for _ in range(rng.choice([1, 1, 2, 3]))))
    return plan


def _effect(tools: list[ToolSpec], name: str) -> str:
    return next(t.effect for t in tools if t.name == name)


def _changing(tools: list[ToolSpec], calls: list[Any]) -> list[dict[str, Any]]:
    return [a for t, a in calls if _effect(tools, t) != "read_only" and not a.get("fail")]


def _undoable(tools: list[ToolSpec], calls: list[Any]) -> list[dict[str, Any]]:
    return [a for t, a in calls if _effect(tools, t) == "reversible" and not a.get("undo_fail")]


class AgentError(Exception):
    """The agent itself failed (after its calls)."""


def agent(guard: Guard, plan: Plan, *, faults: bool = False) -> str:
    """Run the plan's calls; returns how the run ended for the agent. With ``faults``, a
    StoreError reaching the agent is an ending too (its store failed before a tool started)."""
    try:
        with guard.run(
            agent="soak", run_id=plan.run_id, on_failure="hold" if plan.hold else None
        ) as run:
            for name, args in plan.calls:
                run.call(name, args)
            if plan.agent_raises:
                raise AgentError("the agent lost its way")
    except (RunHalted, AgentError) as exc:
        return type(exc).__name__
    except StoreError:
        if not faults:
            raise
        return "StoreError"
    return "completed"


def watch(guard: Guard) -> dict[str, Any]:
    """The recovery watcher: ``guard.recover()`` pass after pass until the driver says stop."""
    recovered: list[str] = []
    errors: list[str] = []
    assert _Child.go is not None
    while True:
        try:
            recovered += guard.recover()
        except (StoreError, RunHalted) as exc:  # e.g. a busy store; another recoverer won
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
        if select.select([_Child.go], [], [], 0.005)[0]:
            return {"recovered": recovered, "errors": errors}


def pause_at(point: str) -> Callable[[Guard], None]:
    """A child setup: stop the process with SIGSTOP at a crash point's ``count``-th visit."""
    name, _, count = point.partition(":")
    visits = [0]

    def setup(guard: Guard) -> None:
        original = testing.crash_point

        def stop_there(at: str) -> None:
            original(at)
            if at == name:
                visits[0] += 1
                if visits[0] == int(count or 1):
                    os.kill(os.getpid(), signal.SIGSTOP)

        for module in list(sys.modules.values()):  # guardrail's modules import it by name
            if (module.__name__ or "").startswith("guardrail") and (
                getattr(module, "crash_point", None) is original
            ):
                module.crash_point = stop_there  # type: ignore[attr-defined]

    return setup


def failing_store(kind: str, nth: int, times: int) -> Callable[[Guard], None]:
    def setup(guard: Guard) -> None:
        faulty = testing.FaultyStore(guard)
        faulty.fail(kind, nth=nth, times=times)
        _Child.faulty = faulty

    return setup


@dataclass
class Outcome:
    status: str  # ok | killed | error | hung
    detail: str = ""
    seconds: float = 0.0  # from the child's guard being ready to its exit
    result: Any = None  # what the child's act returned


@dataclass
class Stats:
    rounds: int = 0
    kills: Counter[str] = field(default_factory=Counter)  # by how
    kills_in: Counter[str] = field(default_factory=Counter)  # agent | recovery | abort | watcher
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
    # --faults
    faults: Counter[str] = field(default_factory=Counter)  # pause | store | pgterm (not kills)
    fault_how: Counter[str] = field(default_factory=Counter)  # e.g. "pause after_start"
    round_kinds: Counter[str] = field(default_factory=Counter)
    takeovers: int = 0  # paused agents whose run the watcher took over
    paused_idle: int = 0  # paused when their run needed nobody (done, waiting for a person)
    paused_locked: int = 0  # paused inside a store transaction: nobody can take the run over
    told: Counter[str] = field(default_factory=Counter)  # how woken agents' runs ended for them
    endings: Counter[str] = field(default_factory=Counter)  # how runs ended for their agents
    left_behind: int = 0  # runs a lingering agent left live, then taken over by the watcher
    in_flight: Counter[str] = field(default_factory=Counter)  # effects landing after a takeover
    watcher_recovered: int = 0
    watcher_errors: Counter[str] = field(default_factory=Counter)
    final_runs: Counter[str] = field(default_factory=Counter)

    @property
    def total_kills(self) -> int:
        return sum(self.kills.values())

    @property
    def total_faults(self) -> int:
        return self.total_kills + sum(self.faults.values())


class _Child:
    """A forked child with a guard of its own. ``go`` is, in the child, the pipe on which the
    driver says "go on" (a lingering agent) or "stop" (the watcher)."""

    go: int | None = None
    faulty: testing.FaultyStore | None = None

    def __init__(
        self,
        soak: Soak,
        act: Callable[[Guard], Any],
        *,
        arm: str | None = None,
        setup: Callable[[Guard], None] | None = None,
        linger: bool = False,
        app: str | None = None,
    ) -> None:
        tag = f"{soak.stats.rounds}-{time.monotonic_ns()}"
        self.err = soak.folder / f"error-{tag}.txt"
        self.out = soak.folder / f"result-{tag}.json"
        ready_r, ready_w = os.pipe()
        done_r, done_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: a new process with its own pid, guard and connections
            code = 0
            try:
                for fd in (ready_r, done_r, go_w):
                    os.close(fd)
                _Child.go = go_r
                logging.getLogger("guardrail").disabled = True  # heartbeats failing on purpose
                if arm:
                    testing.arm(arm)
                guard = build(soak.url_for(app), soak.world, soak.tools, soak.heartbeat)
                if setup is not None:
                    setup(guard)
                os.write(ready_w, b"r")
                result = act(guard)
                if _Child.faulty is not None:
                    result = {"ending": result, "store_faults": _injected(_Child.faulty)}
                self.out.write_text(json.dumps(result))
                if linger:
                    os.write(done_w, b"d")
                    os.read(go_r, 1)
                guard.close()
            except BaseException:
                self.err.write_text(traceback.format_exc())
                code = 1
            os._exit(code)
        for fd in (ready_w, done_w, go_r):
            os.close(fd)
        self.pid = pid
        self.app = app
        self.pidfd = os.pidfd_open(pid)
        self.ready_r, self.done_r, self.go_w = ready_r, done_r, go_w
        self.status: int | None = None
        self.started = time.monotonic()

    def wait_ready(self) -> None:
        select.select([self.ready_r], [], [], CHILD_TIMEOUT)
        self.started = time.monotonic()

    def state(self) -> str:
        """exited | stopped (reported once per stop) | running."""
        if self.status is not None:
            return "exited"
        pid, status = os.waitpid(self.pid, os.WNOHANG | os.WUNTRACED)
        if pid == 0:
            return "running"
        if os.WIFSTOPPED(status):
            return "stopped"
        self.status = status
        return "exited"

    def wait(self, timeout: float, *, stop: bool = False, done: bool = False) -> str:
        """Until the child exits, or stops (``stop``), or is done and lingers (``done``):
        exited | stopped | done | timeout."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.state()
            if s == "exited" or (stop and s == "stopped"):
                return s
            if done and select.select([self.done_r], [], [], 0)[0]:
                return "done"
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            fds = [self.pidfd, self.done_r] if done else [self.pidfd]
            select.select(fds, [], [], min(left, 0.005 if stop else 0.5))

    def signal(self, sig: int) -> None:
        if self.status is None:
            with suppress(ProcessLookupError):
                os.kill(self.pid, sig)  # harmless if it already exited (a zombie)

    def release(self) -> None:
        with suppress(OSError):
            os.write(self.go_w, b"g")

    def finish(self, timeout: float = CHILD_TIMEOUT) -> Outcome:
        try:
            if self.wait(timeout) == "timeout":
                self.signal(signal.SIGCONT)
                self.signal(signal.SIGKILL)
                os.waitpid(self.pid, 0)
                return Outcome("hung", f"no answer in {timeout:.0f} s")
        finally:
            for fd in (self.pidfd, self.ready_r, self.done_r, self.go_w):
                os.close(fd)
        assert self.status is not None
        code = os.waitstatus_to_exitcode(self.status)
        if code == -signal.SIGKILL:
            return Outcome("killed")
        if code != 0:
            return Outcome(
                "error", self.err.read_text() if self.err.exists() else f"exit code {code}"
            )
        result = json.loads(self.out.read_text()) if self.out.exists() else None
        return Outcome("ok", seconds=time.monotonic() - self.started, result=result)


def _injected(faulty: testing.FaultyStore) -> int:
    """How many writes the FaultyStore failed."""
    n = 0
    for kind, visits in faulty._armed.items():
        seen = sum(1 for k in faulty.kinds if kind in ("*", k))
        n += sum(1 for v in visits if v <= seen)
    return n


def tenures(entries: list[Any]) -> list[tuple[str, float, float]]:
    """(owner, from, until) of each spell in which a process executed the run, from its journal:
    a spell begins when the run gets an owner (start, takeover, abort) and ends when another
    one takes it, or the run is released or leaves the live statuses."""
    spells = []
    owner: str | None = None
    since = 0.0
    for e in entries:
        for table, _key, values, _insert in json.loads(e.body):
            if table != "runs":
                continue
            new = values.get("owner", owner)
            if values.get("status") not in (None, *LIVE):
                new = None  # held for a person (its owner column stays): nobody executes it
            if new != owner:
                if owner is not None:
                    spells.append((owner, since, e.at))
                owner, since = new, e.at
    if owner is not None:
        spells.append((owner, since, float("inf")))
    return spells


def settled(record: RunRecord | None) -> bool:
    """Nobody executes the run (any more): it waits for a person, or it is over."""
    return record is None or record.status not in LIVE


def pid_of(owner: str | None) -> str:
    return owner.split("|")[1] if owner and owner.count("|") >= 1 else "?"


def prepare_store(spec: str | None, folder: Path) -> tuple[str, Callable[[bool], None]]:
    """(store URL, cleanup). ``sqlite`` or nothing: a file in ``folder``; ``postgres`` (the URL in
    GUARDRAIL_TEST_POSTGRES_URL, else the local default) or a PostgreSQL URL: a scratch schema,
    dropped afterwards unless the soak found problems (then it is kept for a look)."""
    if spec in (None, "sqlite"):
        return f"sqlite:///{folder / 'soak.db'}", lambda problems: None
    if spec in ("postgres", "postgresql"):
        spec = os.environ.get("GUARDRAIL_TEST_POSTGRES_URL") or DEFAULT_POSTGRES
    assert spec is not None
    if not spec.startswith("postgresql"):
        return spec, lambda problems: None
    import psycopg

    base = spec.split("?")[0]
    admin = base.replace("postgresql+psycopg://", "postgresql://")
    schema = f"soak_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")

    def cleanup(problems: bool) -> None:
        if problems:
            print(f"kept the PostgreSQL schema {schema} for a look")
            return
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")

    return f"{base}?options={quote(f'-csearch_path={schema}')}", cleanup


class Soak:
    def __init__(
        self, store: str, folder: Path, seed: int, *, faults: bool = False, heartbeat: float = 5.0
    ) -> None:
        self.store = store
        self.postgres = store.startswith("postgresql")
        self.world = World(folder / "world")
        self.world.folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.rng = random.Random(seed)
        self.seed = seed
        self.tools = catalog(self.rng)
        self.stats = Stats()
        self.run_seconds = 0.02  # how long an agent child takes from ready to exit (average)
        self.faults = faults
        self.heartbeat = heartbeat
        self.stale_after = heartbeat * 6  # Guard's rule
        self.watcher: _Child | None = None

    def url_for(self, app: str | None) -> str:
        """The store URL for a child; on PostgreSQL named by ``application_name`` (to find and
        terminate its connections)."""
        if not app or not self.postgres:
            return self.store
        return f"{self.store}{'&' if '?' in self.store else '?'}application_name={quote(app)}"

    # children

    def child(
        self,
        act: Callable[[Guard], Any],
        *,
        arm: str | None = None,
        raw_delay: float | None = None,
    ) -> Outcome:
        """Run ``act`` in a forked child with a guard of its own; kill it as told."""
        c = _Child(self, act, arm=arm)
        c.wait_ready()
        if raw_delay is not None:
            time.sleep(raw_delay)  # the random moment of the kill
            c.signal(signal.SIGKILL)
        return c.finish()

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

    def recover(self, run_id: str, *, kills: bool = True) -> None:
        """Recover in new processes until one recovery runs to its end."""
        for attempt in range(20):
            p = 0.3 if attempt < 10 and kills else 0.0
            arm, delay, how = self.random_kill(["after_compensation_start", "after_undo"], p)
            outcome = self.child(_recover, arm=arm, raw_delay=delay)
            self.stats.recoveries += 1
            if not self.note_kill("recovery", how, outcome) and outcome.status == "ok":
                self.stats.recovered_runs += len(outcome.result or [])
                return
        self.problem(run_id, "recovery never finished")

    # the watcher

    def start_watcher(self) -> None:
        self.watcher = _Child(self, watch, app="soak-watcher")
        self.watcher.wait_ready()

    def stop_watcher(self, run_id: str) -> None:
        if self.watcher is None:
            return
        self.watcher.release()
        outcome = self.watcher.finish()
        self.watcher = None
        if self.note_kill("watcher", "none", outcome):
            return
        if outcome.status == "ok":
            self.stats.watcher_recovered += len(outcome.result["recovered"])
            for error in outcome.result["errors"]:
                self.stats.watcher_errors[error.split(":")[0]] += 1

    @contextmanager
    def peek(self) -> Iterator[Guard]:
        """A guard for the driver's reads (closed before the driver forks again)."""
        guard = Guard(store=self.store, strict=False)
        try:
            yield guard
        finally:
            guard.close()

    def poll(
        self, run_id: str, done: Callable[[RunRecord | None], bool], timeout: float
    ) -> tuple[bool, RunRecord | None]:
        """Read the run until ``done`` says so or ``timeout`` passes: (done, the run as last
        read). A watcher that died meanwhile (in an undo marked to die) is replaced."""
        deadline = time.monotonic() + timeout
        while True:
            with self.peek() as guard:
                while True:
                    record = guard.store.run(run_id)
                    if done(record):
                        return True, record
                    if time.monotonic() > deadline:
                        return False, record
                    if self.watcher is not None and self.watcher.state() == "exited":
                        break
                    time.sleep(0.005)  # a poll interval, not a wait for an outcome
            self.stop_watcher(run_id)  # (outside the peek: no connection open across a fork)
            self.start_watcher()

    # a round

    def draw(self, number: int) -> Plan:
        """The plan of round ``number``, drawn from the seed and the number alone (so ``--round
        N`` replays it whatever happened in the rounds before); leaves ``self.rng`` there for
        the round's later draws."""
        self.rng = random.Random(f"{self.seed}/{number}")
        run_id = f"s{self.seed}-{number}"
        if not self.faults:
            return plan_round(self.rng, run_id, self.tools)
        kinds = ["kill", "pause", "store"] + (["pgterm"] if self.postgres else [])
        weights = [0.3, 0.35, 0.35] if not self.postgres else [0.25, 0.3, 0.25, 0.2]
        fault = self.rng.choices(kinds, weights)[0]
        if fault != "kill":
            return plan_fault(self.rng, run_id, self.tools, fault)
        plan = plan_round(self.rng, run_id, self.tools)
        plan.watcher = self.rng.random() < 0.5
        return plan

    def round(self, number: int | None = None) -> None:
        """Round ``number`` (by default the next one)."""
        number = self.stats.rounds if number is None else number
        self.play(self.draw(number))

    def play(self, plan: Plan) -> None:
        """Run one round's plan, its faults, recoveries and abort, then check it."""
        self.stats.rounds += 1
        if not self.faults:
            self.kill_round(plan)
            self.check(plan)
            return
        self.stats.round_kinds[plan.fault] += 1
        if plan.watcher:
            self.start_watcher()
        try:
            if plan.fault == "kill":
                self.kill_round(plan)
            elif plan.fault == "pause":
                self.pause_round(plan)
            else:
                self.linger_round(plan)
            if plan.watcher:
                self.poll(plan.run_id, settled, SETTLE_WAIT)
        finally:
            self.stop_watcher(plan.run_id)
        self.check(plan)

    def kill_round(self, plan: Plan) -> None:
        arm = plan.kill if ":" in plan.kill else None
        how = plan.kill.split(":")[0]
        outcome = self.child(
            lambda g: agent(g, plan, faults=self.faults),
            arm=arm,
            # raw kills land anywhere in a run of typical length (learnt from unkilled runs)
            raw_delay=plan.raw_delay * self.run_seconds * 1.2 if plan.kill == "raw" else None,
        )
        if outcome.status == "ok":
            self.run_seconds = 0.9 * self.run_seconds + 0.1 * outcome.seconds
            self.stats.endings[outcome.result] += 1
        self.note_kill("agent", how, outcome, plan)
        self.recover(plan.run_id)
        self.maybe_abort(plan)

    def maybe_abort(self, plan: Plan) -> None:
        run_id = plan.run_id
        status = self.status(run_id)
        if status == "pending_review" and (plan.hold or self.rng.random() < 0.3):
            arm, delay, how = self.random_kill(
                ["after_abort_start", "after_compensation_start", "after_undo"], 0.5
            )
            outcome = self.child(lambda g: _abort(g, run_id), arm=arm, raw_delay=delay)
            self.stats.aborts += 1
            if self.note_kill("abort", how, outcome, plan):
                self.recover(run_id)

    def pause_round(self, plan: Plan) -> None:
        """Stop the agent; once the watcher took its run over, wake it: it must stop there."""
        stats, run_id = self.stats, plan.run_id
        setup = pause_at(plan.pause) if ":" in plan.pause else _enable_pauses
        worker = _Child(
            self, lambda g: agent(g, plan, faults=True), setup=setup, app=f"soak-{run_id}"
        )
        worker.wait_ready()
        if plan.pause == "raw":
            time.sleep(plan.raw_delay * self.run_seconds * 1.2)  # the random moment of the stop
            worker.signal(signal.SIGSTOP)
        taken = False
        if worker.wait(CHILD_TIMEOUT, stop=True) == "stopped":
            stats.faults["pause"] += 1
            stats.fault_how[f"pause {plan.pause.split(':')[0]}"] += 1
            try:
                taken = self.take_over(plan, worker)
                if taken and plan.wake == "settled":  # else it wakes while recovery works
                    self.poll(run_id, settled, SETTLE_WAIT)
            finally:
                worker.signal(signal.SIGCONT)
        elif plan.pause != "raw":
            stats.armed_not_reached += 1
        outcome = worker.finish()
        if outcome.status != "ok":
            self.problem(run_id, f"agent child {outcome.status} ({plan.describe()})")
            if outcome.detail:
                stats.problems.append(outcome.detail)
            return
        stats.endings[outcome.result] += 1
        if taken:
            stats.told[outcome.result] += 1
            if outcome.result != "OwnershipLost":
                self.problem(
                    run_id,
                    f"its agent, woken after the takeover, ended with {outcome.result}, not "
                    f"OwnershipLost ({plan.describe()})",
                )
        self.recover(run_id, kills=False)
        self.maybe_abort(plan)

    def take_over(self, plan: Plan, worker: _Child) -> bool:
        """The agent is stopped: wait for the watcher to take its run over. True if it did;
        False if the run needed nobody, or the agent is stopped inside a store transaction
        (holding the lock the takeover needs)."""
        run_id = plan.run_id
        with self.peek() as guard:
            before = guard.store.run(run_id)
        if before is None or before.status not in LIVE or pid_of(before.owner) != str(worker.pid):
            self.stats.paused_idle += 1
            return False
        look = [time.monotonic() + self.stale_after + 1.0]  # when to look for a held lock
        locked = [False]

        def changed(record: RunRecord | None) -> bool:
            assert record is not None
            if (record.epoch, record.owner) != (before.epoch, before.owner):
                return True
            if time.monotonic() > look[0]:
                look[0] += 0.25
                locked[0] = self.in_transaction(worker)
            return locked[0]

        _, now = self.poll(run_id, changed, self.stale_after + TAKEOVER_WAIT)
        assert now is not None
        if (now.epoch, now.owner) != (before.epoch, before.owner):
            self.stats.takeovers += 1
            return True
        if locked[0]:
            self.stats.paused_locked += 1
            return False
        beat = time.time() - now.heartbeat_at if now.heartbeat_at else float("nan")
        self.problem(
            run_id,
            f"paused agent's run was not taken over in {self.stale_after + TAKEOVER_WAIT:g} s "
            f"(it is {now.status}, epoch {now.epoch}, heartbeat {beat:.1f} s old; "
            f"{plan.describe()})",
        )
        return False

    def in_transaction(self, worker: _Child) -> bool:
        """Is the stopped agent holding the store's write lock (SQLite) or an open transaction
        (PostgreSQL)? Then no one can take its run over until it wakes."""
        if self.postgres:
            import psycopg

            admin = self.store.split("?")[0].replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(admin, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                    "AND xact_start IS NOT NULL",
                    (worker.app,),
                ).fetchone()
            return bool(row and row[0])
        path = self.store.removeprefix("sqlite:///")
        for _ in range(3):  # the watcher itself may hold it for a moment
            lite = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                lite.execute("BEGIN IMMEDIATE")
                lite.execute("ROLLBACK")
                return False
            except sqlite3.OperationalError:
                time.sleep(0.01)
            finally:
                lite.close()
        return True

    def linger_round(self, plan: Plan) -> None:
        """A store fault or terminated backends; then the agent's process lingers (alive, holding
        no lease) until any run it left live was taken over by the watcher."""
        stats, run_id = self.stats, plan.run_id
        app = f"soak-{run_id}"
        setup = failing_store(*plan.store_fault) if plan.store_fault else None
        worker = _Child(
            self, lambda g: agent(g, plan, faults=True), setup=setup, linger=True, app=app
        )
        worker.wait_ready()
        start = time.monotonic()
        for at in plan.pgterm:
            left = start + at * self.run_seconds * 1.5 - time.monotonic()
            if worker.wait(max(left, 0), done=True) != "timeout":
                break  # it is done (or gone): no more faults for this run
            if self.terminate(app):
                stats.faults["pgterm"] += 1
                stats.fault_how["pgterm"] += 1
        if worker.wait(CHILD_TIMEOUT, done=True) == "done":
            with self.peek() as guard:
                left_live = guard.store.run(run_id)
            if (
                left_live is not None
                and left_live.status in LIVE
                and pid_of(left_live.owner) == str(worker.pid)
            ):
                taken, _ = self.poll(
                    run_id,
                    lambda r: r is None or pid_of(r.owner) != str(worker.pid),
                    self.stale_after + SETTLE_WAIT,
                )
                if not taken:
                    self.problem(
                        run_id,
                        f"left {left_live.status} by its agent, which lives on but executes "
                        f"nothing, and never taken over ({plan.describe()})",
                    )
                else:
                    stats.left_behind += 1
            worker.release()
        outcome = worker.finish()
        if outcome.status != "ok":
            self.problem(run_id, f"agent child {outcome.status} ({plan.describe()})")
            if outcome.detail:
                stats.problems.append(outcome.detail)
            return
        ending = outcome.result
        if plan.store_fault:
            ending = outcome.result["ending"]
            if outcome.result["store_faults"]:
                stats.faults["store"] += 1
                stats.fault_how[f"store {plan.store_fault[0]}"] += 1
            else:
                stats.armed_not_reached += 1
        stats.endings[ending] += 1
        self.recover(run_id, kills=False)
        self.maybe_abort(plan)

    def terminate(self, app: str) -> int:
        """Terminate the PostgreSQL backends named ``app``; how many there were."""
        import psycopg

        admin = self.store.split("?")[0].replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(admin, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (app,),
            ).fetchall()
        return sum(1 for (ok,) in rows if ok)

    def status(self, run_id: str) -> str | None:
        with Guard(store=self.store, strict=False) as guard:
            run = guard.store.run(run_id)
            return run.status if run else None

    # the checks

    def problem(self, run_id: str, text: str) -> None:
        self.stats.problems.append(f"seed {self.seed} run {run_id}: {text}")

    def check(self, plan: Plan) -> None:
        found: list[str] = []
        known = self._check(plan, found.append)
        for text in found:
            self.problem(plan.run_id, f"{KNOWN_PROBE_BUG + ' ' if known else ''}{text}")

    def _check(self, plan: Plan, problem: Callable[[str], None]) -> bool:
        """Hold the run's log against the world; True if the run shows the known probe bug."""
        run_id, stats = plan.run_id, self.stats
        lines = Counter(self.world.lines(run_id))
        with Guard(store=self.store, strict=False) as guard:
            run = guard.store.run(run_id)
            if run is None:
                # killed before the run's first record: then nothing may have happened
                stats.statuses["never started (killed first)"] += 1
                if lines:
                    problem(f"side effects without a run: {sorted(lines)}")
                return False
            log = guard.log(run_id)
            verdict = guard.verify(run_id)
            entries = guard.store.entries(run_id)
        stats.statuses[run.status] += 1
        stats.verified += verdict.ok
        if not verdict.ok:
            problem(f"hash chain: {verdict.problems}")
        if run.status not in SETTLED:
            problem(f"left {run.status}")
        for line, n in lines.items():
            if n > 1:
                problem(f"'{line}' happened {n} times")
        stats.effects += sum(1 for line in lines if line.startswith("do "))
        stats.undos += sum(1 for line in lines if line.startswith("undo "))
        items = log.review_items
        if len({(i.seq, i.reason) for i in items}) != len(items):
            problem("duplicate review items")
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
                problem(f"action {a.seq} failed but '{do}' happened")
            if a.state in ("succeeded", "compensating", "compensated", "compensation_failed") and (
                a.effect != "read_only" and do not in lines
            ):
                problem(f"action {a.seq} ({a.state}) has no side effect '{do}'")
            if a.state in ("started", "compensating"):
                problem(f"action {a.seq} left {a.state}")
            if a.state == "in_doubt" and (a.seq, "in_doubt") not in open_items:
                problem(f"in-doubt action {a.seq} without a review item")
            if undo in lines and a.state not in ("compensated", "compensation_failed"):
                problem(f"'{undo}' happened but action {a.seq} is {a.state}")
            if a.state == "compensated" and (
                undo not in lines or comps[a.seq].state != "succeeded"
            ):
                problem(f"action {a.seq} compensated but not undone")
            if a.state == "compensation_failed" and not open_items & {
                (a.seq, "compensation_failed"),
                (a.seq, "compensation_in_doubt"),
            }:
                problem(f"action {a.seq}: failed undo without a review item")
            if not halted or held:
                continue
            if (
                a.effect == "reversible"
                and took_effect
                and a.state not in ("compensated", "compensation_failed")
                and (a.seq, "in_doubt") not in open_items
            ):
                problem(f"reversible action {a.seq} ({a.state}) neither undone nor listed")
            if (
                a.effect == "irreversible"
                and a.state == "succeeded"
                and (a.seq, "irreversible") not in open_items
            ):
                problem(f"irreversible action {a.seq} not listed for review")
        effects = Counter(line for line in lines if line.startswith("do "))
        if recorded != effects:
            problem(f"lost records: world {dict(effects)}, log {dict(recorded)}")
        return self.check_owners(plan, entries, log, problem)

    def check_owners(
        self, plan: Plan, entries: list[Any], log: Any, problem: Callable[[str], None]
    ) -> bool:
        """No side effect by a process outside its spells as the run's owner, but for the one
        call it was in the middle of when it lost the run (started in its spell: a tool past its
        intent, an undo past its start), which may land after the takeover; the checks above
        hold the log to it like to any other. True if the known probe bug shows (the probe's
        "not done" while the old owner still lived, and then it was done)."""
        spells: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for owner, since, until in tenures(entries):
            spells[owner].append((since, until))
        late: dict[tuple[str, float, float], list[tuple[float, str]]] = defaultdict(list)
        for at, owner, line in self.world.ledger(plan.run_id):
            mine = spells.get(owner, [])
            if any(since <= at < until for since, until in mine):
                continue
            ended = [(since, until) for since, until in mine if until <= at]
            if not ended:
                problem(f"'{line}' by {pid_of(owner)}, which never owned the run then")
                continue
            since, until = max(ended, key=lambda spell: spell[1])
            late[(owner, since, until)].append((at - until, line))
        actions = {(a.tool, (a.args or {}).get("key")): a for a in log.actions}
        starts = _starts(entries)
        known = False
        for (owner, since, until), done in late.items():
            dt, line = done[0]
            verb, tool, key = line.split()
            a = actions.get((tool, key))
            began = a is not None and any(
                since <= at < until for at in starts.get((verb, a.seq), [])
            )
            if len(done) > 1 or not began:
                problem(
                    f"process {pid_of(owner)} went on after it lost the run: "
                    + ", ".join(f"'{line}' {dt:.3f} s after" for dt, line in done)
                    + ("" if began else " (not a call it had begun before)")
                    + f" ({plan.describe()})"
                )
                continue
            assert a is not None
            self.stats.in_flight[f"{verb} ({a.state})"] += 1
            if verb == "do" and a.state == "failed" and (a.error or "").startswith("probe:"):
                known = True
                problem(
                    f"process {pid_of(owner)} finished '{line}' {dt:.3f} s after it lost the "
                    f"run, but recovery's probe had said it did not run, while the process "
                    f"lived: action {a.seq} is failed ({plan.describe()})"
                )
        return known

    def final(self) -> None:
        """A last recovery finds nothing to do."""
        outcome = self.child(_recover)
        if outcome.status != "ok":
            self.problem("-", f"final recovery: {outcome.status} {outcome.detail}")

    def final_faults(self) -> None:
        """Recover until no run is live (leases expire meanwhile), then look at every run."""
        deadline = time.monotonic() + self.stale_after + SETTLE_WAIT
        while True:
            outcome = self.child(_recover)
            if outcome.status != "ok":
                self.problem("-", f"final recovery: {outcome.status} {outcome.detail}")
            with self.peek() as guard:
                live = [r for s in LIVE for r in guard.store.runs(status=s)]
            if not live or time.monotonic() > deadline:
                break
            time.sleep(self.heartbeat)  # a poll interval: leases expire meanwhile
        with self.peek() as guard:
            for run in guard.store.runs():
                self.stats.final_runs[run.status] += 1
                if run.status not in (*SETTLED, "awaiting_approval"):
                    self.problem(run.id, f"after the final recovery: {run.status}")
                stuck = guard.store.seqs_in_state(run.id, ("started", "compensating"))
                if stuck:
                    self.problem(run.id, f"after the final recovery: actions {stuck} unsettled")
                verdict = guard.verify(run.id)
                if not verdict.ok:
                    self.problem(run.id, f"after the final recovery: {verdict.problems}")
                else:
                    self.stats.final_runs["chain verified"] += 1


def _starts(entries: list[Any]) -> dict[tuple[str, int], list[float]]:
    """When each action's call ("do") and undo ("undo") began, from the journal."""
    out: dict[tuple[str, int], list[float]] = defaultdict(list)
    for e in entries:
        verb = {"action.start": "do", "compensation.start": "undo"}.get(e.kind)
        if verb is None:
            continue
        for table, key, _values, _insert in json.loads(e.body):
            if table in ("actions", "compensations"):
                out[(verb, key["seq"])].append(e.at)
    return out


def _enable_pauses(guard: Guard) -> None:
    _Pauses.enabled = True


def _recover(guard: Guard) -> list[str]:
    try:
        return guard.recover()
    except OwnershipLost:  # the watcher took one of its runs over (it looked dead): fine
        return []


def _abort(guard: Guard, run_id: str) -> str:
    try:
        guard.abort(run_id, by="soak", reason="soak")
    except OwnershipLost:
        return "lost"
    return "aborted"


def soak(
    store: str | None = None,
    *,
    kills: int = 1000,
    faults: int | None = None,
    seed: int = 1,
    heartbeat: float = 0.05,
    max_seconds: float | None = None,
    folder: Path | None = None,
    progress: bool = False,
    only_round: int | None = None,
) -> Stats:
    """Run rounds until ``kills`` processes were killed, or with ``faults``, until that many
    faults of every kind were injected (or ``max_seconds`` passed); or only round
    ``only_round``."""
    folder = folder or Path(tempfile.mkdtemp(prefix="guardrail-soak-"))
    url, cleanup = prepare_store(store, folder)
    driver = Soak(
        url,
        folder,
        seed,
        faults=faults is not None,
        heartbeat=heartbeat if faults is not None else 5.0,
    )
    Guard(store=url).close()  # create the schema once, before the children race to
    start = time.monotonic()
    goal = faults if faults is not None else kills

    def reached() -> int:
        return driver.stats.total_faults if faults is not None else driver.stats.total_kills

    try:
        if only_round is not None:
            driver.round(only_round)
        while only_round is None and reached() < goal:
            if max_seconds is not None and time.monotonic() - start > max_seconds:
                break
            driver.round()
            if progress and driver.stats.rounds % 50 == 0:
                s = driver.stats
                print(
                    f"  {s.rounds} rounds, {reached()} {'faults' if faults else 'kills'}, "
                    f"{len(s.problems)} problems, {time.monotonic() - start:.0f} s",
                    flush=True,
                )
        if faults is not None:
            driver.final_faults()
        else:
            driver.final()
        driver.stats.seconds = time.monotonic() - start
    finally:
        cleanup(bool(driver.stats.problems))
    return driver.stats


def summary(stats: Stats, *, faults: bool = False) -> str:
    def counts(c: Counter[str]) -> str:
        return ", ".join(f"{k} {v}" for k, v in c.most_common()) or "none"

    out = []
    if faults:
        out += [
            f"faults injected: {stats.total_faults} in {stats.rounds} rounds (agent runs), "
            f"{stats.seconds:.0f} s",
            f"  by kind: SIGKILL {stats.total_kills}, "
            + ", ".join(f"{k} {stats.faults[k]}" for k in ("pause", "store", "pgterm")),
            f"  rounds by kind: {counts(stats.round_kinds)}",
            f"  pauses and store faults by where: {counts(stats.fault_how)}",
            f"  paused agents whose run was taken over: {stats.takeovers}; paused when their run "
            f"needed nobody: {stats.paused_idle}; paused inside a store transaction (no takeover "
            f"possible): {stats.paused_locked}",
            f"  woken agents after a takeover ended with: {counts(stats.told)}",
            f"  runs left live by a lingering agent, taken over by the watcher: "
            f"{stats.left_behind}",
            f"  in-flight calls that landed after their process lost the run (by the action's "
            f"final state): {counts(stats.in_flight)}",
            f"  how runs ended for their agents: {counts(stats.endings)}",
            f"watcher: recovered {stats.watcher_recovered} run(s); errors "
            f"{counts(stats.watcher_errors)}",
        ]
    out += [
        f"rounds (agent runs): {stats.rounds}; processes killed with SIGKILL: {stats.total_kills} "
        f"in {stats.seconds:.0f} s",
        "  killed while: " + ", ".join(f"{k} {v}" for k, v in stats.kills_in.most_common()),
        "  killed by: " + ", ".join(f"{k} {v}" for k, v in stats.kills.most_common()),
        f"  armed but the point was not reached: {stats.armed_not_reached}",
        f"recoveries (each in a new process): {stats.recoveries} (recovered "
        f"{stats.recovered_runs} run(s)); aborts: {stats.aborts}",
        "runs: " + ", ".join(f"{k} {v}" for k, v in stats.statuses.most_common()),
        "actions: " + ", ".join(f"{k} {v}" for k, v in stats.states.most_common()),
        "review items: " + ", ".join(f"{k} {v}" for k, v in stats.reviews.most_common()),
        f"side effects in the world: {stats.effects}; undos: {stats.undos}",
        f"hash chains valid: {stats.verified} of "
        f"{sum(n for s, n in stats.statuses.items() if s in SETTLED or s == 'running')}",
    ]
    if faults:
        out.append(f"store after the final recovery: {counts(stats.final_runs)}")
    known = sum(1 for p in stats.problems if KNOWN_PROBE_BUG in p)
    out.append(
        f"lost records, double effects or undos, unlisted actions, other problems: "
        f"{len(stats.problems)}" + (f" ({known} of them {KNOWN_PROBE_BUG})" if known else "")
    )
    out += [f"  PROBLEM {p}" for p in stats.problems[:30]]
    if stats.problems:
        out.append(
            "replay the round of a problem's run sSEED-N: python benchmarks/soak.py "
            f"{'--faults 1 ' if faults else ''}--seed SEED --round N (same --store)"
        )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=1000, help="stop after this many kills")
    parser.add_argument(
        "--faults",
        type=int,
        help="inject pauses, store faults, terminated backends (PostgreSQL) and kills; stop "
        "after this many",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--store",
        help="store URL, or 'sqlite' (the default: a file in a temp folder) or 'postgres' "
        "(GUARDRAIL_TEST_POSTGRES_URL or the local default); PostgreSQL: a scratch schema",
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=0.05,
        help="with --faults: seconds between heartbeats (a lease expires after six)",
    )
    parser.add_argument("--max-seconds", type=float, help="stop after this long, whatever")
    parser.add_argument(
        "--round", type=int, help="replay only this round of the seed (its run is sSEED-ROUND)"
    )
    opts = parser.parse_args()
    if opts.faults is not None:
        print(f"soak: seed {opts.seed}, until {opts.faults} faults, heartbeat {opts.heartbeat} s")
    else:
        print(f"soak: seed {opts.seed}, until {opts.kills} kills")
    stats = soak(
        opts.store,
        kills=opts.kills,
        faults=opts.faults,
        seed=opts.seed,
        heartbeat=opts.heartbeat,
        max_seconds=opts.max_seconds,
        progress=True,
        only_round=opts.round,
    )
    print(summary(stats, faults=opts.faults is not None))
    return 1 if stats.problems else 0


if __name__ == "__main__":
    sys.exit(main())
