"""A call before it runs: its arguments as JSON, their keyed hash and its idempotency key, the
answer a key already has (dedup and replay), the snapshot its undo needs, and a refusal that
keeps it in the log. Nothing here runs the tool."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from guardrail import codec, inject
from guardrail import transitions as T
from guardrail.clock import NOW
from guardrail.core import Core, LiveRun, commit
from guardrail.drive import Invoke, Steps, attempts
from guardrail.errors import CallRefused, Conflict, OwnershipLost, ResultNotReplayable, StoreError
from guardrail.keys import Keys
from guardrail.policy import NO_RETRY, Policy, resolve_path
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
from guardrail.store import Recorded


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


def prepare(
    core: Core,
    run: LiveRun,
    policy: Policy,
    args: dict[str, Any],
    call_id: str | None,
    injected: Mapping[str, Any] | None,
    returns: TypeAdapter[Any] | None = None,
) -> Call:
    """The call's recorded arguments (less the injected values, kept apart for the tool and its
    hooks) as JSON, their keyed hash and the call's idempotency key; bad arguments are refused
    before anything is recorded."""
    tool = policy.name
    args, live = inject.split(args, policy.injected, injected)
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
    if len(text) > core.max_args_bytes:
        raise CallRefused(
            f"run {run.id}: the arguments of {tool} are {len(text):,} bytes, over the limit of "
            f"{core.max_args_bytes:,} (Guard(max_args_bytes=...)); nothing ran",
            run_id=run.id,
            tool=tool,
            field="args",
        )
    args_hash = core.store.keys.mac(text, run.key_id)
    key = idempotency_key(core.store.keys, policy, args, call_id, args_hash, run)
    return Call(policy, args, plain, args_hash, key, call_id, live, returns)


def lookup(core: Core, run: LiveRun, call: Call) -> Recorded | None:
    """Dedup: the recorded call this key already answered, if it took effect."""
    try:
        done = run.done_seq(call.key)
        return core.store.recorded_result(run.id, done, call.key) if done is not None else None
    except StoreError as exc:
        raise not_started(run, call, exc) from exc


def replay(run: LiveRun, call: Call, recorded: Recorded) -> Any:
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


def idempotency_key(
    keys: Keys,
    policy: Policy,
    args: dict[str, Any],
    call_id: str | None,
    args_hash: str,
    run: LiveRun,
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
            value = keys.mac(f"key:{value}", run.key_id)  # stored keyed, not in clear
    if declared is not None:
        text = str(value)
        if looks_secret(text):
            text = keys.mac(f"key:{text}", run.key_id)
        return f"{policy.name}:{text}"
    if call_id is not None:
        return f"call:{call_id}"
    return f"{policy.name}:{args_hash}:{run.occurrence(policy.name, args_hash)}"


def take_snapshot(
    run: LiveRun, policy: Policy, args: dict[str, Any], injected: Mapping[str, Any] | None = None
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


def refuse(core: Core, run: LiveRun, call: Call, approved: int | None, problem: str) -> None:
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
            "started_at": NOW,
            "finished_at": NOW,
        }
        try:
            commit(core, T.refuse(run.lease, run.take_seq(), values))
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


def not_started(run: LiveRun, call: Call, exc: StoreError) -> StoreError:
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
