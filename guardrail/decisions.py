"""Decisions by people: resume, abort, resolve, approve and reject.

Each is one expect-guarded `Store.transact`, so a repeat of the same decision does not land
(``landed=False``) and two people racing on one run or item see exactly one decision land; the
other gets Conflict. A resume or an abort also closes the run's open ``held`` item ("resume or
abort the run") in the same transaction: it is what the item asked for.

What a process needs to abort a run as it should (the undos of its actions) is checked here too,
so that every surface can refuse before it changes anything (`missing_undos`), and so can tell
whether it runs under the policies the run started with (`policy_mismatch`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from guardrail import people as P
from guardrail import telemetry
from guardrail import transitions as T
from guardrail.core import Core, PolicyLookup, commit
from guardrail.drive import Steps
from guardrail.errors import Conflict, PolicyError, RunNotFound, RunStateError, StoreError
from guardrail.fingerprint import EMPTY
from guardrail.lifecycle import PlannedStep, compensate, open_approvals, plan, review_write
from guardrail.policy import UndoTool
from guardrail.redact import NotJSON, redact, to_jsonable
from guardrail.store import Action, ReviewItem, RunRecord, Write
from guardrail.testing import crash_point

RESOLUTIONS = (
    "done_manually",
    "retried",
    "skipped",
    "approved",
    "rejected",
    "happened",
    "not_happened",
)
DOUBT_WORDS = ("happened", "not_happened")  # for an `in_doubt` item: did the call take effect?
# A `held` item is closed by the run's decision itself: resolved as "resumed" or "aborted".
TRIES = 5  # a decision that lost only to a concurrent change of a held item is made again


class UndosMissing(PolicyError):
    """Compensating here would leave undos to people: this process lacks them (no policy with
    an undo for a reversible action, or an undo tool that is not registered).

    ``steps`` are the actions concerned (see :func:`missing_undos`). Nothing was changed; load
    the application's guard or the policies that name the undos, or decide to go on without
    them (the command line's ``--force``).
    """

    def __init__(self, message: str, *, run_id: str, steps: Sequence[PlannedStep]) -> None:
        super().__init__(message, run_id=run_id, field="undo")
        self.steps = tuple(steps)


class Fingerprinted(Protocol):
    """Anything that knows the fingerprint of its declared policies (a guard, its registry)."""

    @property
    def policy_fingerprint(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Decision:
    """What a resume, abort or resolve did. ``landed`` is False when an identical decision was
    already recorded (the call was a repeat); a different earlier decision raises Conflict."""

    run_id: str
    status: str
    landed: bool
    by: str | None = None


def resume(core: Core, run_id: str, by: str, note: str | None) -> Decision:
    store = core.store
    landed = False
    for _ in range(TRIES):
        run = core.require_run(run_id)
        if run.status not in T.DECIDABLE:
            break
        if run.status == T.RunStatus.AWAITING_APPROVAL:
            waiting = [i.id for i in open_approvals(core, run_id)]
            if waiting:
                raise RunStateError(
                    f"run {run_id} awaits approval of item(s) {', '.join(waiting)}; approve or "
                    "reject them first (guard.approve / guard.reject), or abort the run",
                    run_id=run_id,
                    status=run.status,
                )
        doubts = [
            i.id for i in store.review_items(run_id=run_id, status="open") if i.reason == "in_doubt"
        ]
        if doubts:
            raise RunStateError(
                f"run {run_id} has call(s) whose outcome is unknown (review item(s) "
                f"{', '.join(doubts)}); a person must say whether each happened before the run "
                "resumes, or a replay could run it twice: resolve each as `happened` or "
                "`not_happened` (guardrail resolve ITEM --as happened), or abort the run",
                run_id=run_id,
                status=run.status,
            )
        t = P.resume(run, by, note)
        # The resume raises the epoch, so a call the previous worker left `started` can never
        # record its outcome now: it may or may not have taken effect, and a person must know.
        for seq in store.seqs_in_state(run_id, (T.ActionState.STARTED,)):
            detail = (
                "its worker lost the run before the outcome was recorded; check whether it took "
                "effect"
            )
            t.writes.append(T.settle_write(run_id, seq, T.ActionState.IN_DOUBT, detail))
            t.writes.append(review_write(run_id, seq, "in_doubt", None, detail))
        t.writes += close_held(core, run_id, "resumed", by, note)
        landed = commit(core, t)
        if landed or not _unchanged(core, run):
            break
    run = core.require_run(run_id)
    if not landed and run.status != T.RunStatus.RUNNING:
        raise Conflict(
            f"run {run_id} is {run.status}, it cannot be resumed"
            + (f" (decided by {run.decided_by})" if run.decided_by else ""),
            run_id=run_id,
            status=run.status,
        )
    telemetry.decision("resume", run_id, by, "landed" if landed else "repeat")
    return Decision(run_id, run.status, landed, by)


def abort(
    core: Core,
    run_id: str,
    by: str,
    reason: str | None,
    *,
    require_undos: bool = False,
) -> Steps[Decision]:
    """Undo what is still undoable and end the run as aborted.

    ``require_undos``: refuse (`UndosMissing`, nothing changed) when an undo the abort needs is
    not available in this process, instead of listing those actions for review.
    """
    landed = False
    for _ in range(TRIES):
        run = core.require_run(run_id)
        if run.status not in T.DECIDABLE:
            break
        if require_undos:
            missing = missing_undos(core.policies, core.store.actions(run_id))
            if missing:
                raise UndosMissing(explain_missing(run_id, missing), run_id=run_id, steps=missing)
        t = P.abort(run, core.owner, by, reason)
        t.writes += close_held(core, run_id, "aborted", by, reason)
        landed = commit(core, t)
        if landed or not _unchanged(core, run):
            break
    if not landed:
        run = core.require_run(run_id)
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
    core.leases.hold(lease)
    try:
        crash_point("after_abort_start")
        for item in open_approvals(core, run_id):
            commit(core, P.decide_approval(run_id, item.id, item.seq, False, by, "run aborted"))
        yield from compensate(core, lease, T.RunStatus.ABORTING)
        commit(core, T.aborted(lease))
    except StoreError as exc:
        raise StoreError(
            f"run {run_id}: the abort is recorded but could not finish ({exc}); `guardrail "
            "recover` finishes it once this process's lease expires, and nothing undone is "
            "undone twice",
            run_id=run_id,
        ) from exc
    finally:
        core.leases.drop(run_id, lease.epoch)
    core.live.drop(run_id)  # nothing of this run is undone any more: let its objects go
    telemetry.decision("abort", run_id, by, "landed")
    return Decision(run_id, "aborted", True, by)


def resolve(core: Core, item_id: str, resolution: str, by: str, note: str | None) -> Decision:
    if resolution not in RESOLUTIONS:
        raise RunStateError(
            f"resolution {resolution!r} is not one of {', '.join(RESOLUTIONS)}", status=None
        )
    store = core.store
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
        return decide(core, item_id, resolution == "approved", by, note)
    if resolution in DOUBT_WORDS and (item.reason != "in_doubt" or item.seq is None):
        raise RunStateError(
            f"review item {item_id} is {item.reason}, not a call whose outcome is unknown; "
            f"`{resolution}` answers only in_doubt items",
            run_id=item.run_id,
            status=item.status,
        )
    if resolution in DOUBT_WORDS:
        assert item.seq is not None
        t = P.resolve_doubt(item.run_id, item_id, item.seq, resolution == "happened", by, note)
        run = core.require_run(item.run_id)
        if resolution == "happened" and run.status in (
            T.RunStatus.ABORTING,
            T.RunStatus.ABORTED,
        ):
            # nothing compensates an aborted run again: a person undoes what happened
            action = next((a for a in store.actions(item.run_id) if a.seq == item.seq), None)
            tool = action.tool if action is not None else "the call"
            policy = core.find_policy(tool)
            detail = (
                f"{tool} took effect ({by} says so), but the run was aborted before anyone "
                "knew, so nothing undid it: undo or correct it by hand"
            )
            t.writes.append(review_write(item.run_id, item.seq, "not_undone", policy, detail))
    else:
        t = P.resolve_item(item.run_id, item_id, resolution, by, note, "review.resolve")
    landed = commit(core, t)
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


def close_held(core: Core, run_id: str, resolution: str, by: str, note: str | None) -> list[Write]:
    """Writes closing the run's open ``held`` items, for the decision's own transaction (each
    expects the item still open: a person who resolved it meanwhile makes the decision retry)."""
    items = core.store.review_items(run_id=run_id, status="open")
    return [
        write
        for item in items
        if item.reason == "held"
        for write in P.resolve_item(run_id, item.id, resolution, by, note, "review.held").writes
    ]


def _unchanged(core: Core, before: RunRecord) -> bool:
    """The run is still where a decision that did not land found it: what stopped the decision
    was something else (a held item resolved meanwhile), so it may be made again."""
    now = core.require_run(before.id)
    return now.status == before.status and now.epoch == before.epoch


def missing_undos(policies: PolicyLookup, actions: list[Action]) -> list[PlannedStep]:
    """The steps of the run's compensation that this guard cannot perform as the run's policies
    would: a reversible action with no undo here (it would become a ``no_undo`` review item), an
    undo tool that is not registered here, or an interrupted undo whose policy is unknown here.
    Each step's ``detail`` says which. Empty when compensating here does what it should."""
    found: list[PlannedStep] = []
    for step in plan(actions, policies.find_policy):
        policy = policies.find_policy(step.tool)
        if step.reason == "no_undo":
            found.append(step)
        elif step.do == "undo" and policy is not None and isinstance(policy.undo, UndoTool):
            if policies.tool_function(policy.undo.tool) is None:
                found.append(
                    replace(
                        step,
                        detail=f"its undo is the tool {policy.undo.tool!r}, which is not "
                        "registered here",
                    )
                )
        elif step.reason == "compensation_in_doubt" and policy is None:
            found.append(
                replace(
                    step,
                    detail=f"its undo was interrupted and no policy for {step.tool} is "
                    "loaded here to tell whether it may run again",
                )
            )
    return found


def explain_missing(
    run_id: str,
    steps: Sequence[PlannedStep],
    remedy: str = "load the application's guard or the policies that name these undos",
) -> str:
    """What `UndosMissing` says: the run, each action concerned and why, and ``remedy``."""
    listed = "; ".join(f"action {s.seq} ({s.tool}): {s.detail}" for s in steps[:10])
    more = f"; and {len(steps) - 10} more" if len(steps) > 10 else ""
    return (
        f"run {run_id}: {len(steps)} undo(s) it needs are not available here, so compensating "
        f"here would leave them to people ({listed}{more}). Nothing was changed; {remedy}"
    )


def policy_mismatch(policies: Fingerprinted, run: RunRecord) -> str | None:
    """A warning when the run started under other policies than this guard's declared ones
    (by fingerprint); None when they match, when the run predates fingerprints, or when this
    guard declares no policies at all (nothing to compare: `missing_undos` says what it lacks).
    """
    theirs, ours = run.policy_fingerprint, policies.policy_fingerprint
    if theirs is None or theirs == ours or ours == EMPTY:
        return None
    started = "no declared policies" if theirs == EMPTY else "policies"
    return (
        f"run {run.id} started under {started} {theirs}, but the policies loaded here have the "
        f"fingerprint {ours}: its undos and reviews may not be the ones the run was promised"
    )


def decide(
    core: Core,
    item_id: str,
    approve: bool,
    by: str,
    note: str | None,
    *,
    edit: Mapping[str, Any] | None = None,
) -> Decision:
    """Approve or reject an approval request; exactly one decision lands.

    ``edit``: approve other values of some arguments than the agent asked for (a mapping of
    argument name to JSON value); the call then runs once with them, and they are recorded
    (see `edited_args` for what may be edited).
    """
    item = _approval_request(core, item_id)
    resolution = "approved" if approve else "rejected"
    changes: dict[str, Any] | None = None
    recorded: dict[str, Any] | None = None
    if edit is not None:
        if not approve:
            raise PolicyError("only an approval edits arguments", field="args")
        changes, recorded = edited_args(core, item, edit)
    t = P.decide_approval(
        item.run_id, item_id, item.seq, approve, by, note, edit=changes, args=recorded
    )
    answer = {"args": changes} if changes is not None else None
    return _decided(core, item, t, resolution, by, answer)


def reply(core: Core, item_id: str, answer: Any, by: str, note: str | None) -> Decision:
    """Answer an approval request with ``answer`` for the agent instead of running the call:
    after resume, the call returns it (recorded as its result); the tool never runs."""
    item = _approval_request(core, item_id)
    try:
        value = to_jsonable(answer)
    except NotJSON as exc:
        raise PolicyError(f"the reply to {item_id} is not JSON: {exc}", field="reply") from exc
    if redact(value, (), "reply") != value:
        raise PolicyError(
            f"the reply to {item_id} looks like it holds a secret, which the log would not keep; "
            "reply without it",
            field="reply",
        )
    t = P.reply_approval(item.run_id, item_id, item.seq, value, by, note)
    return _decided(core, item, t, "replied", by, {"reply": value})


def reply_text(item: ReviewItem | None) -> str | None:
    """A person's reply to an approval request (`reply`) as the text a model reads instead of
    the call's result (JSON for a reply that is not text); None when there was no reply."""
    if item is None or item.resolution != "replied" or not isinstance(item.answer, dict):
        return None
    answer = item.answer.get("reply")
    return answer if isinstance(answer, str) else json.dumps(answer)


def _approval_request(core: Core, item_id: str) -> ReviewItem:
    item = core.store.review_item(item_id)
    if item is None:
        raise RunNotFound(f"no review item {item_id!r} in {core.store.url}")
    if item.reason != "approval":
        raise RunStateError(
            f"review item {item_id} ({item.reason}) is not an approval request; use "
            "guard.resolve(item, 'done_manually' | 'retried' | 'skipped', ...)",
            run_id=item.run_id,
            status=item.status,
        )
    return item


def _decided(
    core: Core,
    item: ReviewItem,
    t: T.Transition,
    resolution: str,
    by: str,
    answer: dict[str, Any] | None,
) -> Decision:
    landed = commit(core, t)
    if not landed:
        now = core.store.review_item(item.id)
        assert now is not None
        if now.resolution != resolution or (now.answer or None) != answer:
            what = f"{now.resolution}" + (
                " with another answer" if now.resolution == resolution else ""
            )
            raise Conflict(
                f"approval request {item.id} was already {what} by {now.resolved_by}",
                run_id=item.run_id,
                status=now.status,
            )
    telemetry.decision(resolution, item.run_id, by, "landed" if landed else "repeat")
    return Decision(item.run_id, resolution, landed, by)


def edited_args(
    core: Core, item: ReviewItem, edit: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The edit as JSON, and the whole (redacted) arguments the action records with it.

    Only arguments the call has may be edited, to JSON values; not one the policy redacts or
    one whose new value looks secret: the log keeps edits in the clear, and the replay needs the
    value itself.
    """
    action = next((a for a in core.store.actions(item.run_id) if a.seq == item.seq), None)
    if action is None or item.seq is None:
        raise RunStateError(
            f"approval request {item.id} has no recorded call to edit", run_id=item.run_id
        )
    try:
        changes = to_jsonable(dict(edit))
    except NotJSON as exc:
        raise PolicyError(f"the edited arguments are not JSON: {exc}", field="args") from exc
    unknown = sorted(set(changes) - set(action.args))
    if unknown:
        raise PolicyError(
            f"{action.tool} has no argument {', '.join(unknown)} to edit; it was called with "
            f"{', '.join(sorted(action.args)) or 'none'}",
            tool=action.tool,
            field="args",
        )
    policy = core.policies.find_policy(action.tool)
    paths = policy.redact if policy is not None else ()
    hidden = sorted(k for k in changes if redact({k: changes[k]}, paths, "args") != {k: changes[k]})
    if hidden:
        raise PolicyError(
            f"argument(s) {', '.join(hidden)} of {action.tool} are redacted (by the policy or "
            "because the value looks secret): an edit of them cannot be recorded; reject the "
            "call instead and let the agent ask again",
            tool=action.tool,
            field="args",
        )
    return changes, {**action.args, **changes}
