"""The narrow context the core works in: what a guarded call, a halt, a decision or a recovery
needs of the guard, and nothing more.

`Core` is built once by `Guard` and handed down: the store, the policies (a lookup), the clock,
the lease book (this process's owner name and the leases it renews), the hooks that tell people
a run waits for them, the injected values of this process's calls, and the limits on what is
recorded. Core functions take a `Core`, never the `Guard`, so the imports point one way::

    guard -> run -> call -> approval | decisions | recovery -> lifecycle -> core

`commit` is the one way the core writes: one transition, stamped with the clock, fenced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from guardrail.clock import Clock, stamp
from guardrail.errors import OwnershipLost, RunNotFound, StoreError
from guardrail.inject import ContextFactory, Live
from guardrail.leases import Leases
from guardrail.policy import Policy
from guardrail.store import Fenced, RunRecord, Store
from guardrail.transitions import Lease, Transition


class PolicyLookup(Protocol):
    """What compensation asks of the policies: a tool's policy, a registered tool by name."""

    def find_policy(self, name: str) -> Policy | None: ...

    def tool_function(self, name: str) -> Callable[..., Any] | None: ...


class Policies(PolicyLookup, Protocol):
    """What a run asks of the policies besides: their fingerprint, and a call's policy and
    callable (refused when the guard is strict and the tool has none)."""

    @property
    def policy_fingerprint(self) -> str: ...

    def resolve_tool(
        self, tool: str, fn: Callable[..., Any] | None, *, run_id: str
    ) -> tuple[Policy, Callable[..., Any]]: ...


class Hooks(Protocol):
    """Who is told when a run starts waiting for a person, and when it completes."""

    def halted(self, run: RunRecord) -> None: ...

    def completed(self, run_id: str) -> None: ...


class LiveRun(Protocol):
    """What a guarded call needs of the run it belongs to (`guardrail.run.Run` is one): its
    identity and lease, and the bookkeeping of its calls in this process."""

    id: str
    agent: str
    metadata: dict[str, Any]
    lease: Lease
    key_id: str | None
    on_failure: str | None
    halted: bool  # no more calls run here
    awaiting: bool  # halted by an approval request of this process
    halt_done: bool

    @property
    def inflight(self) -> int: ...

    @property
    def failing(self) -> int: ...

    def check_open(self) -> None: ...

    def begin_call(self) -> None: ...

    def end_call(self) -> None: ...

    def fail_call(self) -> bool: ...

    def done_seq(self, key: str) -> int | None: ...

    def mark_done(self, key: str, seq: int) -> None: ...

    def take_seq(self) -> int: ...

    def occurrence(self, tool: str, args_hash: str) -> int: ...

    def release(self, tool: str, args_hash: str, occurrence: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Core:
    """Everything the core needs of a guard (see the module doc)."""

    store: Store
    policies: Policies
    clock: Clock
    leases: Leases
    hooks: Hooks
    live: Live  # injected values of this process's calls, for their hooks
    factory: ContextFactory | None  # injected values for hooks run in another process
    max_args_bytes: int
    max_result_bytes: int | None

    @property
    def owner(self) -> str:
        return self.leases.owner

    def find_policy(self, name: str) -> Policy | None:
        return self.policies.find_policy(name)

    def require_run(self, run_id: str) -> RunRecord:
        run = self.store.run(run_id)
        if run is None:
            raise RunNotFound(f"no run {run_id!r} in {self.store.url}", run_id=run_id)
        return run


def commit(core: Core, t: Transition) -> bool:
    """Commit one transition, its timestamps read from the clock. A fenced one that does not
    land means this worker lost the run: raise OwnershipLost (nothing more may run or be
    recorded for it here)."""
    stamp(t.writes, core.clock())
    try:
        return core.store.transact(t.run_id, t.kind, t.writes, t.fence)
    except Fenced:
        raise lost(core, t.run_id, t.kind) from None


def still_holds(core: Core, lease: Lease, *statuses: str) -> None:
    """Raise OwnershipLost unless the run is still at the lease's epoch, in one of
    ``statuses``: asked before a retry, which must not run for a worker that lost the run."""
    record = core.store.run(lease.run_id)
    if record is None or record.epoch != lease.epoch or record.status not in statuses:
        raise lost(core, lease.run_id, "a retry")


def lost(core: Core, run_id: str, kind: str) -> OwnershipLost:
    core.leases.drop(run_id)
    try:
        record = core.store.run(run_id)
    except StoreError:
        record = None
    status = record.status if record is not None else "unknown"
    holder = f" under {record.owner}" if record is not None and record.owner else ""
    return OwnershipLost(
        f"run {run_id}: this worker no longer owns it ({kind} was refused; the run is now "
        f"{status}{holder}). Another worker or a person took it over while this one was paused "
        f"or cut off from the store; nothing more runs or is recorded here. See `guardrail show "
        f"{run_id}`",
        run_id=run_id,
        status=status,
    )
