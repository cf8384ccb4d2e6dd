"""The run's life after a failure: halt, then compensate (or hold) and leave it for review.

Each transition is one `Store.transact` (committed rows plus a journal entry), guarded by the
state it expects, so a crash between two steps leaves a state recovery can finish. Steps that
run user code (undos) are generators of `drive` steps, so one implementation serves sync and
async callers. Decisions by people are in `decisions`, crash recovery in `recovery`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from guardrail import codec, inject, telemetry
from guardrail import transitions as T
from guardrail.core import Core, commit, still_holds
from guardrail.drive import Invoke, Steps, attempts
from guardrail.errors import GuardrailError, UnknownTool
from guardrail.keys import unseal
from guardrail.policy import NO_RETRY, Policy, UndoTool
from guardrail.redact import canonical, describe
from guardrail.store import Action, ReviewItem, RunRecord, Write
from guardrail.testing import crash_point
from guardrail.transitions import Lease

# -- review items ---------------------------------------------------------------------------


def review_write(
    run_id: str, seq: int | None, reason: str, policy: Policy | None, detail: str | None = None
) -> Write:
    review = policy.review_or_default if policy is not None else None
    instructions = review.instructions if review is not None else None
    if detail:
        instructions = f"{detail}. {instructions}" if instructions else detail
    return T.review_item(
        run_id,
        seq,
        reason,
        kind=review.kind if review is not None else "handoff",
        owner=review.owner if review is not None else None,
        instructions=instructions,
    )


def open_approvals(core: Core, run_id: str) -> list[ReviewItem]:
    items = core.store.review_items(run_id=run_id, status="open")
    return [i for i in items if i.reason == "approval"]


# -- halt and compensation ------------------------------------------------------------------


def halt(
    core: Core, lease: Lease, *, reason: str, hold: bool = False, failed_seq: int | None = None
) -> Steps[RunRecord]:
    """Stop a running run: compensate (or hold), then leave it ``pending_review``.

    Every step is fenced by ``lease``: a worker that lost the run halts nothing. A store fault
    leaves the run where it got to (``compensating``) and gives up the lease, so recovery
    finishes the job once the lease expires.
    """
    run_id = lease.run_id
    try:
        if hold:
            policy = None
            doubts: list[Write] = []
            if failed_seq is not None:
                failed = next((a for a in core.store.actions(run_id) if a.seq == failed_seq), None)
                policy = core.find_policy(failed.tool) if failed else None
                if failed is not None and failed.state == T.ActionState.IN_DOUBT:
                    # a person must say whether it happened before a resume or an abort
                    why = doubt_detail(failed)
                    doubts.append(review_write(run_id, failed_seq, "in_doubt", policy, why))
            detail = f"held on failure: {reason}; nothing was undone. Resume or abort the run"
            held = review_write(run_id, failed_seq, "held", policy, detail)
            commit(core, T.hold(lease, reason, held, *doubts))
        else:
            commit(core, T.halt(lease, reason))
            yield from compensate(core, lease, T.RunStatus.COMPENSATING)
            commit(core, T.to_review(lease))
    finally:
        core.leases.drop(run_id, lease.epoch)
    record = core.require_run(run_id)
    core.hooks.halted(record)
    return record


@dataclass(frozen=True, slots=True)
class PlannedStep:
    """What compensation will do with one action: ``undo`` it, list it for ``review``, or
    ``nothing`` (read-only, failed, already compensated, never ran)."""

    seq: int
    tool: str
    effect: str
    state: str
    do: str  # undo | review | nothing
    reason: str | None = None  # the review item's reason
    detail: str = ""


def plan(actions: list[Action], find_policy: Callable[[str], Policy | None]) -> list[PlannedStep]:
    """The compensation plan for a run's actions, newest first. Pure: no I/O."""
    steps: list[PlannedStep] = []
    for action in reversed(actions):
        policy = find_policy(action.tool)
        base = (action.seq, action.tool, action.effect, action.state)
        if action.state == T.ActionState.SUCCEEDED and action.effect == "reversible":
            if policy is None or policy.undo is None:
                steps.append(
                    PlannedStep(
                        *base, "review", "no_undo", f"no undo is registered for {action.tool}"
                    )
                )
            else:
                steps.append(PlannedStep(*base, "undo", detail=f"undo with {undo_name(policy)}"))
        elif action.state == T.ActionState.SUCCEEDED and action.effect == "irreversible":
            steps.append(
                PlannedStep(*base, "review", "irreversible", f"{action.tool} cannot be undone")
            )
        elif action.state == T.ActionState.COMPENSATING:
            if policy is not None and policy.undo is not None and policy.undo_idempotent:
                steps.append(
                    PlannedStep(*base, "undo", detail="re-run the interrupted (idempotent) undo")
                )
            else:
                steps.append(
                    PlannedStep(
                        *base,
                        "review",
                        "compensation_in_doubt",
                        f"the undo of {action.tool} was interrupted by a crash; check whether "
                        "it took effect",
                    )
                )
        elif action.state == T.ActionState.IN_DOUBT:
            steps.append(PlannedStep(*base, "review", "in_doubt", doubt_detail(action)))
        elif action.state == T.ActionState.STARTED:
            # halting waits for the run's calls in flight, so a `started` action here ran (or
            # may have) but its outcome could not be recorded: the store failed after the call
            steps.append(
                PlannedStep(
                    *base,
                    "review",
                    "in_doubt",
                    f"{action.tool} was called but its outcome could not be recorded; check "
                    "whether it took effect",
                )
            )
        else:
            steps.append(PlannedStep(*base, "nothing"))
    return steps


def doubt_detail(action: Action) -> str:
    """What a person must find out about an action whose outcome is unknown."""
    why = f" ({action.error[:300]})" if action.error else ""
    args = canonical(action.args)[:300] if action.args is not None else "{}"
    return (
        f"{action.tool} may or may not have taken effect{why}; its arguments were {args}. "
        "Check whether it happened, then resolve this item as `happened` (it is then undone or "
        "reviewed like a call that succeeded, and a resume does not run it again) or "
        "`not_happened` (a resume runs it again)"
    )


def undo_name(policy: Policy) -> str:
    undo = policy.undo
    if isinstance(undo, UndoTool):
        return undo.tool
    undo = getattr(undo, "__guardrail_raw__", undo)
    return getattr(undo, "__name__", None) or repr(undo)


def compensate(core: Core, lease: Lease, status: str) -> Steps[None]:
    """Undo what can be undone, newest first; everything else becomes a review item.

    ``status`` is the run's status while it compensates (``compensating`` or ``aborting``);
    every write is fenced by ``lease`` in that status. Safe to run again after a crash:
    compensated actions are skipped, an undo that was interrupted is re-run only if the policy
    says the undo is idempotent.
    """
    store, run_id = core.store, lease.run_id
    actions = {a.seq: a for a in store.actions(run_id)}
    comps = {c.seq: c for c in store.compensations(run_id)}
    listed = {(i.seq, i.reason) for i in store.review_items(run_id=run_id)}

    position = max((c.position or 0 for c in comps.values()), default=0)
    for step in plan(list(actions.values()), core.find_policy):
        action = actions[step.seq]
        policy = core.find_policy(action.tool)
        if step.do == "undo":
            assert policy is not None
            interrupted = step.state == T.ActionState.COMPENSATING
            position += 0 if interrupted else 1
            yield from _undo(
                core, lease, status, action, policy, interrupted=interrupted, position=position
            )
        elif step.do == "review" and (step.seq, step.reason) not in listed:
            assert step.reason is not None
            extra: list[Write] = []
            if step.state == T.ActionState.STARTED:
                extra.append(T.settle(lease, step.seq, T.ActionState.IN_DOUBT, step.detail))
            if step.reason == "compensation_in_doubt":
                extra += T.interrupted_undo(lease, step.seq, step.seq in comps)
            item = review_write(run_id, step.seq, step.reason, policy, step.detail)
            commit(core, T.listed(lease, status, step.reason, item, *extra))
            listed.add((step.seq, step.reason))


def _undo(
    core: Core,
    lease: Lease,
    status: str,
    action: Action,
    policy: Policy,
    *,
    interrupted: bool,
    position: int,
) -> Steps[None]:
    name = undo_name(policy)
    t = T.compensation_start(
        lease, status, action.seq, name, interrupted=interrupted, position=position
    )
    begun = commit(core, t)
    if not begun:
        return  # someone else compensated it
    crash_point("after_compensation_start")
    ids = dict(action.external_ids or {})  # the row keeps them too: no query per undo
    span = telemetry.start_compensation(action.tool, action.run_id, action.seq)
    undo, kwargs, ready = _undo_call(core, action, policy, ids)
    outcome = yield from attempts(
        policy.undo_retry if ready else NO_RETRY,
        Invoke(undo, kwargs, span),
        before_retry=lambda: still_holds(core, lease, status),
    )
    crash_point("after_undo")
    if outcome.error is None:
        telemetry.end(span, attributes={"compensation.status": "compensated"})
        commit(core, T.compensation_done(lease, status, action.seq, outcome.attempts))
    else:
        error = describe(outcome.error)
        telemetry.end(span, error=outcome.error, attributes={"compensation.status": "failed"})
        item = review_write(
            action.run_id,
            action.seq,
            "compensation_failed",
            policy,
            f"the undo of {action.tool} failed after {outcome.attempts} attempt(s): {error[:500]}",
        )
        commit(
            core,
            T.compensation_failed(lease, status, action.seq, outcome.attempts, error, item),
        )


def _undo_call(
    core: Core, action: Action, policy: Policy, ids: Mapping[str, Any]
) -> tuple[Callable[..., Any], dict[str, Any], bool]:
    """The undo to run and its arguments; ``ready`` is False when it cannot run here (then the
    callable raises why, once, and the action becomes a review item)."""
    undo = policy.undo
    injected, problem = inject.for_action(core.live, core.factory, action)
    snapshot = unseal(core.store.keys, action.snapshot)
    if isinstance(undo, UndoTool):
        fn = core.policies.tool_function(undo.tool)
        if fn is None:
            return _missing(action, undo.tool), {}, False
        scope = {
            "args": dict(action.args or {}),
            "result": action.result,
            "external_ids": dict(ids),
            "snapshot": snapshot,
        }
        kwargs = undo.kwargs(scope)
        # the undo tool's own injected parameters (a connection...) come from the context too
        kwargs.update({k: v for k, v in injected.items() if k in inject.missing(fn, kwargs)})
    else:
        assert undo is not None
        fn = getattr(undo, "__guardrail_raw__", undo)
        kwargs = undo_kwargs(fn, action, ids, snapshot, injected)
    lacking = inject.missing(fn, kwargs)
    if lacking:
        return _needs_context(action, undo_name(policy), lacking, problem), {}, False
    return fn, kwargs, True


def _needs_context(
    action: Action, undo: str, lacking: list[str], problem: str | None
) -> Callable[..., Any]:
    names = ", ".join(f"`{n}`" for n in lacking)

    def needs_context() -> None:
        raise GuardrailError(
            f"run {action.run_id}: the undo {undo} of {action.tool} (action {action.seq}) needs "
            f"{names}, which is neither recorded with the action nor an injected value this "
            f"process has{f' ({problem})' if problem else ''}. Give the guard a context factory "
            "(Guard(context=...)) or abort from the application's own process, or undo it by "
            "hand",
            run_id=action.run_id,
            tool=action.tool,
            field="undo",
        )

    return needs_context


def _missing(action: Action, tool: str) -> Callable[..., Any]:
    def missing() -> None:
        raise UnknownTool(
            f"run {action.run_id}: the undo of {action.tool} is the tool {tool!r}, which is not "
            "registered with this guard; register it (@guard.tool, guard.register or a wrapped "
            "toolkit) and abort again, or undo it by hand",
            run_id=action.run_id,
            tool=action.tool,
            field="undo.tool",
        )

    return missing


def undo_kwargs(
    fn: Callable[..., Any],
    action: Action,
    external_ids: Mapping[str, Any],
    snapshot: Any = None,
    injected: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What an undo or probe asks for: ``args``, ``result``, ``external_ids``, ``snapshot``,
    ``action`` and injected values by parameter name; else the original arguments as keywords
    (plus the injected values it names)."""
    offered: dict[str, Any] = {
        "args": dict(action.args or {}),
        "result": action.result,
        "external_ids": dict(external_ids),
        "snapshot": snapshot,
        "action": action,
    }
    kwargs = inject.hook_kwargs(fn, offered, injected)
    for name in ("result", "snapshot"):  # as the types the hook declares (result: Order)
        if kwargs.get(name) is not None and name in offered:
            # on a mismatch the hook gets the JSON, and its own checks say what is wrong
            with contextlib.suppress(ValueError):
                kwargs[name] = codec.decode(codec.parameter(fn, name), kwargs[name])
    return kwargs
