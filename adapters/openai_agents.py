"""OpenAI Agents SDK: guard ``FunctionTool``s, keeping their names, descriptions and schemas.

::

    from agents import Agent, Runner
    from guardrail.adapters.openai_agents import wrap_tools

    agent = Agent(name="shop", tools=wrap_tools(guard, [create_order, charge_payment]))
    with guard.run(agent="shop") as run:  # or `async with` around `await Runner.run(...)`
        result = Runner.run_sync(agent, "buy a book")

**The run** is guardrail's current run: enter ``guard.run(...)`` around ``Runner.run`` /
``Runner.run_sync``. The SDK runs each tool call in an asyncio task (sync tools in a worker
thread), and both copy the caller's context, so the tools find the run by themselves. A tool
called outside a run of its guard fails the agent run with a message saying so.

**Each call** goes through the guard with the SDK's tool-call id (``ToolContext.tool_call_id``)
as its idempotency key: recorded before and after, deduplicated, retried only as the policy says.
The SDK's context is injected, never recorded: the tool gets its ``RunContextWrapper`` as
usual, and the policy's hooks (``snapshot``, ``capture``, ``undo``, ``probe``) may ask for it
by name, as ``ctx`` (the ``ToolContext``) or ``context`` (your context object).

**A halt really stops the agent.** The SDK turns a tool's ``Exception`` into text for the model
(``failure_error_function``), but it catches only ``Exception``: :class:`~guardrail.RunHalted`
is a ``BaseException``, so the batch of tool tasks re-raises it and ``Runner.run`` /
``Runner.run_sync`` / ``Runner.run_streamed`` end with ``RunHalted`` in the caller; the model
is not called again and no further tool runs. The wrapped tool calls the original tool with its
failure formatter turned off, so the guard sees the tool's real exception (and its policy
decides about retries) instead of an "An error occurred" string. Arguments the tool's schema
refuses are checked first and get the tool's usual answer: nothing runs, nothing is recorded,
the run goes on.

**Parallel calls.** The SDK runs the calls of one model turn concurrently and, when one raises,
cancels its siblings. The guard makes a failing call wait for its running siblings before it
compensates; this adapter makes every ``RunHalted`` (also for a call refused because the run
had already halted) wait until no sibling is running before it leaves the tool. So every sibling
ends recorded as succeeded (then compensated) or failed, none is cut off half-way. Calls are
numbered in the order they started; compensation runs newest first.

**Approvals map onto the SDK's own approval flow.** Each wrapped tool gets a ``needs_approval``
callable that asks the guard. When the tool's approval condition holds for these arguments,
the guard records the approval request (the run becomes ``awaiting_approval``; the review item
shows in ``guardrail show``, the console and the ``on_halt`` hook) and the SDK pauses that call:
``Runner.run`` returns with ``result.interruptions``. A person decides in guardrail
(``guardrail approve ITEM --resume``, ``guard.approve`` / ``guard.reject``), then::

    state = result.to_state()  # or: await RunState.from_string(agent, saved) after a restart
    apply_decisions(guard, run.id, state)  # the guard's decisions -> state.approve / reject
    with guard.run(run_id=run.id):
        result = Runner.run_sync(agent, state)  # the approved call runs once, same call id

Every gated call of a model turn is asked about at once: the SDK checks each call of the
turn before it runs any, and the guard records one approval request per gated call (the run
stays ``awaiting_approval`` until a person has decided them), so ``result.interruptions``
lists them all and a reviewer decides them together.

What does not map: the guard halts the whole run for an approval, the SDK only the gated calls,
so the other calls of that model turn do not run; the model is told so (as their output) and
can call them again. A tool's own
``needs_approval`` (an SDK-only approval) still pauses the SDK run, but the guard knows nothing
of it and completes its run when ``Runner.run`` returns; resume such a state in a new guard run.
The SDK also pauses, on its own, a call whose arguments are not a JSON object (it cannot show
them to an approval callable). Approving only in the SDK (``state.approve`` without a guard
decision) does not get past the guard: the run cannot be resumed until a person decides in
guardrail. Approvals are keyed by call id, so resume from the SDK state: a model that re-plans
from scratch makes new call ids and the guard asks again.

**Timeouts.** A tool's ``timeout_seconds`` is enforced inside the guarded call, so a timeout is a
failure of the call (``TimeoutError``: retried if the policy says so, else the run halts)
rather than an SDK cancellation mid-call, whose outcome the guard could only mark in doubt.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
from collections.abc import Iterable
from typing import Any

from agents import FunctionTool, RunContextWrapper, RunState, Tool, ToolApprovalItem
from agents.exceptions import ModelBehaviorError
from agents.function_schema import function_schema
from agents.tool import (
    maybe_invoke_function_tool_failure_error_function,
    set_function_tool_failure_error_function,
)
from agents.tool_context import ToolContext
from pydantic import BaseModel, ValidationError

from guardrail.decisions import reply_text
from guardrail.errors import CallRejected
from guardrail.flight import flight
from guardrail.guard import Guard
from guardrail.run import Run, current_run

__all__ = ["apply_decisions", "wrap_tool", "wrap_tools"]


def wrap_tool(guard: Guard, tool: FunctionTool) -> FunctionTool:
    """One ``FunctionTool`` under the guard: same name, description, schema and strictness.

    The original tool is also registered with the guard by name, so a policy's
    ``UndoTool(tool=...)`` can name it.
    """
    if not isinstance(tool, FunctionTool):
        raise TypeError(
            f"{getattr(tool, 'name', tool)!r} is a {type(tool).__name__}, not a FunctionTool; "
            "hosted tools run on OpenAI's servers and cannot be guarded, leave them out of "
            "wrap_tools"
        )
    if isinstance(getattr(tool.on_invoke_tool, "__self__", None), _Guarded):
        return tool
    guarded_tool = _Guarded(guard, tool)
    wrapped = copy.copy(tool)  # keeps every field, including the SDK's private metadata
    wrapped.on_invoke_tool = guarded_tool.invoke
    wrapped.needs_approval = guarded_tool.needs_approval
    wrapped.timeout_seconds = None  # enforced inside the guarded call instead
    guard.register(guarded_tool.call_outside_run, name=tool.name)
    return wrapped


def wrap_tools(guard: Guard, tools: Iterable[FunctionTool]) -> list[Tool]:
    """Every tool under the guard, with the same names, descriptions and schemas (typed as
    the SDK's ``Tool``, so the list goes straight into ``Agent(tools=...)``)."""
    return [wrap_tool(guard, tool) for tool in tools]


def apply_decisions(guard: Guard, run_id: str, state: RunState[Any, Any]) -> list[ToolApprovalItem]:
    """Carry a person's guardrail decisions over to a paused SDK run.

    For each of the state's interruptions that the guard asked about: approved calls are
    approved in the state (they run once when the state is resumed), rejected ones rejected,
    with the reviewer's reason as the message the model gets. Returns the interruptions still
    undecided (a guard request nobody has decided yet, or an SDK-only approval for the
    application to decide with ``state.approve`` / ``state.reject``).
    """
    log = guard.log(run_id)
    items = {i.seq: i for i in log.review_items if i.reason == "approval"}
    waiting: list[ToolApprovalItem] = []
    for interruption in state.get_interruptions():
        asked = [
            a
            for a in log.actions
            if a.call_id is not None
            and a.call_id == interruption.call_id
            and a.state in ("awaiting_approval", "approved", "rejected")
        ]
        latest = asked[-1] if asked else None
        if latest is not None and latest.state == "approved":
            state.approve(interruption)
        elif latest is not None and latest.state == "rejected":
            item = items.get(latest.seq)
            who = f" by {item.resolved_by}" if item is not None and item.resolved_by else ""
            why = f": {item.note}" if item is not None and item.note else ""
            reply = reply_text(item)
            state.reject(
                interruption,
                rejection_message=reply
                if reply is not None
                else (
                    f"{latest.tool} with these arguments was rejected{who}{why}; it did not "
                    "run. Change the plan or the arguments (new arguments need a new approval)"
                ),
            )
        else:
            waiting.append(interruption)
    return waiting


# -- one wrapped tool ------------------------------------------------------------------------


class _Guarded:
    """The invoker and approval check of one wrapped tool."""

    def __init__(self, guard: Guard, tool: FunctionTool) -> None:
        self.guard = guard
        self.tool = tool
        self.name = tool.name
        # A copy whose exceptions propagate instead of becoming text: the guard must see them.
        self.raw = copy.copy(tool)
        set_function_tool_failure_error_function(self.raw, None)
        self.validator = _validator(tool)

    def _active(self) -> Run:
        return self.guard.active_run(self.name)

    async def invoke(self, ctx: ToolContext[Any], input: str) -> Any:
        run = self._active()
        try:
            args = _arguments(input)
            if self.validator is not None:
                self.validator.model_validate(args)
        except (ValueError, ValidationError) as exc:
            # Arguments the tool would refuse: nothing ran, nothing is recorded, the run goes
            # on; the model gets the answer the tool itself would have given.
            error = ModelBehaviorError(f"Invalid JSON input for tool {self.name}: {exc}")
            text = await maybe_invoke_function_tool_failure_error_function(
                function_tool=self.tool, context=ctx, error=error
            )
            if text is None:
                raise error from None
            return text
        calls = flight(run)
        if run.halted and calls.paused_by:
            return (
                f"{self.name} did not run: run {run.id} is waiting for a person to approve "
                f"{calls.waiting_for}. Nothing was done; call {self.name} again afterwards if "
                "it is still needed."
            )

        async def call_tool(**_: Any) -> Any:
            pending = self.raw.on_invoke_tool(ctx, input)
            timeout = self.tool.timeout_seconds
            if timeout is not None:
                return await asyncio.wait_for(pending, timeout)
            return await pending

        async with calls.call():
            try:
                return await run.acall(
                    self.name,
                    args,
                    fn=call_tool,
                    call_id=ctx.tool_call_id,
                    injected={"ctx": ctx, "context": ctx.context},  # for the hooks, not recorded
                )
            except CallRejected as exc:
                return str(exc)  # an ordinary outcome: the model can take another way

    async def needs_approval(
        self, ctx: RunContextWrapper[Any], params: dict[str, Any], call_id: str
    ) -> bool:
        own = self.tool.needs_approval
        if own is True:
            return True
        if callable(own):
            verdict: Any = own(ctx, params, call_id)  # sync callables work in the SDK too
            if inspect.isawaitable(verdict):
                verdict = await verdict
            if verdict:
                return True
        run = current_run()
        if run is None or run.guard is not self.guard:
            return False  # invoke says the call is outside a run
        if run.needs_approval(self.name, params, call_id):
            # The request is recorded and the run awaits approval; the SDK pauses this call.
            paused_by = flight(run).paused_by
            if self.name not in paused_by:
                paused_by.append(self.name)
            return True
        return False  # invoke decides: runs, replays, or raises CallRejected / CallRefused

    async def call_outside_run(self, **args: Any) -> Any:
        """The plain tool for an undo by name: no agent run, no SDK context."""
        text = json.dumps(args)
        ctx: ToolContext[Any] = ToolContext(
            context=None,
            tool_name=self.name,
            tool_call_id=f"guardrail-undo-{self.name}",
            tool_arguments=text,
        )
        return await self.raw.on_invoke_tool(ctx, text)


def _validator(tool: FunctionTool) -> type[BaseModel] | None:
    """The argument model of a ``@function_tool``, rebuilt from its function, so arguments are
    checked before the guard records anything (a hand-made FunctionTool checks its own)."""
    try:
        original = tool.__wrapped__
    except AttributeError:
        return None
    if not inspect.isroutine(original):
        return None
    try:
        schema = function_schema(
            original,
            name_override=tool.name,
            use_docstring_info=False,
            strict_json_schema=tool.strict_json_schema,
        )
    except Exception:
        return None
    return schema.params_pydantic_model


def _arguments(text: str) -> dict[str, Any]:
    value = json.loads(text) if text.strip() else {}
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value
