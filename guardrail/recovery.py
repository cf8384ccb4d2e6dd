"""Crash recovery: owners, leases, and finishing the runs nobody is executing any more.

Each run being executed has an owner (``host|pid|start|boot|pidns``) holding a lease: the run's
epoch, renewed by a heartbeat while the owner works on the run. `recover` takes over a run whose
lease expired by compare-and-set on (status, owner, epoch), raising the epoch, so of several
recovery workers exactly one takes it and the old owner, should it wake up, is fenced off. Then it
settles the calls in doubt and halts the run, or finishes the compensation or abort the old owner
was doing. Nothing done is done again.

The takeover rule: a run's lease has expired when its heartbeat is older than ``stale_after``
(clocks of the hosts sharing a store are assumed to agree within a small fraction of it). A run
can be taken over sooner only when its owner provably died: the owner ran on this host, in this
boot and in this PID namespace, and its pid is gone or now belongs to a process started at another
time. No signal is ever sent to find out.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from guardrail import inject
from guardrail import transitions as T
from guardrail.drive import Invoke, Steps, attempts
from guardrail.errors import OwnershipLost, StoreError
from guardrail.keys import unseal
from guardrail.lifecycle import commit, compensate, halt, undo_kwargs
from guardrail.record import finish_values, id_rows
from guardrail.redact import NotJSON, to_jsonable
from guardrail.store import Action, RunRecord
from guardrail.transitions import LIVE, Lease, now

if TYPE_CHECKING:
    from guardrail.guard import Guard

log = logging.getLogger("guardrail")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


BOOT = _read("/proc/sys/kernel/random/boot_id")
PIDNS = _namespace()


def _start_time(pid: int) -> str | None:
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def make_owner() -> str:
    """``host|pid|start|boot|pidns`` names this process so another one can tell whether it is
    alive: the pid means something only in the same boot and the same PID namespace."""
    pid = os.getpid()
    start = _start_time(pid) or uuid.uuid4().hex[:8]
    return "|".join((socket.gethostname(), str(pid), start, BOOT or "", PIDNS or ""))


def owner_alive(owner: str | None, heartbeat_at: float | None, stale_after: float) -> bool:
    """False when the owner's lease expired, or its process provably died (see the module doc)."""
    if owner is None:
        return True  # nobody is executing it: it waits for a person or an agent to restart it
    if heartbeat_at is None or heartbeat_at < now() - stale_after:
        return False
    return not proven_dead(owner)


def proven_dead(owner: str | None) -> bool:
    """The owner ran on this host, in this boot and PID namespace, and its process is gone."""
    parts = (owner or "").split("|")
    if (
        len(parts) == 5
        and parts[0] == socket.gethostname()
        and parts[1].isdigit()
        and BOOT
        and PIDNS
        and (parts[3], parts[4]) == (BOOT, PIDNS)
    ):
        return _start_time(int(parts[1])) != parts[2]
    return False


def recover(guard: Guard, only: Callable[[RunRecord], bool] | None = None) -> Steps[list[str]]:
    """Finish the runs whose owner is gone. Returns the ids of the runs this call recovered.

    ``only`` is asked about each run just before it is taken over: a run it refuses (one this
    process lacks the undos for) is left for a recovery that can finish it."""
    store = guard.store
    recovered: list[str] = []
    for status in LIVE:
        for run in store.runs(status=status):
            if owner_alive(run.owner, run.heartbeat_at, guard.stale_after):
                continue
            if only is not None and not only(run):
                continue
            t = T.claim(run, guard.owner)
            try:
                if not commit(guard, t):
                    continue  # another recovery worker took it
            except StoreError as exc:
                # e.g. its row is locked by a worker paused inside a write: come back later
                log.warning("guardrail recover: cannot claim run %s now: %s", run.id, exc)
                continue
            assert t.lease is not None
            guard.hold_lease(t.lease)
            try:
                yield from _finish(guard, run, t.lease, dead=proven_dead(run.owner))
            except OwnershipLost as exc:
                # this pass was too slow (its own lease ran out) and another recovery took the
                # run over: it finishes the job; nothing this pass did is done twice
                log.warning("guardrail recover: run %s was taken over meanwhile: %s", run.id, exc)
                continue
            finally:
                guard.drop_lease(run.id, t.lease.epoch)
            recovered.append(run.id)
    return recovered


def _finish(guard: Guard, run: RunRecord, lease: Lease, *, dead: bool) -> Steps[None]:
    if run.status == T.RunStatus.RUNNING:
        for action in guard.store.actions(run.id):
            if action.state == T.ActionState.STARTED:
                yield from _settle(guard, lease, action, dead=dead)
        yield from halt(guard, lease, reason=f"recovered: owner {run.owner} is gone")
    elif run.status == T.RunStatus.COMPENSATING:
        yield from compensate(guard, lease, T.RunStatus.COMPENSATING)
        commit(guard, T.to_review(lease))
        guard.notify(guard.require_run(run.id))
    else:
        yield from compensate(guard, lease, T.RunStatus.ABORTING)
        commit(guard, T.aborted(lease))


def _settle(guard: Guard, lease: Lease, action: Action, *, dead: bool) -> Steps[None]:
    """An action that started but has no outcome: ask the probe, else mark it in doubt."""
    yield from settle_by_probe(
        guard, lease, action, believe_not_done=dead, reason="owner died during the call"
    )


def settle_by_probe(
    guard: Guard, lease: Lease, action: Action, *, believe_not_done: bool, reason: str
) -> Steps[str]:
    """Settle an action whose outcome is unknown (left ``started`` by a crash, or ``in_doubt``
    after a call that raised without proving it did nothing): ask the policy's probe. Returns
    the action's new state.

    A probe's "it took effect" is always believed. Its "it did not" is believed only when
    nothing can still be running the call (``believe_not_done``): a worker that was only paused
    may still be about to run it, so then the action stays in doubt for a person."""
    policy = guard.find_policy(action.tool)
    verdict: Any = None
    if policy is not None and policy.probe is not None:
        injected, _ = inject.for_action(guard.live, guard.context, action)
        snapshot = unseal(guard.store.keys, action.snapshot)
        kwargs = undo_kwargs(policy.probe, action, {}, snapshot, injected)
        kwargs.pop("result", None)
        outcome = yield from attempts(policy.undo_retry, Invoke(policy.probe, kwargs))
        verdict = outcome.value if outcome.error is None else None
    was = action.state
    if verdict is False and believe_not_done:
        t = T.settled(
            lease, action.seq, T.ActionState.FAILED, "probe: it did not take effect", was=was
        )
    elif verdict is False:
        t = T.settled(
            lease,
            action.seq,
            T.ActionState.IN_DOUBT,
            "the probe found no effect yet, but the worker that started the call may still be "
            "running it (its lease expired; it did not provably die)",
            was=was,
        )
    elif verdict is not None and policy is not None:
        result = None if verdict is True else verdict
        try:
            result = to_jsonable(result)
        except NotJSON:
            result = None
        args = dict(action.args)
        values, ids = finish_values(policy, action.run_id, args, result, guard.max_result_bytes)
        values["error"] = f"the probe found it took effect ({(action.error or reason)[:300]})"
        t = T.succeed(lease, action.seq, values, id_rows(ids), was=was)
        t.kind = "action.settle"
    elif was == T.ActionState.IN_DOUBT:
        return was  # already in doubt, with its error: nothing to write
    else:
        t = T.settled(lease, action.seq, T.ActionState.IN_DOUBT, reason, was=was)
    commit(guard, t)
    return str(t.writes[0].values["state"])
