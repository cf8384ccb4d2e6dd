"""Kill -9 at any point, then recover in a fresh process (see docs/ownership.md).

A child process runs a small shop agent (create_order and charge are reversible, send_email and
ship irreversible, ship fails on demand) and is killed with SIGKILL at one of guardrail's crash
points (``guardrail.testing``), or from inside a tool or an undo. Another, fresh process then
runs ``guard.recover()``. The tools write their side effects to a "world" file (one fsynced line
per effect) that survives the kill, so the test can hold the stored log against what really
happened: no lost record, nothing done or undone twice, every reversible action that took effect
compensated exactly once or waiting for a person, in-doubt actions flagged.

Importing guardrail takes about a second, so most children are forked from one "zygote"
interpreter (started with ``sys.executable``) that has imported guardrail but never opened a
guard: each fork is a new process with its own pid, guard and connections, exactly as a fresh
process would be. ``test_standalone_processes`` does the same with plain ``subprocess`` children
armed through the ``GUARDRAIL_CRASH_AT`` environment variable.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guardrail import Guard

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = "crash-run"
KILLED = -signal.SIGKILL
REPLY_TIMEOUT = 120.0

CHILD = r'''
"""The crash-test child: runs the shop agent, an abort, a resume or a recovery."""

import json
import os
import signal
import sys
import traceback

from guardrail import Guard, Review, RunHalted, testing


class CarrierDown(RuntimeError):
    """The carrier refused the shipment before anything was shipped (declared not_done)."""


def read_world(path):
    try:
        with open(path) as f:
            return [line.rstrip("\n") for line in f]
    except FileNotFoundError:
        return []


def build(store, world, opts):
    """The guard and the shop's tools; every effect is one fsynced line in the world file."""
    guard = Guard(store=store)

    def record(line):
        with open(world, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def maybe_die(name):
        if opts.get("kill_in") == name:
            os.kill(os.getpid(), signal.SIGKILL)

    def cancel_order(result):
        line = f"cancel {result['order_id']}"
        if opts.get("idempotent_undo") and line in read_world(world):
            return  # an idempotent undo: cancelling a cancelled order changes nothing
        record(line)
        maybe_die("cancel_order")

    def refund(external_ids):
        line = f"refund {external_ids['charge_id']}"
        if opts.get("idempotent_undo") and line in read_world(world):
            return
        record(line)
        maybe_die("refund")

    def find_order(args):
        oid = f"o-{args['item']}"
        return {"order_id": oid} if f"create {oid}" in read_world(world) else False

    idempotent = bool(opts.get("idempotent_undo"))

    @guard.tool(
        effect="reversible",
        undo=cancel_order,
        undo_idempotent=idempotent,
        probe=find_order if opts.get("probe") else None,
        external_ids={"order_id": "result.order_id"},
    )
    def create_order(item):
        oid = f"o-{item}"
        record(f"create {oid}")
        maybe_die("create_order")
        return {"order_id": oid}

    @guard.tool(
        effect="reversible",
        undo=refund,
        undo_idempotent=idempotent,
        external_ids={"charge_id": "result.charge_id"},
    )
    def charge(order_id, amount):
        cid = f"c-{order_id}"
        record(f"charge {cid}")
        maybe_die("charge")
        return {"charge_id": cid, "amount": amount}

    @guard.tool(effect="irreversible", review=Review(kind="correct", owner="support"))
    def send_email(to, order_id):
        record(f"email {order_id}")
        maybe_die("send_email")
        return {"message_id": f"m-{order_id}"}

    @guard.tool(
        effect="irreversible",
        review=Review(kind="cancel", owner="logistics"),
        on_failure="hold" if opts.get("hold") else "compensate",
        not_done=[CarrierDown],
    )
    def ship(order_id):
        if opts.get("ship_fails", True):
            raise CarrierDown("carrier down")
        record(f"ship {order_id}")
        maybe_die("ship")
        return {"tracking": f"t-{order_id}"}

    return guard, (create_order, charge, send_email, ship)


def agent(guard, tools, run_id):
    create_order, charge, send_email, ship = tools
    try:
        with guard.run(agent="shop", run_id=run_id):
            order = create_order(item="book")["order_id"]
            charge(order_id=order, amount=30)
            send_email(to="ann@example.com", order_id=order)
            ship(order_id=order)
    except RunHalted as halted:
        return halted.status
    return guard.require_run(run_id).status


def act(job):
    guard, tools = build(job["store"], job["world"], job.get("opts", {}))
    mode = job["mode"]
    if mode == "run":
        return agent(guard, tools, job["run_id"])
    if mode == "abort":
        decision = guard.abort(job["run_id"], by="ops", reason="crash test")
        return [decision.status, decision.landed]
    if mode == "resume":
        decision = guard.resume(job["run_id"], by="ops", note="try again")
        return [decision.status, decision.landed]
    if mode == "recover":
        return guard.recover()
    raise ValueError(mode)


def finish(job, value):
    with open(job["out"], "w") as f:
        json.dump(value, f)


def serve():
    """Read one job per line, fork a child per job, answer with the child's exit code."""
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                if job.get("crash_at"):
                    os.environ["GUARDRAIL_CRASH_AT"] = job["crash_at"]
                    testing.arm(job["crash_at"])
                finish(job, {"value": act(job)})
            except BaseException:
                finish(job, {"error": traceback.format_exc()})
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:  # a standalone process: armed by GUARDRAIL_CRASH_AT, if at all
        job = json.loads(sys.argv[1])
        finish(job, {"value": act(job)})
'''


# -- the children ---------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GUARDRAIL_CRASH_AT"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class Zygote:
    """One interpreter that has imported guardrail; every job runs in a child forked from it."""

    def __init__(self, script: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=child_env(),
        )

    def run(self, job: dict[str, Any]) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], REPLY_TIMEOUT)
        assert ready, f"the child for {job} did not finish in {REPLY_TIMEOUT} s"
        line = self.proc.stdout.readline()
        assert line, f"the zygote died (exit code {self.proc.poll()})"
        return int(json.loads(line)["returncode"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def child_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    script = tmp_path_factory.mktemp("crash") / "crash_child.py"
    script.write_text(CHILD)
    return script


@pytest.fixture(scope="module")
def zygote(child_script: Path) -> Iterator[Zygote]:
    z = Zygote(child_script)
    yield z
    z.close()


class Shop:
    """One test's store, world file and children."""

    def __init__(self, zygote: Zygote, script: Path, store: str, tmp: Path, **opts: Any) -> None:
        self.zygote = zygote
        self.script = script
        self.store = store
        self.tmp = tmp
        self.world_path = tmp / "world.log"
        self.opts = opts
        self.jobs = 0

    def job(self, mode: str, crash_at: str | None, opts: dict[str, Any]) -> dict[str, Any]:
        self.jobs += 1
        return {
            "mode": mode,
            "store": self.store,
            "world": str(self.world_path),
            "run_id": RUN_ID,
            "opts": {**self.opts, **opts},
            "crash_at": crash_at,
            "out": str(self.tmp / f"out-{self.jobs}.json"),
        }

    def child(self, mode: str, crash_at: str | None = None, **opts: Any) -> tuple[int, Any]:
        """Run ``mode`` in a forked child; returns its exit code and what it returned."""
        job = self.job(mode, crash_at, opts)
        code = self.zygote.run(job)
        return code, self._value(job, code)

    def process(self, mode: str, crash_at: str | None = None, **opts: Any) -> tuple[int, Any]:
        """Run ``mode`` in a new interpreter, armed through GUARDRAIL_CRASH_AT."""
        job = self.job(mode, None, opts)
        env = child_env()
        if crash_at:
            env["GUARDRAIL_CRASH_AT"] = crash_at
        done = subprocess.run(
            [sys.executable, str(self.script), json.dumps(job)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=REPLY_TIMEOUT,
        )
        assert done.returncode in (0, KILLED), done.stderr
        return done.returncode, self._value(job, done.returncode)

    @staticmethod
    def _value(job: dict[str, Any], code: int) -> Any:
        out = Path(job["out"])
        if code == KILLED:
            assert not out.exists(), "a killed child cannot have finished"
            return None
        reply = json.loads(out.read_text())
        assert code == 0 and "error" not in reply, reply.get("error")
        return reply["value"]

    def killed(self, mode: str, crash_at: str | None = None, **opts: Any) -> None:
        code, _ = self.child(mode, crash_at, **opts)
        assert code == KILLED, f"{mode} with crash_at={crash_at} {opts} was not killed"

    def recover(self) -> list[str]:
        code, value = self.child("recover")
        assert code == 0
        return list(value)

    def world(self) -> list[str]:
        if not self.world_path.exists():
            return []
        return self.world_path.read_text().splitlines()


# -- what must hold after recovery -----------------------------------------------------------

DO = {"create_order": "create", "charge": "charge", "send_email": "email", "ship": "ship"}
UNDO = {"create_order": "cancel", "charge": "refund"}
KINDS = {"send_email": "correct", "ship": "cancel"}  # the rest use the default review
SETTLED = ("pending_review", "aborted")


def effect_id(tool: str, args: dict[str, Any]) -> str:
    if tool == "create_order":
        return f"o-{args['item']}"
    if tool == "charge":
        return f"c-{args['order_id']}"
    return str(args["order_id"])


def snapshot(guard: Guard) -> dict[str, Any]:
    log = guard.log(RUN_ID)
    return {
        "log": log.model_dump(exclude={"run": {"heartbeat_at"}}),
        "entries": [e.hash for e in guard.store.entries(RUN_ID)],
    }


def check_invariants(guard: Guard, world: list[str]) -> None:
    """The crash guarantee for one recovered run: nothing lost, nothing done or undone twice."""
    log = guard.log(RUN_ID)
    verification = guard.verify(RUN_ID)
    assert verification.ok, verification.problems
    assert log.run.status in SETTLED, "recovery left the run unfinished"

    lines = Counter(world)
    assert all(n == 1 for n in lines.values()), f"something ran twice: {world}"
    items = list(log.review_items)
    assert len({(i.seq, i.reason) for i in items}) == len(items), "duplicate review items"
    open_items = {(i.seq, i.reason): i for i in items if i.status == "open"}
    comps = {c.seq: c for c in log.compensations}

    recorded: Counter[str] = Counter()
    for a in log.actions:
        effect = f"{DO[a.tool]} {effect_id(a.tool, a.args)}"
        assert a.state not in ("started", "compensating"), f"action {a.seq} left {a.state}"
        # a failed call (ship) changed nothing; a replay after resume is a new action
        took_effect = effect in lines and a.state != "failed"
        if took_effect:
            recorded[effect] += 1
        kind = KINDS.get(a.tool, "handoff")
        if a.state == "in_doubt":
            assert (a.seq, "in_doubt") in open_items, f"in-doubt action {a.seq} is not flagged"
            assert open_items[a.seq, "in_doubt"].kind == kind
        if a.effect == "irreversible" and a.state == "succeeded":
            assert took_effect
            assert open_items[a.seq, "irreversible"].kind == kind
        if a.effect != "reversible":
            continue
        undo_line = f"{UNDO[a.tool]} {effect_id(a.tool, a.args)}"
        assert a.state != "succeeded", f"reversible action {a.seq} was neither undone nor listed"
        if a.state == "compensated":
            assert took_effect and undo_line in lines, f"action {a.seq} compensated, not undone"
            assert comps[a.seq].state == "succeeded"
        elif a.state == "compensation_failed":
            assert comps[a.seq].state in ("failed", "interrupted")
            assert {(a.seq, "compensation_in_doubt"), (a.seq, "compensation_failed")} & set(
                open_items
            ), f"action {a.seq}: a failed compensation without a review item"
        elif took_effect:
            assert (a.seq, "in_doubt") in open_items
        if undo_line in lines:
            assert a.state in ("compensated", "compensation_failed")
    # no lost record: each effect in the world is recorded by exactly one action with an outcome
    effects = Counter(line for line in lines if line.split()[0] in DO.values())
    assert recorded == effects, f"the world and the log disagree: {world} {recorded}"


def check_recovered(
    shop: Shop,
    *,
    status: str,
    states: dict[int, str],
    items: set[tuple[int, str]],
    world: list[str],
    held: str | None = None,
) -> None:
    """The general invariants, the exact outcome, and that a second recovery changes nothing.

    ``held``: how the decision on a run held on failure closed its ``held`` item (``resumed``
    or ``aborted``, by ops); None when the run was never held."""
    with Guard(store=shop.store) as guard:
        check_invariants(guard, shop.world())
        log = guard.log(RUN_ID)
        assert log.run.status == status
        assert {a.seq: a.state for a in log.actions} == states
        assert {(i.seq, i.reason) for i in log.review_items if i.status == "open"} == items
        closed = [
            (i.seq, i.status, i.resolution, i.resolved_by)
            for i in log.review_items
            if i.reason == "held"
        ]
        assert closed == ([] if held is None else [(4, "resolved", held, "ops")])
        assert shop.world() == world
        before = snapshot(guard)
    assert shop.recover() == []
    with Guard(store=shop.store) as guard:
        assert snapshot(guard) == before
    assert shop.world() == world


@pytest.fixture
def shop_factory(zygote: Zygote, child_script: Path, tmp_path: Path):
    def make(store: str, **opts: Any) -> Shop:
        return Shop(zygote, child_script, store, tmp_path, **opts)

    return make


# -- crashes while the agent runs or while the halt compensates ------------------------------

C, CF, S, F, D = "compensated", "compensation_failed", "succeeded", "failed", "in_doubt"
CREATE, CHARGE, EMAIL = "create o-book", "charge c-o-book", "email o-book"
CANCEL, REFUND = "cancel o-book", "refund c-o-book"
PR = "pending_review"

# crash point (or tool to die in), extra options, final action states, open items, world
RUN_CASES: list[Any] = [
    pytest.param(
        "after_start:1", {}, {1: D}, {(1, "in_doubt")}, [], id="after_start:1-create_order"
    ),
    pytest.param(
        "after_call:1", {}, {1: D}, {(1, "in_doubt")}, [CREATE], id="after_call:1-create_order"
    ),
    pytest.param(
        "after_start:2", {}, {1: C, 2: D}, {(2, "in_doubt")}, [CREATE, CANCEL], id="after_start:2"
    ),
    pytest.param(
        "after_call:2",
        {},
        {1: C, 2: D},
        {(2, "in_doubt")},
        [CREATE, CHARGE, CANCEL],
        id="after_call:2-charge",
    ),
    pytest.param(
        "after_start:3",
        {},
        {1: C, 2: C, 3: D},
        {(3, "in_doubt")},
        [CREATE, CHARGE, REFUND, CANCEL],
        id="after_start:3-send_email",
    ),
    pytest.param(
        "after_call:3",
        {},
        {1: C, 2: C, 3: D},
        {(3, "in_doubt")},
        [CREATE, CHARGE, EMAIL, REFUND, CANCEL],
        id="after_call:3-send_email",
    ),
    pytest.param(
        "after_start:4",
        {},
        {1: C, 2: C, 3: S, 4: D},
        {(3, "irreversible"), (4, "in_doubt")},
        [CREATE, CHARGE, EMAIL, REFUND, CANCEL],
        id="after_start:4-ship",
    ),
    pytest.param(
        None,
        {"kill_in": "create_order"},
        {1: D},
        {(1, "in_doubt")},
        [CREATE],
        id="killed-inside-create_order",
    ),
    pytest.param(
        None,
        {"kill_in": "charge"},
        {1: C, 2: D},
        {(2, "in_doubt")},
        [CREATE, CHARGE, CANCEL],
        id="killed-inside-charge",
    ),
    pytest.param(
        None,
        {"kill_in": "send_email"},
        {1: C, 2: C, 3: D},
        {(3, "in_doubt")},
        [CREATE, CHARGE, EMAIL, REFUND, CANCEL],
        id="killed-inside-send_email",
    ),
    # the halt after ship failed is compensating: refund (seq 2) first, then cancel (seq 1)
    pytest.param(
        "after_compensation_start:1",
        {},
        {1: C, 2: CF, 3: S, 4: F},
        {(2, "compensation_in_doubt"), (3, "irreversible")},
        [CREATE, CHARGE, EMAIL, CANCEL],
        id="after_compensation_start:1-refund",
    ),
    pytest.param(
        "after_compensation_start:2",
        {},
        {1: CF, 2: C, 3: S, 4: F},
        {(1, "compensation_in_doubt"), (3, "irreversible")},
        [CREATE, CHARGE, EMAIL, REFUND],
        id="after_compensation_start:2-cancel",
    ),
    pytest.param(
        "after_undo:1",
        {},
        {1: C, 2: CF, 3: S, 4: F},
        {(2, "compensation_in_doubt"), (3, "irreversible")},
        [CREATE, CHARGE, EMAIL, REFUND, CANCEL],
        id="after_undo:1-refund",
    ),
    pytest.param(
        "after_undo:2",
        {},
        {1: CF, 2: C, 3: S, 4: F},
        {(1, "compensation_in_doubt"), (3, "irreversible")},
        [CREATE, CHARGE, EMAIL, REFUND, CANCEL],
        id="after_undo:2-cancel",
    ),
    pytest.param(
        None,
        {"kill_in": "refund"},
        {1: C, 2: CF, 3: S, 4: F},
        {(2, "compensation_in_doubt"), (3, "irreversible")},
        [CREATE, CHARGE, EMAIL, REFUND, CANCEL],
        id="killed-inside-refund",
    ),
    # undo_idempotent=True: recovery finishes an interrupted undo by running it again
    pytest.param(
        "after_undo:1",
        {"idempotent_undo": True},
        {1: C, 2: C, 3: S, 4: F},
        {(3, "irreversible")},
        [CREATE, CHARGE, EMAIL, REFUND, CANCEL],
        id="idempotent-after_undo:1",
    ),
    pytest.param(
        "after_compensation_start:2",
        {"idempotent_undo": True},
        {1: C, 2: C, 3: S, 4: F},
        {(3, "irreversible")},
        [CREATE, CHARGE, EMAIL, REFUND, CANCEL],
        id="idempotent-after_compensation_start:2",
    ),
    # a probe settles the interrupted call: it took effect (then it is undone), or it did not
    pytest.param(
        "after_call:1", {"probe": True}, {1: C}, set(), [CREATE, CANCEL], id="probe-took-effect"
    ),
    pytest.param("after_start:1", {"probe": True}, {1: F}, set(), [], id="probe-no-effect"),
]


@pytest.mark.parametrize(("crash_at", "opts", "states", "items", "world"), RUN_CASES)
def test_kill_then_recover(
    shop_factory: Any,
    sqlite_url: str,
    crash_at: str | None,
    opts: dict[str, Any],
    states: dict[int, str],
    items: set[tuple[int, str]],
    world: list[str],
) -> None:
    shop = shop_factory(sqlite_url, **opts)
    shop.killed("run", crash_at)
    assert shop.recover() == [RUN_ID]
    check_recovered(shop, status=PR, states=states, items=items, world=world)


def test_no_crash_baseline(shop_factory: Any, sqlite_url: str) -> None:
    """Without a kill the same agent halts by itself; recovery finds nothing to do."""
    shop = shop_factory(sqlite_url)
    assert shop.child("run") == (0, PR)
    assert shop.recover() == []
    check_recovered(
        shop,
        status=PR,
        states={1: C, 2: C, 3: S, 4: F},
        items={(3, "irreversible")},
        world=[CREATE, CHARGE, EMAIL, REFUND, CANCEL],
    )


# -- crashes during recovery itself ----------------------------------------------------------


@pytest.mark.parametrize(
    ("recovery_crash", "states", "items", "world"),
    [
        pytest.param(
            "after_compensation_start:1",
            {1: CF, 2: D},
            {(1, "compensation_in_doubt"), (2, "in_doubt")},
            [CREATE, CHARGE],
            id="after_compensation_start",
        ),
        pytest.param(
            "after_undo:1",
            {1: CF, 2: D},
            {(1, "compensation_in_doubt"), (2, "in_doubt")},
            [CREATE, CHARGE, CANCEL],
            id="after_undo",
        ),
    ],
)
def test_kill_during_recovery(
    shop_factory: Any,
    sqlite_url: str,
    recovery_crash: str,
    states: dict[int, str],
    items: set[tuple[int, str]],
    world: list[str],
) -> None:
    """The agent dies after charging; the first recovery dies while undoing create_order."""
    shop = shop_factory(sqlite_url)
    shop.killed("run", "after_call:2")
    shop.killed("recover", recovery_crash)
    assert shop.recover() == [RUN_ID]
    check_recovered(shop, status=PR, states=states, items=items, world=world)


# -- crashes inside abort --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("crash_at", "states", "items", "world"),
    [
        pytest.param(
            "after_abort_start",
            {1: C, 2: C, 3: S, 4: F},
            {(3, "irreversible")},
            [CREATE, CHARGE, EMAIL, REFUND, CANCEL],
            id="after_abort_start",
        ),
        pytest.param(
            "after_compensation_start:1",
            {1: C, 2: CF, 3: S, 4: F},
            {(2, "compensation_in_doubt"), (3, "irreversible")},
            [CREATE, CHARGE, EMAIL, CANCEL],
            id="after_compensation_start:1",
        ),
        pytest.param(
            "after_undo:1",
            {1: C, 2: CF, 3: S, 4: F},
            {(2, "compensation_in_doubt"), (3, "irreversible")},
            [CREATE, CHARGE, EMAIL, REFUND, CANCEL],
            id="after_undo:1",
        ),
        pytest.param(
            "after_undo:2",
            {1: CF, 2: C, 3: S, 4: F},
            {(1, "compensation_in_doubt"), (3, "irreversible")},
            [CREATE, CHARGE, EMAIL, REFUND, CANCEL],
            id="after_undo:2",
        ),
    ],
)
def test_kill_during_abort(
    shop_factory: Any,
    sqlite_url: str,
    crash_at: str,
    states: dict[int, str],
    items: set[tuple[int, str]],
    world: list[str],
) -> None:
    """ship fails with on_failure=hold (nothing undone); the abort that follows is killed."""
    shop = shop_factory(sqlite_url, hold=True)
    assert shop.child("run") == (0, PR)
    assert shop.world() == [CREATE, CHARGE, EMAIL]
    shop.killed("abort", crash_at)
    assert shop.recover() == [RUN_ID]
    check_recovered(shop, status="aborted", states=states, items=items, world=world, held="aborted")
    # abort twice equals abort once, also after a crash
    assert shop.child("abort") == (0, ["aborted", False])
    assert shop.world() == world


def test_resume_then_kill(shop_factory: Any, sqlite_url: str) -> None:
    """After a resume the agent replays its calls (nothing runs twice), then dies in ship."""
    shop = shop_factory(sqlite_url, hold=True)
    assert shop.child("run") == (0, PR)
    assert shop.child("resume") == (0, ["running", True])
    shop.killed("run", "after_call:1", ship_fails=False)  # replayed calls skip after_call
    assert shop.recover() == [RUN_ID]
    check_recovered(
        shop,
        status=PR,
        states={1: C, 2: C, 3: S, 4: F, 5: D},
        items={(3, "irreversible"), (5, "in_doubt")},
        world=[CREATE, CHARGE, EMAIL, "ship o-book", REFUND, CANCEL],
        held="resumed",
    )


# -- plain processes, armed through the environment; and PostgreSQL -------------------------


def test_standalone_processes(shop_factory: Any, sqlite_url: str) -> None:
    """The same guarantee with children that are new interpreters, not forks."""
    shop = shop_factory(sqlite_url)
    assert shop.process("run", "after_call:2") == (KILLED, None)
    assert shop.process("recover") == (0, [RUN_ID])
    check_recovered(
        shop,
        status=PR,
        states={1: C, 2: D},
        items={(2, "in_doubt")},
        world=[CREATE, CHARGE, CANCEL],
    )


def test_standalone_abort(shop_factory: Any, sqlite_url: str) -> None:
    shop = shop_factory(sqlite_url, hold=True)
    assert shop.child("run") == (0, PR)
    assert shop.process("abort", "after_undo:1") == (KILLED, None)
    assert shop.process("recover") == (0, [RUN_ID])
    check_recovered(
        shop,
        status="aborted",
        states={1: C, 2: CF, 3: S, 4: F},
        items={(2, "compensation_in_doubt"), (3, "irreversible")},
        world=[CREATE, CHARGE, EMAIL, REFUND, CANCEL],
        held="aborted",
    )


@pytest.mark.parametrize(
    "case",
    ["after_call:2", "after_undo:2", "abort-after_undo:1", "recovery-after_undo:1"],
)
def test_store_backends(shop_factory: Any, store_url: str, case: str) -> None:
    """A few of the cases above on every store (PostgreSQL when configured)."""
    if case == "after_call:2":
        shop = shop_factory(store_url)
        shop.killed("run", "after_call:2")
        assert shop.recover() == [RUN_ID]
        check_recovered(
            shop,
            status=PR,
            states={1: C, 2: D},
            items={(2, "in_doubt")},
            world=[CREATE, CHARGE, CANCEL],
        )
    elif case == "after_undo:2":
        shop = shop_factory(store_url)
        shop.killed("run", "after_undo:2")
        assert shop.recover() == [RUN_ID]
        check_recovered(
            shop,
            status=PR,
            states={1: CF, 2: C, 3: S, 4: F},
            items={(1, "compensation_in_doubt"), (3, "irreversible")},
            world=[CREATE, CHARGE, EMAIL, REFUND, CANCEL],
        )
    elif case == "abort-after_undo:1":
        shop = shop_factory(store_url, hold=True)
        assert shop.child("run") == (0, PR)
        shop.killed("abort", "after_undo:1")
        assert shop.recover() == [RUN_ID]
        check_recovered(
            shop,
            status="aborted",
            states={1: C, 2: CF, 3: S, 4: F},
            items={(2, "compensation_in_doubt"), (3, "irreversible")},
            world=[CREATE, CHARGE, EMAIL, REFUND, CANCEL],
            held="aborted",
        )
    else:
        shop = shop_factory(store_url)
        shop.killed("run", "after_call:2")
        shop.killed("recover", "after_undo:1")
        assert shop.recover() == [RUN_ID]
        check_recovered(
            shop,
            status=PR,
            states={1: CF, 2: D},
            items={(1, "compensation_in_doubt"), (2, "in_doubt")},
            world=[CREATE, CHARGE, CANCEL],
        )
