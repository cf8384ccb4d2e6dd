"""The run's life after a failure: halt, then compensate (or hold) and leave it for review.

Each transition is one `Store.transact` (committed rows plus a journal entry), guarded by the
state it expects, so a crash between two steps leaves a state recovery can finish. Steps that
run user code (undos) are generators of `drive` steps, so one implementation serves sync and
async callers. Decisions by people are in `decisions`, crash recovery in `recovery`.
"""

from __future__ import annotations

import inspect
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from guardrail import telemetry
from guardrail.drive import Invoke, Steps, attempts
from guardrail.errors import UnknownTool
from guardrail.policy import Policy, UndoTool
from guardrail.store import Action, RunRecord, Write
from guardrail.testing import crash_point

if TYPE_CHECKING:
    from guardrail.guard import Guard

# A call that started before a sibling's approval gate paused the run may still fail after it.
HALTABLE = ("running", "awaiting_approval")


def now() -> float:
    return time.time()


def new_id() -> str:
    return uuid.uuid4().hex[:12]


# -- review items ---------------------------------------------------------------------------


def review_write(
    run_id: str, seq: int | None, reason: str, policy: Policy | None, detail: str | None = None
) -> Write:
    review = policy.review_or_default if policy is not None else None
    instructions = review.instructions if review is not None else None
    if detail:
        instructions = f"{detail}. {instructions}" if instructions else detail
    return Write(
        "review_items",
        {"id": new_id()},
        {
            "run_id": run_id,
            "seq": seq,
            "reason": reason,
            "kind": review.kind if review is not None else "handoff",
            "owner": review.owner if review is not None else None,
            "instructions": instructions,
            "status": "open",
            "created_at": now(),
        },
        insert=True,
    )


def run_write(run_id: str, expect: tuple[str, ...], **values: Any) -> Write:
    values.setdefault("updated_at", now())
    return Write("runs", {"id": run_id}, values, expect={"status": expect})


# -- halt and compensation ------------------------------------------------------------------


def halt(
    guard: Guard, run_id: str, *, reason: str, hold: bool = False, failed_seq: int | None = None
) -> Steps[RunRecord]:
    """Stop a running run: compensate (or hold), then leave it ``pending_review``."""
    store = guard.store
    if hold:
        policy = None
        if failed_seq is not None:
            failed = next((a for a in store.actions(run_id) if a.seq == failed_seq), None)
            policy = guard.find_policy(failed.tool) if failed else None
        detail = f"held on failure: {reason}; nothing was undone. Resume or abort the run"
        store.transact(
            run_id,
            "run.hold",
            [
                run_write(run_id, HALTABLE, status="pending_review", reason=reason),
                review_write(run_id, failed_seq, "held", policy, detail),
            ],
        )
    else:
        store.transact(
            run_id,
            "run.halt",
            [run_write(run_id, HALTABLE, status="compensating", reason=reason)],
        )
        yield from compensate(guard, run_id)
        store.transact(
            run_id, "run.review", [run_write(run_id, ("compensating",), status="pending_review")]
        )
    record = guard.require_run(run_id)
    guard.notify(record)
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
        if action.state == "succeeded" and action.effect == "reversible":
            if policy is None or policy.undo is None:
                steps.append(
                    PlannedStep(
                        *base, "review", "no_undo", f"no undo is registered for {action.tool}"
                    )
                )
            else:
                steps.append(PlannedStep(*base, "undo", detail=f"undo with {undo_name(policy)}"))
        elif action.state == "succeeded" and action.effect == "irreversible":
            steps.append(
                PlannedStep(*base, "review", "irreversible", f"{action.tool} cannot be undone")
            )
        elif action.state == "compensating":
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
        elif action.state == "in_doubt":
            steps.append(
                PlannedStep(
                    *base, "review", "in_doubt", f"{action.tool} may or may not have taken effect"
                )
            )
        elif action.state == "started":
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


def undo_name(policy: Policy) -> str:
    undo = policy.undo
    if isinstance(undo, UndoTool):
        return undo.tool
    undo = getattr(undo, "__guardrail_raw__", undo)
    return getattr(undo, "__name__", None) or repr(undo)


def compensate(guard: Guard, run_id: str) -> Steps[None]:
    """Undo what can be undone, newest first; everything else becomes a review item.

    Safe to run again after a crash: compensated actions are skipped, an undo that was
    interrupted is re-run only if the policy says the undo is idempotent.
    """
    store = guard.store
    actions = {a.seq: a for a in store.actions(run_id)}
    comps = {c.seq: c for c in store.compensations(run_id)}
    listed = {(i.seq, i.reason) for i in store.review_items(run_id=run_id)}

    for step in plan(list(actions.values()), guard.find_policy):
        action = actions[step.seq]
        policy = guard.find_policy(action.tool)
        if step.do == "undo":
            assert policy is not None
            yield from _undo(guard, action, policy, interrupted=step.state == "compensating")
        elif step.do == "review" and (step.seq, step.reason) not in listed:
            assert step.reason is not None
            writes = [review_write(run_id, step.seq, step.reason, policy, step.detail)]
            if step.state == "started":
                writes.insert(
                    0,
                    Write(
                        "actions",
                        {"run_id": run_id, "seq": step.seq},
                        {"state": "in_doubt"},
                        expect={"state": ("started",)},
                    ),
                )
            if step.reason == "compensation_in_doubt":
                writes.insert(
                    0,
                    Write(
                        "actions",
                        {"run_id": run_id, "seq": step.seq},
                        {"state": "compensation_failed"},
                        expect={"state": ("compensating",)},
                    ),
                )
                if step.seq in comps:
                    writes.append(
                        Write(
                            "compensations",
                            {"run_id": run_id, "seq": step.seq},
                            {
                                "state": "interrupted",
                                "finished_at": now(),
                                "error": "interrupted by a crash; outcome unknown",
                            },
                        )
                    )
            store.transact(run_id, f"review.{step.reason}", writes)
            listed.add((step.seq, step.reason))


def _undo(guard: Guard, action: Action, policy: Policy, *, interrupted: bool) -> Steps[None]:
    store = guard.store
    key = {"run_id": action.run_id, "seq": action.seq}
    name = undo_name(policy)
    comp = {"undo": name, "state": "started", "attempts": 0, "started_at": now()}
    begun = store.transact(
        action.run_id,
        "compensation.start",
        [
            Write("actions", key, {"state": "compensating"}, expect={"state": ("succeeded",)}),
            Write("compensations", key, comp, insert=True),
        ]
        if not interrupted
        else [Write("compensations", key, comp)],
    )
    if not begun:
        return  # someone else compensated it
    crash_point("after_compensation_start")
    ids = dict(action.external_ids or {})  # the row keeps them too: no query per undo
    span = telemetry.start_compensation(action.tool, action.run_id, action.seq)
    undo, kwargs = _undo_call(guard, action, policy, ids)
    outcome = yield from attempts(policy.undo_retry, Invoke(undo, kwargs, span))
    crash_point("after_undo")
    done = now()
    if outcome.error is None:
        telemetry.end(span, attributes={"compensation.status": "compensated"})
        store.transact(
            action.run_id,
            "compensation.done",
            [
                Write("actions", key, {"state": "compensated"}),
                Write(
                    "compensations",
                    key,
                    {"state": "succeeded", "attempts": outcome.attempts, "finished_at": done},
                ),
            ],
        )
    else:
        error = f"{type(outcome.error).__name__}: {outcome.error}"
        telemetry.end(span, error=outcome.error, attributes={"compensation.status": "failed"})
        store.transact(
            action.run_id,
            "compensation.failed",
            [
                Write("actions", key, {"state": "compensation_failed"}),
                Write(
                    "compensations",
                    key,
                    {
                        "state": "failed",
                        "attempts": outcome.attempts,
                        "error": error[:2000],
                        "finished_at": done,
                    },
                ),
                review_write(
                    action.run_id,
                    action.seq,
                    "compensation_failed",
                    policy,
                    f"the undo of {action.tool} failed after {outcome.attempts} attempt(s): "
                    f"{error[:500]}",
                ),
            ],
        )


def _undo_call(
    guard: Guard, action: Action, policy: Policy, ids: Mapping[str, str]
) -> tuple[Callable[..., Any], dict[str, Any]]:
    undo = policy.undo
    if isinstance(undo, UndoTool):
        fn = guard.tool_function(undo.tool)
        if fn is None:
            return _missing(action, undo.tool), {}
        scope = {
            "args": dict(action.args or {}),
            "result": action.result,
            "external_ids": dict(ids),
            "snapshot": action.snapshot,
        }
        return fn, undo.kwargs(scope)
    assert undo is not None
    undo = getattr(undo, "__guardrail_raw__", undo)
    return undo, undo_kwargs(undo, action, ids)


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


def hook_kwargs(fn: Callable[..., Any], offered: Mapping[str, Any]) -> dict[str, Any]:
    """Pick what a hook asks for by parameter name; else pass the original arguments."""
    args = dict(offered.get("args") or {})
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return args
    wanted = {name: offered[name] for name in params if name in offered}
    return wanted if wanted else args


def undo_kwargs(
    fn: Callable[..., Any], action: Action, external_ids: Mapping[str, str]
) -> dict[str, Any]:
    """What an undo or probe asks for: ``args``, ``result``, ``external_ids``, ``snapshot``,
    ``action`` by parameter name; else the original arguments as keywords."""
    offered: dict[str, Any] = {
        "args": dict(action.args or {}),
        "result": action.result,
        "external_ids": dict(external_ids),
        "snapshot": action.snapshot,
        "action": action,
    }
    return hook_kwargs(fn, offered)
