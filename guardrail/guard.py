"""`Guard`: the one entry point. Holds the store, the policies, and the people-facing API."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar, overload

from guardrail import (
    audit,
    bulk,
    decisions,
    history,
    inject,
    lifecycle,
    notify,
    outbox,
    policy_file,
    policy_source,
    recovery,
    waiting,
)
from guardrail.audit import ActionLog, Verification, Witness, read_log, verify
from guardrail.decisions import Decision
from guardrail.drive import adrive, drive
from guardrail.errors import GuardrailError, PolicyError, RunNotFound, UnknownTool
from guardrail.fingerprint import fingerprint
from guardrail.history import DecisionEvent
from guardrail.keys import KeySource
from guardrail.lifecycle import PlannedStep
from guardrail.policy import Policy, make_policy
from guardrail.run import Run, current_run
from guardrail.search import Found, Group, RunQuery
from guardrail.search import groups as search_groups
from guardrail.store import Action, RunRecord, Store, open_store
from guardrail.transitions import Lease

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("guardrail")


class Guard:
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
    :class:`~guardrail.history.DecisionEvent` whenever a person's decision lands (so a worker
    elsewhere can pick a resumed run up), and ``webhook_url`` (if given) receives a JSON POST on
    both (see :mod:`guardrail.notify`). ``hash_key`` is the key of the
    arguments hashes and the journal chain (see :mod:`guardrail.keys`: by default the
    ``GUARDRAIL_HASH_KEY`` variable or a 0600 key file created on first use).

    ``allow``: module prefixes (``["myapp.payments"]``) whose functions policy files may name as
    ``undo.call``, ``snapshot``, ``probe`` or ``retry.on``; besides them, a file may name only
    functions registered with this guard (``@guard.tool``, ``guard.register``) before the load.
    A policy file is data: allow only your own code, safe to run on what an agent sends.

    ``context``: a function of an :class:`Action` returning the injected values (a connection,
    an inbox) its hooks need when they run outside the process that made the call (an abort
    from the CLI or the console, recovery); see :mod:`guardrail.inject`.
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
    ) -> None:
        self.allow: tuple[str, ...] = policy_file.check_allow(allow)  # before opening the store
        self.store: Store = (
            open_store(store, durability=durability, hash_key=hash_key)
            if isinstance(store, str)
            else store
        )
        self.strict = strict
        self.on_halt = on_halt
        self.on_decision = on_decision
        self._clock = time.time
        self.webhook_url: str | None = None
        self._webhook: outbox.Webhook | None = None
        if webhook_url:
            self.use_webhook(webhook_url, secret=webhook_secret, body=webhook_body)
        self.console_url = notify.check_url(console_url, "console_url") if console_url else None
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = heartbeat_interval * 6
        self.max_args_bytes = max_args_bytes
        self.max_result_bytes = max_result_bytes
        self.owner = recovery.make_owner()
        self.context = context
        self.live = inject.Live()  # injected values of this process's calls, for their hooks
        self._policies: dict[str, Policy] = {}  # declared in code
        self._loaded: dict[str, Policy] = {}  # from files and packs: these win
        self._hinted: dict[str, Policy] = {}  # from tool hints: defaults only
        self._tools: dict[str, Callable[..., Any]] = {}
        self._beat: threading.Thread | None = None
        self._stop = threading.Event()
        self._leases: dict[str, int] = {}  # run id -> epoch of the runs this guard executes now
        for policy in policies:
            self.add_policy(policy)

    # -- policies ----------------------------------------------------------------------------

    def add_policy(self, policy: Policy) -> Policy:
        self._policies[policy.name] = policy
        return policy

    def policy(self, name: str, **fields: Any) -> Policy:
        """Declare the policy of the tool called ``name`` (see :class:`Policy` for the fields)."""
        return self.add_policy(make_policy(name, **fields))

    def find_policy(self, name: str) -> Policy | None:
        """The tool's policy: loaded (file or pack) over code over hints."""
        return self._loaded.get(name) or self._policies.get(name) or self._hinted.get(name)

    @property
    def policies(self) -> dict[str, Policy]:
        """Every tool's effective policy, by tool name."""
        return {**self._hinted, **self._policies, **self._loaded}

    @property
    def policy_fingerprint(self) -> str:
        """The fingerprint of the declared policies (code, files, packs; not tool hints), which
        every run this guard starts records (see :mod:`guardrail.fingerprint`)."""
        return fingerprint({**self._policies, **self._loaded}.values())

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
        trusted = (*self.allow, *policy_file.check_allow(allow))
        registered = list(self._tools.values())
        if isinstance(source, Mapping):
            policies = policy_file.parse_mapping(source, allow=trusted, functions=registered)
        elif isinstance(source, Path) or Path(source).suffix.lower() in policy_source.SUFFIXES:
            if options:
                raise PolicyError(
                    f"{source}: options ({', '.join(options)}) are for policy packs, not files",
                    file=str(source),
                )
            policies = policy_file.load(source, allow=trusted, functions=registered)
        else:
            if allow:
                raise PolicyError(
                    f"{source}: allow= is for policy files; a policy pack is code, and needs none",
                    field="allow",
                )
            policies = load_pack(source, **options)
        for policy in policies:
            if policy.name in self._policies:
                log.info(
                    "policy for %s from %s replaces the one declared in code", policy.name, source
                )
            self._loaded[policy.name] = policy
        return policies

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
        self._hinted[name] = policy
        return policy

    def register(self, fn: Callable[..., Any], *, name: str | None = None) -> Callable[..., Any]:
        """Make a callable known by name without guarding it, e.g. an undo tool of a policy file."""
        self._tools[name or fn.__name__] = fn
        return fn

    def tool_function(self, name: str) -> Callable[..., Any] | None:
        """The raw (unguarded) callable registered for a tool name."""
        fn = self._tools.get(name)
        return getattr(fn, "__guardrail_raw__", fn) if fn is not None else None

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
            signature = inspect.signature(fn)
            if any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values()):
                raise PolicyError(
                    f"tool {tool_name!r} takes *args; guarded tools take named parameters",
                    tool=tool_name,
                    field="args",
                )
            self._tools[tool_name] = fn
            marked = inject.annotated_names(fn)

            def named(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
                if not args:
                    bound = signature.bind_partial(**kwargs)
                else:
                    bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                merged = dict(bound.arguments)
                for p in signature.parameters.values():
                    if p.kind is p.VAR_KEYWORD:
                        merged.update(merged.pop(p.name, {}))
                return merged

            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    run = self.active_run(tool_name)
                    plain, live = inject.split(named(args, kwargs), marked, None)
                    return await run.acall(tool_name, plain, fn=fn, injected=live)

                wrapper: Any = async_wrapper
            else:

                @functools.wraps(fn)
                def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                    run = self.active_run(tool_name)
                    plain, live = inject.split(named(args, kwargs), marked, None)
                    return run.call(tool_name, plain, fn=fn, injected=live)

                wrapper = sync_wrapper
            wrapper.__guardrail_raw__ = fn
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

    def resolve_tool(
        self, tool: str, fn: Callable[..., Any] | None, *, run_id: str
    ) -> tuple[Policy, Callable[..., Any]]:
        policy = self.find_policy(tool)
        if policy is None:
            if self.strict:
                raise UnknownTool(
                    f"run {run_id}: tool {tool!r} has no policy and the guard is strict; declare "
                    f"guard.policy({tool!r}, effect=...) or use @guard.tool",
                    run_id=run_id,
                    tool=tool,
                    field="policy",
                )
            policy = self.add_policy(make_policy(tool, effect="irreversible"))
        target = fn if fn is not None else self._tools.get(tool)
        if target is None:
            raise UnknownTool(
                f"run {run_id}: no callable is registered for tool {tool!r}; pass fn=...",
                run_id=run_id,
                tool=tool,
            )
        return policy, getattr(target, "__guardrail_raw__", target)

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
        return Run(self, agent=agent, run_id=run_id, metadata=metadata, on_failure=on_failure)

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

    def search(
        self,
        text: str | None = None,
        *,
        status: str | Sequence[str] = (),
        agent: str | None = None,
        tool: str | None = None,
        owner: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Found:
        """Runs matching a search and filters, newest first, one page at a time.

        ``text`` matches, case-insensitively, the start of a run id, an agent, a tool or an
        external id, and anywhere in the run's reason; each found run says what matched.
        Pass the result's ``next`` as ``cursor`` for the next page::

            found = guard.search("ord_4004", status="pending_review")
            for run in found.runs:
                print(run.id, run.status, found.matches[run.id])
        """
        query = RunQuery(
            text=text,
            status=(status,) if isinstance(status, str) else tuple(status),
            agent=agent,
            tool=tool,
            owner=owner,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )
        page = self.store.search_runs(query)
        runs = [r for r in (self.store.run(i) for i in page.run_ids) if r is not None]
        return Found(runs, {r.id: page.matches.get(r.id, ()) for r in runs}, page.next)

    def groups(self, status: str | Sequence[str] = ("pending_review",)) -> list[Group]:
        """Runs in ``status`` grouped by the cause they halted for (their reason, with ids,
        numbers and quoted values blanked), the largest group first: decide a group at once
        with :meth:`decide`."""
        statuses = RunQuery(status=(status,) if isinstance(status, str) else tuple(status)).status
        return search_groups(r for s in statuses for r in self.store.runs(status=s))

    def history(self, run_id: str) -> list[DecisionEvent]:
        """Who decided what on the run and when (resume, abort, each item's resolution, each
        approval), oldest first: read from the run's hash-chained journal."""
        self.require_run(run_id)
        return history.decisions(run_id, self.store.entries(run_id))

    def preview(
        self,
        run_ids: Iterable[str],
        decision: str,
        *,
        resolution: str | None = None,
        force: bool = False,
    ) -> list[bulk.Preview]:
        """What ``decision`` (``resume``, ``abort``, or ``resolve`` each open item as
        ``resolution``) would do to each run, or why it would be refused. Changes nothing."""
        return bulk.preview(self, run_ids, decision, resolution=resolution, force=force)

    def decide(
        self,
        run_ids: Iterable[str],
        decision: str,
        *,
        by: str,
        note: str | None = None,
        resolution: str | None = None,
        force: bool = False,
    ) -> list[bulk.Outcome]:
        """Make one decision on many runs (those :meth:`preview` does not refuse), one run at
        a time; returns each run's outcome::

            group = guard.groups()[0]
            for o in guard.decide(group.run_ids, "abort", by="ana", note="carrier outage"):
                print(o.run_id, o.status, o.error or "")
        """
        return bulk.decide(
            self, run_ids, decision, by=by, note=note, resolution=resolution, force=force
        )

    def require_run(self, run_id: str) -> RunRecord:
        run = self.store.run(run_id)
        if run is None:
            raise RunNotFound(f"no run {run_id!r} in {self.store.url}", run_id=run_id)
        return run

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
        return self._decided(decisions.resume(self, run_id, by, note))

    def abort(
        self, run_id: str, *, by: str, reason: str | None = None, require_undos: bool = False
    ) -> Decision:
        """Undo whatever is still undoable and end the run as ``aborted``.

        ``require_undos``: refuse (`UndosMissing`, nothing changed) when this process lacks an
        undo the abort needs, instead of listing those actions for review.
        """
        steps = decisions.abort(self, run_id, by, reason, require_undos=require_undos)
        return self._decided(drive(steps))

    async def aabort(
        self, run_id: str, *, by: str, reason: str | None = None, require_undos: bool = False
    ) -> Decision:
        steps = decisions.abort(self, run_id, by, reason, require_undos=require_undos)
        return self._decided(await adrive(steps))

    def resolve(
        self, item_id: str, resolution: str, *, by: str, note: str | None = None
    ) -> Decision:
        """Record a person's decision on a review item (``done_manually``, ``retried``, ...)."""
        return self._decided(decisions.resolve(self, item_id, resolution, by, note))

    def approve(self, item_id: str, *, by: str, note: str | None = None) -> Decision:
        """Approve an approval request; then resume the run and the call runs once."""
        return self._decided(decisions.decide(self, item_id, True, by, note))

    def reject(self, item_id: str, *, by: str, reason: str | None = None) -> Decision:
        """Reject an approval request; after resume the agent gets CallRejected for that call."""
        return self._decided(decisions.decide(self, item_id, False, by, reason))

    def wait_decision(
        self, run_id: str, *, timeout: float | None = None, poll: float = 1.0
    ) -> RunRecord:
        """Block until a person decides the halted run; returns it then (``running`` after a
        resume, ``aborted`` after an abort). TimeoutError after ``timeout`` seconds::

            try:
                agent(run_id=run_id)
            except RunHalted as halted:
                if guard.wait_decision(halted.run_id).status == "running":
                    agent(run_id=halted.run_id)  # carries on: nothing done runs twice
        """
        return drive(waiting.wait_decision(self.store, run_id, timeout, poll, self._clock))

    async def await_decision(
        self, run_id: str, *, timeout: float | None = None, poll: float = 1.0
    ) -> RunRecord:
        return await adrive(waiting.wait_decision(self.store, run_id, timeout, poll, self._clock))

    def _decided(self, decision: Decision) -> Decision:
        """Tell the decision hooks of a decision that landed (never fails the decision)."""
        if decision.landed and (self.on_decision is not None or self.webhook_url is not None):
            try:
                event = self.history(decision.run_id)[-1]
            except Exception:
                log.warning("guardrail could not read the decision on run %s", decision.run_id)
                return decision
            if self.on_decision is not None:
                try:
                    self.on_decision(event)
                except Exception:
                    log.exception("guardrail on_decision hook failed for run %s", event.run_id)
            if self._webhook is not None:
                run = self.store.run(event.run_id)
                if run is not None:
                    self._send(notify.decision_event(run, event, self.console_url))
        return decision

    def _send(self, event: dict[str, Any]) -> None:
        """Keep the event in the outbox and post it once now (never fails the caller)."""
        assert self._webhook is not None
        now = self._clock()
        try:
            outbox.queue(self.store, event, now)
            outbox.deliver(self.store, self._webhook, now, only=event["id"])
        except Exception:
            log.warning("guardrail could not send event %s", event["id"], exc_info=True)

    def use_webhook(
        self,
        url: str,
        *,
        secret: str | None = None,
        body: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        """Send events to ``url`` from now on (as ``Guard(webhook_url=...)`` does); ``secret``
        defaults to the ``GUARDRAIL_WEBHOOK_SECRET`` variable."""
        self.webhook_url = notify.check_url(url)
        secret = secret or os.environ.get("GUARDRAIL_WEBHOOK_SECRET") or None
        self._webhook = outbox.Webhook(self.webhook_url, secret, body)

    def deliver(self) -> outbox.Delivery:
        """Post the webhook events that are due (queued, or failed before and due again);
        returns how many were sent and failed. A cron job or ``guardrail deliver`` calls it, and
        the console's server does every few seconds."""
        if self._webhook is None:
            raise GuardrailError("this guard has no webhook_url to deliver to", field="webhook_url")
        return outbox.deliver(self.store, self._webhook, self._clock())

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
        return drive(recovery.recover(self, self._can_compensate if require_undos else None))

    async def arecover(self, *, require_undos: bool = False) -> list[str]:
        only = self._can_compensate if require_undos else None
        return await adrive(recovery.recover(self, only))

    def _can_compensate(self, run: RunRecord) -> bool:
        return not decisions.missing_undos(self, self.store.actions(run.id))

    # -- liveness and hooks ------------------------------------------------------------------

    def beat(self) -> None:
        """Start the heartbeat that tells other processes this one still owns its runs."""
        if self._beat is not None and self._beat.is_alive():
            return
        self._stop.clear()
        self._beat = threading.Thread(
            target=self._heartbeat, name="guardrail-heartbeat", daemon=True
        )
        self._beat.start()

    def hold_lease(self, lease: Lease) -> None:
        """Keep renewing ``lease`` while this guard executes its run (a run, a compensation)."""
        self._leases[lease.run_id] = lease.epoch
        self.beat()

    def drop_lease(self, run_id: str, epoch: int | None = None) -> None:
        """Stop renewing the run's lease (done with it, or gave up after a store fault, so
        that recovery can take it over when the lease expires)."""
        if epoch is None or self._leases.get(run_id) == epoch:
            self._leases.pop(run_id, None)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            try:
                self.store.heartbeat(self.owner, list(self._leases), lifecycle.now())
            except Exception:
                log.warning("guardrail heartbeat failed", exc_info=True)

    def notify(self, run: RunRecord) -> None:
        from guardrail import telemetry

        journal = self.store.head(run.id)
        telemetry.event(
            "guardrail " + run.status,
            **{"run.id": run.id, "agent": run.agent},
            **(
                {"journal.entries": journal[0], "journal.head": journal[1]}
                if journal is not None
                else {}
            ),
        )
        if self.on_halt is not None:
            try:
                self.on_halt(run)
            except Exception:
                log.exception("guardrail on_halt hook failed for run %s", run.id)
        if self._webhook is not None:
            items = self.store.review_items(run_id=run.id, status="open")
            self._send(notify.halt_event(run, items, journal, self._clock(), self.console_url))

    def notify_completed(self, run_id: str) -> None:
        """A span marks the run's end with its journal's length and head hash (a witness)."""
        from guardrail import telemetry

        journal = self.store.head(run_id)  # (cached: the run just wrote it)
        if journal is not None:
            telemetry.event(
                "guardrail completed",
                **{"run.id": run_id, "journal.entries": journal[0], "journal.head": journal[1]},
            )

    def close(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        self.store.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


PACK_GROUP = "guardrail.policy_packs"


def load_pack(name: str, **options: Any) -> list[Policy]:
    """A policy pack by name, found through the ``guardrail.policy_packs`` entry points (ours in
    ``guardrail.policies``; other distributions can add their own)."""
    packs = {ep.name: ep for ep in entry_points(group=PACK_GROUP)}
    if name not in packs:
        known = ", ".join(sorted(packs)) or "none installed"
        raise PolicyError(
            f"{name!r} is neither a policy file (.yaml, .yml, .toml) nor a known policy pack "
            f"({known})",
            field="source",
        )
    build = packs[name].load()
    try:
        policies = build(**options)
    except TypeError as exc:
        raise PolicyError(f"policy pack {name!r}: {exc}", field="options") from None
    return list(policies)
