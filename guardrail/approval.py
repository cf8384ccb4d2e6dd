"""The approval gate: before a call whose policy's condition holds, a person approves exactly
these arguments (or rejects them); the request is recorded and the run pauses meanwhile."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from guardrail import transitions as T
from guardrail.clock import NOW
from guardrail.conditions import ConditionError
from guardrail.core import Core, LiveRun, commit
from guardrail.errors import CallRejected, RunHalted
from guardrail.lifecycle import open_approvals, review_write
from guardrail.policy import Policy
from guardrail.redact import redact
from guardrail.store import ReviewItem, Write

A = T.ActionState


@dataclass(frozen=True, slots=True)
class Approved:
    """A person approved the call: run action ``seq``, with the arguments in ``edit`` changed
    to the values the person approved instead (None: exactly as asked)."""

    seq: int
    edit: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Replied:
    """A person answered the call with a reply instead: the call returns ``value``."""

    value: Any


def gate(
    core: Core,
    run: LiveRun,
    policy: Policy,
    plain: dict[str, Any],
    args_hash: str,
    key: str,
    call_id: str | None,
) -> Approved | Replied | None:
    """The approval gate (step 2 of a guarded call).

    Returns None when no approval is needed, `Approved` (the action to run, and the person's
    edit of its arguments) or `Replied` (what to return instead of running it). Else records an
    approval request for exactly these arguments (an ``awaiting_approval`` action and its
    review item), sets the run ``awaiting_approval`` and raises RunHalted; raises CallRejected
    when a person rejected these arguments.
    """
    if policy.approval is None:
        return None
    tool, store = policy.name, core.store
    scope = {
        "args": plain,
        "tool": tool,
        "run": {"id": run.id, "agent": run.agent, "metadata": run.metadata},
    }
    problem: str | None = None
    try:
        needed = policy.approval.holds(scope)
    except ConditionError as exc:
        needed, problem = True, str(exc)  # fail closed: a person decides
    if not needed:
        return None
    asked = [
        a
        for a in store.keyed_actions(run.id, key)
        if a.args_hash == args_hash and a.state in (A.AWAITING_APPROVAL, A.APPROVED, A.REJECTED)
    ]
    if not asked:
        # a new call id (the model asked again in a new turn) does not reopen a rejection:
        # the same tool with the same arguments stays rejected, without asking the person again
        asked = [
            a
            for a in store.actions(run.id)
            if a.tool == tool and a.args_hash == args_hash and a.state == A.REJECTED
        ]
    latest = asked[-1] if asked else None
    item = _approval_item(core, run.id, latest.seq) if latest is not None else None
    if latest is not None and latest.state == T.ActionState.APPROVED and item is not None:
        ttl = policy.approval.ttl
        if ttl is None or (item.resolved_at or 0) + ttl >= core.clock():
            edit = (item.answer or {}).get("args")
            return Approved(latest.seq, dict(edit) if isinstance(edit, dict) else None)
        commit(core, T.expire_approval(run.lease, latest.seq, ttl))
        latest = None
    if latest is not None and latest.state == T.ActionState.REJECTED:
        if item is not None and item.resolution == "replied":
            return Replied((item.answer or {}).get("reply"))
        who = f" by {item.resolved_by}" if item is not None and item.resolved_by else ""
        why = f": {item.note}" if item is not None and item.note else ""
        raise CallRejected(
            f"run {run.id}: {tool} with these arguments was rejected{who}{why} (action "
            f"{latest.seq}); it did not run, and the same call is refused without asking "
            "again. Change the plan or the arguments (new arguments need a new approval)",
            run_id=run.id,
            tool=tool,
            field="approval",
        )
    seq: int | None = None
    values: dict[str, Any] | None = None
    item_write: Write | None = None
    if latest is None:
        seq = run.take_seq()
        detail = (
            f"approve or reject {tool} with the arguments recorded in action {seq}"
            + (
                f" (condition: {policy.approval.when})"
                if isinstance(policy.approval.when, str)
                else ""
            )
            + (
                f"; the condition could not be evaluated, so approval is required: {problem}"
                if problem
                else ""
            )
        )
        item_write = review_write(run.id, seq, "approval", policy, detail)
        item_write.values["kind"] = "approve"
        values = {
            "tool": tool,
            "call_id": call_id,
            "idempotency_key": key,
            "effect": policy.effect,
            "args": redact(plain, policy.redact, "args"),
            "args_hash": args_hash,
            "external_ids": {},
            "started_at": NOW,
        }
    try:
        reason = f"{tool} needs approval"
        commit(core, T.request_approval(run.lease, seq, values, item_write, reason))
        run.awaiting = True
    finally:
        run.halted = True
    record = core.require_run(run.id)
    core.hooks.halted(record)
    items = tuple(i.id for i in open_approvals(core, run.id))
    raise RunHalted(
        f"run {run.id} awaits approval: {tool} needs a person's approval for these arguments"
        + (f" ({problem})" if problem else "")
        + f". Approve with `guardrail approve {items[-1] if items else '<item>'}`, then resume "
        "the run.",
        run_id=run.id,
        status=record.status,
        tool=tool,
        review_items=items,
    )


def _approval_item(core: Core, run_id: str, seq: int) -> ReviewItem | None:
    found = [i for i in core.store.review_items(run_id=run_id) if i.seq == seq]
    return next((i for i in reversed(found) if i.reason == "approval"), None)
