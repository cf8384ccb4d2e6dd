"""One guarded call: dedup, approval gate, write-ahead intent, call with retries, record, halt.

Fault-closed: once the intent is committed the tool may have run, so whatever goes wrong after
that (the store failing to record the outcome, the run taken over meanwhile) ends in ``RunHalted``
for the agent and a state a person sees, never in a retryable error that would run it twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from guardrail import codec, inject, telemetry
from guardrail import transitions as T
from guardrail.approval import gate
from guardrail.drive import Invoke, Sleep, Steps, attempts
from guardrail.errors import (
    CallRefused,
    CallRejected,
    Conflict,
    OwnershipLost,
    ResultNotReplayable,
    RunHalted,
    StoreError,
)
from guardrail.keys import seal
from guardrail.lifecycle import commit, halt, now, still_holds
from guardrail.policy import NO_RETRY, Policy, resolve_path
from guardrail.record import finish_values, id_rows
from guardrail.recovery import settle_by_probe
from guardrail.redact import (
    NotJSON,
    canonical,
    describe,
    looks_secret,
    redact,
    redact_text,
    redacted_path,
    to_jsonable,
)
from guardrail.store import Recorded, RunRecord
from guardrail.testing import crash_point

if TYPE_CHECKING:
    from guardrail.guard import Guard
    from guardrail.run import Run


SIBLING_WAIT = 60.0  # seconds a failing call waits for parallel calls of its run to finish
# the runs of the guarded calls this context is inside, outermost first: a tool that runs
# another agent in the same run encloses that agent's calls, which must not wait for it
_calls: ContextVar[tuple[str, ...]] = ContextVar("guardrail_calls", default=())


def guarded_call(
    guard: Guard,
    run: Run,
    policy: Policy,
    fn: Callable[..., Any],
    args: dict[str, Any],
    call_id: str | None,
    injected: Mapping[str, Any] | None = None,
) -> Steps[Any]:
    run.check_open()
    run.begin_call()
    token = _calls.set((*_calls.get(), run.id))
    try:
        return (yield from _guarded_call(guard, run, policy, fn, args, call_id, injected))
    finally:
        _calls.reset(token)
        run.end_call()


def _guarded_call(
    guard: Guard,
    run: Run,
    policy: Policy,
    fn: Callable[..., Any],
    args: dict[str, Any],
    call_id: str | None,
    injected: Mapping[str, Any] | None,
) -> Steps[Any]:
    args, live = inject.split(args, policy.injected, injected)
    call = _prepare(guard, run, policy, args, call_id, live, codec.returns(fn))
    recorded = _lookup(guard, run, call)
    if recorded is not None:
        return _replay(run, call, recorded)
    approved = gate(guard, run, policy, call.plain, call.args_hash, call.key, call_id)
    snapshot = None
    if policy.snapshot is not None:
        taken, problem = yield from take_snapshot(run, policy, args, live)
        if problem is not None:
            _refuse(guard, run, call, approved, problem)
        snapshot = seal(guard.store.keys, canonical(taken), run.key_id)
    seq, span = _begin(guard, run, call, approved, snapshot)
    if live and policy.effect != "read_only":
        guard.live.keep(run.id, seq, live)  # for its undo, if this process compensates it
    crash_point("after_start")
    outcome = yield from attempts(
        policy.call_retry,
        Invoke(fn, {**args, **live} if live else args, span),
        before_retry=lambda: _retry_allowed(guard, run),
    )
    if outcome.error is None:
        crash_point("after_call")
        wrong = policy.error_result
        if wrong is not None and wrong.holds(outcome.value):
            text = f"returned an error: {_as_text(outcome.value)}"
            yield from _failed(guard, run, call, seq, span, text, wrong.means, outcome.attempts)
            return outcome.value  # the model gets the error to correct (then="return")
        yield from _succeeded(guard, run, call, seq, span, outcome.value, outcome.attempts)
        return outcome.value
    error = outcome.error
    means = policy.outcome_of(error)
    yield from _failed(guard, run, call, seq, span, error, means, outcome.attempts)
    raise AssertionError("unreachable: a failed call halts the run")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class Call:
    """One call as guardrail sees it before it runs: arguments as JSON, keyed hash, key."""

    policy: Policy
    args: dict[str, Any]
    plain: dict[str, Any]
    args_hash: str
    key: str
    call_id: str | None
    injected: Mapping[str, Any]  # live objects for the tool and its hooks; never recorded
    returns: TypeAdapter[Any] | None  # the tool's declared return type, for replays

    @property
    def tool(self) -> str:
        return self.policy.name


def _prepare(
    guard: Guard,
    run: Run,
    policy: Policy,
    args: dict[str, Any],
    call_id: str | None,
    injected: Mapping[str, Any],
    returns: TypeAdapter[Any] | None = None,
) -> Call:
    """Arguments as JSON, their keyed hash and the call's idempotency key; bad arguments are
    refused before anything is recorded."""
    tool = policy.name
    try:
        plain = to_jsonable(args)
    except NotJSON as exc:
        raise CallRefused(
            f"run {run.id}: the arguments of {tool} are not JSON ({exc}); nothing ran",
            run_id=run.id,
            tool=tool,
            field="args",
        ) from None
    text = canonical(plain)
    if len(text) > guard.max_args_bytes:
        raise CallRefused(
            f"run {run.id}: the arguments of {tool} are {len(text):,} bytes, over the limit of "
            f"{guard.max_args_bytes:,} (Guard(max_args_bytes=...)); nothing ran",
            run_id=run.id,
            tool=tool,
            field="args",
        )
    args_hash = guard.store.keys.mac(text, run.key_id)
    key = idempotency_key(policy, args, call_id, args_hash, run)
    return Call(policy, args, plain, args_hash, key, call_id, injected, returns)


def _lookup(guard: Guard, run: Run, call: Call) -> Recorded | None:
    """Dedup: the recorded call this key already answered, if it took effect."""
    try:
        done = run.done_seq(call.key)
        return guard.store.recorded_result(run.id, done, call.key) if done is not None else None
    except StoreError as exc:
        raise _not_started(run, call, exc) from exc


def _begin(
    guard: Guard, run: Run, call: Call, approved: int | None, snapshot: Any
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
            "started_at": now(),
        },
        approved=approved is not None,
    )
    try:
        begun = commit(guard, intent)
    except OwnershipLost as exc:
        run.halted = True
        telemetry.end(span, error=exc)
        raise
    except StoreError as exc:
        telemetry.end(span, error=exc)
        raise _not_started(run, call, exc) from exc
    if not begun:
        telemetry.end(span, error=Conflict("approval already used"))
        raise Conflict(
            f"run {run.id}: the approved call of {call.tool} (action {seq}) was started elsewhere",
            run_id=run.id,
            status="running",
        )
    return seq, span


def _succeeded(
    guard: Guard,
    run: Run,
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
        guard.max_result_bytes,
        attempts,
        captured,
        call.returns,
    )
    if problem is not None:
        values["error"] = problem  # a note for the reviewer: the call itself succeeded
    rows = id_rows(ids)
    yield from _record(guard, run, call.tool, seq, T.succeed(run.lease, seq, values, rows), span)
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


def _failed(
    guard: Guard,
    run: Run,
    call: Call,
    seq: int,
    span: telemetry.Span,
    error: Exception | str,
    means: str,
    attempts: int,
) -> Steps[None]:
    """Record a failed call and halt the run (RunHalted for the agent), unless the policy
    returns a result that is an error to the model.

    ``means`` is what the failure tells about the call's effect: ``not_done`` (it proves the
    call did nothing: the action is ``failed``) or ``unknown`` (it may have taken effect: the
    action is ``in_doubt``, the probe may settle it, else a person says whether it happened)."""
    tool = call.tool
    message = error if isinstance(error, str) else describe(error)
    if means == "not_done":
        t = T.fail(run.lease, seq, attempts, message)
        yield from _record(guard, run, tool, seq, t, span)
        telemetry.end(span, error=error if isinstance(error, Exception) else None)
        wrong = call.policy.error_result
        if isinstance(error, str) and wrong is not None and wrong.then == "return":
            return  # recorded as failed; nothing happened, the model may correct itself
        if isinstance(error, Exception) and call.policy.on_not_done == "raise":
            raise error  # recorded as failed; nothing happened: the agent's framework decides
        what = f"{tool} failed"
    else:
        message = f"outcome unknown: {message}"
        t = T.in_doubt(run.lease, seq, message, attempts)
        yield from _record(guard, run, tool, seq, t, span)
        telemetry.end(span, error=error if isinstance(error, Exception) else None)
        settled = yield from _probe(guard, run, call, seq, message)
        what = {
            "failed": f"{tool} failed (its probe found it did not take effect)",
            "succeeded": f"{tool} failed, and its probe says to treat it as done",
        }.get(settled, f"{tool} may or may not have taken effect")
    record = yield from _stop(
        guard,
        run,
        reason=f"{what}: {message[:500]}",
        hold=(run.on_failure or call.policy.on_failure) == "hold",
        failed_seq=seq,
    )
    # the tool's own exception is not chained: its text may hold secrets
    raise _halted(guard, run, tool, f"{what} ({message[:200]})", record) from None


def _probe(guard: Guard, run: Run, call: Call, seq: int, message: str) -> Steps[str]:
    """Ask the policy's probe whether a call whose outcome is unknown took effect, and return
    the action's state. The call has returned here, so a "no" is believed; no answer leaves it
    in doubt, for a person."""
    doubt = T.ActionState.IN_DOUBT.value
    if call.policy.probe is None:
        return doubt
    try:  # as stored (with its snapshot), for the probe to ask for
        found = [a for a in guard.store.keyed_actions(run.id, call.key) if a.seq == seq]
    except StoreError:
        return doubt  # it stays in doubt: the halt lists it for a person
    if not found or found[0].state != T.ActionState.IN_DOUBT:
        return found[0].state if found else doubt
    try:
        return (
            yield from settle_by_probe(
                guard, run.lease, found[0], believe_not_done=True, reason=message
            )
        )
    except OwnershipLost:
        run.halted = True
        raise
    except StoreError:
        return doubt  # it stays in doubt: the halt lists it for a person


def _as_text(value: Any) -> str:
    try:
        text = value if isinstance(value, str) else canonical(codec.encode(value))
    except NotJSON:
        text = repr(value)
    return redact_text(text)[:1000]


def _retry_allowed(guard: Guard, run: Run) -> None:
    """A retry runs the tool again: only while this worker still owns the running run."""
    try:
        still_holds(guard, run.lease, T.RunStatus.RUNNING)
    except OwnershipLost:
        run.halted = True
        raise


def _replay(run: Run, call: Call, recorded: Recorded) -> Any:
    """Answer a call whose key already took effect with its recorded result, if it is the same
    call (same tool, same arguments); a reused key for another call is refused."""
    tool, key = call.tool, call.key
    if recorded.tool != tool or recorded.args_hash != call.args_hash:
        what = "another tool" if recorded.tool != tool else "other arguments"
        raise Conflict(
            f"run {run.id}: the key {key!r} of this call of {tool} was already used by action "
            f"{recorded.seq} ({recorded.tool}) with {what}; a reused call id or idempotency key "
            "must name the same call. Nothing ran: give this call its own id or key",
            run_id=run.id,
            status="running",
        )
    if recorded.note is not None:
        raise ResultNotReplayable(
            f"run {run.id}: {tool} already succeeded as action {recorded.seq}, but its result "
            f"was {recorded.note.replace('_', ' ')} and cannot be returned again; return "
            "JSON-able values (dicts, lists, pydantic models) from tools",
            run_id=run.id,
            tool=tool,
            field="result",
        )
    return codec.decode(call.returns, recorded.result)


def _record(
    guard: Guard, run: Run, tool: str, seq: int, t: T.Transition, span: telemetry.Span
) -> Steps[None]:
    """Record a call's outcome. The tool has run: if the store cannot record it, the action is
    in doubt and the run halts; it never becomes an error the agent could retry."""
    try:
        if commit(guard, t):
            return
        problem = "its action was no longer `started`"
    except OwnershipLost as exc:
        run.halted = True
        telemetry.end(span, error=exc)
        raise
    except StoreError as exc:
        problem = redact_text(str(exc))
    telemetry.end(span, error=StoreError(problem))
    message = f"{tool} ran but its outcome could not be recorded ({problem[:300]})"
    try:
        commit(guard, T.in_doubt(run.lease, seq, message))
    except OwnershipLost:
        run.halted = True
        raise
    except StoreError:
        pass  # the halt below (or recovery, once the lease expires) lists it in doubt
    record = yield from _stop(guard, run, reason=message)
    raise _halted(guard, run, tool, message, record)


def _halted(guard: Guard, run: Run, tool: str, what: str, record: RunRecord) -> RunHalted:
    items = tuple(i.id for i in guard.store.review_items(run_id=run.id, status="open"))
    return RunHalted(
        f"run {run.id} halted: {what}; it is {record.status} with {len(items)} open review "
        f"item(s). Inspect it with `guardrail show {run.id}`.",
        run_id=run.id,
        status=record.status,
        tool=tool,
        review_items=items,
    )


def _stop(
    guard: Guard, run: Run, *, reason: str, hold: bool = False, failed_seq: int | None = None
) -> Steps[RunRecord]:
    """A call of the run failed for good: refuse new calls, let calls still running in parallel
    finish first (so compensation sees their outcome), then halt. Of several failing calls the
    first halts the run; the others wait for that and report the same halt.

    If the store fails while halting, the run stops in this process (every further call is
    refused) and its lease is no longer renewed, so recovery takes it over when it expires."""
    halter = run.fail_call()
    # the calls enclosing this one wait for it: they are not siblings to wait for
    enclosing = sum(1 for r in _calls.get()[:-1] if r == run.id)
    waited = 0.0
    while (
        run.inflight - enclosing > run.failing if halter else not run.halt_done
    ) and waited < SIBLING_WAIT:
        yield Sleep(0.002)
        waited += 0.002
    if not halter:
        return guard.require_run(run.id)
    try:
        return (yield from halt(guard, run.lease, reason=reason, hold=hold, failed_seq=failed_seq))
    except StoreError as exc:
        guard.drop_lease(run.id, run.lease.epoch)
        raise RunHalted(
            f"run {run.id} halted: {reason[:300]}; the store failed while halting it "
            f"({redact_text(str(exc))}). "
            "No more calls run here; recovery (`guardrail recover`) finishes the halt once the "
            f"run's lease expires (after {guard.stale_after:g}s)",
            run_id=run.id,
            status="running",
        ) from exc
    finally:
        run.halt_done = True


def ask_approval(
    guard: Guard, run: Run, policy: Policy, args: dict[str, Any], call_id: str | None
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
    args_hash = guard.store.keys.mac(canonical(plain), run.key_id)
    key = idempotency_key(policy, args, call_id, args_hash, run)
    if run.done_seq(key) is not None:
        return False
    try:
        gate(guard, run, policy, plain, args_hash, key, call_id)
    except OwnershipLost:
        run.halted = True
        raise  # not an approval to wait for: this worker lost the run
    except RunHalted:
        return True
    except CallRejected:
        return False
    return False


def take_snapshot(
    run: Run, policy: Policy, args: dict[str, Any], injected: Mapping[str, Any] | None = None
) -> Steps[tuple[Any, str | None]]:
    """Keep what the call will change, for its undo: the snapshot as JSON, or why it could
    not be taken (then the call does not run)."""
    assert policy.snapshot is not None
    kwargs = inject.hook_kwargs(policy.snapshot, {"args": args}, injected)
    outcome = yield from attempts(NO_RETRY, Invoke(policy.snapshot, kwargs))
    if outcome.error is not None:
        return None, describe(outcome.error)
    try:
        stored = codec.encode(outcome.value)
    except NotJSON as exc:
        return None, f"its snapshot is not JSON ({exc})"
    if not codec.round_trips(codec.returns(policy.snapshot), outcome.value, stored):
        kind = type(outcome.value).__name__
        return None, f"its snapshot (a {kind}) does not come back equal from its JSON"
    return stored, None


def _refuse(guard: Guard, run: Run, call: Call, approved: int | None, problem: str) -> None:
    """The call cannot run: keep it in the log as refused, with why, and tell the agent."""
    policy = call.policy
    reason = f"cannot take the snapshot {policy.name} needs for its undo ({problem})"
    if approved is None:  # an approved action keeps its approval for a later try
        values = {
            "tool": call.tool,
            "call_id": call.call_id,
            "idempotency_key": call.key,
            "effect": policy.effect,
            "args": redact(call.plain, policy.redact, "args"),
            "args_hash": call.args_hash,
            "external_ids": {},
            "error": redact_text(reason)[:2000],
            "started_at": now(),
            "finished_at": now(),
        }
        try:
            commit(guard, T.refuse(run.lease, run.take_seq(), values))
        except OwnershipLost:
            run.halted = True
            raise
        except StoreError:
            pass  # refused all the same: nothing ran, and the agent is told
    raise CallRefused(
        f"run {run.id}: {reason}; nothing ran",
        run_id=run.id,
        tool=policy.name,
        field="snapshot",
    )


def _not_started(run: Run, call: Call, exc: StoreError) -> StoreError:
    """The store failed before the call's ``started`` row committed: the tool did not run."""
    policy = call.policy
    if policy.idempotency_key is None and call.call_id is None:
        run.release(policy.name, call.args_hash, int(call.key.rsplit(":", 1)[1]))
    return StoreError(
        f"run {run.id}: {policy.name} did not run, its start could not be recorded "
        f"({redact_text(str(exc))}); nothing recorded before was lost, call it again once the "
        "store is back",
        run_id=run.id,
        tool=policy.name,
    )


def idempotency_key(
    policy: Policy, args: dict[str, Any], call_id: str | None, args_hash: str, run: Run
) -> str:
    """The declared key, else the framework's call id, else tool + args + occurrence in the run.

    Counting occurrences keeps two identical calls in one run apart, while a replay of the run
    (after resume) meets the same calls in the same order and finds their recorded results.
    """
    declared = policy.idempotency_key
    value: Any = None
    if callable(declared):
        value = declared(args)
    elif isinstance(declared, str):
        value = resolve_path(declared, {"args": args})
        if redacted_path(declared, policy.redact):
            value = run.guard.store.keys.mac(
                f"key:{value}", run.key_id
            )  # stored keyed, not in clear
    if declared is not None:
        text = str(value)
        if looks_secret(text):
            text = run.guard.store.keys.mac(f"key:{text}", run.key_id)
        return f"{policy.name}:{text}"
    if call_id is not None:
        return f"call:{call_id}"
    return f"{policy.name}:{args_hash}:{run.occurrence(policy.name, args_hash)}"
