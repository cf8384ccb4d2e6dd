"""A live run: the context in which an agent's tool calls are guarded."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

from guardrail import transitions as T
from guardrail.call import ask_approval, guarded_call
from guardrail.core import Core, commit
from guardrail.drive import Steps, adrive, drive
from guardrail.errors import Conflict, GuardrailError, RunHalted, RunStateError, StoreError
from guardrail.lifecycle import halt
from guardrail.redact import describe, redact
from guardrail.store import RunRecord
from guardrail.transitions import Lease, new_id

_current: ContextVar[Run | None] = ContextVar("guardrail_run", default=None)


def current_run() -> Run | None:
    """The run entered by the innermost ``with guard.run(...)`` of this context."""
    return _current.get()


class Run:
    """One agent run. Enter it (``with`` or ``async with``) around the agent.

    Tools decorated with ``@guard.tool`` find the run they belong to by themselves; adapters
    call :meth:`call` / :meth:`acall`. Leaving the block normally completes the run; an exception
    from the agent halts it (compensating what it did) and propagates.

    Example::

        with guard.run(agent="shop") as run:
            create_order(item="book")
        print(run.id, run.status)
    """

    def __init__(
        self,
        core: Core,
        *,
        guard: object = None,
        agent: str,
        run_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        on_failure: str | None = None,
    ) -> None:
        self.core = core  # what the guard that made the run gives its calls
        self.guard = guard  # that guard itself, for adapters to tell their runs apart
        self.on_failure = on_failure  # "hold" holds every failure of this run for a person
        self.agent = agent
        self.id = run_id or new_id() + new_id()[:8]
        self._fresh = run_id is None  # a new random id: no stored run can have it yet
        self._entered_once = False
        self.metadata = dict(metadata or {})
        self.halted = False
        self.awaiting = False  # halted by an approval request of this process
        self.lease: Lease = Lease(self.id, core.owner, 0)  # claimed when the run is entered
        self.key_id: str | None = None  # the hash key of the run (None: a run made before keys)
        self._entered = False
        self._seq: itertools.count[int] = itertools.count(1)
        # Per-call state of a long run stays small: keyed by the hash of (tool, args hash) and of
        # the idempotency key (a collision only costs a look at the stored row, which checks).
        self._occurrences: Counter[int] = Counter()
        self._released: dict[int, list[int]] = {}
        self._done: dict[int, int] | None = None  # hash(idempotency key) -> seq
        self._tokens: list[Token[Run | None]] = []
        self._lock = threading.Lock()
        self._inflight = 0
        self._failing = 0
        self._halting = False
        self.halt_done = False

    # -- entering and leaving ----------------------------------------------------------------

    def _open(self) -> None:
        core = self.core
        store = core.store
        # (a run entered again, or given an id, may exist; one with a fresh random id cannot)
        existing = None if self._fresh and not self._entered_once else store.run(self.id)
        self._entered_once = True
        if existing is None:
            t = T.start_run(
                self.id,
                self.agent,
                core.owner,
                # stored, shown and sent to webhooks: values that look secret are redacted
                redact(self.metadata, (), "metadata") if self.metadata else {},
                store.keys.current,
                core.policies.policy_fingerprint,
            )
            self.key_id = store.keys.current
            try:
                commit(core, t)
                assert t.lease is not None
                self.lease = t.lease
            except StoreError:
                existing = store.run(self.id)
                if existing is None:
                    raise
                self._attach(existing)  # another worker started it at the same moment
        else:
            self._attach(existing)
        # One agent per run (the owner), so the run's succeeded keys can live in memory: a
        # replay looks them up without a query, a fresh run starts with none.
        self._done = {} if existing is None else None
        self._seq = itertools.count(1 if existing is None else store.next_seq(self.id))
        self._occurrences.clear()
        self._released.clear()
        self.halted = self.awaiting = False
        self._failing, self._halting, self.halt_done = 0, False, False
        self._entered = True
        core.leases.hold(self.lease)

    def _attach(self, existing: RunRecord) -> None:
        """Continue a run after a person resumed it (or in a new process after a restart)."""
        core = self.core
        store = core.store
        store.forget(self.id)
        if existing.status != T.RunStatus.RUNNING:
            raise RunStateError(
                f"run {self.id} is {existing.status}; it continues only after a person resumes "
                f"it (guardrail resume {self.id})",
                run_id=self.id,
                status=existing.status,
            )
        if existing.owner not in (None, core.owner) and core.leases.alive(
            existing.owner, existing.heartbeat_at
        ):
            raise Conflict(
                f"run {self.id} is being executed by {existing.owner}; one agent per run",
                run_id=self.id,
                status=existing.status,
            )
        doubt = store.seqs_in_state(self.id, (T.ActionState.STARTED,))
        if doubt and existing.owner is not None:
            # its owner is gone: a call it left `started` may have taken effect, and a replay
            # would run it again. Only recovery settles it (in doubt, for a person).
            tool = next((a.tool for a in store.actions(self.id) if a.seq == doubt[0]), "?")
            raise RunStateError(
                f"run {self.id}: its owner {existing.owner} stopped during {tool} (action "
                f"{doubt[0]}), "
                "which may or may not have taken effect; recover the run first (guard.recover() "
                "or `guardrail recover`), then a person checks the call and resumes it "
                f"(guardrail resume {self.id})",
                run_id=self.id,
                status=existing.status,
            )
        if not store.keys.has(existing.key_id):
            raise RunStateError(
                f"run {self.id} was written with the hash key {existing.key_id}, which this "
                f"process does not have (keys from {store.keys.source}); give it the same "
                "GUARDRAIL_HASH_KEY or key file as the process that started the run",
                run_id=self.id,
                status=existing.status,
            )
        self.key_id = existing.key_id
        t = T.claim(existing, core.owner, "run.attach")
        if not commit(core, t):
            raise Conflict(f"run {self.id} was claimed by another worker", run_id=self.id)
        assert t.lease is not None
        self.lease = t.lease
        self.agent = existing.agent

    def _close(self, error: BaseException | None) -> Steps[None]:
        self._entered = False
        try:
            if error is None and not self.halted:
                unsettled = self.core.store.seqs_in_state(self.id, (T.ActionState.STARTED,))
                if not unsettled:
                    commit(self.core, T.complete(self.lease))
                    self.core.live.drop(self.id)
                    self.core.hooks.completed(self.id)
                    return
                # a run holding a call whose outcome was never recorded is not complete
                error = GuardrailError(f"action {unsettled[0]} has no recorded outcome")
            if error is not None and not isinstance(error, RunHalted) and not self.halted:
                self.halted = True
                reason = f"the agent raised {describe(error)}"[:500]
                yield from halt(self.core, self.lease, reason=reason)
        finally:
            self.core.leases.drop(self.id, self.lease.epoch)

    def __enter__(self) -> Run:
        self._open()
        self._tokens.append(_current.set(self))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            drive(self._close(exc))
        finally:
            _current.reset(self._tokens.pop())

    async def __aenter__(self) -> Run:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await adrive(self._close(exc))
        finally:
            _current.reset(self._tokens.pop())

    # -- for adapters that see one call at a time ------------------------------------------

    def start(self) -> Run:
        """Open (create or re-attach) the run without a ``with`` block.

        For adapters that see one tool call at a time, such as LangChain middleware; pair with
        :meth:`complete`. Raises RunStateError while the run waits for a person.
        """
        self._open()
        return self

    def complete(self) -> None:
        """Mark a run opened with :meth:`start` as completed (unless it halted)."""
        drive(self._close(None))

    @property
    def entered(self) -> bool:
        return self._entered

    # -- calls -------------------------------------------------------------------------------

    def call(
        self,
        tool: str,
        args: dict[str, Any] | None = None,
        *,
        fn: Callable[..., Any] | None = None,
        call_id: str | None = None,
        injected: Mapping[str, Any] | None = None,
    ) -> Any:
        """Call ``tool`` (by name) under its policy, with ``args`` as keyword arguments.

        ``fn`` is the callable to run; it may be left out for tools registered with
        ``@guard.tool``. ``call_id`` is the framework's tool-call id, when there is one.
        ``injected`` are more keyword arguments for ``fn`` that are never recorded, hashed or
        part of the dedup key (a framework's context, a connection); the tool's hooks can ask
        for them by name.
        """
        policy, target = self.core.policies.resolve_tool(tool, fn, run_id=self.id)
        steps = guarded_call(self.core, self, policy, target, dict(args or {}), call_id, injected)
        return drive(steps)

    async def acall(
        self,
        tool: str,
        args: dict[str, Any] | None = None,
        *,
        fn: Callable[..., Any] | None = None,
        call_id: str | None = None,
        injected: Mapping[str, Any] | None = None,
    ) -> Any:
        """Async twin of :meth:`call`; ``fn`` may be sync or async."""
        policy, target = self.core.policies.resolve_tool(tool, fn, run_id=self.id)
        steps = guarded_call(self.core, self, policy, target, dict(args or {}), call_id, injected)
        return await adrive(steps)

    def needs_approval(self, tool: str, args: dict[str, Any], call_id: str | None = None) -> bool:
        """Ask ``tool``'s approval gate for these arguments without running it.

        True when a person must approve first: the request is recorded and the run now awaits
        approval. For frameworks that pause a call themselves (the OpenAI Agents SDK).
        """
        policy = self.core.find_policy(tool)
        if policy is None:
            return False
        return ask_approval(self.core, self, policy, dict(args), call_id)

    # -- used by the guarded call ------------------------------------------------------------

    def check_open(self) -> None:
        if not self._entered:
            raise GuardrailError(
                f"run {self.id} is not entered; use `with guard.run(...) as run:`", run_id=self.id
            )
        if self.halted:
            record = self.core.require_run(self.id)
            raise RunHalted(
                f"run {self.id} halted earlier and is {record.status}; no more calls run until "
                f"a person resumes it (guardrail resume {self.id})",
                run_id=self.id,
                status=record.status,
            )

    def fail_call(self) -> bool:
        """A call of this run failed for good: refuse new calls. True for the first failure,
        which halts the run; the others wait for :attr:`halt_done`."""
        with self._lock:
            self.halted = True
            self._failing += 1
            first = not self._halting
            self._halting = True
            return first

    @property
    def failing(self) -> int:
        """Calls that failed and wait for their siblings (they count in :attr:`inflight`)."""
        return self._failing

    def begin_call(self) -> None:
        with self._lock:
            self._inflight += 1

    def end_call(self) -> None:
        with self._lock:
            self._inflight -= 1

    @property
    def inflight(self) -> int:
        """Guarded calls of this run executing now (parallel tool calls of one model turn)."""
        return self._inflight

    def done_seq(self, key: str) -> int | None:
        """The seq of this run's succeeded action with idempotency key ``key``, if any."""
        if self._done is None:
            self._done = {hash(k): seq for k, seq in self.core.store.done_keys(self.id).items()}
        return self._done.get(hash(key))

    def mark_done(self, key: str, seq: int) -> None:
        if self._done is not None:
            self._done[hash(key)] = seq

    def take_seq(self) -> int:
        with self._lock:
            return next(self._seq)

    def occurrence(self, tool: str, args_hash: str) -> int:
        with self._lock:
            slot = hash((tool, args_hash))
            free = self._released.get(slot)
            if free:
                return free.pop(0)  # reuse what a call that never started gave back
            self._occurrences[slot] += 1
            return self._occurrences[slot]

    def release(self, tool: str, args_hash: str, occurrence: int) -> None:
        """A call whose ``started`` row never committed gives its occurrence back, so the
        keys recorded in this run stay 1, 2, 3... and a replay meets them in order."""
        with self._lock:
            free = self._released.setdefault(hash((tool, args_hash)), [])
            free.append(occurrence)
            free.sort()

    @property
    def status(self) -> str:
        """The run's status as stored now."""
        return self.core.require_run(self.id).status
