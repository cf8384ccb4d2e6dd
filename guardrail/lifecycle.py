"""The run's life after a failure: halt, compensate, resume, abort, resolve, recover.

Each transition is one `Store.transact` (committed rows plus a journal entry), guarded by the
state it expects, so a crash between two steps leaves a state recovery can finish, and two
deciders racing on one run see exactly one of them land. Steps that run user code (undos,
probes) are generators of `drive` steps, so one implementation serves sync and async callers.
"""

from __future__ import annotations

import inspect
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from guardrail import telemetry
from guardrail.drive import Invoke, Steps, attempts
from guardrail.errors import Conflict, RunNotFound, RunStateError, UnknownTool
from guardrail.policy import Policy, UndoTool
from guardrail.redact import NotJSON, to_jsonable
from guardrail.store import Action, ReviewItem, RunRecord, Write
from guardrail.testing import crash_point

if TYPE_CHECKING:
    from guardrail.guard import Guard

RESOLUTIONS = ("done_manually", "retried", "skipped", "approved", "rejected")
LIVE = ("running", "compensating", "aborting")
# A call that started before a sibling's approval gate paused the run may still fail after it.
HALTABLE = ("running", "awaiting_approval")


@dataclass(frozen=True, slots=True)
class Decision:
    """What a resume, abort or resolve did. ``landed`` is False when an identical decision was
    already recorded (the call was a repeat); a different earlier decision raises Conflict."""

    run_id: str
    status: str
    landed: bool
    by: str | None = None


def now() -> float:
    return time.time()


def new_id() -> str:
    return uuid.uuid4().hex[:12]


# -- owners and liveness --------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def make_owner() -> str:
    """``host|pid|start`` names this process so another one can tell whether it is alive."""
    pid = os.getpid()
    return f"{socket.gethostname()}|{pid}|{_start_time(pid) or uuid.uuid4().hex[:8]}"


def owner_alive(owner: str | None, heartbeat_at: float | None, stale_after: float) -> bool:
    """Dead when its process is gone from this host, or its heartbeat stopped."""
    if owner is None:
        return True  # nobody is executing it: it waits for a person or an agent to restart it
    host, _, rest = owner.partition("|")
    pid_text, _, start = rest.partition("|")
    if host == socket.gethostname() and pid_text.isdigit():
        seen = _start_time(int(pid_text))
        if os.path.exists("/proc/self/stat"):
            return seen is not None and seen == start
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    return heartbeat_at is not None and heartbeat_at >= now() - stale_after


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


# -- decisions by people --------------------------------------------------------------------


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


# -- crash recovery -------------------------------------------------------------------------


def recover(guard: Guard) -> Steps[list[str]]:
    """Finish the runs whose owner died. Returns the ids of the runs this call recovered."""
    store = guard.store
    recovered: list[str] = []
    for status in LIVE:
        for run in store.runs(status=status):
            if owner_alive(run.owner, run.heartbeat_at, guard.stale_after):
                continue
            claimed = store.transact(
                run.id,
                "run.claim",
                [
                    Write(
                        "runs",
                        {"id": run.id},
                        {"owner": guard.owner, "heartbeat_at": now(), "updated_at": now()},
                        expect={"owner": (run.owner,), "status": (status,)},
                    )
                ],
            )
            if not claimed:
                continue  # another recovery worker took it
            guard.beat()
            yield from _finish(guard, run)
            recovered.append(run.id)
    return recovered


def _finish(guard: Guard, run: RunRecord) -> Steps[None]:
    store = guard.store
    if run.status == "running":
        for action in store.actions(run.id):
            if action.state == "started":
                yield from _settle(guard, action)
        yield from halt(guard, run.id, reason=f"recovered: owner {run.owner} is gone")
    elif run.status == "compensating":
        yield from compensate(guard, run.id)
        store.transact(
            run.id, "run.review", [run_write(run.id, ("compensating",), status="pending_review")]
        )
        guard.notify(guard.require_run(run.id))
    else:
        yield from compensate(guard, run.id)
        store.transact(
            run.id, "run.aborted", [run_write(run.id, ("aborting",), status="aborted", owner=None)]
        )


def _settle(guard: Guard, action: Action) -> Steps[None]:
    """An action that started but has no outcome: ask the probe, else mark it in doubt."""
    from guardrail.call import finish_writes

    policy = guard.find_policy(action.tool)
    verdict: Any = None
    if policy is not None and policy.probe is not None:
        kwargs = undo_kwargs(policy.probe, action, {})
        kwargs.pop("result", None)
        outcome = yield from attempts(policy.undo_retry, Invoke(policy.probe, kwargs))
        verdict = outcome.value if outcome.error is None else None
    key = {"run_id": action.run_id, "seq": action.seq}
    if verdict is False:
        writes = [
            Write(
                "actions",
                key,
                {"state": "failed", "error": "probe: it did not take effect", "finished_at": now()},
                expect={"state": ("started",)},
            )
        ]
    elif verdict is not None and policy is not None:
        result = None if verdict is True else verdict
        try:
            result = to_jsonable(result)
        except NotJSON:
            result = None
        writes = finish_writes(guard, policy, action.run_id, action.seq, dict(action.args), result)
        writes[0].expect = {"state": ("started",)}
    else:
        writes = [
            Write(
                "actions",
                key,
                {"state": "in_doubt", "error": "owner died during the call", "finished_at": now()},
                expect={"state": ("started",)},
            )
        ]
    guard.store.transact(action.run_id, "action.settle", writes)
