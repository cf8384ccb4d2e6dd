"""The transitions of people's decisions: resume, abort, a review item's resolution, an answer
to an approval request. Each is one committed row change of `guardrail.transitions`' machine,
made by a person instead of a worker (so none is fenced by a lease: each expects the state it
decides about, and two people racing see exactly one land).
"""

from __future__ import annotations

from typing import Any

from guardrail.clock import NOW
from guardrail.store import RunRecord, Write
from guardrail.transitions import (
    DECIDABLE,
    Lease,
    Transition,
    action_write,
    run_write,
)
from guardrail.transitions import ActionState as A
from guardrail.transitions import RunStatus as R


def resume(run: RunRecord, by: str, note: str | None) -> Transition:
    """Back to ``running`` with no owner; the epoch grows, so whoever held the run before is
    fenced off and the agent that continues it claims it afresh."""
    write = run_write(
        run.id,
        DECIDABLE,
        status=R.RUNNING.value,
        owner=None,
        epoch=run.epoch + 1,
        decided_by=by,
        decision_note=note,
    )
    write.expect["epoch"] = (run.epoch,)
    return Transition(run.id, "run.resume", [write])


def abort(run: RunRecord, owner: str, by: str, reason: str | None) -> Transition:
    epoch = run.epoch + 1
    write = run_write(
        run.id,
        DECIDABLE,
        status=R.ABORTING.value,
        owner=owner,
        epoch=epoch,
        heartbeat_at=NOW,
        decided_by=by,
        decision_note=reason,
    )
    write.expect["epoch"] = (run.epoch,)
    return Transition(run.id, "run.abort", [write], lease=Lease(run.id, owner, epoch))


def resolve_item(
    run_id: str, item_id: str, resolution: str, by: str, note: str | None, kind: str
) -> Transition:
    write = Write(
        "review_items",
        {"id": item_id},
        {
            "status": "resolved",
            "resolution": resolution,
            "resolved_by": by,
            "note": note,
            "resolved_at": NOW,
        },
        expect={"status": ("open",)},
    )
    return Transition(run_id, kind, [write])


def resolve_doubt(
    run_id: str, item_id: str, seq: int, happened: bool, by: str, note: str | None
) -> Transition:
    """A person says whether a call whose outcome was unknown took effect: ``happened`` makes
    it succeeded (undone or reviewed like one; a replay does not run it again), else failed (a
    replay runs it again)."""
    resolution = "happened" if happened else "not_happened"
    t = resolve_item(run_id, item_id, resolution, by, note, f"review.{resolution}")
    state = A.SUCCEEDED if happened else A.FAILED
    word = f"{by} says it {'happened' if happened else 'did not happen'}"
    t.writes.append(action_write(run_id, seq, (A.IN_DOUBT,), state=state.value, error=word[:2000]))
    return t


def decide_approval(
    run_id: str,
    item_id: str,
    seq: int | None,
    approve: bool,
    by: str,
    note: str | None,
    *,
    edit: dict[str, Any] | None = None,
    args: dict[str, Any] | None = None,
) -> Transition:
    """Approve or reject an approval request. An approval may ``edit`` arguments: the item
    keeps the edit, and the action records ``args``, the whole (redacted) arguments it will
    run with."""
    resolution = A.APPROVED if approve else A.REJECTED
    t = resolve_item(run_id, item_id, resolution.value, by, note, f"approval.{resolution}")
    if edit is not None:
        t.writes[0].values["answer"] = {"args": edit}
    if seq is not None:
        values: dict[str, Any] = {"state": resolution.value}
        if args is not None:
            values["args"] = args
        t.writes.append(action_write(run_id, seq, (A.AWAITING_APPROVAL,), **values))
    return t


def reply_approval(
    run_id: str, item_id: str, seq: int | None, reply: Any, by: str, note: str | None
) -> Transition:
    """Answer an approval request with a reply for the agent instead of running the call: the
    action is rejected (it never runs) and records the reply as its result."""
    t = resolve_item(run_id, item_id, "replied", by, note, "approval.replied")
    t.writes[0].values["answer"] = {"reply": reply}
    if seq is not None:
        t.writes.append(
            action_write(run_id, seq, (A.AWAITING_APPROVAL,), state=A.REJECTED.value, result=reply)
        )
    return t
