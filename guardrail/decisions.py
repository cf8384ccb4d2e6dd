"""Decisions by people: resume, abort, resolve, approve and reject.

Each is one expect-guarded `Store.transact`, so a repeat of the same decision does not land
(``landed=False``) and two people racing on one run or item see exactly one decision land; the
other gets Conflict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from guardrail import telemetry
from guardrail.drive import Steps
from guardrail.errors import Conflict, RunNotFound, RunStateError
from guardrail.lifecycle import compensate, now, run_write
from guardrail.store import ReviewItem, Write
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
    if run.status == "awaiting_approval":
        waiting = [i.id for i in open_approvals(guard, run_id)]
        if waiting:
            raise RunStateError(
                f"run {run_id} awaits approval of item(s) {', '.join(waiting)}; approve or "
                "reject them first (guard.approve / guard.reject), or abort the run",
                run_id=run_id,
                status=run.status,
            )
    landed = store.transact(
        run_id,
        "run.resume",
        [
            run_write(
                run_id,
                ("pending_review", "awaiting_approval"),
                status="running",
                owner=None,
                decided_by=by,
                decision_note=note,
            )
        ],
    )
    run = guard.require_run(run_id)
    if not landed and run.status != "running":
        raise Conflict(
            f"run {run_id} is {run.status}, it cannot be resumed"
            + (f" (decided by {run.decided_by})" if run.decided_by else ""),
            run_id=run_id,
            status=run.status,
        )
    telemetry.decision("resume", run_id, by, "landed" if landed else "repeat")
    return Decision(run_id, run.status, landed, by)


def abort(guard: Guard, run_id: str, by: str, reason: str | None) -> Steps[Decision]:
    store = guard.store
    run = guard.require_run(run_id)
    landed = store.transact(
        run_id,
        "run.abort",
        [
            run_write(
                run_id,
                ("pending_review", "awaiting_approval"),
                status="aborting",
                owner=guard.owner,
                heartbeat_at=now(),
                decided_by=by,
                decision_note=reason,
            )
        ],
    )
    if not landed:
        run = guard.require_run(run_id)
        if run.status in ("aborting", "aborted"):
            return Decision(run_id, run.status, False, run.decided_by)
        raise Conflict(
            f"run {run_id} is {run.status}, it cannot be aborted"
            + (f" (decided by {run.decided_by})" if run.decided_by else ""),
            run_id=run_id,
            status=run.status,
        )
    guard.beat()
    crash_point("after_abort_start")
    for item in open_approvals(guard, run_id):
        store.transact(
            run_id, "approval.rejected", _approval_writes(item, False, by, "run aborted")
        )
    yield from compensate(guard, run_id)
    store.transact(
        run_id, "run.aborted", [run_write(run_id, ("aborting",), status="aborted", owner=None)]
    )
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
    landed = store.transact(
        item.run_id,
        "review.resolve",
        [
            Write(
                "review_items",
                {"id": item_id},
                {
                    "status": "resolved",
                    "resolution": resolution,
                    "resolved_by": by,
                    "note": note,
                    "resolved_at": now(),
                },
                expect={"status": ("open",)},
            )
        ],
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


def _approval_writes(item: ReviewItem, approve: bool, by: str, note: str | None) -> list[Write]:
    resolution = "approved" if approve else "rejected"
    writes = [
        Write(
            "review_items",
            {"id": item.id},
            {
                "status": "resolved",
                "resolution": resolution,
                "resolved_by": by,
                "note": note,
                "resolved_at": now(),
            },
            expect={"status": ("open",)},
        )
    ]
    if item.seq is not None:
        writes.append(
            Write(
                "actions",
                {"run_id": item.run_id, "seq": item.seq},
                {"state": resolution},
                expect={"state": ("awaiting_approval",)},
            )
        )
    return writes


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
    landed = store.transact(
        item.run_id, f"approval.{resolution}", _approval_writes(item, approve, by, note)
    )
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
