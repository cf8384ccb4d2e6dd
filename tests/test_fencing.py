"""Fault-closed ownership: a worker that lost its run (paused past its lease, cut off, overtaken
by a person's decision) can no longer start a tool, record an outcome, compensate or complete;
a store fault at any write ends in a state a person sees; a reused key never answers another
call. Each scenario runs on SQLite and, when configured, PostgreSQL."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guardrail import Conflict, Guard, Review, RunHalted, RunStateError, StoreError
from guardrail.errors import OwnershipLost
from guardrail.recovery import make_owner, owner_alive
from guardrail.testing import FaultyStore

FORK = multiprocessing.get_context("fork")


class Ledger:
    """What really happened outside the store: one line per side effect, in a file (so child
    processes can write it too)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def add(self, line: str) -> None:
        with open(self.path, "a") as f:
            f.write(line + "\n")

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines()


class Declined(Exception):
    """The card was declined: nothing was charged (declared ``not_done``)."""


def shop(guard: Guard, ledger: Ledger) -> dict[str, Callable[..., Any]]:
    def refund(args: dict[str, Any]) -> None:
        ledger.add(f"refund {args['item']}")

    @guard.tool(
        effect="reversible",
        undo=refund,
        external_ids={"charge_id": "result.id"},
        not_done=[Declined],
    )
    def charge(item: str) -> dict[str, str]:
        ledger.add(f"charge {item}")
        return {"id": f"ch_{item}"}

    @guard.tool(effect="irreversible", review=Review(kind="correct", owner="support"))
    def send_email(to: str) -> str:
        ledger.add(f"email {to}")
        return "sent"

    return {"charge": charge, "send_email": send_email}


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.txt")


@pytest.fixture
def two(store_url: str) -> Iterator[tuple[Guard, Guard]]:
    """A worker's guard and a recovery worker's guard on one store."""
    worker, other = Guard(store=store_url), Guard(store=store_url)
    other.stale_after = -1.0  # as if the worker's lease had expired (it was paused)
    yield worker, other
    worker.close()
    other.close()


def states(guard: Guard, run_id: str) -> list[tuple[str, str]]:
    return [(a.tool, a.state) for a in guard.log(run_id).actions]


def check_finished(guard: Guard, run_id: str) -> None:
    """No finished run holds a `started` action; every reversible action that took effect is
    compensated or listed for a person; the chain verifies."""
    log = guard.log(run_id)
    listed = {i.seq for i in log.review_items}
    if log.run.status in ("pending_review", "aborted", "completed"):
        assert all(a.state != "started" for a in log.actions), states(guard, run_id)
    if log.run.status in ("pending_review", "aborted"):
        for a in log.actions:
            if a.effect == "reversible" and a.state in ("succeeded", "compensation_failed"):
                assert a.seq in listed, (a.seq, a.state)
    assert guard.verify(run_id).ok, guard.verify(run_id).problems


# -- a worker paused past its lease -----------------------------------------------------------


def test_paused_between_calls_cannot_call_again(two: tuple[Guard, Guard], ledger: Ledger) -> None:
    worker, other = two
    tools = shop(worker, ledger)
    shop(other, ledger)
    with pytest.raises(OwnershipLost) as lost, worker.run(agent="shop") as run:
        tools["charge"](item="a")
        assert other.recover() == [run.id]  # meanwhile: its lease expired, recovery took over
        tools["charge"](item="b")  # the worker wakes up and goes on
    assert ledger.lines() == ["charge a", "refund a"], "a tool ran after the takeover"
    assert lost.value.run_id == run.id and lost.value.status == "pending_review"
    assert isinstance(lost.value, RunHalted)
    assert states(other, run.id) == [("charge", "compensated")]
    assert other.require_run(run.id).status == "pending_review"
    check_finished(other, run.id)


def test_paused_inside_a_call_cannot_record_its_outcome(
    two: tuple[Guard, Guard], ledger: Ledger
) -> None:
    worker, other = two
    shop(other, ledger)

    @worker.tool(effect="reversible", undo=lambda args: ledger.add("refund slow"))
    def slow_charge(item: str) -> dict[str, str]:
        ledger.add(f"charge {item}")
        assert other.recover() == [run.id]  # the worker is paused inside the call
        return {"id": "ch_slow"}

    with pytest.raises(OwnershipLost), worker.run(agent="shop") as run:
        slow_charge(item="x")
    assert ledger.lines() == ["charge x"]
    log = other.log(run.id)
    assert log.run.status == "pending_review"
    # the in-doubt mark stands: the late success did not overwrite it
    assert [(a.tool, a.state) for a in log.actions] == [("slow_charge", "in_doubt")]
    assert [(i.seq, i.reason, i.status) for i in log.review_items] == [(1, "in_doubt", "open")]
    check_finished(other, run.id)


def test_woken_worker_does_not_undo_a_run_another_worker_completed(
    two: tuple[Guard, Guard], ledger: Ledger, store_url: str
) -> None:
    """Paused inside a call; recovery halts its run (the call is in doubt), a person says it did
    not happen and resumes it, a second worker completes it. When the first wakes up and its
    call fails, its halt must not compensate, nor its failure replace the person's word."""
    worker, other = two
    tools = shop(other, ledger)

    def fail_after_takeover(item: str) -> None:
        assert other.recover() == [run.id]
        with pytest.raises(RunStateError, match="outcome is unknown"):
            other.resume(run.id, by="alice")  # nobody said whether ship happened
        [doubt] = other.store.review_items(run_id=run.id, status="open")
        assert (doubt.seq, doubt.reason) == (2, "in_doubt")
        other.resolve(doubt.id, "not_happened", by="alice", note="the carrier has no parcel")
        other.resume(run.id, by="alice")
        with other.run(agent="shop", run_id=run.id):
            tools["charge"](item="b")
        assert other.require_run(run.id).status == "completed"
        raise TimeoutError("the carrier did not answer")

    worker.policy("ship", effect="reversible", undo=lambda: ledger.add("unship"))
    wtools = shop(worker, ledger)
    with pytest.raises(OwnershipLost), worker.run(agent="shop") as run:
        wtools["charge"](item="a")
        run.call("ship", {"item": "a"}, fn=fail_after_takeover)
    assert ledger.lines() == ["charge a", "refund a", "charge b"]
    log = other.log(run.id)
    assert log.run.status == "completed"
    assert [(a.tool, a.state) for a in log.actions] == [
        ("charge", "compensated"),
        ("ship", "failed"),
        ("charge", "succeeded"),
    ]
    assert log.action(2).error == "alice says it did not happen"  # not the late TimeoutError
    assert [(i.seq, i.reason, i.resolution) for i in log.review_items] == [
        (2, "in_doubt", "not_happened")
    ]
    check_finished(other, run.id)


def test_a_person_resuming_fences_off_the_old_worker(guard: Guard, ledger: Ledger) -> None:
    """A held run is resumed while its old worker still has the run open (another process
    that never saw the halt, say): the resume raised the epoch, so nothing the old one does
    lands; the agent that continues claims the run afresh."""
    shop(guard, ledger)
    old = guard.run(agent="shop", on_failure="hold").start()
    old.call("charge", {"item": "a"})

    def declined(item: str) -> None:
        raise Declined(item)

    with pytest.raises(RunHalted):
        old.call("charge", {"item": "b"}, fn=declined)
    guard.resume(run_id := old.id, by="alice")
    with guard.run(agent="shop", run_id=run_id) as new:
        new.call("charge", {"item": "c"})
        old.halted = False  # the old worker does not know
        with pytest.raises(OwnershipLost):
            old.call("charge", {"item": "d"})
    assert ledger.lines() == ["charge a", "charge c"]
    assert guard.require_run(run_id).status == "completed"
    check_finished(guard, run_id)


def test_takeover_raises_the_epoch_once(two: tuple[Guard, Guard], ledger: Ledger) -> None:
    worker, other = two
    tools = shop(worker, ledger)
    shop(other, ledger)
    with pytest.raises(OwnershipLost), worker.run(agent="shop") as run:
        tools["charge"](item="a")
        epoch = worker.require_run(run.id).epoch
        assert other.recover() == [run.id]
        assert other.recover() == []  # exactly one takeover
        assert other.require_run(run.id).epoch == epoch + 1
        tools["charge"](item="b")


# -- a store fault at every write point ------------------------------------------------------

CALL_WRITES = ["action.start", "action.succeed", "action.fail", "action.in_doubt", "run.halt"]
COMPENSATION_WRITES = ["compensation.start", "compensation.done", "run.review"]


def faulty_run(guard: Guard, ledger: Ledger, faulty: FaultyStore, fault: str) -> str:
    """charge a, email b, then ship fails: the run halts and compensates. ``fault`` is armed
    once, before the write it names; returns the run id."""
    tools = shop(guard, ledger)
    guard.policy("ship", effect="reversible", undo=lambda: ledger.add("unship"))
    run_id = ""

    def ship(item: str) -> None:
        ledger.add(f"ship {item}")
        raise TimeoutError("carrier down")

    with guard.run(agent="shop") as run:
        run_id = run.id
        tools["charge"](item="a")
        tools["send_email"](to="b")
        if fault == "action.in_doubt":
            faulty.fail("action.fail")  # the failure cannot be recorded, nor then its doubt
            faulty.fail("action.in_doubt")
        else:
            faulty.fail(fault)
        try:
            run.call("ship", {"item": "c"}, fn=ship)
        except StoreError:
            assert fault == "action.start", "a retryable error after the tool may have run"
        except RunHalted:
            pass
        else:
            raise AssertionError("no halt")
        if fault != "action.start":
            with pytest.raises(RunHalted):  # and nothing more runs in this process
                tools["charge"](item="z")
    return run_id


@pytest.mark.parametrize("fault", CALL_WRITES + COMPENSATION_WRITES)
def test_a_store_fault_at_each_write_of_a_call(store_url: str, ledger: Ledger, fault: str) -> None:
    with Guard(store=store_url) as guard:
        faulty = FaultyStore(guard)
        run_id = faulty_run(guard, ledger, faulty, fault)
        faulty.heal()
        lines = ledger.lines()
        if fault == "action.start":
            # the intent never committed: the tool did not run, the run goes on (here: the
            # agent left it, so it completes)
            assert lines == ["charge a", "email b"]
            assert guard.require_run(run_id).status == "completed"
            check_finished(guard, run_id)
            return
        assert lines[:3] == ["charge a", "email b", "ship c"]
        record = guard.require_run(run_id)
        if record.status != "pending_review":
            # the halt could not finish: nothing renews the run's lease any more, and once it
            # expires (here: at once) recovery finishes the job
            assert record.status in ("running", "compensating")
            guard.stale_after = -1.0
            assert guard.recover() == [run_id]
        log = guard.log(run_id)
        assert log.run.status == "pending_review"
        ship = log.actions[2]
        assert ship.state in ("failed", "in_doubt"), ship.state
        reasons = {(i.seq, i.reason) for i in log.review_items}
        if fault == "compensation.done":
            # the refund ran but its end was not recorded: not run again, listed for a person
            assert log.action(1).state == "compensation_failed"
            assert (1, "compensation_in_doubt") in reasons
        else:
            assert log.action(1).state == "compensated"
        assert ledger.lines().count("refund a") == 1, ledger.lines()
        assert (2, "irreversible") in reasons
        if ship.state == "in_doubt":
            assert (3, "in_doubt") in reasons
        check_finished(guard, run_id)


@pytest.mark.parametrize(
    "fault", ["run.abort", "compensation.start", "compensation.done", "run.aborted"]
)
def test_a_store_fault_during_abort_is_finished_by_recovery(
    store_url: str, ledger: Ledger, fault: str
) -> None:
    with Guard(store=store_url) as guard:
        tools = shop(guard, ledger)
        with guard.run(agent="shop", on_failure="hold") as run:
            tools["charge"](item="a")
            with pytest.raises(RunHalted):
                run.call("charge", {"item": "b"}, fn=lambda item: 1 / 0)
        faulty = FaultyStore(guard)
        faulty.fail(fault)
        with pytest.raises(StoreError) as err:
            guard.abort(run.id, by="alice")
        assert run.id in str(err.value)
        faulty.heal()
        status = guard.require_run(run.id).status
        if fault == "run.abort":
            assert status == "pending_review"  # nothing happened: abort again
            guard.abort(run.id, by="alice")
        else:
            assert status == "aborting"
            assert guard.runs(status="aborting")  # visible, and recovery finishes it
            guard.stale_after = -1.0
            assert guard.recover() == [run.id]
        assert guard.require_run(run.id).status == "aborted"
        assert ledger.lines() == ["charge a", "refund a"]
        check_finished(guard, run.id)


def test_a_run_stuck_compensating_is_recovered_while_its_owner_lives(
    store_url: str, ledger: Ledger
) -> None:
    """The owner process lives on (its heartbeat thread too), but gave up on the run after a
    store fault: the run's lease is not renewed, so it expires and recovery takes over."""
    with Guard(store=store_url, heartbeat_interval=0.05) as guard:
        faulty = FaultyStore(guard)
        run_id = faulty_run(guard, ledger, faulty, "compensation.done")
        assert guard.require_run(run_id).status == "compensating"
        assert run_id not in guard._leases.held
        deadline = time.monotonic() + 30
        while not guard.recover():  # the default rule: once the lease expires
            assert time.monotonic() < deadline, "the stuck run never became recoverable"
            time.sleep(0.02)
        assert guard.require_run(run_id).status == "pending_review"
        check_finished(guard, run_id)


def test_a_live_run_keeps_its_lease(store_url: str, ledger: Ledger) -> None:
    """The heartbeat renews the lease of a run that is executing, however long it idles."""
    with Guard(store=store_url, heartbeat_interval=0.05) as guard:
        tools = shop(guard, ledger)
        with guard.run(agent="shop") as run:
            tools["charge"](item="a")
            first = guard.require_run(run.id).heartbeat_at
            deadline = time.monotonic() + 30
            while guard.require_run(run.id).heartbeat_at == first:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            record = guard.require_run(run.id)
            assert owner_alive(record.owner, record.heartbeat_at, guard.stale_after)
            assert guard.recover() == []
            tools["charge"](item="b")
        assert guard.require_run(run.id).status == "completed"


# -- reused keys -------------------------------------------------------------------------------


def test_a_reused_call_id_with_another_tool_is_refused(guard: Guard, ledger: Ledger) -> None:
    shop(guard, ledger)
    wire: list[object] = []
    guard.policy("wire_money", effect="irreversible")
    with guard.run(agent="bank") as run:
        run.call("charge", {"item": "a"}, call_id="call_1")
        with pytest.raises(Conflict) as err:
            run.call("wire_money", {"amount": 5000}, fn=wire.append, call_id="call_1")
        assert "call_1" in str(err.value) and "charge" in str(err.value)
        assert err.value.run_id == run.id
    assert wire == [] and ledger.lines() == ["charge a"]


def test_a_reused_call_id_with_other_arguments_is_refused(guard: Guard, ledger: Ledger) -> None:
    shop(guard, ledger)
    with guard.run(agent="shop") as run:
        assert run.call("charge", {"item": "a"}, call_id="c1") == {"id": "ch_a"}
        assert run.call("charge", {"item": "a"}, call_id="c1") == {"id": "ch_a"}  # a replay
        with pytest.raises(Conflict, match="other arguments"):
            run.call("charge", {"item": "b"}, call_id="c1")
    assert ledger.lines() == ["charge a"]


def test_a_declared_key_reused_with_other_arguments_is_refused(
    guard: Guard, ledger: Ledger
) -> None:
    paid: list[int] = []

    @guard.tool(effect="irreversible", idempotency_key="args.invoice")
    def pay(invoice: str, amount: int) -> int:
        paid.append(amount)
        return amount

    with guard.run(agent="bank"):
        assert pay(invoice="inv-1", amount=10) == 10
        assert pay(invoice="inv-1", amount=10) == 10
        with pytest.raises(Conflict):
            pay(invoice="inv-1", amount=99)
    assert paid == [10]


# -- liveness ----------------------------------------------------------------------------------


def test_owner_names_boot_and_pid_namespace() -> None:
    _host, pid, _start, boot, pidns = make_owner().split("|")
    assert int(pid) == os.getpid()
    if os.path.exists("/proc/self/ns/pid"):
        assert boot and pidns.startswith("pid:")


def test_a_dead_pid_counts_only_in_the_same_namespace() -> None:
    host, _pid, start, boot, pidns = make_owner().split("|")
    fresh = time.time()
    gone = 2**22 + 7  # no such pid
    assert not owner_alive("|".join((host, str(gone), start, boot, pidns)), fresh, 30)
    # the same pid number in another PID namespace (a container) says nothing about its owner
    assert owner_alive("|".join((host, str(gone), start, boot, "pid:[1]")), fresh, 30)
    assert owner_alive("|".join((host, str(gone), start, "other-boot", pidns)), fresh, 30)
    assert owner_alive(f"{host}|{gone}|{start}", fresh, 30)  # an older owner name: lease only
    # whatever the pid says, an expired lease is expired
    assert not owner_alive(make_owner(), fresh - 60, 30)


# -- real processes ----------------------------------------------------------------------------

AGENT = """
import json, sys, time
from pathlib import Path
from guardrail import Guard, StoreError
url, ledger, ready = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
guard = Guard(store=url, heartbeat_interval=float(sys.argv[4]))
def refund(args):
    with open(ledger, "a") as f:
        f.write(f"refund {args['n']}\\n")
@guard.tool(effect="reversible", undo=refund)
def charge(n: int) -> int:
    with open(ledger, "a") as f:
        f.write(f"charge {n}\\n")
    return n
try:
    with guard.run(agent="loop") as run:
        ready.write_text(run.id)
        for n in range(1_000_000):
            try:
                charge(n=n)
            except StoreError:  # its start could not be recorded, so it did not run: go on
                pass
            if Path(str(ready) + ".stop").exists():
                break
            time.sleep(0.01)
    print(json.dumps({"end": "completed", "run": run.id}))
except BaseException as exc:
    print(json.dumps({"end": type(exc).__name__, "message": str(exc)}))
"""


def start_agent(
    tmp_path: Path, url: str, ledger: Ledger, interval: float, prefix: list[str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [
            *(prefix or []),
            sys.executable,
            str(script),
            url,
            str(ledger.path),
            str(ready),
            str(interval),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (ready.exists() and ready.read_text()):
        assert proc.poll() is None, "the agent died before it started"
        assert time.monotonic() < deadline, "the agent did not start"
        time.sleep(0.01)
    while len(ledger.lines()) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return proc, ready.read_text()


def pause(proc: subprocess.Popen[str], url: str) -> None:
    """SIGSTOP the worker. On SQLite, not inside a write: a process paused holding SQLite's
    write lock stops every writer until it resumes (there is no server to end its session)."""
    for _ in range(100):
        os.kill(proc.pid, signal.SIGSTOP)
        if not url.startswith("sqlite"):
            return
        probe = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=0)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.01)
        finally:
            probe.close()
    raise AssertionError("could not pause the worker outside a write")


def test_sigstopped_worker_is_fenced_after_recovery(
    tmp_path: Path, store_url: str, ledger: Ledger
) -> None:
    """SIGSTOP a worker past its lease; recovery takes its run over and undoes its charges;
    SIGCONT: the worker must stop at its next call, without charging again."""
    proc, run_id = start_agent(tmp_path, store_url, ledger, interval=0.05)
    pause(proc, store_url)
    try:
        stopped_at = len(ledger.lines())
        with Guard(store=store_url) as rescuer:
            rescuer.stale_after = 0.3
            shop(rescuer, ledger)
            rescuer.policy(
                "charge", effect="reversible", undo=lambda args: ledger.add(f"refund {args['n']}")
            )
            deadline = time.monotonic() + 60
            while True:  # once the paused worker's lease expired
                try:
                    if rescuer.recover() == [run_id]:
                        break
                except StoreError:
                    pass  # PostgreSQL: paused inside a write, until the server ends its session
                assert time.monotonic() < deadline, "the lease never expired"
                time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()  # never leave a worker behind, stopped or not
    end = json.loads(out.strip().splitlines()[-1])
    assert end["end"] == "OwnershipLost", end
    lines = ledger.lines()
    charges = [line for line in lines if line.startswith("charge")]
    # at most the call that was between its intent and the tool when the pause began ran late
    assert len(charges) <= stopped_at + 1, lines
    with Guard(store=store_url) as guard:
        log = guard.log(run_id)
        assert log.run.status == "pending_review"
        recorded = [a for a in log.actions]
        assert all(a.state in ("compensated", "in_doubt") for a in recorded), states(guard, run_id)
        assert sum(a.state == "in_doubt" for a in recorded) <= 1
        refunds = [line for line in lines if line.startswith("refund")]
        assert len(refunds) == len(set(refunds)) == sum(a.state == "compensated" for a in recorded)
        check_finished(guard, run_id)


def can_unshare() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True
    )
    return probe.returncode == 0


@pytest.mark.skipif(not can_unshare(), reason="needs root and unshare(1) for a PID namespace")
def test_a_live_worker_in_another_pid_namespace_is_not_taken_over(
    tmp_path: Path, store_url: str, ledger: Ledger
) -> None:
    """Same host name, its own PID namespace (a container with host networking): its pid is
    meaningless here, so only its lease counts, and it is renewed."""
    proc, run_id = start_agent(
        tmp_path,
        store_url,
        ledger,
        interval=0.05,
        prefix=["unshare", "--pid", "--fork", "--mount-proc"],
    )
    try:
        with Guard(store=store_url) as other:
            record = other.require_run(run_id)
            assert (
                record.owner is not None
                and record.owner.split("|")[4] != make_owner().split("|")[4]
            )
            for _ in range(5):
                assert other.recover() == []
            assert other.require_run(run_id).status == "running"
    finally:
        (tmp_path / "ready.stop").write_text("")
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert json.loads(out.strip().splitlines()[-1])["end"] == "completed"
    with Guard(store=store_url) as guard:
        assert guard.require_run(run_id).status == "completed"
        assert not any(line.startswith("refund") for line in ledger.lines())


@pytest.mark.postgres
def test_a_run_locked_by_a_paused_transaction_does_not_stall_recovery(
    ledger: Ledger, tmp_path: Path
) -> None:
    """A worker paused inside a write holds its run's row lock. Recovery does not wait on it
    for ever: the pass skips that run (and the server ends a guard session idle in a
    transaction), and the next pass takes it over."""
    from conftest import _postgres_schema_url

    for url in _postgres_schema_url():
        import psycopg

        with Guard(store=url) as worker, Guard(store=url) as other:
            other.stale_after = -1.0
            shop(worker, ledger)
            shop(other, ledger)
            run = worker.run(agent="shop").start()
            run.call("charge", {"item": "a"})
            worker.drop_lease(run.id)
            plain = url.replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(plain) as paused:  # a transaction left open on the run's row
                paused.execute("SELECT 1 FROM runs WHERE id = %s FOR UPDATE", (run.id,))
                started = time.monotonic()
                assert other.recover() == []
                assert time.monotonic() - started < 60
                paused.rollback()
            assert other.recover() == [run.id]
            assert other.require_run(run.id).status == "pending_review"
            with pytest.raises(OwnershipLost):
                run.call("charge", {"item": "b"})
        assert ledger.lines() == ["charge a", "refund a"]


def test_a_recovery_overtaken_by_another_recovery_does_not_raise(
    store_url: str, ledger: Ledger
) -> None:
    """A recovery pass too slow for its own lease is taken over by another: it reports nothing
    recovered (the other finishes the run), and nothing is undone twice."""
    with (
        Guard(store=store_url) as worker,
        Guard(store=store_url) as first,
        Guard(store=store_url) as second,
    ):
        first.stale_after = second.stale_after = -1.0
        shop(worker, ledger)
        shop(second, ledger)
        overtaken: list[list[str]] = []

        def slow_refund(args: dict[str, Any]) -> None:
            ledger.add(f"refund {args['item']}")
            overtaken.append(second.recover())  # meanwhile its lease ran out

        first.policy("charge", effect="reversible", undo=slow_refund)
        run = worker.run(agent="shop").start()
        run.call("charge", {"item": "a"})
        run.call("charge", {"item": "b"})
        worker.drop_lease(run.id)
        assert first.recover() == []
        assert overtaken == [[run.id]]
        assert first.require_run(run.id).status == "pending_review"
    assert sorted(ledger.lines()) == ["charge a", "charge b", "refund a", "refund b"]


def test_asking_the_approval_gate_after_a_takeover_is_not_an_approval(
    two: tuple[Guard, Guard], ledger: Ledger
) -> None:
    """A framework that asks the gate itself (the OpenAI Agents SDK) must hear that the worker
    lost its run, not that the call waits for a person."""
    from guardrail import Approval

    worker, other = two
    shop(worker, ledger)
    shop(other, ledger)
    worker.policy("wire", effect="irreversible", approval=Approval(when="args.amount > 10"))
    run = worker.run(agent="bank").start()
    run.call("charge", {"item": "a"})
    assert other.recover() == [run.id]
    with pytest.raises(OwnershipLost):
        run.needs_approval("wire", {"amount": 500})
    assert not [i for i in other.log(run.id).review_items if i.reason == "approval"]
