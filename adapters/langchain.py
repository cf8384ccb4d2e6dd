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

import functools
import typing
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, ToolException
from langchain_core.tools.base import _get_runnable_config_param, _handle_tool_error
from langchain_core.utils._signature import _signature_parameters
from pydantic import BaseModel, PrivateAttr

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


# the middleware for create_agent lives beside this module; importing it from here keeps one
# import path for both ways in
from guardrail.adapters.langchain_middleware import (  # noqa: E402
    GuardrailMiddleware,
    ToolReportedError,
)

__all__ = ["GuardedTool", "GuardrailMiddleware", "ToolReportedError", "wrap_tool", "wrap_tools"]
