"""``@guard.tool``: a function or coroutine function made into a guarded tool.

Calling the wrapper binds its arguments by name, splits off the injected ones, and hands the
call to the run the caller is in (``run.call`` / ``run.acall``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Protocol

from guardrail import inject
from guardrail.errors import PolicyError


class _Run(Protocol):
    def call(
        self, tool: str, args: dict[str, Any], *, fn: Callable[..., Any], injected: dict[str, Any]
    ) -> Any: ...

    async def acall(
        self, tool: str, args: dict[str, Any], *, fn: Callable[..., Any], injected: dict[str, Any]
    ) -> Any: ...


def guarded(fn: Callable[..., Any], tool_name: str, active_run: Callable[[str], _Run]) -> Any:
    """The guarded wrapper of ``fn`` (sync or async, as ``fn`` is); ``active_run(tool_name)``
    finds the run the caller is in."""
    signature = inspect.signature(fn)
    if any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values()):
        raise PolicyError(
            f"tool {tool_name!r} takes *args; guarded tools take named parameters",
            tool=tool_name,
            field="args",
        )
    marked = inject.annotated_names(fn)

    def named(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = signature.bind(*args, **kwargs) if args else signature.bind_partial(**kwargs)
        bound.apply_defaults()
        merged = dict(bound.arguments)
        for p in signature.parameters.values():
            if p.kind is p.VAR_KEYWORD:
                merged.update(merged.pop(p.name, {}))
        return merged

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            run = active_run(tool_name)
            plain, live = inject.split(named(args, kwargs), marked, None)
            return await run.acall(tool_name, plain, fn=fn, injected=live)

        wrapper: Any = async_wrapper
    else:

        @functools.wraps(fn)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            run = active_run(tool_name)
            plain, live = inject.split(named(args, kwargs), marked, None)
            return run.call(tool_name, plain, fn=fn, injected=live)

        wrapper = sync_wrapper
    wrapper.__guardrail_raw__ = fn
    return wrapper
