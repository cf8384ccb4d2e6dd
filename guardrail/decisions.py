"""Decisions by people: resume, abort, resolve, approve and reject.

Each is one expect-guarded `Store.transact`, so a repeat of the same decision does not land
(``landed=False``) and two people racing on one run or item see exactly one decision land; the
other gets Conflict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from guardrail import telemetry
from guardrail import transitions as T
from guardrail.drive import Steps
from guardrail.errors import Conflict, RunNotFound, RunStateError, StoreError
from guardrail.lifecycle import commit, compensate, review_write
from guardrail.store import ReviewItem
from guardrail.testing import crash_point

if TYPE_CHECKING:
    from guardrail.guard import Guard

RESOLUTIONS = ("done_manually", "retried", "skipped", "approved", "rejected")


@dataclass(frozen=True, slots=True)
class Decision:
    """What a resume, abort or resolve did. ``landed`` is False when an identical decision was
    already recorded (the call was a repeat); a different earlier decision raises Conflict."""

    run_id: str
    status: str
    landed: bool
    by: str | None = None


def resume(guard: Guard, run_id: str, by: str, note: str | None) -> Decision:
    store = guard.store
    run = guard.require_run(run_id)
    if run.status == T.RunStatus.AWAITING_APPROVAL:
        waiting = [i.id for i in open_approvals(guard, run_id)]
        if waiting:
            raise RunStateError(
                f"run {run_id} awaits approval of item(s) {', '.join(waiting)}; approve or "
                "reject them first (guard.approve / guard.reject), or abort the run",
                run_id=run_id,
                status=run.status,
            )
    t = T.resume(run, by, note)
    # The resume raises the epoch, so a call the previous worker left `started` can never
    # record its outcome now: it may or may not have taken effect, and a person must know.
    for seq in store.seqs_in_state(run_id, (T.ActionState.STARTED,)):
        detail = (
            "its worker lost the run before the outcome was recorded; check whether it took effect"
        )
        t.writes.append(T.settle_write(run_id, seq, T.ActionState.IN_DOUBT, detail))
        t.writes.append(review_write(run_id, seq, "in_doubt", None, detail))
    landed = commit(guard, t) if run.status in T.DECIDABLE else False
    run = guard.require_run(run_id)
    if not landed and run.status != T.RunStatus.RUNNING:
        raise Conflict(
            f"run {run_id} is {run.status}, it cannot be resumed"
            + (f" (decided by {run.decided_by})" if run.decided_by else ""),
            run_id=run_id,
            status=run.status,
        )
    telemetry.decision("resume", run_id, by, "landed" if landed else "repeat")
    return Decision(run_id, run.status, landed, by)


def abort(guard: Guard, run_id: str, by: str, reason: str | None) -> Steps[Decision]:
    run = guard.require_run(run_id)
    t = T.abort(run, guard.owner, by, reason)
    landed = commit(guard, t) if run.status in T.DECIDABLE else False
    if not landed:
        run = guard.require_run(run_id)
        if run.status in (T.RunStatus.ABORTING, T.RunStatus.ABORTED):
            return Decision(run_id, run.status, False, run.decided_by)
        raise Conflict(
            f"run {run_id} is {run.status}, it cannot be aborted"
            + (f" (decided by {run.decided_by})" if run.decided_by else ""),
            run_id=run_id,
            status=run.status,
        )
    lease = t.lease
    assert lease is not None
    guard.hold_lease(lease)
    try:
        crash_point("after_abort_start")
        for item in open_approvals(guard, run_id):
            commit(guard, T.decide_approval(run_id, item.id, item.seq, False, by, "run aborted"))
        yield from compensate(guard, lease, T.RunStatus.ABORTING)
        commit(guard, T.aborted(lease))
    except StoreError as exc:
        raise StoreError(
            f"run {run_id}: the abort is recorded but could not finish ({exc}); `guardrail "
            "recover` finishes it once this process's lease expires, and nothing undone is "
            "undone twice",
            run_id=run_id,
        ) from exc
    finally:
        guard.drop_lease(run_id, lease.epoch)
    telemetry.decision("abort", run_id, by, "landed")
    return Decision(run_id, "aborted", True, by)


def resolve(guard: Guard, item_id: str, resolution: str, by: str, note: str | None) -> Decision:
    if resolution not in RESOLUTIONS:
        raise RunStateError(
            f"resolution {resolution!r} is not one of {', '.join(RESOLUTIONS)}", status=None
        )
    store = guard.store
    item = store.review_item(item_id)
    if item is None:
        raise RunNotFound(f"no review item {item_id!r} in {store.url}")
    if item.reason == "approval":
        if resolution not in ("approved", "rejected"):
            raise RunStateError(
                f"review item {item_id} is an approval request; approve or reject it",
                run_id=item.run_id,
                status=item.status,
            )
        return decide(guard, item_id, resolution == "approved", by, note)
    landed = commit(
        guard, T.resolve_item(item.run_id, item_id, resolution, by, note, "review.resolve")
    )
    if not landed:
        item = store.review_item(item_id)
        assert item is not None
        if item.resolution != resolution:
            raise Conflict(
                f"review item {item_id} was already resolved as {item.resolution} by "
                f"{item.resolved_by}",
                run_id=item.run_id,
                status=item.status,
            )
    telemetry.decision("resolve", item.run_id, by, resolution)
    return Decision(item.run_id, resolution, landed, by)


def open_approvals(guard: Guard, run_id: str) -> list[ReviewItem]:
    items = guard.store.review_items(run_id=run_id, status="open")
    return [i for i in items if i.reason == "approval"]


def decide(guard: Guard, item_id: str, approve: bool, by: str, note: str | None) -> Decision:
    """Approve or reject an approval request; exactly one decision lands."""
    store = guard.store
    item = store.review_item(item_id)
    if item is None:
        raise RunNotFound(f"no review item {item_id!r} in {store.url}")
    if item.reason != "approval":
        raise RunStateError(
            f"review item {item_id} ({item.reason}) is not an approval request; use "
            "guard.resolve(item, 'done_manually' | 'retried' | 'skipped', ...)",
            run_id=item.run_id,
            status=item.status,
        )
    resolution = "approved" if approve else "rejected"
    landed = commit(guard, T.decide_approval(item.run_id, item_id, item.seq, approve, by, note))
    if not landed:
        item = store.review_item(item_id)
        assert item is not None
        if item.resolution != resolution:
            raise Conflict(
                f"approval request {item_id} was already {item.resolution} by {item.resolved_by}",
                run_id=item.run_id,
                status=item.status,
            )
    telemetry.decision(resolution, item.run_id, by, "landed" if landed else "repeat")
    return Decision(item.run_id, resolution, landed, by)
