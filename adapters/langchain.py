"""LangChain and LangGraph: guarded tools, and middleware for ``langchain.agents.create_agent``.

Two ways in, use one of them:

- :class:`GuardrailMiddleware` for ``create_agent``: the run is the LangGraph thread, each tool
  call is guarded with the model's tool-call id as its idempotency key, and a halt becomes a
  LangGraph ``interrupt``, so a checkpointed agent pauses, survives a restart, and continues on
  the same thread (``Command(resume=...)``) after a person resumes the guardrail run::

      agent = create_agent(model, tools, middleware=[GuardrailMiddleware(guard)],
                           checkpointer=SqliteSaver(...))

- :func:`wrap_tools` for anything else that takes LangChain tools::

    from guardrail.adapters.langchain import wrap_tools

    tools = wrap_tools(guard, FileManagementToolkit(root_dir=root).get_tools())
    with guard.run(agent="files"):
        agent.invoke(...)

Each call goes through the guard: recorded before and after, deduplicated by the tool-call id
when the model gave one, compensated on failure. A halt raises :class:`guardrail.RunHalted`,
which LangChain does not catch (it is a BaseException), so the agent loop really stops.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import typing
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import suppress
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from langchain.agents.middleware import AgentMiddleware
from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, ToolException
from langchain_core.tools.base import _get_runnable_config_param, _handle_tool_error
from langchain_core.utils._signature import _signature_parameters
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.types import Command, interrupt
from pydantic import BaseModel, PrivateAttr, ValidationError

from guardrail.errors import GuardrailError, RunHalted, RunStateError
from guardrail.failure import SIBLING_WAIT
from guardrail.guard import Guard
from guardrail.run import Run

_call_id: ContextVar[str | None] = ContextVar("guardrail_lc_call_id", default=None)


class GuardedTool(BaseTool):
    """A LangChain tool whose calls go through a :class:`~guardrail.Guard`.

    LangChain's machinery (input parsing and validation, callbacks, the ``ToolMessage``) runs
    once, for this tool; inside it the guard runs the original tool's own ``_run`` / ``_arun``
    with the same run manager and config, so the original is not invoked a second time.
    """

    inner: BaseTool
    guard: Any  # Guard; Any keeps pydantic from trying to validate it
    # what the inner tool's _run / _arun accept (run_manager, the config's parameter name)
    _sync_takes: _Takes = PrivateAttr()
    _async_takes: _Takes = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        inner = self.inner
        self._sync_takes = _Takes.of(inner._run)
        # as BaseTool.arun decides: a tool without its own _arun runs _run in a thread
        uses_run = type(inner)._arun is BaseTool._arun
        self._async_takes = _Takes.of(inner._run if uses_run else inner._arun)

    def run(
        self,
        tool_input: str | dict[str, Any],
        *args: Any,
        tool_call_id: str | None = None,
        **kwargs: Any,
    ) -> Any:
        token = _call_id.set(tool_call_id)
        try:
            return super().run(tool_input, *args, tool_call_id=tool_call_id, **kwargs)
        finally:
            _call_id.reset(token)

    async def arun(
        self,
        tool_input: str | dict[str, Any],
        *args: Any,
        tool_call_id: str | None = None,
        **kwargs: Any,
    ) -> Any:
        token = _call_id.set(tool_call_id)
        try:
            return await super().arun(tool_input, *args, tool_call_id=tool_call_id, **kwargs)
        finally:
            _call_id.reset(token)

    @functools.cached_property
    def _injected_args_keys(self) -> frozenset[str]:
        # the inner tool's injected parameters (InjectedToolArg and its kin, ToolRuntime):
        # LangChain passes them through to _run, and they must reach the inner tool
        return injected_keys(self.inner)

    def _active(self) -> Run:
        return self.guard.active_run(self.name)  # type: ignore[no-any-return]

    def _split(self, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[dict[str, Any], ...]:
        arguments = _arguments(self.inner, args, kwargs)
        injected = {k: arguments.pop(k) for k in self._injected_args_keys if k in arguments}
        return arguments, injected

    def _run(
        self,
        *args: Any,
        config: RunnableConfig,
        run_manager: CallbackManagerForToolRun | None = None,
        **kwargs: Any,
    ) -> Any:
        arguments, injected = self._split(args, kwargs)
        extra = self._sync_takes.kwargs(run_manager, config)
        inner = self.inner

        def call(**given: Any) -> Any:
            try:
                # a single string input stays positional, as the tool was called
                if args:
                    return inner._run(*args, **extra)
                return inner._run(**given, **extra)
            except ToolException as exc:
                return self._handled(exc)

        result = self._active().call(
            self.name, arguments, fn=call, call_id=_call_id.get(), injected=injected
        )
        return self._as_response(result)

    async def _arun(
        self,
        *args: Any,
        config: RunnableConfig,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
        **kwargs: Any,
    ) -> Any:
        arguments, injected = self._split(args, kwargs)
        extra = self._async_takes.kwargs(run_manager, config)
        inner = self.inner

        async def call(**given: Any) -> Any:
            try:
                if args:
                    return await inner._arun(*args, **extra)
                return await inner._arun(**given, **extra)
            except ToolException as exc:
                return self._handled(exc)

        result = await self._active().acall(
            self.name, arguments, fn=call, call_id=_call_id.get(), injected=injected
        )
        return self._as_response(result)

    def _handled(self, exc: ToolException) -> Any:
        """A ToolException the inner tool handles itself (``handle_tool_error``): its error
        text is the call's result, as ``inner.invoke`` would have answered."""
        flag = self.inner.handle_tool_error
        if not flag:
            raise exc
        content = _handle_tool_error(exc, flag=flag)
        return (content, None) if self.response_format == "content_and_artifact" else content

    def _as_response(self, result: Any) -> Any:
        # a replayed (content, artifact) pair comes back from the store as a JSON list
        if (
            self.response_format == "content_and_artifact"
            and isinstance(result, list)
            and len(result) == 2
        ):
            return tuple(result)
        return result

    def _call_inner(self, **arguments: Any) -> Any:
        """The inner tool by name, with its own machinery (for undo-by-name, not the hot path)."""
        return self.inner.invoke(arguments)


# LangChain looks for the config parameter of _run / _arun with typing.get_type_hints on every
# call; under `from __future__ import annotations` that compiles each annotation string each time
# (about 20 us a call). Resolved once here, the look-up finds types.
for _method in (GuardedTool._run, GuardedTool._arun):
    _method.__annotations__ = typing.get_type_hints(_method)


@dataclass(frozen=True, slots=True)
class _Takes:
    """What a tool's ``_run`` / ``_arun`` accepts besides the arguments."""

    run_manager: bool
    config: str | None

    @classmethod
    def of(cls, method: Callable[..., Any]) -> _Takes:
        return cls(
            run_manager="run_manager" in _signature_parameters(method),
            config=_get_runnable_config_param(method),
        )

    def kwargs(self, run_manager: Any, config: RunnableConfig) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.run_manager:
            extra["run_manager"] = run_manager
        if self.config is not None:
            extra[self.config] = config
        return extra


def injected_keys(tool: BaseTool) -> frozenset[str]:
    """The parameters LangChain injects into ``tool`` at call time (``InjectedToolArg``,
    ``InjectedState``, ``InjectedStore``, ``InjectedToolCallId``, ``ToolRuntime``): never
    recorded or hashed by the guard, handed to the tool and to its hooks by name."""
    keys: frozenset[str] = getattr(tool, "_injected_args_keys", frozenset())
    if isinstance(tool.args_schema, type) and issubclass(tool.args_schema, BaseModel):
        from langchain_core.tools.base import _is_injected_arg_type, get_all_basemodel_annotations

        for name, type_ in get_all_basemodel_annotations(tool.args_schema).items():
            if _is_injected_arg_type(type_):
                keys = keys | {name}
    return frozenset(keys)


def _arguments(tool: BaseTool, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    if args:  # a single string input to a tool with one argument
        names = list(tool.args)
        return {**dict(zip(names, args, strict=False)), **kwargs}
    return dict(kwargs)


def wrap_tool(guard: Guard, tool: BaseTool) -> GuardedTool:
    """One tool under the guard; its plain callable is registered for undo-by-name."""
    guarded = GuardedTool(
        name=tool.name,
        description=tool.description,
        args_schema=tool.args_schema,
        return_direct=tool.return_direct,
        response_format=tool.response_format,
        # LangChain's machinery runs once, for the wrapper: it carries the inner tool's own
        # callbacks, tags and metadata, and answers invalid input as the inner tool would
        callbacks=tool.callbacks,
        verbose=tool.verbose,
        tags=tool.tags,
        metadata=tool.metadata,
        extras=tool.extras,
        handle_validation_error=tool.handle_validation_error,
        inner=tool,
        guard=guard,
    )
    guard.register(guarded._call_inner, name=tool.name)
    return guarded


def wrap_tools(guard: Guard, tools: Iterable[BaseTool]) -> list[GuardedTool]:
    """Every tool under the guard, with the same names, descriptions and schemas."""
    return [wrap_tool(guard, tool) for tool in tools]


# -- create_agent middleware ------------------------------------------------------------------


class ToolReportedError(Exception):
    """A tool answered with an error ToolMessage instead of raising: guardrail treats it as a
    failure (the agent must not build on it)."""


TURNS_KEPT = 1024  # threads whose latest turn the middleware remembers


class GuardrailMiddleware(AgentMiddleware):
    """Guards every tool call of a ``create_agent`` agent; halts become LangGraph interrupts.

    A thread's turn is a guardrail run: the first turn's run id is the thread id
    (``config["configurable"]["thread_id"]``), a later turn's ``<thread id>~<n>`` (turn ``n``,
    started once the previous turn's run completed), each with ``{"thread_id": ...}`` in its
    metadata. So a conversation keeps calling tools turn after turn, and each turn's calls are
    logged, halted and decided on their own. When a call fails the guard compensates and
    the middleware calls ``interrupt(...)`` with a summary (run id, status, review items): the
    agent pauses on its thread. After a person resumes the run (``guard.resume`` or
    ``guardrail resume RUN``) the caller continues the thread with ``Command(resume=...)``; calls
    already done return their recorded results, nothing runs twice. If the person aborts
    instead, continuing the thread raises :class:`guardrail.RunHalted`.

    Failures are **held** by default (``on_failure="hold"``): a checkpointed thread continues
    after review from where it paused and does not redo the calls before the failure, so they
    must still stand when it does. Nothing is undone until a person aborts the run (then every
    reversible call is undone, newest first). Pass ``on_failure="compensate"`` when the agent is
    restarted from scratch after review instead (then undone calls run again on the replay).

    ``wait_for_decision``: seconds to wait in place for a person's decision before pausing the
    thread (`Guard.wait_decision`): a resume within them lets the step carry on at once, no
    ``Command(resume=...)`` needed; an abort ends it with `RunHalted`.
    """

    def __init__(
        self,
        guard: Guard,
        *,
        agent: str = "agent",
        on_failure: str = "hold",
        wait_for_decision: float | None = None,
    ) -> None:
        super().__init__()
        self.guard = guard
        self.agent = agent
        self.on_failure = on_failure
        self.wait_for_decision = wait_for_decision
        self._runs: dict[str, Run] = {}
        # thread id -> the run id of its latest turn: a cache of recent threads (bounded: a
        # server sees endless threads; a thread it forgot is found again in the store)
        self._turns: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    # the run of a thread

    def _thread(self, config: Any) -> str:
        thread = ((config or {}).get("configurable") or {}).get("thread_id")
        if thread is None:
            raise GuardrailError(
                "GuardrailMiddleware needs a thread: compile the agent with a checkpointer and "
                'invoke it with config={"configurable": {"thread_id": ...}}',
                field="thread_id",
            )
        return str(thread)

    def _turn(self, thread: str) -> str:
        """The run id of the thread's current turn: the first whose run has not completed."""
        with self._lock:
            known = self._turns.get(thread)
        run_id, n = known or thread, 1
        if known is not None and "~" in known[len(thread) :]:
            n = int(known.rsplit("~", 1)[1])
        while True:
            record = self.guard.run_record(run_id)
            if record is None or record.status != "completed":
                break
            n += 1
            run_id = f"{thread}~{n}"
        with self._lock:
            self._turns[thread] = run_id
            self._turns.move_to_end(thread)
            while len(self._turns) > TURNS_KEPT:
                self._turns.popitem(last=False)
        return run_id

    def _open(self, thread: str) -> Run:
        """The entered run of the thread's turn; waits (interrupts) while it waits for a
        person. A turn that found its run completed (the agent ended) starts the next."""
        with self._lock:
            run_id = self._turns.get(thread)
            run = self._runs.get(run_id) if run_id is not None else None
            if run is not None and run.entered and not run.halted:
                return run
        while True:
            run_id = self._turn(thread)
            try:
                run = self.guard.run(
                    self.agent,
                    run_id=run_id,
                    metadata={"thread_id": thread},
                    on_failure=self.on_failure,
                ).start()
            except RunStateError as exc:
                if exc.status == "completed":
                    continue  # (completed meanwhile: the next turn)
                if exc.status in ("aborted", "aborting"):
                    raise RunHalted(
                        f"run {run_id} is {exc.status}; this thread cannot continue",
                        run_id=run_id,
                        status=exc.status,
                    ) from exc
                interrupt(self._summary(run_id, str(exc)))
                continue  # resumed: look again
            with self._lock:
                self._runs[run_id] = run
            return run

    def _summary(self, run_id: str, message: str) -> dict[str, Any]:
        record = self.guard.require_run(run_id)
        items = self.guard.review_items(run_id=run_id, status="open")
        return {
            "guardrail": {
                "run_id": run_id,
                "status": record.status,
                "reason": record.reason,
                "message": message,
                "review_items": [
                    {"id": i.id, "seq": i.seq, "reason": i.reason, "kind": i.kind} for i in items
                ],
                "next": f"review with `guardrail show {run_id}`, then `guardrail resume "
                f"{run_id}` (or abort) and continue the thread with Command(resume=...)",
            }
        }

    # A parallel call of this model turn failed and is halting the run in this process; it lets
    # the calls in flight finish first, so the store says "running" until its halt lands. That
    # is not a run a person resumed: a call refused meanwhile waits for the halt to land before
    # it looks at the run, instead of calling again.

    @staticmethod
    def _halt_landed(run: Run) -> None:
        waited = 0.0
        while run.halted and not run.halt_done and waited < SIBLING_WAIT:
            time.sleep(0.002)
            waited += 0.002

    @staticmethod
    async def _ahalt_landed(run: Run) -> None:
        waited = 0.0
        while run.halted and not run.halt_done and waited < SIBLING_WAIT:
            await asyncio.sleep(0.002)
            waited += 0.002

    def _wait(self, run_id: str) -> None:
        """Wait in place (up to ``wait_for_decision`` seconds) for a person to decide; then
        the thread goes on at once, or pauses (interrupts) as usual if nobody decided."""
        with suppress(TimeoutError):
            self.guard.wait_decision(run_id, timeout=self.wait_for_decision)

    async def _await(self, run_id: str) -> None:
        with suppress(TimeoutError):
            await self.guard.await_decision(run_id, timeout=self.wait_for_decision)

    def _halted(self, run_id: str, halt: RunHalted) -> None:
        """Pause the thread until a person has decided; returns once the run may go on."""
        with self._lock:
            self._runs.pop(run_id, None)
        summary = self._summary(run_id, str(halt))
        while True:
            status = self.guard.require_run(run_id).status
            if status == "running":
                return
            if status in ("aborted", "aborting", "completed"):
                raise RunHalted(
                    f"run {run_id} is {status}; this thread cannot continue",
                    run_id=run_id,
                    status=status,
                ) from halt
            # Raises GraphInterrupt the first time; on a resumed thread it hands back the
            # resume value, and the loop looks at the run again.
            interrupt(summary)

    # one tool call

    @staticmethod
    def _invalid(request: ToolCallRequest) -> bool:
        """Arguments the tool would refuse: let the tool node tell the model, guard nothing.

        Checked against the schema the model sees (without the injected parameters, which the
        tool node adds later): a tool with an injected parameter is guarded like any other."""
        tool = request.tool
        schema = getattr(tool, "tool_call_schema", None) if tool is not None else None
        if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            return False
        try:
            schema.model_validate(request.tool_call["args"])
        except ValidationError:
            return True
        return False

    @staticmethod
    def _injected(request: ToolCallRequest) -> dict[str, Any]:
        """What the tool's hooks may ask for by name: the agent's runtime and state."""
        return {"runtime": request.runtime, "state": request.state}

    @staticmethod
    def _recorded(message: ToolMessage | Command[Any]) -> dict[str, Any]:
        if not isinstance(message, ToolMessage):
            raise GuardrailError(
                "a tool returned a LangGraph Command; GuardrailMiddleware guards tools that "
                "return results",
                field="result",
            )
        if message.status == "error":
            raise ToolReportedError(str(message.content)[:2000])
        return {"content": message.content, "artifact": message.artifact}

    @staticmethod
    def _message(request: ToolCallRequest, recorded: Any) -> ToolMessage:
        content = recorded.get("content") if isinstance(recorded, dict) else recorded
        artifact = recorded.get("artifact") if isinstance(recorded, dict) else None
        return ToolMessage(
            content=content if content is not None else "",
            artifact=artifact,
            tool_call_id=request.tool_call["id"] or "",
            name=request.tool_call["name"],
        )

    def wrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]],
    ) -> ToolMessage | Command[Any]:
        if self._invalid(request):
            return handler(request)
        thread = self._thread(request.runtime.config)
        call = request.tool_call
        answered: list[ToolMessage] = []  # the tool's own message, when it ran now

        def execute(**_: Any) -> dict[str, Any]:
            message = handler(request)
            recorded = self._recorded(message)
            answered.append(message)  # type: ignore[arg-type]  # _recorded checked it
            return recorded

        while True:
            run = self._open(thread)
            answered.clear()
            try:
                recorded = run.call(
                    call["name"],
                    call["args"],
                    fn=execute,
                    call_id=call["id"],
                    injected=self._injected(request),
                )
            except RunHalted as halt:
                self._halt_landed(run)
                if self.wait_for_decision:
                    self._wait(run.id)
                self._halted(run.id, halt)
                continue
            return answered[-1] if answered else self._message(request, recorded)

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        if self._invalid(request):
            return await handler(request)
        thread = self._thread(request.runtime.config)
        call = request.tool_call
        answered: list[ToolMessage] = []  # the tool's own message, when it ran now

        async def execute(**_: Any) -> dict[str, Any]:
            message = await handler(request)
            recorded = self._recorded(message)
            answered.append(message)  # type: ignore[arg-type]  # _recorded checked it
            return recorded

        while True:
            run = self._open(thread)
            answered.clear()
            try:
                recorded = await run.acall(
                    call["name"],
                    call["args"],
                    fn=execute,
                    call_id=call["id"],
                    injected=self._injected(request),
                )
            except RunHalted as halt:
                await self._ahalt_landed(run)
                if self.wait_for_decision:
                    await self._await(run.id)
                self._halted(run.id, halt)
                continue
            return answered[-1] if answered else self._message(request, recorded)

    # the end of the agent

    def after_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        self._complete(runtime)
        return None

    async def aafter_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        self._complete(runtime)
        return None

    def _complete(self, runtime: Any) -> None:
        config = getattr(runtime, "config", None)
        if config is None:
            from langgraph.config import get_config

            config = get_config()
        thread = self._thread(config)
        with self._lock:
            run_id = self._turns.get(thread)
            if run_id is None:  # (forgotten among many threads: its run is still entered)
                run_id = next((r for r in self._runs if _turn_of(r, thread)), None)
            run = self._runs.pop(run_id, None) if run_id is not None else None
        if run is not None and run.entered and not run.halted:
            run.complete()


def _turn_of(run_id: str, thread: str) -> bool:
    """Whether ``run_id`` is a turn of ``thread`` (``thread``, ``thread~2``, ...)."""
    return run_id == thread or (
        run_id.startswith(thread + "~") and run_id[len(thread) + 1 :].isdigit()
    )
