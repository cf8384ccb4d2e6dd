"""Injected parameters: live objects a tool takes next to its arguments (a connection, an inbox,
a framework's context). They are passed to the tool and to its hooks, but never logged, hashed,
serialised or made part of the dedup key: replaying a call after resume with a changed
connection object must find the recorded call, not run it again.

A plain function marks them with ``Annotated[Conn, Injected]`` (or its policy lists them in
``injected=``); the adapters recognise their framework's own (LangChain's ``InjectedToolArg``
kin and ``ToolRuntime``, the OpenAI Agents SDK's context, PydanticAI's ``RunContext``).

Hooks (``snapshot``, ``capture``, ``undo``, ``probe``) ask for an injected value by parameter
name. In the process that made the call they get the live object; elsewhere (an abort from the
CLI or the console, recovery) they get what the guard's ``context`` factory returns for the
action, and an undo that needs a value neither provides fails into a review item that says so.
"""

from __future__ import annotations

import inspect
import threading
import typing
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final

from guardrail.redact import describe
from guardrail.store import Action


class _InjectedMarker:
    """``Annotated[T, Injected]``: a parameter the caller supplies, not the agent."""

    _instance: _InjectedMarker | None = None

    def __new__(cls) -> _InjectedMarker:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "guardrail.Injected"


Injected: Final = _InjectedMarker()
"""Marks a parameter as injected: ``def send(to: str, inbox: Annotated[Inbox, Injected])``."""

ContextFactory = Callable[[Action], Mapping[str, Any]]
"""``Guard(context=...)``: the injected values for an action's hooks outside its own process."""


def annotated_names(fn: Callable[..., Any]) -> tuple[str, ...]:
    """The parameters of ``fn`` annotated ``Annotated[..., Injected]``."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # unresolvable forward references: look at the raw annotations
        hints = dict(getattr(fn, "__annotations__", {}) or {})
    found: list[str] = []
    for name, hint in hints.items():
        if name == "return":
            continue
        if typing.get_origin(hint) is typing.Annotated:
            if any(meta is Injected for meta in typing.get_args(hint)[1:]):
                found.append(name)
        elif isinstance(hint, str) and "Injected" in hint and hint.startswith("Annotated["):
            found.append(name)
    return tuple(found)


def split(
    args: Mapping[str, Any], names: tuple[str, ...], injected: Mapping[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate the recorded arguments from the injected values named in ``names``."""
    plain = dict(args)
    live = dict(injected or {})
    for name in names:
        if name in plain:
            live[name] = plain.pop(name)
    return plain, live


def hook_kwargs(
    fn: Callable[..., Any], offered: Mapping[str, Any], injected: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What a hook asks for by parameter name: the ``offered`` values (``args``, ``result``...)
    and injected values; a hook that names none of the offered ones gets the original
    arguments as keywords, plus the injected values it names."""
    args = dict(offered.get("args") or {})
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return args
    live = injected or {}
    wanted = {name: offered[name] for name in params if name in offered}
    extra = {name: live[name] for name in params if name in live and name not in offered}
    return {**wanted, **extra} if wanted else {**args, **extra}


def missing(fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> list[str]:
    """Required parameters of ``fn`` that ``kwargs`` does not supply."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in params
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in kwargs
    ]


class Live:
    """The injected values of the calls this process made, for their hooks: by run, by action.

    Kept for the runs this process executes and the halted ones it may still compensate
    (``guard.abort`` in the same process); bounded, so a server that halts many runs keeps only
    the newest ``max_runs``. A run's values are dropped when it completes or is aborted.
    """

    def __init__(self, max_runs: int = 256) -> None:
        self.max_runs = max_runs
        self._runs: OrderedDict[str, dict[int, Mapping[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, run_id: str, seq: int, values: Mapping[str, Any]) -> None:
        with self._lock:
            actions = self._runs.get(run_id)
            if actions is None:
                actions = self._runs[run_id] = {}
                while len(self._runs) > self.max_runs:
                    self._runs.popitem(last=False)
            actions[seq] = values

    def get(self, run_id: str, seq: int) -> Mapping[str, Any] | None:
        with self._lock:
            actions = self._runs.get(run_id)
            return actions.get(seq) if actions is not None else None

    def drop(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def __len__(self) -> int:
        return len(self._runs)


def for_action(
    live: Live, factory: ContextFactory | None, action: Action
) -> tuple[dict[str, Any], str | None]:
    """The injected values an action's hooks get here, and why not, if there is a problem:
    the live values of this process's call, else the context factory's."""
    found = live.get(action.run_id, action.seq)
    if found is not None:
        return dict(found), None
    if factory is None:
        return {}, None
    try:
        made = factory(action)
    except Exception as exc:
        # (its text may name a connection string: redacted, as every error guardrail keeps)
        return {}, f"the guard's context factory failed for action {action.seq}: {describe(exc)}"
    if not isinstance(made, Mapping):
        return {}, (
            f"the guard's context factory returned a {type(made).__name__} for action "
            f"{action.seq}; it must return a mapping of parameter names to values"
        )
    return dict(made), None
