"""LangChain: guard any ``BaseTool`` while keeping its name, description and argument schema.

::

    from guardrail.adapters.langchain import wrap_tools

    tools = wrap_tools(guard, FileManagementToolkit(root_dir=root).get_tools())
    with guard.run(agent="files"):
        agent.invoke(...)

Each call goes through the guard: recorded before and after, deduplicated by the tool-call id
when the model gave one, compensated on failure. A halt raises :class:`guardrail.RunHalted`,
which LangChain does not catch (it is a BaseException), so the agent loop really stops.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from typing import Any

from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool

from guardrail.errors import GuardrailError
from guardrail.guard import Guard
from guardrail.run import Run, current_run

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

    def _active(self) -> Run:
        run = current_run()
        if run is None or run.guard is not self.guard:
            raise GuardrailError(
                f"{self.name} was called outside a run of this guard; invoke the agent inside "
                "`with guard.run(agent=...):`",
                tool=self.name,
            )
        return run

    def _run(self, *args: Any, run_manager: Any = None, **kwargs: Any) -> Any:
        arguments = _arguments(self.inner, args, kwargs)
        return self._active().call(
            self.name, arguments, fn=self._call_inner, call_id=_call_id.get()
        )

    async def _arun(self, *args: Any, run_manager: Any = None, **kwargs: Any) -> Any:
        arguments = _arguments(self.inner, args, kwargs)
        return await self._active().acall(
            self.name, arguments, fn=self._acall_inner, call_id=_call_id.get()
        )

    def _call_inner(self, **arguments: Any) -> Any:
        return self.inner.invoke(arguments)

    async def _acall_inner(self, **arguments: Any) -> Any:
        return await self.inner.ainvoke(arguments)


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
