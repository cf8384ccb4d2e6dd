"""The run and action state machines, as pure functions: each transition returns its writes
with their preconditions, and does no I/O.

A `Transition` is what one `Store.transact` commits: row writes (each may ``expect`` the current
values it changes from) and, for writes made on behalf of a worker, a `Fence`: the run must
still be at the worker's epoch and in one of the listed statuses, or nothing is written.

The epoch is the fencing token of a run's ownership. It is 1 when the run starts and grows by
one with every change of hands: a worker attaching to the run, recovery taking it over, a person
resuming or aborting it. A worker holds a `Lease` (owner name and epoch) and every write it makes
is fenced by it, so a worker that was paused past its lease and taken over cannot start a tool,
record an outcome, compensate or complete: its write does not land and it is told to stop.

Run::

    running -> completed
    running -> awaiting_approval -> running (resume) | aborting -> aborted
    running -> compensating -> pending_review -> running (resume) | aborting -> aborted
    running -> pending_review (held failure)

Action::

    started -> succeeded | failed | in_doubt
    succeeded -> compensating -> compensated | compensation_failed
    awaiting_approval -> approved -> started ... | rejected | expired
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from guardrail.clock import NOW
from guardrail.store import Fence, RunRecord, Write


class RunStatus(StrEnum):
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    COMPENSATING = "compensating"
    PENDING_REVIEW = "pending_review"
    ABORTING = "aborting"
    ABORTED = "aborted"
    COMPLETED = "completed"


class ActionState(StrEnum):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    IN_DOUBT = "in_doubt"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    REFUSED = "refused"  # refused before it ran (its snapshot could not be taken): never ran


R, A = RunStatus, ActionState
# Statuses in which a run has an owner executing it (its lease can expire).
LIVE = (R.RUNNING, R.COMPENSATING, R.ABORTING)
# A call that started before a sibling's approval gate paused the run may still end after it.
CALL_ENDS = (R.RUNNING, R.AWAITING_APPROVAL)
HALTABLE = (R.RUNNING, R.AWAITING_APPROVAL)
DECIDABLE = (R.PENDING_REVIEW, R.AWAITING_APPROVAL)
# Actions whose effect took place and was not undone: their key answers a replay.
TOOK_EFFECT = (A.SUCCEEDED, A.COMPENSATION_FAILED)


def new_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True, slots=True)
class Lease:
    """What a worker holds while it executes a run: its name and the run's epoch it claimed."""

    run_id: str
    owner: str
    epoch: int

    def fence(self, *statuses: str) -> Fence:
        return Fence(self.epoch, tuple(statuses))


@dataclass(slots=True)
class Transition:
    """One committed change: ``writes`` (all or nothing) under an optional ``fence``."""

    run_id: str
    kind: str
    writes: list[Write]
    fence: Fence | None = None
    lease: Lease | None = field(default=None)  # the lease a claim hands out when it lands


# -- helpers --------------------------------------------------------------------------------


def run_write(run_id: str, expect: tuple[str, ...] | None = None, **values: Any) -> Write:
    values.setdefault("updated_at", NOW)
    return Write("runs", {"id": run_id}, values, expect={"status": expect} if expect else {})


def action_write(run_id: str, seq: int, expect: tuple[str, ...] | None, **values: Any) -> Write:
    return Write(
        "actions",
        {"run_id": run_id, "seq": seq},
        values,
        expect={"state": expect} if expect else {},
    )


def review_item(
    run_id: str,
    seq: int | None,
    reason: str,
    *,
    kind: str = "handoff",
    owner: str | None = None,
    instructions: str | None = None,
) -> Write:
    """A new open review item (reason: irreversible, no_undo, compensation_failed, in_doubt,
    compensation_in_doubt, held, approval)."""
    return Write(
        "review_items",
        {"id": new_id()},
        {
            "run_id": run_id,
            "seq": seq,
            "reason": reason,
            "kind": kind,
            "owner": owner,
            "instructions": instructions,
            "status": "open",
            "created_at": NOW,
        },
        insert=True,
    )


# -- owning a run ---------------------------------------------------------------------------


def start_run(
    run_id: str,
    agent: str,
    owner: str,
    metadata: dict[str, Any],
    key_id: str,
    policy_fingerprint: str | None = None,
) -> Transition:
    """A new run; ``policy_fingerprint`` records the policies it runs under."""
    values = {
        "agent": agent,
        "key_id": key_id,
        "policy_fingerprint": policy_fingerprint,
        "status": R.RUNNING.value,
        "owner": owner,
        "epoch": 1,
        "heartbeat_at": NOW,
        "meta": metadata,
        "created_at": NOW,
        "updated_at": NOW,
    }
    return Transition(
        run_id,
        "run.start",
        [Write("runs", {"id": run_id}, values, insert=True)],
        lease=Lease(run_id, owner, 1),
    )


def claim(run: RunRecord, owner: str, kind: str = "run.claim") -> Transition:
    """Take the run over from whoever held it (recovery, or an agent attaching to a resumed
    run): lands only if status, owner and epoch are still what ``run`` says."""
    epoch = run.epoch + 1
    write = Write(
        "runs",
        {"id": run.id},
        {"owner": owner, "epoch": epoch, "heartbeat_at": NOW, "updated_at": NOW},
        expect={"status": (run.status,), "owner": (run.owner,), "epoch": (run.epoch,)},
    )
    return Transition(run.id, kind, [write], lease=Lease(run.id, owner, epoch))


def complete(lease: Lease) -> Transition:
    return Transition(
        lease.run_id,
        "run.complete",
        [run_write(lease.run_id, (R.RUNNING,), status=R.COMPLETED.value, owner=None)],
        lease.fence(R.RUNNING),
    )


# -- one call -------------------------------------------------------------------------------


def start_call(lease: Lease, seq: int, values: dict[str, Any], *, approved: bool) -> Transition:
    """The write-ahead intent: the gate every tool call passes before it runs."""
    values = {**values, "state": A.STARTED.value}
    write = (
        action_write(lease.run_id, seq, (A.APPROVED,), **values)
        if approved
        else Write("actions", {"run_id": lease.run_id, "seq": seq}, values, insert=True)
    )
    return Transition(lease.run_id, "action.start", [write], lease.fence(R.RUNNING))


def refuse(lease: Lease, seq: int, values: dict[str, Any]) -> Transition:
    """A call refused before it ran, kept in the log with the reason (``error``)."""
    values = {**values, "state": A.REFUSED.value, "attempts": 0}
    write = Write("actions", {"run_id": lease.run_id, "seq": seq}, values, insert=True)
    return Transition(lease.run_id, "action.refuse", [write], lease.fence(R.RUNNING))


def succeed(
    lease: Lease,
    seq: int,
    values: dict[str, Any],
    ids: Mapping[str, str],
    *,
    was: str = A.STARTED.value,
) -> Transition:
    """A call's success (``was`` ``started``; or ``in_doubt``, when its probe found it done)."""
    key = {"run_id": lease.run_id, "seq": seq}
    writes = [action_write(lease.run_id, seq, (was,), state=A.SUCCEEDED.value, **values)]
    writes += [
        Write("external_ids", {**key, "name": name}, {"value": value}, insert=True)
        for name, value in ids.items()
    ]
    return Transition(lease.run_id, "action.succeed", writes, lease.fence(*CALL_ENDS))


def fail(lease: Lease, seq: int, attempts: int, error: str) -> Transition:
    write = action_write(
        lease.run_id,
        seq,
        (A.STARTED,),
        state=A.FAILED.value,
        attempts=attempts,
        error=error[:2000],
        finished_at=NOW,
    )
    return Transition(lease.run_id, "action.fail", [write], lease.fence(*CALL_ENDS))


def in_doubt(lease: Lease, seq: int, error: str, attempts: int | None = None) -> Transition:
    """The call ran (or may have) but its outcome is unknown: it raised an error that does not
    prove it did nothing, or its outcome could not be recorded."""
    values: dict[str, Any] = {
        "state": A.IN_DOUBT.value,
        "error": error[:2000],
        "finished_at": NOW,
    }
    if attempts is not None:
        values["attempts"] = attempts
    write = action_write(lease.run_id, seq, (A.STARTED,), **values)
    return Transition(lease.run_id, "action.in_doubt", [write], lease.fence(*CALL_ENDS))


def request_approval(
    lease: Lease, seq: int | None, values: dict[str, Any] | None, item: Write | None, reason: str
) -> Transition:
    """Record an approval request (a new ``awaiting_approval`` action ``seq`` with ``values``
    and its item, or nothing new for one asked before) and pause the run. The epoch stays:
    calls already in flight may still record their outcome; a resume raises it."""
    writes: list[Write] = []
    if seq is not None and values is not None:
        values = {**values, "state": A.AWAITING_APPROVAL.value, "attempts": 0}
        writes.append(Write("actions", {"run_id": lease.run_id, "seq": seq}, values, insert=True))
    if item is not None:
        writes.append(item)
    # a run already awaiting approval may ask more in the same turn (a framework that asks
    # about every call of a model turn before it runs any); the epoch fences out anyone else
    paused = (R.RUNNING, R.AWAITING_APPROVAL)
    writes.append(
        run_write(lease.run_id, paused, status=R.AWAITING_APPROVAL.value, owner=None, reason=reason)
    )
    return Transition(lease.run_id, "approval.request", writes, lease.fence(*paused))


def expire_approval(lease: Lease, seq: int, ttl: float) -> Transition:
    write = action_write(
        lease.run_id,
        seq,
        (A.APPROVED,),
        state=A.EXPIRED.value,
        error=f"approval expired after {ttl:g}s",
    )
    return Transition(lease.run_id, "approval.expired", [write], lease.fence(R.RUNNING))


# -- halt and compensation ------------------------------------------------------------------


def halt(lease: Lease, reason: str) -> Transition:
    write = run_write(lease.run_id, HALTABLE, status=R.COMPENSATING.value, reason=reason)
    return Transition(lease.run_id, "run.halt", [write], lease.fence(*HALTABLE))


def hold(lease: Lease, reason: str, item: Write, *more: Write) -> Transition:
    write = run_write(lease.run_id, HALTABLE, status=R.PENDING_REVIEW.value, reason=reason)
    return Transition(lease.run_id, "run.hold", [write, item, *more], lease.fence(*HALTABLE))


def to_review(lease: Lease) -> Transition:
    """Compensation is done: the run waits for a person."""
    write = run_write(lease.run_id, (R.COMPENSATING,), status=R.PENDING_REVIEW.value, owner=None)
    return Transition(lease.run_id, "run.review", [write], lease.fence(R.COMPENSATING))


def aborted(lease: Lease) -> Transition:
    write = run_write(lease.run_id, (R.ABORTING,), status=R.ABORTED.value, owner=None)
    return Transition(lease.run_id, "run.aborted", [write], lease.fence(R.ABORTING))


def listed(lease: Lease, status: str, reason: str, item: Write, *extra: Write) -> Transition:
    """A review item for what compensation could not undo (plus the action's new state)."""
    return Transition(lease.run_id, f"review.{reason}", [*extra, item], lease.fence(status))


def settle(lease: Lease, seq: int, state: str, error: str, was: str = A.STARTED.value) -> Write:
    """The new state of an action left ``started`` (in doubt, or failed per its probe), or of
    one ``in_doubt`` that its probe settled."""
    return settle_write(lease.run_id, seq, state, error, was)


def settle_write(
    run_id: str, seq: int, state: str, error: str, was: str = A.STARTED.value
) -> Write:
    return action_write(run_id, seq, (was,), state=state, error=error, finished_at=NOW)


def settled(
    lease: Lease, seq: int, state: str, error: str, *, was: str = A.STARTED.value
) -> Transition:
    """Settle an action whose outcome was unknown (recovery, or a probe after a failure)."""
    write = settle(lease, seq, state, error, was)
    return Transition(lease.run_id, "action.settle", [write], lease.fence(R.RUNNING))


def interrupted_undo(lease: Lease, seq: int, had_row: bool) -> list[Write]:
    writes = [action_write(lease.run_id, seq, (A.COMPENSATING,), state=A.COMPENSATION_FAILED.value)]
    if had_row:
        writes.append(
            Write(
                "compensations",
                {"run_id": lease.run_id, "seq": seq},
                {
                    "state": "interrupted",
                    "finished_at": NOW,
                    "error": "interrupted by a crash; outcome unknown",
                },
            )
        )
    return writes


def compensation_start(
    lease: Lease, status: str, seq: int, undo: str, *, interrupted: bool, position: int
) -> Transition:
    """An undo starts; ``position`` is its place in the order the run's undos ran (an
    interrupted undo run again keeps the place it had)."""
    key = {"run_id": lease.run_id, "seq": seq}
    comp: dict[str, Any] = {"undo": undo, "state": "started", "attempts": 0, "started_at": NOW}
    writes = (
        [Write("compensations", key, comp)]
        if interrupted
        else [
            action_write(lease.run_id, seq, (A.SUCCEEDED,), state=A.COMPENSATING.value),
            Write("compensations", key, {**comp, "position": position}, insert=True),
        ]
    )
    return Transition(lease.run_id, "compensation.start", writes, lease.fence(status))


def compensation_done(lease: Lease, status: str, seq: int, attempts: int) -> Transition:
    key = {"run_id": lease.run_id, "seq": seq}
    writes = [
        action_write(lease.run_id, seq, (A.COMPENSATING,), state=A.COMPENSATED.value),
        Write(
            "compensations",
            key,
            {"state": "succeeded", "attempts": attempts, "finished_at": NOW},
        ),
    ]
    return Transition(lease.run_id, "compensation.done", writes, lease.fence(status))


def compensation_failed(
    lease: Lease, status: str, seq: int, attempts: int, error: str, item: Write
) -> Transition:
    key = {"run_id": lease.run_id, "seq": seq}
    writes = [
        action_write(lease.run_id, seq, (A.COMPENSATING,), state=A.COMPENSATION_FAILED.value),
        Write(
            "compensations",
            key,
            {"state": "failed", "attempts": attempts, "error": error[:2000], "finished_at": NOW},
        ),
        item,
    ]
    return Transition(lease.run_id, "compensation.failed", writes, lease.fence(status))
