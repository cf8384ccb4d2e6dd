"""One guarded call: dedup, approval gate, write-ahead intent, call with retries, record, halt.

What a call is before it runs (its key, its replay, its snapshot) is in `guardrail.prepare`; what
happens when it fails, or its outcome cannot be recorded, in `guardrail.failure`.

Fault-closed: once the intent is committed the tool may have run, so whatever goes wrong after
that (the store failing to record the outcome, the run taken over meanwhile) ends in ``RunHalted``
for the agent and a state a person sees, never in a retryable error that would run it twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from guardrail import codec, inject, telemetry
from guardrail import transitions as T
from guardrail.approval import Replied, gate
from guardrail.clock import NOW
from guardrail.core import Core, LiveRun, commit
from guardrail.drive import Invoke, Steps, attempts
from guardrail.errors import CallRejected, Conflict, OwnershipLost, RunHalted, StoreError
from guardrail.failure import as_text, failed, inside, record_outcome, retry_allowed
from guardrail.keys import seal
from guardrail.policy import NO_RETRY, Policy
from guardrail.prepare import (
    Call,
    idempotency_key,
    lookup,
    not_started,
    prepare,
    refuse,
    replay,
    take_snapshot,
)
from guardrail.record import finish_values, id_rows
from guardrail.redact import NotJSON, canonical, describe, redact, to_jsonable
from guardrail.testing import crash_point


def guarded_call(
    core: Core,
    run: LiveRun,
    policy: Policy,
    fn: Callable[..., Any],
    args: dict[str, Any],
    call_id: str | None,
    injected: Mapping[str, Any] | None = None,
) -> Steps[Any]:
    run.check_open()
    run.begin_call()
    try:
        with inside(run.id):
            return (yield from _guarded_call(core, run, policy, fn, args, call_id, injected))
    finally:
        run.end_call()


def _guarded_call(
    core: Core,
    run: LiveRun,
    policy: Policy,
    fn: Callable[..., Any],
    args: dict[str, Any],
    call_id: str | None,
    injected: Mapping[str, Any] | None,
) -> Steps[Any]:
    call = prepare(core, run, policy, args, call_id, injected, codec.returns(fn))
    recorded = lookup(core, run, call)
    if recorded is not None:
        return replay(run, call, recorded)
    answer = gate(core, run, policy, call.plain, call.args_hash, call.key, call_id)
    if isinstance(answer, Replied):
        return answer.value  # a person answered instead of letting the call run
    approved = answer.seq if answer is not None else None
    if answer is not None and answer.edit:
        # the call runs once, with the values the person approved (recorded on the action)
        edit = answer.edit
        call = replace(call, args={**call.args, **edit}, plain={**call.plain, **edit})
    snapshot = None
    if policy.snapshot is not None:
        taken, problem = yield from take_snapshot(run, policy, call.args, call.injected)
        if problem is not None:
            refuse(core, run, call, approved, problem)
        snapshot = seal(core.store.keys, canonical(taken), run.key_id)
    seq, span = _begin(core, run, call, approved, snapshot)
    args, live = call.args, call.injected
    if live and policy.effect != "read_only":
        core.live.keep(run.id, seq, live)  # for its undo, if this process compensates it
    crash_point("after_start")
    outcome = yield from attempts(
        policy.call_retry,
        Invoke(fn, {**args, **live} if live else args, span),
        before_retry=lambda: retry_allowed(core, run),
    )
    if outcome.error is None:
        crash_point("after_call")
        wrong = policy.error_result
        if wrong is not None and wrong.holds(outcome.value):
            text = f"returned an error: {as_text(outcome.value)}"
            yield from failed(core, run, call, seq, span, text, wrong.means, outcome.attempts)
            return outcome.value  # the model gets the error to correct (then="return")
        yield from _succeeded(core, run, call, seq, span, outcome.value, outcome.attempts)
        return outcome.value
    error = outcome.error
    means = policy.outcome_of(error)
    yield from failed(core, run, call, seq, span, error, means, outcome.attempts)
    raise AssertionError("unreachable: a failed call halts the run")  # pragma: no cover


def _begin(
    core: Core, run: LiveRun, call: Call, approved: int | None, snapshot: Any
) -> tuple[int, telemetry.Span]:
    """Commit the write-ahead intent: the gate every call passes. No intent, no call."""
    policy = call.policy
    seq = approved if approved is not None else run.take_seq()
    span = telemetry.start_tool(call.tool, call.call_id, run.id, policy.effect)
    trace_id, span_id = telemetry.ids(span)
    intent = T.start_call(
        run.lease,
        seq,
        {
            "tool": call.tool,
            "call_id": call.call_id,
            "idempotency_key": call.key,
            "effect": policy.effect,
            "attempts": 1,
            "args": redact(call.plain, policy.redact, "args"),
            "args_hash": call.args_hash,
            "external_ids": {},
            "snapshot": snapshot,
            "trace_id": trace_id,
            "span_id": span_id,
            "started_at": NOW,
        },
        approved=approved is not None,
    )
    try:
        begun = commit(core, intent)
    except OwnershipLost as exc:
        run.halted = True
        telemetry.end(span, error=exc)
        raise
    except StoreError as exc:
        telemetry.end(span, error=exc)
        raise not_started(run, call, exc) from exc
    if not begun:
        telemetry.end(span, error=Conflict("approval already used"))
        raise Conflict(
            f"run {run.id}: the approved call of {call.tool} (action {seq}) was started elsewhere",
            run_id=run.id,
            status="running",
        )
    return seq, span


def _succeeded(
    core: Core,
    run: LiveRun,
    call: Call,
    seq: int,
    span: telemetry.Span,
    value: Any,
    attempts: int,
) -> Steps[None]:
    captured, problem = yield from _capture(call, value)
    values, ids = finish_values(
        call.policy,
        run.id,
        call.args,
        value,
        core.max_result_bytes,
        attempts,
        captured,
        call.returns,
    )
    if problem is not None:
        values["error"] = problem  # a note for the reviewer: the call itself succeeded
    rows = id_rows(ids)
    t = T.succeed(run.lease, seq, values, rows)
    yield from record_outcome(core, run, call.tool, seq, t, span)
    if call.policy.idempotency_key is not None or call.call_id is not None:
        # keys numbered by occurrence never repeat in this process's run: only declared
        # and framework keys need remembering (a re-attached run reloads them all)
        run.mark_done(call.key, seq)
    ids_attr = ",".join(f"{k}={v}" for k, v in rows.items()) if rows else None
    telemetry.end(span, attributes={"action.seq": seq, "external_ids": ids_attr})


def _capture(call: Call, value: Any) -> Steps[tuple[dict[str, Any], str | None]]:
    """Run the policy's ``capture`` hook: more external ids, read after the call. Its failure
    does not undo the call; it becomes a note on the action for the reviewer."""
    capture = call.policy.capture
    if capture is None:
        return {}, None
    kwargs = inject.hook_kwargs(capture, {"args": call.args, "result": value}, call.injected)
    outcome = yield from attempts(NO_RETRY, Invoke(capture, kwargs))
    problem: str | None = None
    if outcome.error is not None:
        problem = describe(outcome.error)
    elif outcome.value is None:
        return {}, None
    elif not isinstance(outcome.value, Mapping):
        problem = f"it returned a {type(outcome.value).__name__}, not a mapping of names to ids"
    else:
        try:
            return {str(k): codec.encode(v) for k, v in outcome.value.items()}, None
        except NotJSON as exc:
            problem = f"what it returned is not JSON ({exc})"
    return {}, (
        f"the call succeeded, but its capture hook failed: {problem[:500]}; the external ids "
        "it should have read are missing, find them by hand before undoing or reviewing it"
    )


def ask_approval(
    core: Core, run: LiveRun, policy: Policy, args: dict[str, Any], call_id: str | None
) -> bool:
    """Ask the approval gate without running the tool (for frameworks with their own pause).

    True when the call must wait: the request is recorded and the run is awaiting approval.
    False when the call may go ahead to the guarded call, which then decides (no approval
    needed, already approved or done, rejected, or arguments it refuses).
    """
    if policy.approval is None or (run.halted and not run.awaiting):
        return False  # (a run paused for approval in this turn may ask about more calls)
    try:
        plain = to_jsonable(args)
    except NotJSON:
        return False
    args_hash = core.store.keys.mac(canonical(plain), run.key_id)
    key = idempotency_key(core.store.keys, policy, args, call_id, args_hash, run)
    if run.done_seq(key) is not None:
        return False
    try:
        gate(core, run, policy, plain, args_hash, key, call_id)
    except OwnershipLost:
        run.halted = True
        raise  # not an approval to wait for: this worker lost the run
    except RunHalted:
        return True
    except CallRejected:
        return False
    return False
