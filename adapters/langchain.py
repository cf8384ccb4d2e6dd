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

import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import Any

from langchain.agents.middleware import AgentMiddleware
from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.types import Command, interrupt
from pydantic import BaseModel, ValidationError

from guardrail.errors import GuardrailError, RunHalted, RunStateError
from guardrail.guard import Guard
from guardrail.run import Run

_call_id: ContextVar[str | None] = ContextVar("guardrail_lc_call_id", default=None)


class GuardedTool(BaseTool):
    """A LangChain tool whose calls go through a :class:`~guardrail.Guard`."""

    inner: BaseTool
    guard: Any  # Guard; Any keeps pydantic from trying to validate it

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        token = _call_id.set(_tool_call_id(input))
        try:
            return super().invoke(input, config, **kwargs)
        finally:
            _call_id.reset(token)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        token = _call_id.set(_tool_call_id(input))
        try:
            return await super().ainvoke(input, config, **kwargs)
        finally:
            _call_id.reset(token)

    @property
    def _injected_args_keys(self) -> frozenset[str]:
        # the inner tool's injected parameters (InjectedToolArg and its kin, ToolRuntime):
        # LangChain passes them through to _run, and they must reach the inner tool
        return injected_keys(self.inner)

    def _active(self) -> Run:
        return self.guard.active_run(self.name)  # type: ignore[no-any-return]

    def _split(self, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[dict[str, Any], ...]:
        arguments = _arguments(self.inner, args, kwargs)
        injected = {k: arguments.pop(k) for k in injected_keys(self.inner) if k in arguments}
        return arguments, injected

    def _run(self, *args: Any, run_manager: Any = None, **kwargs: Any) -> Any:
        arguments, injected = self._split(args, kwargs)
        return self._active().call(
            self.name, arguments, fn=self._call_inner, call_id=_call_id.get(), injected=injected
        )

    async def _arun(self, *args: Any, run_manager: Any = None, **kwargs: Any) -> Any:
        arguments, injected = self._split(args, kwargs)
        return await self._active().acall(
            self.name, arguments, fn=self._acall_inner, call_id=_call_id.get(), injected=injected
        )

    def _call_inner(self, **arguments: Any) -> Any:
        return self.inner.invoke(arguments)

    async def _acall_inner(self, **arguments: Any) -> Any:
        return await self.inner.ainvoke(arguments)


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


def _tool_call_id(input: Any) -> str | None:
    if isinstance(input, dict) and input.get("type") == "tool_call":
        value = input.get("id")
        return str(value) if value is not None else None
    return None


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


class GuardrailMiddleware(AgentMiddleware):
    """Guards every tool call of a ``create_agent`` agent; halts become LangGraph interrupts.

    The guardrail run id is the thread id (``config["configurable"]["thread_id"]``), so the run
    and the checkpointed thread are the same thing. When a call fails the guard compensates and
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
    """

    def __init__(self, guard: Guard, *, agent: str = "agent", on_failure: str = "hold") -> None:
        super().__init__()
        self.guard = guard
        self.agent = agent
        self.on_failure = on_failure
        self._runs: dict[str, Run] = {}
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

    def _open(self, run_id: str) -> Run:
        """The entered run of this thread; waits (interrupts) while it waits for a person."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None and run.entered and not run.halted:
                return run
        while True:
            try:
                run = self.guard.run(self.agent, run_id=run_id, on_failure=self.on_failure).start()
            except RunStateError as exc:
                if exc.status in ("aborted", "completed", "aborting"):
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
        items = self.guard.store.review_items(run_id=run_id, status="open")
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
        run_id = self._thread(request.runtime.config)
        call = request.tool_call
        while True:
            run = self._open(run_id)
            try:
                recorded = run.call(
                    call["name"],
                    call["args"],
                    fn=lambda **_: self._recorded(handler(request)),
                    call_id=call["id"],
                    injected=self._injected(request),
                )
            except RunHalted as halt:
                self._halted(run_id, halt)
                continue
            return self._message(request, recorded)

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        if self._invalid(request):
            return await handler(request)
        run_id = self._thread(request.runtime.config)
        call = request.tool_call

        async def execute(**_: Any) -> dict[str, Any]:
            return self._recorded(await handler(request))

        while True:
            run = self._open(run_id)
            try:
                recorded = await run.acall(
                    call["name"],
                    call["args"],
                    fn=execute,
                    call_id=call["id"],
                    injected=self._injected(request),
                )
            except RunHalted as halt:
                self._halted(run_id, halt)
                continue
            return self._message(request, recorded)

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
        run_id = self._thread(config)
        with self._lock:
            run = self._runs.pop(run_id, None)
        if run is not None and run.entered and not run.halted:
            run.complete()
