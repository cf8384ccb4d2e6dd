"""`Guard`: the one entry point, and a facade. It builds the `guardrail.core.Core` the core's
functions work in (the store, the policy registry, the clock, the lease book, the hooks) and
hands it to each run it makes; its public methods (policies, ``@guard.tool``, runs, the
people-facing API) delegate to the registry and to the core's modules."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar, overload

from guardrail import audit, decisions, inject, lifecycle, policy_trust, recovery
from guardrail.audit import ActionLog, Verification, Witness, read_log, verify
from guardrail.clock import SYSTEM, Clock, check_clock
from guardrail.core import Core
from guardrail.decisions import Decision
from guardrail.decorate import guarded
from guardrail.drive import adrive, drive
from guardrail.errors import GuardrailError, PolicyError, RunNotFound
from guardrail.history import DecisionEvent
from guardrail.inbox import Inbox
from guardrail.keys import KeySource
from guardrail.leases import Leases, make_owner
from guardrail.lifecycle import PlannedStep
from guardrail.notify import Notifier
from guardrail.policy import Policy, make_policy
from guardrail.registry import Registry
from guardrail.registry import load_pack as load_pack
from guardrail.run import Run, current_run
from guardrail.store import Action, RunRecord, Store, open_store

F = TypeVar("F", bound=Callable[..., Any])


class Guard(Inbox):
    """Guards an agent's tools: records every call, compensates on failure, halts for review.

    Example::

        guard = Guard(store="sqlite:///guardrail.db")

        @guard.tool(effect="reversible", undo=cancel_order, external_ids={"order_id": "result.id"})
        def create_order(item: str) -> dict: ...

        with guard.run(agent="shop"):
            create_order(item="book")

    ``strict`` refuses tools without a policy; ``durability`` is ``"process"`` (survives a
    process crash) or ``"power"`` (survives power loss; slower); ``on_halt`` is called with the
    run record whenever a run starts waiting for a person, ``on_decision`` with a
    `DecisionEvent` whenever a person's decision lands, and ``webhook_url`` (if given) receives
    a signed JSON POST of both, from a durable outbox (``webhook_secret``, ``webhook_body``,
    ``console_url``: see :mod:`guardrail.webhook` and :mod:`guardrail.outbox`). ``hash_key``
    is the key of the arguments hashes and the journal chain (see :mod:`guardrail.keys`: by
    default the ``GUARDRAIL_HASH_KEY`` variable or a 0600 key file created on first use).

    ``allow``: module prefixes (``["myapp.payments"]``) whose functions policy files may name as
    ``undo.call``, ``snapshot``, ``probe`` or ``retry.on``; besides them, a file may name only
    functions registered with this guard (``@guard.tool``, ``guard.register``) before the load.
    A policy file is data: allow only your own code, safe to run on what an agent sends.

    ``context``: a function of an :class:`Action` returning the injected values (a connection,
    an inbox) its hooks need when they run outside the process that made the call (an abort
    from the CLI or the console, recovery); see :mod:`guardrail.inject`.

    ``clock``: a callable returning epoch seconds (``time.time`` by default), read wherever the
    guard needs the time: leases and heartbeats, approval expiry, the timestamps it records. A
    test moves time by moving its clock (see docs/testing.md).
    """

    def __init__(
        self,
        store: str | Store = "sqlite:///guardrail.db",
        *,
        policies: Iterable[Policy] = (),
        strict: bool = True,
        durability: str = "process",
        on_halt: Callable[[RunRecord], None] | None = None,
        on_decision: Callable[[DecisionEvent], None] | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        webhook_body: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        console_url: str | None = None,
        heartbeat_interval: float = 5.0,
        max_args_bytes: int = 1_000_000,
        max_result_bytes: int | None = 256_000,
        hash_key: KeySource | None = None,
        allow: Iterable[str] = (),
        context: inject.ContextFactory | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.allow: tuple[str, ...] = policy_trust.check_allow(allow)  # before opening the store
        clock = check_clock(clock)
        opened: Store = (
            open_store(store, durability=durability, hash_key=hash_key)
            if isinstance(store, str)
            else store
        )
        notifier = Notifier(opened, clock, on_halt, on_decision, console_url)
        if webhook_url:
            notifier.use_webhook(
                webhook_url,
                webhook_secret or os.environ.get("GUARDRAIL_WEBHOOK_SECRET"),
                webhook_body,
            )
        self._registry = Registry(strict=strict, allow=self.allow)
        self._leases = Leases(opened, clock, make_owner(), heartbeat_interval)
        self._core = Core(
            store=opened,
            policies=self._registry,
            clock=clock,
            leases=self._leases,
            hooks=notifier,
            live=inject.Live(),
            factory=context,
            max_args_bytes=max_args_bytes,
            max_result_bytes=max_result_bytes,
        )
        self._notifier = notifier
        for policy in policies:
            self.add_policy(policy)

    # -- what the guard was given ------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The action log's store."""
        return self._core.store

    @store.setter
    def store(self, store: Store) -> None:
        """Put another store in (a wrapper such as `guardrail.testing.FaultyStore`) for what
        this guard does from now on; a run already made keeps the store it was made with."""
        self._core = replace(self._core, store=store)
        self._leases.store = self._notifier.store = store

    @property
    def clock(self) -> Clock:
        return self._core.clock

    @property
    def strict(self) -> bool:
        return self._registry.strict

    @property
    def on_halt(self) -> Callable[[RunRecord], None] | None:
        return self._notifier.on_halt

    @property
    def on_decision(self) -> Callable[[DecisionEvent], None] | None:
        return self._notifier.on_decision

    @on_decision.setter
    def on_decision(self, hook: Callable[[DecisionEvent], None] | None) -> None:
        self._notifier.on_decision = hook

    @property
    def webhook_url(self) -> str | None:
        return self._notifier.webhook_url

    @property
    def console_url(self) -> str | None:
        return self._notifier.console_url

    @property
    def heartbeat_interval(self) -> float:
        return self._leases.interval

    @property
    def stale_after(self) -> float:
        """Seconds after its last heartbeat that a run's lease counts as expired."""
        return self._leases.stale_after

    @stale_after.setter
    def stale_after(self, seconds: float) -> None:
        self._leases.stale_after = seconds

    @property
    def owner(self) -> str:
        """This process's owner name (``host|pid|start|boot|pidns``)."""
        return self._leases.owner

    @owner.setter
    def owner(self, name: str) -> None:
        self._leases.owner = name

    @property
    def max_args_bytes(self) -> int:
        return self._core.max_args_bytes

    @property
    def max_result_bytes(self) -> int | None:
        return self._core.max_result_bytes

    @property
    def context(self) -> inject.ContextFactory | None:
        return self._core.factory

    @property
    def live(self) -> inject.Live:
        """Injected values of this process's calls, kept for their hooks."""
        return self._core.live

    # -- policies ----------------------------------------------------------------------------

    def add_policy(self, policy: Policy) -> Policy:
        return self._registry.add(policy)

    def policy(self, name: str, **fields: Any) -> Policy:
        """Declare the policy of the tool called ``name`` (see :class:`Policy` for the fields)."""
        return self.add_policy(make_policy(name, **fields))

    def find_policy(self, name: str) -> Policy | None:
        """The tool's policy: loaded (file or pack) over code over hints."""
        return self._registry.find_policy(name)

    @property
    def policies(self) -> dict[str, Policy]:
        """Every tool's effective policy, by tool name."""
        return self._registry.policies

    @property
    def policy_fingerprint(self) -> str:
        """The fingerprint of the declared policies (code, files, packs; not tool hints), which
        every run this guard starts records (see :mod:`guardrail.fingerprint`)."""
        return self._registry.policy_fingerprint

    def load_policies(
        self, source: str | Path | Mapping[str, Any], *, allow: Iterable[str] = (), **options: Any
    ) -> list[Policy]:
        """Load policies from a YAML/TOML file, a parsed mapping, or a policy pack by name.

        Loaded policies take precedence over code declarations of the same tool (so operators
        can change a policy without a code change), and a later load over an earlier one::

            guard.load_policies("policies.yaml")
            guard.load_policies("langchain-file-management", root_dir="/srv/agent")

        A file's dotted paths (``undo.call``, ``snapshot``, ``probe``, ``retry.on``) may name
        only functions registered with this guard so far, or objects defined in a module under
        the guard's ``allow`` prefixes, this call's ``allow`` or ``GUARDRAIL_POLICY_ALLOW``;
        anything else is refused with a PolicyError before any module is imported.
        """
        return self._registry.load(source, allow, **options)

    def hint(
        self,
        name: str,
        *,
        read_only: bool | None = None,
        destructive: bool | None = None,
        idempotent: bool | None = None,
    ) -> Policy:
        """Seed a default policy from MCP-style hints; any declared policy still wins."""
        policy = Policy.from_hints(
            name, read_only=read_only, destructive=destructive, idempotent=idempotent
        )
        return self._registry.hint(policy)

    def register(self, fn: Callable[..., Any], *, name: str | None = None) -> Callable[..., Any]:
        """Make a callable known by name without guarding it, e.g. an undo tool of a policy file."""
        self._registry.register(name or fn.__name__, fn)
        return fn

    def tool_function(self, name: str) -> Callable[..., Any] | None:
        """The raw (unguarded) callable registered for a tool name."""
        return self._registry.tool_function(name)

    @overload
    def tool(self, fn: F, /) -> F: ...
    @overload
    def tool(self, fn: None = None, /, **fields: Any) -> Callable[[F], F]: ...

    def tool(self, fn: F | None = None, /, *, name: str | None = None, **fields: Any) -> Any:
        """Guard a function or coroutine function; keyword arguments declare its policy.

        With no ``effect`` the function must already have a policy (``guard.policy``).
        Parameters annotated ``Annotated[T, Injected]`` (or listed in ``injected=``) are passed
        to the function and its hooks but never recorded::

            @guard.tool(effect="reversible", undo=delete_row)
            def insert_row(table: str, row: dict, db: Annotated[Connection, Injected]) -> int: ...
        """

        def decorate(fn: F) -> F:
            tool_name = name or fn.__name__
            if fields:
                self.policy(tool_name, **fields)
            elif self.find_policy(tool_name) is None and self.strict:
                raise PolicyError(
                    f"@guard.tool on {tool_name!r} declares no policy; pass effect=... "
                    "(and undo= or review=) or declare guard.policy(...) first",
                    tool=tool_name,
                    field="effect",
                )
            wrapper = guarded(fn, tool_name, self.active_run)
            self._registry.register(tool_name, fn)
            return wrapper  # type: ignore[no-any-return]

        return decorate(fn) if fn is not None else decorate

    def active_run(self, tool: str) -> Run:
        """The run of this guard that the calling context is in (for tools and adapters)."""
        run = current_run()
        if run is None or run.guard is not self:
            raise GuardrailError(
                f"{tool} was called outside a run of this guard; run the agent inside "
                "`with guard.run(agent=...):` (or `async with`)",
                tool=tool,
            )
        return run

    # -- runs --------------------------------------------------------------------------------

    def run(
        self,
        agent: str = "agent",
        *,
        run_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        on_failure: str | None = None,
    ) -> Run:
        """A run to enter around the agent; pass ``run_id`` to continue a resumed run.

        ``on_failure="hold"`` holds every failure of this run for a person, whatever the tools'
        policies say: nothing is undone until the person aborts (for agents that continue a
        checkpointed thread after review instead of starting over).
        """
        if on_failure not in (None, "hold", "compensate"):
            raise GuardrailError(
                f"on_failure={on_failure!r}: expected 'hold' or 'compensate'", field="on_failure"
            )
        return Run(
            self._core,
            guard=self,
            agent=agent,
            run_id=run_id,
            metadata=metadata,
            on_failure=on_failure,
        )

    def runs(
        self,
        *,
        status: str | None = None,
        agent: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """Runs, newest first, filtered by status, agent, or last change since a time."""
        return self.store.runs(status=status, agent=agent, since=since, limit=limit)

    def require_run(self, run_id: str) -> RunRecord:
        """The run's record; RunNotFound when the store has none."""
        return self._core.require_run(run_id)

    def log(self, run_id: str) -> ActionLog:
        """The run's action log: actions, compensations and review items, in order."""
        return read_log(self.store, self.require_run(run_id))

    def verify(self, run_id: str, *, log: ActionLog | None = None) -> Verification:
        """Check the run's hash chain and that no stored row was edited or deleted.

        Pass the run's ``log`` (from :meth:`log`) to check it without reading the rows again.
        """
        return verify(self.store, log.run if log is not None else self.require_run(run_id), log)

    def witness(self, run_id: str) -> Witness:
        """The run's journal length and head hash now: keep it outside the store, and
        :meth:`check` proves later that nothing was cut off, deleted or rewritten since."""
        found = audit.witness(self.store, run_id)
        if found is None:
            raise RunNotFound(f"no run {run_id!r} in {self.store.url}", run_id=run_id)
        return found

    def check(self, seen: Witness) -> list[str]:
        """What changed in the store against a witness taken earlier (empty: nothing)."""
        return audit.check(self.store, seen)

    def find(self, external_id: str, *, name: str | None = None) -> list[Action]:
        """Actions that produced ``external_id`` (optionally only under that ``name``)."""
        found: list[Action] = []
        for ref in self.store.find(value=external_id, name=name):
            found.extend(a for a in self.store.actions(ref.run_id) if a.seq == ref.seq)
        return found

    # -- decisions ---------------------------------------------------------------------------

    def resume(self, run_id: str, *, by: str, note: str | None = None) -> Decision:
        """Let a halted run continue; restart the agent with ``guard.run(run_id=...)``."""
        return self._decided(decisions.resume(self._core, run_id, by, note))

    def abort(
        self, run_id: str, *, by: str, reason: str | None = None, require_undos: bool = False
    ) -> Decision:
        """Undo whatever is still undoable and end the run as ``aborted``.

        ``require_undos``: refuse (``UndosMissing``, nothing changed) when an undo the abort
        needs is not available here, instead of listing those actions for review."""
        steps = decisions.abort(self._core, run_id, by, reason, require_undos=require_undos)
        return self._decided(drive(steps))

    async def aabort(
        self, run_id: str, *, by: str, reason: str | None = None, require_undos: bool = False
    ) -> Decision:
        steps = decisions.abort(self._core, run_id, by, reason, require_undos=require_undos)
        return self._decided(await adrive(steps))

    def resolve(
        self, item_id: str, resolution: str, *, by: str, note: str | None = None
    ) -> Decision:
        """Record a person's decision on a review item (``done_manually``, ``retried``, ...)."""
        return self._decided(decisions.resolve(self._core, item_id, resolution, by, note))

    def approve(
        self,
        item_id: str,
        *,
        by: str,
        note: str | None = None,
        args: Mapping[str, Any] | None = None,
    ) -> Decision:
        """Approve an approval request; then resume the run and the call runs once. ``args``:
        approve other values of some arguments instead (``{"amount": 500}``); the call runs
        with them and the action records them."""
        return self._decided(decisions.decide(self._core, item_id, True, by, note, edit=args))

    def reject(self, item_id: str, *, by: str, reason: str | None = None) -> Decision:
        """Reject an approval request; after resume the agent gets CallRejected for that call."""
        return self._decided(decisions.decide(self._core, item_id, False, by, reason))

    def reply(self, item_id: str, answer: Any, *, by: str, note: str | None = None) -> Decision:
        """Answer an approval request instead of letting the call run: after resume the call
        returns ``answer`` (JSON) to the agent, and the tool never runs."""
        return self._decided(decisions.reply(self._core, item_id, answer, by, note))

    def _decided(self, decision: Decision) -> Decision:
        if decision.landed:
            self._notifier.decided(decision.run_id)
        return decision

    def plan_undo(self, run_id: str, *, log: ActionLog | None = None) -> list[PlannedStep]:
        """What compensation would do now (undo, review, nothing), newest first; changes nothing."""
        actions = (
            log.actions if log is not None else self.store.actions(self.require_run(run_id).id)
        )
        return lifecycle.plan(actions, self.find_policy)

    def recover(self, *, require_undos: bool = False) -> list[str]:
        """Finish the runs whose owner process died; returns the ids recovered.

        ``require_undos``: leave alone (for a recovery that has them) the runs whose
        compensation needs an undo this guard lacks, instead of listing those actions for
        review."""
        return drive(recovery.recover(self._core, self._can_compensate if require_undos else None))

    async def arecover(self, *, require_undos: bool = False) -> list[str]:
        only = self._can_compensate if require_undos else None
        return await adrive(recovery.recover(self._core, only))

    def _can_compensate(self, run: RunRecord) -> bool:
        return not decisions.missing_undos(self._registry, self.store.actions(run.id))

    @property
    def core(self) -> Core:
        """What this guard gives the core's functions (the store, its policies, its clock, its
        leases and hooks): for code that calls them directly, such as
        ``guardrail.decisions.abort(guard.core, ...)``."""
        return self._core

    # -- liveness ----------------------------------------------------------------------------

    def drop_lease(self, run_id: str, epoch: int | None = None) -> None:
        """Stop renewing the run's lease (this process gives the run up: recovery can take it
        over once the lease expires)."""
        self._leases.drop(run_id, epoch)

    def close(self) -> None:
        self._leases.stop()
        self.store.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
