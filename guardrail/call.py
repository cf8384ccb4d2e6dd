"""One guarded call (DESIGN.md section 4): dedup, write-ahead, call with retries, record, halt."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from guardrail import telemetry
from guardrail.drive import Invoke, Steps, attempts
from guardrail.errors import CallRefused, ResultNotReplayable, RunHalted
from guardrail.lifecycle import halt, now
from guardrail.policy import Policy, resolve_path
from guardrail.redact import NotJSON, canonical, digest, redact, to_jsonable
from guardrail.store import Write
from guardrail.testing import crash_point

if TYPE_CHECKING:
    from guardrail.guard import Guard
    from guardrail.run import Run


class ResultWarning(UserWarning):
    """A tool returned something guardrail could not store faithfully."""


def guarded_call(
    guard: Guard,
    run: Run,
    policy: Policy,
    fn: Callable[..., Any],
    args: dict[str, Any],
    call_id: str | None,
) -> Steps[Any]:
    tool = policy.name
    run.check_open()
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
    args_hash = digest(text)
    key = idempotency_key(policy, args, call_id, args_hash, run)

    done = guard.store.done_action(run.id, key)
    if done is not None:
        seq, result, note = done
        if note is not None:
            raise ResultNotReplayable(
                f"run {run.id}: {tool} already succeeded as action {seq}, but its result was "
                f"{note.replace('_', ' ')} and cannot be returned again; return JSON-able values "
                "(dicts, lists, pydantic models) from tools",
                run_id=run.id,
                tool=tool,
                field="result",
            )
        return result

    seq = run.take_seq()
    span = telemetry.start_tool(tool, call_id, run.id, policy.effect)
    trace_id, span_id = telemetry.ids(span)
    stored_args = redact(plain, policy.redact, "args")
    guard.store.transact(
        run.id,
        "action.start",
        [
            Write(
                "actions",
                {"run_id": run.id, "seq": seq},
                {
                    "tool": tool,
                    "call_id": call_id,
                    "idempotency_key": key,
                    "effect": policy.effect,
                    "state": "started",
                    "attempts": 1,
                    "args": stored_args,
                    "args_hash": args_hash,
                    "external_ids": {},
                    "trace_id": trace_id,
                    "span_id": span_id,
                    "started_at": now(),
                },
                insert=True,
            )
        ],
    )
    crash_point("after_start")
    outcome = yield from attempts(policy.call_retry, Invoke(fn, args, span))
    if outcome.error is None:
        crash_point("after_call")
        writes = finish_writes(guard, policy, run.id, seq, args, outcome.value, outcome.attempts)
        guard.store.transact(run.id, "action.succeed", writes)
        telemetry.end(span, attributes={"action.seq": seq, "external_ids": _ids_attr(writes)})
        return outcome.value

    error = outcome.error
    message = f"{type(error).__name__}: {error}"
    guard.store.transact(
        run.id,
        "action.fail",
        [
            Write(
                "actions",
                {"run_id": run.id, "seq": seq},
                {
                    "state": "failed",
                    "attempts": outcome.attempts,
                    "error": message[:2000],
                    "finished_at": now(),
                },
            )
        ],
    )
    telemetry.end(span, error=error, attributes={"action.seq": seq})
    run.halted = True
    record = yield from halt(
        guard,
        run.id,
        reason=f"{tool} failed: {message[:500]}",
        hold=policy.on_failure == "hold",
        failed_seq=seq,
    )
    items = tuple(i.id for i in guard.store.review_items(run_id=run.id, status="open"))
    raise RunHalted(
        f"run {run.id} halted: {tool} failed ({message[:200]}); it is {record.status} with "
        f"{len(items)} open review item(s). Inspect it with `guardrail show {run.id}`.",
        run_id=run.id,
        status=record.status,
        tool=tool,
        review_items=items,
    ) from error


def idempotency_key(
    policy: Policy, args: dict[str, Any], call_id: str | None, args_hash: str, run: Run
) -> str:
    """The declared key, else the framework's call id, else tool + args + occurrence in the run.

    Counting occurrences keeps two identical calls in one run apart, while a replay of the run
    (after resume) meets the same calls in the same order and finds their recorded results.
    """
    declared = policy.idempotency_key
    if callable(declared):
        return f"{policy.name}:{declared(args)}"
    if isinstance(declared, str):
        return f"{policy.name}:{resolve_path(declared, {'args': args})}"
    if call_id is not None:
        return f"call:{call_id}"
    return f"{policy.name}:{args_hash}:{run.occurrence(policy.name, args_hash)}"


def finish_writes(
    guard: Guard,
    policy: Policy,
    run_id: str,
    seq: int,
    args: dict[str, Any],
    value: Any,
    attempts: int = 1,
) -> list[Write]:
    """The writes that record a success: result (JSON, redacted, capped) and external ids."""
    ids: dict[str, str] = {}
    if policy.external_ids:
        scope = {"result": value, "args": args}
        for name, path in policy.external_ids.items():
            found = resolve_path(path, scope)
            if found is not None:
                ids[name] = str(found)
    note: str | None = None
    try:
        result = redact(to_jsonable(value), policy.redact, "result")
    except NotJSON as exc:
        note = "not_json"
        result = {"type": type(value).__qualname__, "repr": repr(value)[:1000]}
        warnings.warn(
            f"run {run_id}: {policy.name} returned a {type(value).__qualname__}, which is not "
            f"JSON ({exc}); its repr was recorded instead",
            ResultWarning,
            stacklevel=2,
        )
    if (
        note is None
        and guard.max_result_bytes is not None
        and isinstance(result, dict | list | str)
    ):
        size = len(canonical(result))
        if size > guard.max_result_bytes:
            note = "truncated"
            result = {"truncated": True, "bytes": size}
    key = {"run_id": run_id, "seq": seq}
    writes = [
        Write(
            "actions",
            key,
            {
                "state": "succeeded",
                "attempts": attempts,
                "result": result,
                "result_note": note,
                "external_ids": ids,
                "finished_at": now(),
            },
        )
    ]
    writes.extend(
        Write("external_ids", {**key, "name": name}, {"value": value}, insert=True)
        for name, value in ids.items()
    )
    return writes


def _ids_attr(writes: list[Write]) -> str | None:
    ids = writes[0].values["external_ids"]
    return ",".join(f"{k}={v}" for k, v in ids.items()) if ids else None
