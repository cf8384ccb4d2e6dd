"""A hypothesis state machine over whole runs.

Random sequences of: starting a run; guarded calls to a read-only, two reversible (one with an
idempotent undo and a probe) and two irreversible tools (one held on failure); calls that fail
with an exception the policies declare ``not_done`` (they did nothing); calls whose outcome is
unknown (an exception no policy declares, raised after the call took effect or before: the
action is ``in_doubt``, or settled by ``reserve``'s probe); undos that fail once or for good; an
agent that raises; a person resuming a halted run, after which the agent replays every call it
made; aborting (always twice); resolving review items; a person who checks the world and answers
an ``in_doubt`` item ``happened`` or ``not_happened``; a recovery while nobody died; simulated
crashes: at each crash point of ``guardrail.testing``, inside a tool or an undo, between two
steps, and once more during the recovery that follows; takeovers of a live worker stalled past
its lease (between two calls, maybe followed by a person's resume, or inside a tool), after
which the stale worker goes on; and store faults (``testing.FaultyStore``) at the k-th next
write of a call, a failing call, the agent's return or error, an abort or a resume, after which
the store heals, the leases nobody renews expire and another process recovers those runs. Plain
tests pin down bugs: a call whose undo failed ran again (fixed), a retry that runs after its
worker lost the run (fixed), and a ``happened`` answer after the abort that nothing undoes
(xfail until the library undoes or lists it).

The tools and undos write what they do into a ``World`` that outlives every simulated crash,
keyed by the action (run, seq) they ran for, so after every step the stored log is held against
what really happened: no side effect without a committed ``started`` record, no call that
returned without its ``succeeded`` record, nothing done or undone twice, every reversible action
of a halted or aborted run compensated exactly once or waiting as a review item, undos newest
first, a replay after resume runs nothing that already succeeded, a second abort changes
nothing, no run left ``compensating`` or ``aborting``, and every run's hash chain verifies. For
unknown outcomes: a resume is refused while an ``in_doubt`` item of the run is open (no run is
``running`` with one); a replay never runs an ``in_doubt`` call again, and a call that was in
doubt runs again only after a person's ``not_happened``; an action a person said ``happened``
is ``succeeded`` (a replay returns it) and an abort compensates it (reversible) or lists it. And
for ownership: a tool runs only for the worker whose lease the run is at (``running``, its owner
and epoch) and an undo only for the guard holding the run while it compensates or aborts, so a
worker taken over runs and writes nothing more (its calls, return and error raise OwnershipLost);
no action ran for two workers; no action is ever left ``started`` or ``compensating``; a store
fault after a tool started halts the call (RunHalted, never StoreError) and one before it runs
nothing; and every run not completed waits for a person (``pending_review``,
``awaiting_approval``, ``aborted``) or is running with its agent.

A simulated crash: ``guardrail.testing.crash_point`` kills the process with SIGKILL when armed;
here the ``os`` it kills with raises ``SimulatedCrash`` instead (a BaseException guardrail never
catches), so nothing more of the dead "process" runs: its run is never exited, its guard is
closed, and a fresh Guard on the same SQLite file runs ``recover()``. Each guard owns its runs
under a host of its own, so it counts as alive while its heartbeat is fresh; the recovering
guard treats every heartbeat as stale, as it would after waiting ``stale_after``.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
import sqlite3
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from guardrail import (
    Conflict,
    Guard,
    Retry,
    Review,
    Run,
    RunHalted,
    RunStateError,
    StoreError,
    current_run,
    testing,
)
from guardrail.errors import OwnershipLost
from guardrail.store import Action, RunRecord, Store, open_store
from guardrail.store.schema import TABLES

Key = tuple[str, int]  # (run id, seq): the action a side effect belongs to
Crash = tuple[str, int, str | None] | None

TOOLS = ("lookup", "create", "reserve", "send", "ship")
REVERSIBLE = ("create", "reserve")
FAST = Retry(attempts=2, wait_initial=0, wait_max=0)
HEARTBEAT = 3600.0  # nobody's heartbeat goes stale during a test unless declared stale
LIVE = ("running", "compensating", "aborting")
TOOK_EFFECT = ("succeeded", "compensating", "compensated", "compensation_failed")
RESOLUTIONS = ("done_manually", "retried", "skipped")
DOUBT_WORDS = ("happened", "not_happened")  # a person's answer to an in_doubt item
# Where a process can die: guardrail.testing's crash points, and inside a tool or an undo.
IN_CALLS = ("after_start", "after_call", "in_tool")
IN_COMPENSATION = ("after_compensation_start", "after_undo", "in_undo")
# every crash point of guardrail.testing is visited by some rule below
assert set(testing.CRASH_POINTS) <= {*IN_CALLS, *IN_COMPENSATION, "after_abort_start"}


def crash_strategy(points: tuple[str, ...], weight: int) -> st.SearchStrategy[Crash]:
    """None (no crash, ``weight`` times as likely), or where, on which visit, and where the
    recovery that follows dies too."""
    return st.one_of(
        *[st.none()] * weight,
        st.tuples(
            st.sampled_from(points),
            st.integers(1, 3),
            st.none() | st.sampled_from(IN_COMPENSATION),
        ),
    )


CALL_CRASHES = crash_strategy(IN_CALLS, 3)
HALT_CRASHES = crash_strategy((*IN_COMPENSATION, "after_abort_start"), 2)
TOOL_CALLS = st.lists(st.sampled_from(TOOLS), max_size=3)
# The k-th next write of the agent's or a person's guard fails (k, taken modulo the writes the
# operation makes at most, so that most faults hit), and so do the ``times - 1`` after it.
FAULT_AT = st.integers(1, 6)
FAULT_TIMES = st.sampled_from([1, 2, 99])
WRITES = {"call": 2, "returns": 1, "resume": 1, "failing_call": 5, "raises": 4, "abort": 4}
# What a worker taken over (while paused past its lease) does next, or None: not paused
GOES_ON = st.sampled_from(["calls", "returns", "raises"])
PAUSED = st.none() | GOES_ON

SETTINGS = settings(
    max_examples=80,
    stateful_step_count=25,
    deadline=None,
    derandomize=True,  # the same sequences on every run: no flaky CI
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class SimulatedCrash(BaseException):
    """The process died here: nothing after this point runs."""


class Broken(BaseException):
    """A guarantee broke inside a tool or an undo (a BaseException, so no retry hides it)."""


class ToolFailure(RuntimeError):
    """A tool refused before doing anything: every policy declares it ``not_done``."""


class Unanswered(RuntimeError):
    """No answer (a timeout after the request left): the call may have taken effect or not. No
    policy declares it, so it leaves the outcome unknown (read-only tools: nothing happened)."""


class UndoFailure(RuntimeError):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Broken(message)


class DyingOS:
    """Stands in for ``os`` inside guardrail.testing: its SIGKILL becomes SimulatedCrash."""

    getpid = staticmethod(os.getpid)

    @staticmethod
    def kill(pid: int, sig: int) -> None:
        raise SimulatedCrash(f"crash point reached (signal {sig})")


class World:
    """What the tools and undos really did, outside the guard's store."""

    def __init__(self, observer: Store) -> None:
        self.observer = observer  # its own connection: sees only what was committed
        self.effects: Counter[Key] = Counter()  # reversible and irreversible calls that took effect
        self.undos: Counter[Key] = Counter()  # undos that took effect
        self.executions: list[Key] = []  # every run of a tool body, reads and failures too
        self.undo_calls: list[Key] = []  # every run of an undo, in order
        self.failing: set[str] = set()  # ops whose tool raises ToolFailure (did nothing)
        self.unanswered: dict[str, bool] = {}  # ops whose tool raises Unanswered: took effect?
        self.undo_failures: Counter[str] = Counter()  # failing undo attempts left, per op
        self.die_in: tuple[str, int] | None = None
        self.visits = 0
        self.touched: set[str] = set()  # runs a tool, undo or probe ran for since the last check
        self.leases: defaultdict[Key, set[tuple[str, int]]] = defaultdict(set)  # who ran a call
        self.pause: Callable[[], None] | None = None  # the worker stalls inside a tool...
        self.pause_visit = 1  # ...on this visit

    def maybe_die(self, where: str) -> None:
        if self.die_in is not None and self.die_in[0] == where:
            self.visits += 1
            if self.visits >= self.die_in[1]:
                self.die_in = None
                raise SimulatedCrash(f"died inside {where}")

    def tool(self, name: str) -> Callable[..., dict[str, Any]]:
        def body(op: str) -> dict[str, Any]:
            run = current_run()
            expect(run is not None, f"{name} runs outside a run")
            assert run is not None
            started = [
                a
                for a in self.observer.actions(run.id)
                if a.args == {"op": op} and a.state == "started"
            ]
            expect(len(started) == 1, f"{name}({op}) runs without a committed started record")
            key = (run.id, started[0].seq)
            # a tool runs only for the worker that holds the run: running, at its lease's epoch
            lease, record = run.lease, self.observer.run(run.id)
            expect(
                record is not None
                and (record.status, record.owner, record.epoch)
                == ("running", lease.owner, lease.epoch),
                f"{name}({op}) runs for a worker that does not hold {run.id}: {lease}, {record}",
            )
            self.touched.add(run.id)
            self.executions.append(key)
            self.leases[key].add((lease.owner, lease.epoch))
            if op in self.failing:
                self.paused()
                raise ToolFailure(f"{name} failed for {op}")
            if op in self.unanswered:
                if self.unanswered[op] and name != "lookup":
                    self.effects[key] += 1  # it took effect, but its answer is lost
                self.paused()
                raise Unanswered(f"{name} got no answer for {op}")
            if name != "lookup":
                self.effects[key] += 1
            self.paused()
            self.maybe_die("tool")
            return {"op": op, "ref": f"{name}/{run.id}/{key[1]}"}

        body.__name__ = name
        return body

    def paused(self) -> None:
        """The tool took effect (or is about to fail), then its worker stalls while ``pause``
        (another process taking the run over) happens."""
        if self.pause is not None:
            self.pause_visit -= 1
            if self.pause_visit == 0:
                pause, self.pause = self.pause, None
                pause()

    def undo(self, action: Action, *, idempotent: bool, by: Guard) -> None:
        key = (action.run_id, action.seq)
        # an undo runs only for the guard that holds the run while it compensates or aborts
        record = self.observer.run(action.run_id)
        expect(
            record is not None
            and record.status in ("compensating", "aborting")
            and record.owner == by.owner
            and by._leases.held.get(action.run_id) == record.epoch,
            f"the undo of {key} runs for {by.owner}, which does not hold the run: {record}",
        )
        self.touched.add(action.run_id)
        self.undo_calls.append(key)
        comps = [c for c in self.observer.compensations(action.run_id) if c.seq == action.seq]
        expect(
            [c.state for c in comps] == ["started"],
            f"the undo of {key} runs without a committed compensation record: {comps}",
        )
        expect(self.effects[key] == 1, f"the undo of {key} runs, but the call never took effect")
        if idempotent and self.undos[key]:
            return
        op = action.args["op"]
        if self.undo_failures[op] > 0:
            self.undo_failures[op] -= 1
            raise UndoFailure(f"the undo of {op} failed")
        self.undos[key] += 1
        self.maybe_die("undo")

    def probe(self, action: Action) -> dict[str, Any] | bool:
        """``reserve``'s probe: did the call a crash interrupted take effect?"""
        key = (action.run_id, action.seq)
        if self.effects[key]:
            return {"op": action.args["op"], "ref": f"reserve/{key[0]}/{key[1]}"}
        return False

    def state(self) -> tuple[Any, ...]:
        return dict(self.effects), dict(self.undos), len(self.executions), len(self.undo_calls)


def undo_for(guard: Guard, world: World, name: str, idempotent: bool) -> Callable[[Action], None]:
    """An undo run by ``guard``: ``cancel`` (``create``'s, not idempotent: cancelling twice would
    do something twice) or ``release`` (``reserve``'s, idempotent: releasing a released
    reservation changes nothing)."""

    def undo(action: Action) -> None:
        world.undo(action, idempotent=idempotent, by=guard)

    undo.__name__ = undo.__qualname__ = name
    return undo


def declare(guard: Guard, world: World) -> dict[str, Callable[..., Any]]:
    """The tools, one of each kind, guarded by ``guard``. ToolFailure proves a call did nothing
    (``not_done``); Unanswered is declared nowhere: its outcome is unknown."""
    fields: dict[str, dict[str, Any]] = {
        "lookup": {"effect": "read_only", "retry": FAST},
        "create": {
            "effect": "reversible",
            "undo": undo_for(guard, world, "cancel", idempotent=False),
            "undo_retry": FAST,
            "external_ids": {"ref": "result.ref"},
        },
        "reserve": {
            "effect": "reversible",
            "undo": undo_for(guard, world, "release", idempotent=True),
            "undo_idempotent": True,
            "undo_retry": FAST,
            "probe": world.probe,
            "external_ids": {"ref": "result.ref"},
        },
        "send": {"effect": "irreversible", "review": Review(kind="correct", owner="support")},
        "ship": {
            "effect": "irreversible",
            "review": Review(kind="cancel", owner="logistics"),
            "on_failure": "hold",
        },
    }
    return {
        name: guard.tool(name=name, not_done=[ToolFailure], **f)(world.tool(name))
        for name, f in fields.items()
    }


@dataclass
class Session:
    """The agent, inside ``with guard.run(...)`` (entered in a context of its own)."""

    run_id: str
    run: Run
    ctx: contextvars.Context


@dataclass
class Crashed:
    crashed: bool = False


class GuardMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="guardrail-sm-")
        self.url = f"sqlite:///{self.dir}/guardrail.db"
        self.world = World(open_store(self.url))
        self.raw = sqlite3.connect(f"{self.dir}/guardrail.db")  # reads only
        self.guards: list[Guard] = []
        self.guard, self.tools = self.boot()
        self.other: Guard | None = None
        self.taker: Guard | None = None
        self.session: Session | None = None
        self.runs: list[str] = []
        self.scripts: dict[str, list[tuple[str, str]]] = {}  # the calls each run's agent made
        self.ops: dict[str, str] = {}  # op -> tool
        self.seen: list[tuple[str, str, Any]] = []  # (run, op, result) a call returned
        self.held: dict[str, bool] = {}  # whether the run's last halt was a hold
        self.resumed: list[str] = []  # resumed runs whose agent has not restarted yet
        self.happened: set[Key] = set()  # actions a person said happened (they have no result)
        self.undos_checked = 0
        self.checked: dict[str, int] = {}  # journal length of each run when last checked

    # -- processes ---------------------------------------------------------------------------

    def boot(self) -> tuple[Guard, dict[str, Callable[..., Any]]]:
        """A new "process": a guard on the same store, owning runs under a host of its own."""
        guard = Guard(store=self.url, heartbeat_interval=HEARTBEAT)
        guard.owner = f"sm-process-{len(self.guards)}|0|0"
        self.guards.append(guard)
        self.faulty = testing.FaultyStore(guard)  # healthy until a rule arms a fault
        return guard, declare(guard, self.world)

    def bystander(self) -> Guard:
        """Another process on the same store, alive all along."""
        if self.other is None:
            self.other = Guard(store=self.url, heartbeat_interval=HEARTBEAT)
            self.other.owner = "sm-bystander|0|0"
            self.guards.append(self.other)
        return self.other

    def take_over(self) -> list[str]:
        """Another live process runs ``recover()`` once every lease has expired (its
        ``stale_after`` is -1): it takes over every run somebody holds, dead or merely paused."""
        if self.taker is None:
            self.taker = Guard(store=self.url, heartbeat_interval=HEARTBEAT)
            self.taker.owner = "sm-taker|0|0"
            self.guards.append(self.taker)
            declare(self.taker, self.world)  # its undos and probe, for compensating
        self.taker.stale_after = -1.0
        try:
            return self.taker.recover()
        finally:
            self.taker.stale_after = HEARTBEAT * 6

    def arm(self, where: str | None, visit: int = 1) -> None:
        """Arm one crash: a crash point of guardrail.testing, or inside a tool or an undo."""
        testing.arm(f"{where}:{visit}" if where in testing.CRASH_POINTS else None)
        inside = where is not None and where.startswith("in_")
        self.world.die_in = (where.removeprefix("in_"), visit) if where and inside else None
        self.world.visits = 0

    @contextmanager
    def crashes(self, crash: Crash) -> Iterator[Crashed]:
        """Run the body with ``crash`` armed; if the process dies, recover in a new one."""
        outcome = Crashed()
        if crash is not None:
            self.arm(crash[0], crash[1])
        try:
            yield outcome
        except SimulatedCrash:
            outcome.crashed = True
        finally:
            self.arm(None)
        if outcome.crashed:
            self.die_and_recover(crash[2] if crash else None)

    def die_and_recover(self, recovery_crash: str | None = None) -> None:
        """The process is gone (and its agent with it); a fresh one runs ``recover()``."""
        self.session = None
        self.guard.close()
        while True:
            dead = {r.id for r in self.world.observer.runs() if r.status in LIVE and r.owner}
            for run_id in dead:
                self.held[run_id] = False
            self.guard, self.tools = self.boot()
            self.guard.stale_after = -1.0  # as if it waited until the dead heartbeat went stale
            if recovery_crash is not None:
                self.arm(recovery_crash)
                recovery_crash = None
            try:
                recovered = self.guard.recover()
            except SimulatedCrash:
                self.guard.close()
                continue
            finally:
                self.arm(None)
                self.guard.stale_after = HEARTBEAT * 6
            assert sorted(recovered) == sorted(dead)
            return

    def teardown(self) -> None:
        testing.arm(None)
        try:
            self.check(full=True)
        finally:
            for guard in self.guards:
                guard.close()
            self.world.observer.close()
            self.raw.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- reading the store -------------------------------------------------------------------

    def status(self, run_id: str) -> str:
        run = self.world.observer.run(run_id)
        assert run is not None
        return run.status

    def actions_of(self, run_id: str, op: str) -> list[Action]:
        return [a for a in self.world.observer.actions(run_id) if a.args == {"op": op}]

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every stored row but heartbeats (read raw, in one go), to show a step changed nothing."""
        out: dict[str, list[tuple[Any, ...]]] = {}
        for table in (*TABLES, "journal"):
            cur = self.raw.execute(f"SELECT * FROM {table}")
            columns = [d[0] for d in cur.description]
            rows = [
                tuple(None if c == "heartbeat_at" else v for c, v in zip(columns, row, strict=True))
                for row in cur
            ]
            out[table] = sorted(rows, key=repr)
        return out

    def open_doubts(self, run_id: str | None = None) -> list[Any]:
        """Open ``in_doubt`` review items (of one run): each stops a resume."""
        items = self.world.observer.review_items(run_id=run_id, status="open")
        return [i for i in items if i.reason == "in_doubt"]

    def resume_or_refused(self, guard: Guard, run_id: str) -> bool:
        """A person resumes a halted run: refused (RunStateError, nothing changes) while an
        ``in_doubt`` item of the run is open, else it lands. Returns whether it landed."""
        if self.open_doubts(run_id):
            before = self.snapshot()
            with pytest.raises(RunStateError, match="outcome is unknown"):
                guard.resume(run_id, by="ann", note="go on")
            assert self.snapshot() == before
            return False
        decision = guard.resume(run_id, by="ann", note="go on")
        assert (decision.landed, decision.status) == (True, "running")
        self.resumed.append(run_id)
        return True

    def journals(self) -> dict[str, int]:
        """How many journal entries each run has."""
        return dict(self.raw.execute("SELECT run_id, COUNT(*) FROM journal GROUP BY run_id"))

    def decided_or_waiting(self) -> bool:
        return any(r.status != "running" for r in self.world.observer.runs())

    def pick(self, i: int, halted: bool) -> str:
        """The i-th run; if ``halted``, the i-th of those waiting for a person, when any."""
        waiting = [r.id for r in self.world.observer.runs(status="pending_review")]
        runs = [r for r in self.runs if r in waiting] if halted and waiting else self.runs
        return runs[i % len(runs)]

    # -- the agent ---------------------------------------------------------------------------

    def enter(self, run_id: str) -> None:
        run = self.guard.run(agent="sm", run_id=run_id)
        ctx = contextvars.copy_context()
        ctx.run(run.__enter__)
        self.session = Session(run_id, run, ctx)
        assert self.status(run_id) == "running"

    def leave(self, error: BaseException | None) -> None:
        session = self.session
        assert session is not None
        self.session = None
        exc_type = type(error) if error is not None else None
        session.ctx.run(session.run.__exit__, exc_type, error, None)

    def halted(self, halted: RunHalted, tool: str) -> None:
        """The agent got RunHalted: it leaves its run, which now waits for a person."""
        assert self.session is not None
        run_id = self.session.run_id
        assert (halted.run_id, halted.status) == (run_id, "pending_review")
        self.leave(halted)
        self.held[run_id] = tool == "ship"
        assert self.status(run_id) == "pending_review"

    def agent_call(self, tool: str, op: str, crash: Crash) -> None:
        """One call by the agent; ``op`` is new, or a replay of an earlier call of this run."""
        session = self.session
        assert session is not None
        run_id = session.run_id
        earlier = self.actions_of(run_id, op)
        done = [a for a in earlier if a.state == "succeeded"]
        undo_failed = [a for a in earlier if a.state == "compensation_failed"]
        doubted = [a for a in earlier if a.state == "in_doubt"]
        assert len(done) <= 1, "two live successes of one call"
        assert len(doubted) <= 1 and not (done and doubted), earlier
        before = (self.world.state(), len(self.world.observer.actions(run_id)))
        seen = [result for r, o, result in self.seen if (r, o) == (run_id, op)]
        if (tool, op) not in self.scripts[run_id]:
            self.scripts[run_id].append((tool, op))
        result: Any = None
        halted: RunHalted | None = None
        with self.crashes(crash) as died:
            try:
                result = session.ctx.run(self.tools[tool], op=op)
            except RunHalted as exc:
                halted = exc
        if died.crashed:
            return
        unchanged = (self.world.state(), len(self.world.observer.actions(run_id))) == before
        if done:  # resume never re-executes a succeeded action
            assert halted is None and unchanged
            assert result == done[0].result
            return
        if undo_failed and halted is None and unchanged:
            # Returned from the log, as dedup promises ("succeeded, not compensated");
            # test_resume_does_not_redo_a_call_whose_undo_failed pins it down.
            assert result == undo_failed[-1].result
            return
        if doubted:
            # in doubt, and no person said it did not happen (its item was closed otherwise):
            # a replay never runs it again; it returns what is recorded (nothing)
            assert halted is None and unchanged, f"{tool}({op}) in doubt, but the replay ran it"
            assert result == doubted[0].result
            return
        if seen and tool in ("lookup", "send", "ship"):
            raise AssertionError(f"{tool}({op}) returned before but was not replayed")
        if op in self.world.failing:
            assert halted is not None, f"{tool}({op}) failed but the run did not halt"
            self.halted(halted, tool)
            # declared not_done: a plain failure, nothing for a person to check
            action = self.actions_of(run_id, op)[-1]
            assert action.state == "failed", action
            assert not [i for i in self.open_doubts(run_id) if i.seq == action.seq]
            return
        if op in self.world.unanswered:
            assert halted is not None, f"{tool}({op}) got no answer but the run did not halt"
            self.halted(halted, tool)
            self.unknown_outcome(run_id, tool, op)
            return
        assert halted is None, f"{tool}({op}) succeeded but the run halted: {halted}"
        [action] = [a for a in self.actions_of(run_id, op) if a.state == "succeeded"]
        assert action.result == result
        self.seen.append((run_id, op, result))

    def unknown_outcome(self, run_id: str, tool: str, op: str) -> None:
        """What a call that raised Unanswered left: read-only, a plain failure; ``reserve``,
        settled at once by its probe (the call has returned, so a "no" is believed: failed; a
        "yes": succeeded, then compensated by the halt); any other, ``in_doubt`` with an open
        review item in the policy's name, never undone."""
        action = self.actions_of(run_id, op)[-1]
        key = (run_id, action.seq)
        took_effect = bool(self.world.effects[key])
        assert took_effect == (self.world.unanswered[op] and tool != "lookup")
        doubts = [i for i in self.open_doubts(run_id) if i.seq == action.seq]
        if tool == "lookup" or (tool == "reserve" and not took_effect):
            assert action.state == "failed" and not doubts, action
        elif tool == "reserve":
            assert action.state in ("compensated", "compensation_failed"), action
            assert not doubts
        else:
            assert action.state == "in_doubt", action
            assert "Unanswered" in (action.error or ""), action
            [item] = doubts
            review = {"send": ("correct", "support"), "ship": ("cancel", "logistics")}
            assert (item.kind, item.owner) == review.get(tool, ("handoff", None)), item
            assert self.world.undos[key] == 0

    def new_op(self, tool: str) -> str:
        op = f"op-{len(self.ops) + 1}"
        self.ops[op] = tool
        return op

    # -- rules: the agent --------------------------------------------------------------------

    def make_calls(self, tools: list[str], crash: Crash) -> None:
        for tool in tools:
            if self.session is None:  # halted, or crashed
                return
            self.agent_call(tool, self.new_op(tool), crash)

    @precondition(lambda self: self.session is None)
    @rule(
        restart=st.booleans(),
        i=st.integers(0, 3),
        fixed=st.booleans(),
        tools=TOOL_CALLS,
        crash=CALL_CRASHES,
    )
    def start_agent(
        self, restart: bool, i: int, fixed: bool, tools: list[str], crash: Crash
    ) -> None:
        """The agent starts a new run, or restarts one a person resumed: then it first replays
        every call it made (the failure ``fixed`` or not). Then it makes new calls."""
        if not (restart and self.resumed):
            run_id = f"run-{len(self.runs) + 1}"
            self.runs.append(run_id)
            self.scripts[run_id] = []
            self.held[run_id] = False
            self.enter(run_id)
        else:
            run_id = self.resumed.pop(i % len(self.resumed))
            assert self.status(run_id) == "running"
            if fixed:
                self.world.failing -= {op for _, op in self.scripts[run_id]}
                for _, op in self.scripts[run_id]:
                    self.world.unanswered.pop(op, None)
            self.enter(run_id)
            for tool, op in list(self.scripts[run_id]):
                if self.session is None:
                    return
                self.agent_call(tool, op, crash)
        self.make_calls(tools, crash)

    @precondition(lambda self: self.session is not None)
    @rule(tools=TOOL_CALLS, crash=CALL_CRASHES, bystander=st.booleans())
    def calls(self, tools: list[str], crash: Crash, bystander: bool) -> None:
        """Calls that succeed; then maybe another, live process runs ``recover()``."""
        self.make_calls(tools, crash)
        if bystander and self.session is not None:
            # nobody died: it must take nothing, neither this agent's run nor a resumed one
            before = self.snapshot()
            assert self.bystander().recover() == []
            assert self.snapshot() == before

    @precondition(lambda self: self.session is not None)
    @rule(tools=TOOL_CALLS, tool=st.sampled_from(TOOLS), crash=HALT_CRASHES)
    def failing_call(self, tools: list[str], tool: str, crash: Crash) -> None:
        """A few calls that succeed, then one whose tool raises: the run halts."""
        self.make_calls(tools, crash)
        if self.session is not None:
            op = self.new_op(tool)
            self.world.failing.add(op)
            self.agent_call(tool, op, crash)

    @precondition(lambda self: self.session is not None)
    @rule(
        tools=TOOL_CALLS,
        tool=st.sampled_from(TOOLS),
        took_effect=st.booleans(),
        crash=HALT_CRASHES,
    )
    def unknown_outcome_call(
        self, tools: list[str], tool: str, took_effect: bool, crash: Crash
    ) -> None:
        """A few calls that succeed, then one that gets no answer (Unanswered, declared by no
        policy) after it took effect or before: the run halts with the call's outcome unknown."""
        self.make_calls(tools, crash)
        if self.session is not None:
            op = self.new_op(tool)
            self.world.unanswered[op] = took_effect
            self.agent_call(tool, op, crash)

    @precondition(lambda self: self.session is not None)
    @rule(how=st.sampled_from(["returns", "raises", "dies"]), crash=HALT_CRASHES)
    def agent_ends(self, how: str, crash: Crash) -> None:
        """The agent leaves its run: done, with an error (a halt), or its process dies."""
        assert self.session is not None
        run_id = self.session.run_id
        if how == "returns":
            self.leave(None)
            assert self.status(run_id) == "completed"
        elif how == "raises":
            with self.crashes(crash) as died:
                self.leave(RuntimeError("the model went off the rails"))
            if not died.crashed:
                self.held[run_id] = False
                assert self.status(run_id) == "pending_review"
        else:  # only the recovery may crash too
            self.die_and_recover(crash[2] if crash else None)
            assert self.status(run_id) == "pending_review"

    # -- rules: people -----------------------------------------------------------------------

    @precondition(lambda self: self.decided_or_waiting())
    @rule(i=st.integers(0, 7), halted=st.booleans())
    def resume(self, i: int, halted: bool) -> None:
        run_id = self.pick(i, halted)
        status = self.status(run_id)
        before = self.snapshot()
        if status == "pending_review":
            with pytest.raises(RunStateError):
                self.guard.run(run_id=run_id).__enter__()  # not before a person resumed it
            if not self.resume_or_refused(self.guard, run_id):
                return  # a call's outcome is unknown: a person must answer first
            before = self.snapshot()
            again = self.guard.resume(run_id, by="ann", note="go on")
            assert (again.landed, again.status) == (False, "running")
        elif status == "running":
            again = self.guard.resume(run_id, by="ann")
            assert (again.landed, again.status) == (False, "running")
        else:
            with pytest.raises(Conflict):
                self.guard.resume(run_id, by="ann")
        assert self.snapshot() == before

    @precondition(lambda self: self.decided_or_waiting())
    @rule(i=st.integers(0, 7), halted=st.booleans(), crash=HALT_CRASHES)
    def abort(self, i: int, halted: bool, crash: Crash) -> None:
        run_id = self.pick(i, halted)
        status = self.status(run_id)
        before = self.snapshot()
        with self.crashes(crash) as died:
            try:
                decision = self.guard.abort(run_id, by="bob", reason="stop")
            except Conflict:
                assert status not in ("pending_review", "aborted")
                assert self.snapshot() == before
                return
        if status not in ("pending_review", "aborted"):
            raise AssertionError(f"a {status} run was aborted")
        if not died.crashed:
            assert decision.status == "aborted"
            assert decision.landed == (status == "pending_review")
        assert self.status(run_id) == "aborted"
        # an action a person said happened is undone (reversible) or listed, like a success
        for a in self.world.observer.actions(run_id):
            if (run_id, a.seq) in self.happened:
                assert a.state != "succeeded" or a.effect != "reversible", a
                if a.state == "compensated":
                    assert self.world.undos[(run_id, a.seq)] == 1, a
        # abort twice equals abort once
        stored, world = self.snapshot(), self.world.state()
        again = self.guard.abort(run_id, by="carol", reason="stop!")
        assert (again.landed, again.status, again.by) == (False, "aborted", "bob")
        assert self.snapshot() == stored
        assert self.world.state() == world

    @precondition(lambda self: bool(self.world.observer.review_items(status="open")))
    @rule(i=st.integers(0, 20), resolution=st.sampled_from(RESOLUTIONS))
    def resolve(self, i: int, resolution: str) -> None:
        order = {run_id: n for n, run_id in enumerate(self.runs)}
        items = sorted(
            self.world.observer.review_items(status="open"),
            key=lambda item: (order[item.run_id], item.seq or 0, item.reason),
        )
        item = items[i % len(items)]
        before = self.snapshot()
        decision = self.guard.resolve(item.id, resolution, by="dave", note="checked")
        assert decision.landed
        again = self.guard.resolve(item.id, resolution, by="erin")
        assert not again.landed
        other = next(r for r in RESOLUTIONS if r != resolution)
        with pytest.raises(Conflict):
            self.guard.resolve(item.id, other, by="erin")
        stored = self.world.observer.review_item(item.id)
        assert stored is not None
        assert (stored.status, stored.resolution, stored.resolved_by) == (
            "resolved",
            resolution,
            "dave",
        )
        after = self.snapshot()
        for table in ("runs", "actions", "compensations", "external_ids"):
            assert after[table] == before[table], table

    def answerable(self) -> list[tuple[Any, Action, bool]]:
        """Open in_doubt items whose action is in doubt, with the action and the truth (did it
        take effect in the world?), in a stable order. A person answers those of runs waiting
        for review; of an aborted run, only ``not_happened`` (a ``happened`` after the abort is
        never undone: test_a_happened_answer_after_the_abort_is_undone_or_listed)."""
        order = {run_id: n for n, run_id in enumerate(self.runs)}
        found = []
        for item in self.open_doubts():
            if item.seq is None:
                continue
            [action] = [a for a in self.world.observer.actions(item.run_id) if a.seq == item.seq]
            key = (item.run_id, item.seq)
            happened = bool(self.world.effects[key]) or (
                action.tool == "lookup" and key in self.world.executions
            )
            status = self.status(item.run_id)
            if action.state == "in_doubt" and (
                status == "pending_review" or (status == "aborted" and not happened)
            ):
                found.append((item, action, happened))
        return sorted(found, key=lambda f: (order[f[0].run_id], f[0].seq or 0))

    @precondition(lambda self: bool(self.open_doubts()))
    @rule(i=st.integers(0, 20), then_resume=st.booleans())
    def person_answers_doubt(self, i: int, then_resume: bool) -> None:
        """A person checks the world and answers an open in_doubt item, truthfully: ``happened``
        (the action is succeeded: a replay returns it, an abort undoes or lists it) or
        ``not_happened`` (failed: a replay runs it again). Nothing runs; only the action and
        its item change. Then maybe they resume the run, which is refused while another of its
        calls is in doubt."""
        found = self.answerable()
        if not found:
            return
        item, _, happened = found[i % len(found)]
        word = "happened" if happened else "not_happened"
        before, world = self.snapshot(), self.world.state()
        decision = self.guard.resolve(item.id, word, by="dave", note="checked the world")
        assert decision.landed
        again = self.guard.resolve(item.id, word, by="erin")
        assert not again.landed
        other = next(w for w in DOUBT_WORDS if w != word)
        with pytest.raises(Conflict):
            self.guard.resolve(item.id, other, by="erin")
        stored = self.world.observer.review_item(item.id)
        assert stored is not None
        assert (stored.status, stored.resolution, stored.resolved_by) == ("resolved", word, "dave")
        [now] = [a for a in self.world.observer.actions(item.run_id) if a.seq == item.seq]
        assert now.state == ("succeeded" if happened else "failed"), now
        assert self.world.state() == world  # a word, not a call or an undo
        after = self.snapshot()
        for table in ("runs", "compensations", "external_ids"):
            assert after[table] == before[table], table
        changed = [r for r in after["actions"] if r not in before["actions"]]
        assert len(changed) == 1, changed  # only this action's state
        if happened:
            self.happened.add((item.run_id, item.seq))
        if then_resume and self.status(item.run_id) == "pending_review":
            self.resume_or_refused(self.guard, item.run_id)

    @precondition(lambda self: any(t in REVERSIBLE for t in self.ops.values()))
    @rule(i=st.integers(0, 20), for_good=st.booleans())
    def undo_fails(self, i: int, for_good: bool) -> None:
        """The undo of a reversible call (preferably one still in effect) will fail: once
        (its retry succeeds) or for good (a review item)."""
        ops = [op for op, tool in self.ops.items() if tool in REVERSIBLE]
        succeeded = {
            a.args["op"]
            for run in self.runs
            for a in self.world.observer.actions(run)
            if a.state == "succeeded"
        }
        live = [op for op in ops if op in succeeded]
        self.world.undo_failures[(live or ops)[i % len(live or ops)]] = 99 if for_good else 1

    # -- rules: takeovers and store faults ---------------------------------------------------

    @precondition(lambda self: self.session is not None)
    @rule(
        then=GOES_ON,
        tools=st.lists(st.sampled_from(TOOLS), min_size=1, max_size=2),
        resumed=st.booleans(),
    )
    def taken_over_between_calls(self, then: str, tools: list[str], resumed: bool) -> None:
        """The agent's worker stalls between two calls past its lease (a GC pause, a suspended
        laptop); another process takes the run over and halts it, and maybe a person resumes it
        (``running`` again, at a newer epoch). Then the worker goes on."""
        assert self.session is not None
        run_id = self.session.run_id
        assert self.take_over() == [run_id]
        assert self.status(run_id) == "pending_review"
        self.held[run_id] = self.was_held(run_id)
        if resumed:
            self.resume_or_refused(self.bystander(), run_id)
        self.stale_worker_goes_on(then, tools)

    @precondition(lambda self: self.session is not None)
    @rule(tool=st.sampled_from(TOOLS), fails=st.booleans())
    def taken_over_during_call(self, tool: str, fails: bool) -> None:
        """The worker stalls inside a tool (after it took effect, or just before it raises) and
        another process takes the run over: the tool ran once, its outcome is refused, the call
        ends in OwnershipLost and the action waits for a person in doubt (``reserve``'s probe
        settles one that took effect, which is then undone; its "no effect" is not believed
        while the worker that started the call may still live)."""
        session = self.session
        assert session is not None
        run_id = session.run_id
        op = self.new_op(tool)
        if fails:
            self.world.failing.add(op)
        self.scripts[run_id].append((tool, op))
        taken: list[str] = []
        self.world.pause = lambda: taken.extend(self.take_over())
        # stalled in its first attempt: a retry (a failing lookup is tried twice) must not run
        self.world.pause_visit = 1
        ran = len(self.world.executions)
        try:
            with pytest.raises(OwnershipLost) as lost:
                session.ctx.run(self.tools[tool], op=op)
        finally:
            self.world.pause = None
        assert taken == [run_id]
        assert (lost.value.run_id, lost.value.status) == (run_id, "pending_review")
        [action] = self.actions_of(run_id, op)
        # it ran once for one intent: no retry, and never again once the run was taken over
        assert self.world.executions[ran:] == [(run_id, action.seq)]
        if tool == "reserve" and not fails:
            assert action.state == "compensated", action  # the probe found the effect: undone
        else:
            # (reserve's probe finds no effect, but the worker only paused: it is not believed)
            assert action.state == "in_doubt", action
            items = self.world.observer.review_items(run_id=run_id)
            assert any(i.seq == action.seq and i.reason == "in_doubt" for i in items), items
        assert self.status(run_id) == "pending_review"
        self.held[run_id] = self.was_held(run_id)
        before = self.snapshot()
        self.leave(lost.value)
        assert self.snapshot() == before

    @precondition(lambda self: self.session is not None)
    @rule(
        fails=st.booleans(),
        tool=st.sampled_from(TOOLS),
        k=FAULT_AT,
        times=FAULT_TIMES,
        paused=PAUSED,
    )
    def store_fault_in_call(
        self, fails: bool, tool: str, k: int, times: int, paused: str | None
    ) -> None:
        """The store fails during a call, or a call that fails (and halts the run)."""
        self.store_fault_in_run("failing_call" if fails else "call", tool, k, times, paused)

    @precondition(lambda self: self.session is not None)
    @rule(raises=st.booleans(), k=FAULT_AT, times=FAULT_TIMES, paused=PAUSED)
    def store_fault_as_agent_ends(
        self, raises: bool, k: int, times: int, paused: str | None
    ) -> None:
        """The store fails as the agent returns (completing its run) or raises (halting it)."""
        self.store_fault_in_run("raises" if raises else "returns", "lookup", k, times, paused)

    def store_fault_in_run(
        self, how: str, tool: str, k: int, times: int, paused: str | None
    ) -> None:
        """The store fails at the k-th next write of the agent's worker (``how``: during a
        call, a call that fails, the agent's return or its error). Then the store heals and the
        leases the worker gave up expire: recovery finishes what it left."""
        k = 1 + (k - 1) % WRITES[how]
        session = self.session
        assert session is not None
        run_id = session.run_id
        writes, ran = len(self.faulty.kinds), len(self.world.executions)
        error: BaseException | None = None
        result: Any = None
        op = self.new_op(tool) if how.endswith("call") else ""
        self.faulty.fail("*", nth=k, times=times)
        try:
            if how == "failing_call":
                self.world.failing.add(op)
            if op:
                self.scripts[run_id].append((tool, op))
                try:
                    result = session.ctx.run(self.tools[tool], op=op)
                except (StoreError, RunHalted) as exc:
                    error = exc
            else:
                try:
                    self.leave(None if how == "returns" else RuntimeError("the model gave up"))
                except StoreError as exc:
                    error = exc
        finally:
            self.faulty.heal()
        attempted = self.faulty.kinds[writes:]
        hit = attempted[k - 1] if len(attempted) >= k else None  # the write that failed first
        ran_now = self.world.executions[ran:]
        assert not isinstance(error, OwnershipLost), error
        if not op:  # the agent left its run
            assert self.session is None
            if hit is None:
                assert error is None
                assert self.status(run_id) == (
                    "completed" if how == "returns" else "pending_review"
                )
            else:
                # the run stays where it got to, for recovery
                assert isinstance(error, StoreError), error
                assert self.status(run_id) in ("running", "compensating")
        elif hit == "action.start":
            # nothing ran, nothing was recorded, the agent may call again once the store is back
            assert isinstance(error, StoreError) and not isinstance(error, RunHalted), error
            assert ran_now == [] and self.actions_of(run_id, op) == []
            self.agent_call(tool, op, None)
            # the failed start gave its occurrence back: the call has the key of its first
            # occurrence in the run, which a replay after a resume looks for
            [action] = self.actions_of(run_id, op)
            assert action.idempotency_key.endswith(":1"), action
        elif hit is None:
            if how == "call":
                assert error is None, error
                [action] = [a for a in self.actions_of(run_id, op) if a.state == "succeeded"]
                assert action.result == result
                self.seen.append((run_id, op, result))
            else:
                assert isinstance(error, RunHalted), error
                self.halted(error, tool)
        else:
            # the tool ran (once, for one intent), then the store failed: the call halts
            assert isinstance(error, RunHalted), (hit, error)
            assert len(set(ran_now)) == 1 and ran_now[0][0] == run_id, ran_now
            status = self.status(run_id)
            if error.status == "pending_review":
                assert status == "pending_review"
            else:
                assert (error.status, status in ("running", "compensating")) == ("running", True)
            # this worker refuses every further call
            before = self.snapshot()
            with pytest.raises(RunHalted):
                session.ctx.run(self.tools["lookup"], op=self.new_op("lookup"))
            assert self.snapshot() == before
            assert self.world.executions[ran:] == ran_now
            # and gave its lease up at once: the run is recovered while the agent is still
            # unwinding inside its run block; leaving it then writes nothing
            self.session = None
            self.leases_expire(None)
            self.session = session
            before = self.snapshot()
            self.leave(error)
            assert self.snapshot() == before
            self.held[run_id] = self.was_held(run_id)
        self.leases_expire(paused)

    @precondition(lambda self: bool(self.world.observer.runs(status="pending_review")))
    @rule(
        how=st.sampled_from(["abort", "resume"]),
        i=st.integers(0, 7),
        k=FAULT_AT,
        times=FAULT_TIMES,
        paused=PAUSED,
    )
    def store_fault_in_decision(
        self, how: str, i: int, k: int, times: int, paused: str | None
    ) -> None:
        """The store fails at the k-th next write of a person's abort or resume; then it heals
        and recovery finishes an abort that was left ``aborting``."""
        run_id = self.pick(i, halted=True)
        k = 1 + (k - 1) % WRITES[how]
        before, world = self.snapshot(), self.world.state()
        if how == "resume" and self.open_doubts(run_id):
            # refused before it writes anything: a call's outcome is unknown
            writes = len(self.faulty.kinds)
            self.faulty.fail("*", nth=k, times=times)
            try:
                with pytest.raises(RunStateError, match="outcome is unknown"):
                    self.guard.resume(run_id, by="ann")
            finally:
                self.faulty.heal()
            assert self.faulty.kinds[writes:] == []
            assert self.snapshot() == before and self.world.state() == world
            self.leases_expire(paused)
            return
        writes = len(self.faulty.kinds)
        error: StoreError | None = None
        decision = None
        self.faulty.fail("*", nth=k, times=times)
        try:
            if how == "abort":
                decision = self.guard.abort(run_id, by="bob", reason="stop")
            else:
                decision = self.guard.resume(run_id, by="ann")
        except StoreError as exc:
            error = exc
        finally:
            self.faulty.heal()
        attempted = self.faulty.kinds[writes:]
        hit = attempted[k - 1] if len(attempted) >= k else None
        if hit is None:
            assert error is None and decision is not None
            assert decision.landed
            assert decision.status == ("aborted" if how == "abort" else "running")
            if how == "resume":
                self.resumed.append(run_id)
        elif hit == attempted[0]:  # the decision itself: nothing changed
            assert error is not None
            assert self.snapshot() == before and self.world.state() == world
        else:  # the abort is recorded, its compensation was cut short
            assert how == "abort" and error is not None
            assert self.status(run_id) == "aborting"
        self.leases_expire(paused)
        if how == "abort" and hit != attempted[0]:
            assert self.status(run_id) == "aborted"

    def leases_expire(self, paused: str | None) -> None:
        """Time passes until every lease nobody renews has expired, and another process
        recovers those runs. The heartbeat of the agent's process renews the leases its guard
        holds (a lease it kept after giving its run up would keep that run from recovery), unless
        the process is ``paused``: then the agent's run is taken over as well and its worker,
        when it goes on (``paused`` says how), is refused."""
        session = self.session
        stuck = {r.id for r in self.world.observer.runs() if r.status in LIVE and r.owner}
        beating = list(self.guard._leases.held) if paused is None else []
        if session is not None and paused is None:
            stuck.discard(session.run_id)
        self.guard.store.heartbeat(self.guard.owner, beating, time.time() + HEARTBEAT)
        try:
            taken = self.take_over()
        finally:
            self.guard.store.heartbeat(self.guard.owner, beating, time.time())
        assert sorted(taken) == sorted(stuck)
        for run_id in taken:
            assert self.status(run_id) in ("pending_review", "aborted"), run_id
            self.held[run_id] = self.was_held(run_id)
        if session is not None and paused is not None:
            self.stale_worker_goes_on(paused, ["create"])

    def stale_worker_goes_on(self, then: str, tools: list[str]) -> None:
        """The worker that lost its run goes on: its calls, its return or its error are refused
        (OwnershipLost, RunHalted): no tool runs, nothing is written, nothing is undone."""
        session = self.session
        assert session is not None
        run_id = session.run_id
        before, world = self.snapshot(), self.world.state()
        if then == "calls":
            refusals: list[RunHalted] = []
            for tool in tools:
                with pytest.raises(RunHalted) as refused:
                    session.ctx.run(self.tools[tool], op=self.new_op(tool))
                refusals.append(refused.value)
            assert isinstance(refusals[0], OwnershipLost), refusals
            assert {(r.run_id, r.status) for r in refusals} == {(run_id, self.status(run_id))}
            self.leave(refusals[0])
        else:
            with pytest.raises(OwnershipLost):
                self.leave(None if then == "returns" else RuntimeError("the model gave up"))
        assert self.snapshot() == before
        assert self.world.state() == world

    def was_held(self, run_id: str) -> bool:
        """Whether the run's last halt held it for a person (nothing undone)."""
        row = self.raw.execute(
            "SELECT kind FROM journal WHERE run_id = ? AND kind IN ('run.hold', 'run.review') "
            "ORDER BY n DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        return row is not None and row[0] == "run.hold"

    # -- the guarantees, after every step ----------------------------------------------------

    @invariant()
    def log_matches_the_world(self) -> None:
        self.check(full=False)

    def check(self, *, full: bool) -> None:
        """Hold the log against the world. Runs whose journal did not grow and that no tool,
        undo or probe touched are looked at in full only at the end (``full``)."""
        obs, world = self.world.observer, self.world
        journals = self.journals()
        runs = {r.id: r for r in obs.runs()}
        assert set(runs) == set(self.runs)
        for run_id, run in runs.items():
            # never left compensating or aborting; running only with its agent or resumed
            assert run.status not in ("compensating", "aborting"), run
            if run.status == "running":
                active = self.session is not None and self.session.run_id == run_id
                assert (active and run.owner == self.guard.owner) or (
                    run.owner is None and run_id in self.resumed
                ), run
                # resumed only once nobody had to say whether a call happened
                assert not self.open_doubts(run_id), run
        changed = {
            run_id
            for run_id in self.runs
            if full or run_id in world.touched or journals.get(run_id) != self.checked.get(run_id)
        }
        for run_id in changed:
            self.check_run(runs[run_id])
        # no side effect, execution or undo without its record
        recorded = set(self.raw.execute("SELECT run_id, seq FROM actions"))
        assert set(world.effects) <= recorded
        assert set(world.executions) <= recorded
        assert set(world.undo_calls) <= recorded
        # undos ran newest first within each run
        by_run: defaultdict[str, list[int]] = defaultdict(list)
        for run_id, seq in world.undo_calls[self.undos_checked :]:
            by_run[run_id].append(seq)
        for run_id, seqs in by_run.items():
            assert seqs == sorted(seqs, reverse=True), (run_id, seqs)
        self.undos_checked = len(world.undo_calls)
        # no intent ran for two workers (each ran under the lease it was started with); nothing
        # is left started or compensating; every run not completed waits for a person or runs
        assert all(len(leases) == 1 for leases in world.leases.values()), world.leases
        assert not self.raw.execute(
            "SELECT run_id, seq, state FROM actions WHERE state IN ('started', 'compensating')"
        ).fetchall()
        inbox = ("pending_review", "awaiting_approval", "aborted")
        assert all(r.status in ("completed", "running", *inbox) for r in runs.values()), runs
        self.checked = journals
        world.touched.clear()

    def check_run(self, run: RunRecord) -> None:
        obs, world = self.world.observer, self.world
        actions = obs.actions(run.id)
        comps = {c.seq: c for c in obs.compensations(run.id)}
        items = obs.review_items(run_id=run.id)
        reasons: defaultdict[int | None, set[str]] = defaultdict(set)
        for item in items:
            reasons[item.seq].add(item.reason)
        for a in actions:
            key = (run.id, a.seq)
            done, undone = world.effects[key], world.undos[key]
            assert a.state not in ("started", "compensating"), a
            assert done <= 1, f"{key} ({a.tool}) took effect {done} times"
            assert undone <= done, f"{key} ({a.tool}) undone {undone} times, done {done}"
            if a.state == "succeeded":
                assert done == (a.effect != "read_only") and undone == 0, a
                if key in self.happened:  # a person's word: the call never returned a result
                    assert a.result is None, a
                elif a.tool in REVERSIBLE:
                    assert a.external_ids == {"ref": a.result["ref"]}
            elif a.state == "failed":
                assert done == 0, a
            elif a.state == "in_doubt":
                assert undone == 0 and "in_doubt" in reasons[a.seq], a
            elif a.state == "compensated":
                assert done == 1 and undone == 1 and comps[a.seq].state == "succeeded", a
            elif a.state == "compensation_failed":
                assert done == 1, a
                assert reasons[a.seq] & {"compensation_failed", "compensation_in_doubt"}, a
            assert (a.seq in comps) == (a.state in ("compensated", "compensation_failed"))
        if run.status == "aborted" or (run.status == "pending_review" and not self.held[run.id]):
            for a in actions:
                if run.status == "pending_review" and (run.id, a.seq) in self.happened:
                    # a person said it happened after the halt had compensated: like a held
                    # action it waits for their abort (which undoes or lists it) or resume
                    continue
                # every reversible action that took effect: compensated or a review item
                if a.effect == "reversible":
                    assert a.state != "succeeded", (run, a)
                if a.effect == "irreversible" and a.state == "succeeded":
                    assert "irreversible" in reasons[a.seq], (run, a)
        if run.status == "pending_review" and self.held[run.id]:
            assert any(i.reason == "held" for i in items), run
        # a call runs again (a replay's new action) only after it proved to do nothing or was
        # undone; one that was in doubt, only after a person said it did not happen
        by_op: defaultdict[str, list[Action]] = defaultdict(list)
        for a in actions:
            by_op[a.args["op"]].append(a)
        for op, tries in by_op.items():
            for earlier in tries[:-1]:
                assert earlier.state in ("failed", "compensated"), (op, tries)
                words = {
                    i.resolution for i in items if (i.seq, i.reason) == (earlier.seq, "in_doubt")
                }
                if words and earlier.state == "failed":
                    assert "not_happened" in words, (op, tries, words)
        # no call returned without its record
        for run_id, op, result in self.seen:
            if run_id == run.id:
                assert any(
                    a.args == {"op": op} and a.result == result and a.state in TOOK_EFFECT
                    for a in actions
                ), (run_id, op)
        verdict = self.guard.verify(run.id)
        assert verdict.ok, verdict.problems


def test_resume_does_not_redo_a_call_whose_undo_failed(guard: Guard) -> None:
    orders: list[str] = []

    def cancel() -> None:
        raise RuntimeError("the shop is down")

    @guard.tool(effect="reversible", undo=cancel, undo_retry=Retry(attempts=1))
    def create_order(item: str) -> str:
        orders.append(item)
        return f"o-{len(orders)}"

    @guard.tool(effect="irreversible", not_done=[ToolFailure])
    def ship(order: str) -> None:
        raise ToolFailure("the carrier is down")

    def agent() -> None:
        ship(order=create_order(item="book"))

    with pytest.raises(RunHalted), guard.run(agent="shop", run_id="r"):
        agent()
    guard.resume("r", by="ann")
    with pytest.raises(RunHalted), guard.run(run_id="r"):
        agent()  # the replay: create_order succeeded and was not undone, so it comes from the log
    assert orders == ["book"]  # today: ["book", "book"], and both orders exist
    states = [a.state for a in guard.log("r").actions if a.tool == "create_order"]
    assert states == ["compensation_failed"]


def test_a_happened_answer_after_the_abort_is_undone_or_listed(guard: Guard) -> None:
    """A run is aborted while a call's outcome is unknown; then a person finds the call did
    take effect. Its effect must be undone, or a review item must list it: never a reversible
    action left ``succeeded`` in an aborted run with nothing open about it."""
    charges: dict[str, int] = {}

    @guard.tool(effect="reversible", undo=lambda args: charges.pop(args["order"]))
    def charge(order: str) -> None:
        charges[order] = 12  # it took effect...
        raise Unanswered("read timed out")  # ...but the answer was lost

    with pytest.raises(RunHalted), guard.run(run_id="r"):
        charge(order="o1")
    assert guard.abort("r", by="ann").landed  # the in_doubt call is listed, not undone
    [doubt] = guard.store.review_items(run_id="r", status="open")
    assert doubt.reason == "in_doubt"
    # (refusing the word once the run is aborted would keep the item open: also safe)
    with contextlib.suppress(RunStateError, Conflict):
        guard.resolve(doubt.id, "happened", by="ann", note="the bank lists the charge")
    guard.abort("r", by="ann")
    log = guard.log("r")
    [action] = log.actions
    listed = [i for i in log.review_items if i.status == "open" and i.seq == action.seq]
    assert charges == {} or listed, (action.state, charges, log.review_items)
    assert action.state != "succeeded" or listed, action


def test_no_retry_after_the_run_was_taken_over(tmp_path: Path) -> None:
    """A worker stalls in a tool's first attempt past its lease; recovery takes the run over.
    The attempt then fails: the retry must not run the tool for a run this worker lost."""
    url = f"sqlite:///{tmp_path}/guardrail.db"
    with Guard(store=url) as worker, Guard(store=url) as other:
        other.owner, other.stale_after = "other|0|0", -1.0  # every lease looks expired
        calls: list[int] = []

        @worker.tool(effect="read_only", retry=FAST)
        def fetch(x: int) -> int:
            calls.append(x)
            if len(calls) == 1:
                assert other.recover() == ["r"]  # the worker stalls here and is taken over
                raise TimeoutError("slow")
            return x

        with pytest.raises(OwnershipLost), worker.run(agent="a", run_id="r"):
            fetch(x=1)
        assert [a.state for a in worker.log("r").actions] == ["in_doubt"]
        assert calls == [1]  # today: [1, 1], the retry ran after the takeover


def test_random_runs_keep_every_guarantee(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(testing, "os", DyingOS)
    try:
        run_state_machine_as_test(GuardMachine, settings=SETTINGS)
    finally:
        testing.arm(None)
