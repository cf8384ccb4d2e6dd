"""A call that failed, or whose outcome could not be recorded: record it, ask its probe, and
halt the run (``RunHalted`` for the agent) once the run's other calls in flight have ended.

Fault-closed: the tool may have run, so whatever goes wrong here ends in a state a person sees,
never in a retryable error that would run it twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from guardrail import codec, telemetry
from guardrail import transitions as T
from guardrail.core import Core, LiveRun, commit, still_holds
from guardrail.drive import Sleep, Steps
from guardrail.errors import OwnershipLost, RunHalted, StoreError
from guardrail.lifecycle import halt
from guardrail.recovery import settle_by_probe
from guardrail.redact import NotJSON, canonical, describe, redact_text
from guardrail.store import RunRecord

if TYPE_CHECKING:
    from guardrail.prepare import Call

SIBLING_WAIT = 60.0  # seconds a failing call waits for parallel calls of its run to finish
# the runs of the guarded calls this context is inside, outermost first: a tool that runs
# another agent in the same run encloses that agent's calls, which must not wait for it
_calls: ContextVar[tuple[str, ...]] = ContextVar("guardrail_calls", default=())


@contextmanager
def inside(run_id: str) -> Iterator[None]:
    """Mark the calling context as inside a guarded call of ``run_id`` (see `stop`)."""
    token = _calls.set((*_calls.get(), run_id))
    try:
        yield
    finally:
        _calls.reset(token)


def failed(
    core: Core,
    run: LiveRun,
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
        yield from record_outcome(core, run, tool, seq, t, span)
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
        yield from record_outcome(core, run, tool, seq, t, span)
        telemetry.end(span, error=error if isinstance(error, Exception) else None)
        settled = yield from _probe(core, run, call, seq, message)
        what = {
            "failed": f"{tool} failed (its probe found it did not take effect)",
            "succeeded": f"{tool} failed, and its probe says to treat it as done",
        }.get(settled, f"{tool} may or may not have taken effect")
    record = yield from stop(
        core,
        run,
        reason=f"{what}: {message[:500]}",
        hold=(run.on_failure or call.policy.on_failure) == "hold",
        failed_seq=seq,
    )
    # the tool's own exception is not chained: its text may hold secrets
    raise halted(core, run, tool, f"{what} ({message[:200]})", record) from None


def _probe(core: Core, run: LiveRun, call: Call, seq: int, message: str) -> Steps[str]:
    """Ask the policy's probe whether a call whose outcome is unknown took effect, and return
    the action's state. The call has returned here, so a "no" is believed; no answer leaves it
    in doubt, for a person."""
    doubt = T.ActionState.IN_DOUBT.value
    if call.policy.probe is None:
        return doubt
    try:  # as stored (with its snapshot), for the probe to ask for
        found = [a for a in core.store.keyed_actions(run.id, call.key) if a.seq == seq]
    except StoreError:
        return doubt  # it stays in doubt: the halt lists it for a person
    if not found or found[0].state != T.ActionState.IN_DOUBT:
        return found[0].state if found else doubt
    try:
        return (
            yield from settle_by_probe(
                core, run.lease, found[0], believe_not_done=True, reason=message
            )
        )
    except OwnershipLost:
        run.halted = True
        raise
    except StoreError:
        return doubt  # it stays in doubt: the halt lists it for a person


def as_text(value: Any) -> str:
    try:
        text = value if isinstance(value, str) else canonical(codec.encode(value))
    except NotJSON:
        text = repr(value)
    return redact_text(text)[:1000]


def retry_allowed(core: Core, run: LiveRun) -> None:
    """A retry runs the tool again: only while this worker still owns the running run."""
    try:
        still_holds(core, run.lease, T.RunStatus.RUNNING)
    except OwnershipLost:
        run.halted = True
        raise


def record_outcome(
    core: Core, run: LiveRun, tool: str, seq: int, t: T.Transition, span: telemetry.Span
) -> Steps[None]:
    """Record a call's outcome. The tool has run: if the store cannot record it, the action is
    in doubt and the run halts; it never becomes an error the agent could retry."""
    try:
        if commit(core, t):
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
        commit(core, T.in_doubt(run.lease, seq, message))
    except OwnershipLost:
        run.halted = True
        raise
    except StoreError:
        pass  # the halt below (or recovery, once the lease expires) lists it in doubt
    record = yield from stop(core, run, reason=message)
    raise halted(core, run, tool, message, record)


def halted(core: Core, run: LiveRun, tool: str, what: str, record: RunRecord) -> RunHalted:
    items = tuple(i.id for i in core.store.review_items(run_id=run.id, status="open"))
    return RunHalted(
        f"run {run.id} halted: {what}; it is {record.status} with {len(items)} open review "
        f"item(s). Inspect it with `guardrail show {run.id}`.",
        run_id=run.id,
        status=record.status,
        tool=tool,
        review_items=items,
    )


def stop(
    core: Core, run: LiveRun, *, reason: str, hold: bool = False, failed_seq: int | None = None
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
        return core.require_run(run.id)
    try:
        return (yield from halt(core, run.lease, reason=reason, hold=hold, failed_seq=failed_seq))
    except StoreError as exc:
        core.leases.drop(run.id, run.lease.epoch)
        raise RunHalted(
            f"run {run.id} halted: {reason[:300]}; the store failed while halting it "
            f"({redact_text(str(exc))}). "
            "No more calls run here; recovery (`guardrail recover`) finishes the halt once the "
            f"run's lease expires (after {core.leases.stale_after:g}s)",
            run_id=run.id,
            status="running",
        ) from exc
    finally:
        run.halt_done = True
