"""PydanticAI: guard every tool of an ``Agent`` (function tools, MCP servers, any toolset).

::

    from pydantic_ai import Agent, DeferredToolRequests
    from guardrail.adapters.pydantic_ai import GuardTools

    agent = Agent(model, tools=[create_order, charge_payment], toolsets=[mcp_server],
                  output_type=[str, DeferredToolRequests], capabilities=[GuardTools(guard)])
    with guard.run(agent="shop") as run:  # or `async with` around `await agent.run(...)`
        result = agent.run_sync("buy a book")

:class:`GuardTools` is a PydanticAI capability: for every agent run it wraps each leaf toolset
(the agent's own function tools, each MCP server, each toolset you pass) in a
:class:`GuardedToolset`. Also per run: ``agent.run(..., capabilities=[GuardTools(guard)])``, or
for one toolset: ``Agent(model, toolsets=[guard_toolset(guard, toolset)])``. Wrappers such as
``.prefixed()``, ``.renamed()``, ``.filtered()`` and ``.approval_required()`` stay outside the
guard, so the guard sees each tool under the name its own toolset gives it (a policy pack
written for an MCP server's tools matches however the agent prefixes them), and PydanticAI's
own approvals are asked before the guard records anything.

**The run** is guardrail's current run: enter ``guard.run(...)`` around ``agent.run`` /
``run_sync`` / ``run_stream`` / ``run_stream_events`` / ``iter``. PydanticAI runs tool calls as
asyncio tasks, which copy the caller's context, so the tools find the run by themselves; a tool
called outside a run of its guard fails the agent run with a message saying so.

**Each call** goes through the guard with the model's tool-call id (``RunContext.tool_call_id``)
as its idempotency key: recorded before and after, deduplicated, retried only as the policy
says. The arguments recorded are the validated ones, as JSON. The ``RunContext`` (and your
``deps`` in it) is injected, never recorded, hashed or serialised: the tool gets it as usual,
and the policy's hooks (``snapshot``, ``undo``, ``probe``...) may ask for it by name, as
``ctx`` or ``deps``. A policy's ``UndoTool(tool="cancel_order")`` may name a tool of the agent:
it is called through its toolset with the ``RunContext`` of the agent run that halts (outside
an agent run, with that of the call being undone, where this process still has it).

**Arguments the tool refuses** never reach the guard: PydanticAI validates them (and runs the
tool's ``args_validator``) first and asks the model to correct them. Checks that refuse a call
belong there. A ``ModelRetry`` or ``ToolFailed`` raised by the tool itself, like any exception
from the tool, is a failure of a call that may have done something: the run halts (the policy
says whether the exception proves the call did nothing).

**A halt really stops the agent.** :class:`~guardrail.RunHalted` is a ``BaseException``;
PydanticAI handles ``ModelRetry``, ``ToolFailed`` and deferrals, never a ``BaseException``, so
``agent.run`` / ``run_sync`` / ``run_stream`` / ``iter`` end with ``RunHalted`` in the caller and
the model is not called again. PydanticAI runs the calls of one model turn concurrently and
cancels the others when one raises; the guard makes a failing call wait for its running
siblings before it compensates, and this adapter makes every ``RunHalted`` (also for a call
refused because the run had halted) wait until no sibling is running, so each ends recorded.

**Approvals map onto PydanticAI's deferred tool approvals.** When a call's approval condition
holds, the guard records the request (the run becomes ``awaiting_approval``: ``guardrail
show``, the console, the ``on_halt`` hook) and the call raises ``ApprovalRequired``, so the agent
run ends with ``DeferredToolRequests`` as its output (add it to ``output_type``). Every gated
call of that turn is asked about (one request each; the run waits until a person has decided
them all); calls of the turn that had already started run to completion, the others do not run
and the model is told so. A person decides in guardrail (``guardrail approve ITEM --resume``,
``guard.approve`` / ``guard.reject``), then::

    results = apply_decisions(guard, run.id, result.output)  # the guard's decisions
    with guard.run(run_id=run.id):
        agent.run_sync(message_history=result.all_messages(), deferred_tool_results=results)

The approved call runs once, with the same call id; a rejected one gets ``ToolDenied`` with the
reviewer's reason. Approving only in PydanticAI does not get past the guard: the run cannot be
entered again until a person decides in guardrail.

**Resuming after a halt.** Keep the messages (``capture_run_messages()``), and enter the run
with ``on_failure="hold"``: nothing is undone, and after a person resumes it the agent continues
from its history (:func:`history_for_resume`): the halted turn runs again, its done calls
return their recorded results, the failed one runs again. With the default (compensate), the
reversible calls are undone, so start over from the prompt instead: a replay finds the calls
that still stand by their call ids only if the model repeats them (a scripted model does; a
live model plans anew, so declare ``idempotency_key`` on irreversible tools).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from pydantic_ai import ApprovalRequired, DeferredToolRequests, DeferredToolResults, ToolDenied
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.exceptions import ToolFailed
from pydantic_ai.messages import ModelMessage, ModelRequest, ToolReturn
from pydantic_ai.tools import AgentDepsT, RunContext, ToolApproved
from pydantic_ai.toolsets import AbstractToolset, FunctionToolset, ToolsetTool, WrapperToolset
from pydantic_core import PydanticSerializationError, to_jsonable_python

from guardrail.decisions import reply_text
from guardrail.errors import CallRejected, GuardrailError
from guardrail.flight import flight
from guardrail.guard import Guard
from guardrail.run import Run

__all__ = [
    "GuardTools",
    "GuardedToolset",
    "apply_decisions",
    "guard_toolset",
    "history_for_resume",
]


# -- the guarded toolset ---------------------------------------------------------------------


@dataclass
class GuardedToolset(WrapperToolset[AgentDepsT]):
    """A toolset whose tool calls go through a :class:`~guardrail.Guard`.

    Guards the calls that pass through it, under the names they carry there. To guard every
    leaf of a toolset (and keep wrappers such as ``.approval_required()`` outside the guard),
    use :func:`guard_toolset` or the :class:`GuardTools` capability.
    """

    guard: Guard
    _tools: dict[str, ToolsetTool[AgentDepsT]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    async def get_tools(self, ctx: RunContext[AgentDepsT]) -> dict[str, ToolsetTool[AgentDepsT]]:
        tools = await super().get_tools(ctx)
        _refuse_guarded_functions(self.wrapped, tools)
        self._tools = tools
        for name in tools:
            known = self.guard.tool_function(name)
            if known is None or getattr(known, "__guardrail_pydantic_ai__", False):
                self.guard.register(_UndoByName(self, name), name=name)
        return tools

    async def call_tool(
        self,
        name: str,
        tool_args: dict[str, Any],
        ctx: RunContext[AgentDepsT],
        tool: ToolsetTool[AgentDepsT],
    ) -> Any:
        mark = (id(self.guard), ctx.tool_call_id)
        if mark in _guarding.get():  # guarded once more further in: the outer guard has it
            return await super().call_tool(name, tool_args, ctx, tool)
        run = self.guard.active_run(name)
        args = _recorded_args(tool_args)
        calls = flight(run)
        if run.awaiting:  # paused for approval in this turn: ask this call too, run nothing
            waiting = calls.waiting_for
            self._check_still_paused(run, name, waiting)
            if run.needs_approval(name, args, ctx.tool_call_id):
                if name not in calls.paused_by:
                    calls.paused_by.append(name)
                raise ApprovalRequired(
                    metadata=_approval_metadata(self.guard, run, name, ctx.tool_call_id)
                )
            raise ToolFailed(
                f"{name} did not run: run {run.id} is waiting for a person to approve "
                f"{waiting}. Nothing was done; call {name} again afterwards if it is still "
                "needed."
            )
        if not run.halted and run.needs_approval(name, args, ctx.tool_call_id):
            # The request is recorded and the run awaits approval; PydanticAI defers this call.
            calls.paused_by = [name]
            raise ApprovalRequired(
                metadata=_approval_metadata(self.guard, run, name, ctx.tool_call_id)
            )

        async def run_tool(**_: Any) -> Any:
            token = _guarding.set((*_guarding.get(), mark))
            try:
                return await self.wrapped.call_tool(name, tool_args, ctx, tool)
            finally:
                _guarding.reset(token)

        calling = _calling.set(ctx)
        try:
            async with calls.call():
                value = await run.acall(
                    name,
                    args,
                    fn=run_tool,
                    call_id=ctx.tool_call_id,
                    injected={"ctx": ctx, "deps": ctx.deps},  # for the tool's hooks, not recorded
                )
        except CallRejected as exc:
            return ToolDenied(str(exc))  # an ordinary outcome: the model can take another way
        finally:
            _calling.reset(calling)
        return _restored(value)

    def _check_still_paused(self, run: Run, name: str, paused_by: str) -> None:
        status = self.guard.require_run(run.id).status
        if status != "awaiting_approval":
            raise GuardrailError(
                f"run {run.id} paused for the approval of {paused_by} and is {status} now; "
                "continue it in a new `with guard.run(run_id=...)` block, with the message "
                "history and apply_decisions(...) as deferred_tool_results",
                run_id=run.id,
                tool=name,
            )


class _UndoByName:
    """A tool of a guarded toolset, called by name as another tool's undo (``UndoTool``).

    It needs a ``RunContext``. When the undo runs during a halt inside an agent run (also one
    continued after a restart), it gets that run's context; elsewhere (``guard.abort`` in the
    process that made the call) the guard injects the context of the call being undone, and
    where there is none (another process) the undo becomes a review item saying so. The
    signature tells the guard which: it asks for ``ctx`` only when there is no agent run.
    """

    __guardrail_pydantic_ai__ = True

    def __init__(self, toolset: GuardedToolset[Any], name: str) -> None:
        self.toolset = toolset
        self.name = name

    @property
    def __signature__(self) -> inspect.Signature:
        args = inspect.Parameter("args", inspect.Parameter.VAR_KEYWORD)
        if _calling.get() is not None:
            return inspect.Signature([args])
        return inspect.Signature([inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY), args])

    async def __call__(self, **args: Any) -> Any:
        given = args.get("ctx")
        ctx = args.pop("ctx") if isinstance(given, RunContext) else _calling.get()
        tool = self.toolset._tools.get(self.name)
        if ctx is None or tool is None:
            raise GuardrailError(
                f"{self.name} is a PydanticAI tool: as an undo it runs inside an agent run of "
                "its toolset (or where the guard has the RunContext of the call it undoes); "
                "undo by hand, or give the policy an undo function that asks for `deps` and "
                "the guard a context factory (Guard(context=...))",
                tool=self.name,
                field="undo",
            )
        validated = tool.args_validator.validate_python(args)
        # the same undo gets the same id on every attempt, another undo another one
        key = hashlib.sha256(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()
        undo_ctx = dataclasses.replace(
            ctx, tool_name=self.name, tool_call_id=f"guardrail-undo-{self.name}-{key[:12]}"
        )
        leaf = self.toolset.wrapped
        if _calling.get() is None:  # no agent run holds its toolset open (an MCP connection)
            async with leaf:
                return await leaf.call_tool(self.name, validated, undo_ctx, tool)
        return await leaf.call_tool(self.name, validated, undo_ctx, tool)


def _refuse_guarded_functions(toolset: AbstractToolset[Any], tools: dict[str, Any]) -> None:
    """A function already guarded with ``@guard.tool`` would be recorded twice, once without
    its call id and with the RunContext as an argument."""
    if not isinstance(toolset, FunctionToolset):
        return
    for name in tools:
        own = toolset.tools.get(name)
        if own is not None and hasattr(own.function, "__guardrail_raw__"):
            raise GuardrailError(
                f"tool {name!r} is decorated with @guard.tool and its toolset is guarded too, "
                "so each call would be recorded twice; give the agent the plain function and "
                f"declare its policy with guard.policy({name!r}, ...)",
                tool=name,
            )


def _recorded_args(tool_args: dict[str, Any]) -> dict[str, Any]:
    """The validated arguments as JSON (dates, models, enums...), as the guard records them."""
    try:
        plain = to_jsonable_python(tool_args)
    except PydanticSerializationError:
        return dict(tool_args)  # the guard refuses them, naming the type
    return plain if isinstance(plain, dict) else dict(tool_args)


_TOOL_RETURN_FIELDS = frozenset(f.name for f in dataclasses.fields(ToolReturn))


def _restored(value: Any) -> Any:
    """A replayed call returns its recorded result, JSON; a ``ToolReturn`` (recorded as its
    fields) becomes one again, so its ``metadata`` stays out of what the model sees."""
    if (
        isinstance(value, dict)
        and value.get("kind") == "tool-return"
        and "return_value" in value
        and set(value) <= _TOOL_RETURN_FIELDS
    ):
        return ToolReturn(**value)
    return value


def _approval_metadata(guard: Guard, run: Run, tool: str, call_id: str | None) -> dict[str, Any]:
    """What PydanticAI shows with the deferred call: the run and the review item to decide."""
    log = guard.log(run.id)
    asked = [a.seq for a in log.actions if a.call_id == call_id and a.state == "awaiting_approval"]
    items = [i for i in log.review_items if i.reason == "approval" and i.status == "open"]
    item = next((i for i in reversed(items) if asked and i.seq == asked[-1]), None)
    return {
        "guardrail": {
            "run_id": run.id,
            "tool": tool,
            "review_item": item.id if item is not None else None,
            "next": "approve or reject in guardrail (guardrail approve ITEM --resume), then "
            "run the agent again with apply_decisions(...) as deferred_tool_results",
        }
    }


# -- guarding toolsets and agents -------------------------------------------------------------


def guard_toolset(
    guard: Guard, toolset: AbstractToolset[AgentDepsT]
) -> AbstractToolset[AgentDepsT]:
    """``toolset`` with every leaf toolset under the guard (function tools, MCP servers...).

    Wrappers around the leaves (prefixes, renames, filters, PydanticAI approvals) stay
    outside the guard::

        agent = Agent(model, toolsets=[guard_toolset(guard, mcp_server.prefixed("git"))])
    """

    def wrap(leaf: AbstractToolset[AgentDepsT]) -> AbstractToolset[AgentDepsT]:
        return GuardedToolset(leaf, guard)

    return toolset.visit_and_replace(wrap)


@dataclass
class GuardTools(AbstractCapability[AgentDepsT]):
    """A capability that guards every tool of an agent, for each of its runs::

        agent = Agent(model, tools=[...], toolsets=[...], capabilities=[GuardTools(guard)])
        with guard.run(agent="shop"):
            agent.run_sync("buy a book")

    Also per run: ``agent.run(..., capabilities=[GuardTools(guard)])``.
    """

    guard: Guard

    @classmethod
    def get_serialization_name(cls) -> str | None:
        return None  # holds a Guard, not spec-serialisable

    def get_wrapper_toolset(
        self, toolset: AbstractToolset[AgentDepsT]
    ) -> AbstractToolset[AgentDepsT] | None:
        return guard_toolset(self.guard, toolset)


# -- approvals and resume --------------------------------------------------------------------


def apply_decisions(
    guard: Guard,
    run_id: str,
    requests: DeferredToolRequests,
    results: DeferredToolResults | None = None,
) -> DeferredToolResults:
    """The guard's decisions on a paused agent run, as PydanticAI deferred tool results.

    For each approval request the guard asked: approved calls are approved (they run once when
    the agent runs again), rejected ones denied with the reviewer's reason as the message the
    model gets. Fills ``results`` (a new one if None) and returns it; the requests the guard
    did not ask (your own ``requires_approval`` tools) are left for you to add, and
    ``requests.remaining(results)`` lists what is still undecided.
    """
    results = results if results is not None else DeferredToolResults()
    log = guard.log(run_id)
    items = {i.seq: i for i in log.review_items if i.reason == "approval"}
    for call in requests.approvals:
        asked = [
            a
            for a in log.actions
            if a.call_id is not None
            and a.call_id == call.tool_call_id
            and a.state in ("awaiting_approval", "approved", "rejected")
        ]
        latest = asked[-1] if asked else None
        if latest is None or latest.state == "awaiting_approval":
            continue
        item = items.get(latest.seq)
        who = item.resolved_by if item is not None else None
        if latest.state == "approved":
            results.approvals[call.tool_call_id] = ToolApproved()
        elif (reply := reply_text(item)) is not None:
            results.approvals[call.tool_call_id] = ToolDenied(reply)  # what the model reads
        else:
            why = f": {item.note}" if item is not None and item.note else ""
            results.approvals[call.tool_call_id] = ToolDenied(
                f"{latest.tool} with these arguments was rejected"
                + (f" by {who}" if who else "")
                + f"{why}; it did not run. Change the plan or the arguments (new arguments "
                "need a new approval)"
            )
        if who:
            results.answered_by[call.tool_call_id] = who
    return results


def history_for_resume(messages: Sequence[ModelMessage]) -> list[ModelMessage]:
    """The messages of a halted agent run, to continue it after a person resumed the run.

    A halt leaves the history ending in the model's tool calls and a request PydanticAI marks
    ``interrupted`` (the calls that finished before the halt). Without that request, running
    the agent with this history runs the halted turn again through the guard: the calls that
    succeeded return their recorded results, the failed one runs again::

        with capture_run_messages() as messages:
            with guard.run(agent="shop", on_failure="hold") as run:
                agent.run_sync("buy a book")  # raises RunHalted
        ...  # a person reviews and resumes the run
        with guard.run(run_id=run.id):
            agent.run_sync(message_history=history_for_resume(messages))
    """
    history = list(messages)
    if history and isinstance(history[-1], ModelRequest) and history[-1].state == "interrupted":
        history.pop()
    return history


_calling: ContextVar[RunContext[Any] | None] = ContextVar("guardrail_pai_calling", default=None)
_guarding: ContextVar[tuple[tuple[int, str | None], ...]] = ContextVar(
    "guardrail_pai_guarding", default=()
)
