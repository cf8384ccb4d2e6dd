"""Policies: what a tool does to the world and how to take it back.

A policy is declared per tool, in code::

    guard.policy("send_email", effect="irreversible", review=Review(kind="correct"))

    @guard.tool(effect="reversible", undo=cancel_order, external_ids={"order_id": "result.id"})
    def create_order(item: str) -> dict: ...
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from guardrail.conditions import Condition, ConditionError
from guardrail.errors import PolicyError

Effect = Literal["read_only", "reversible", "irreversible"]
ReviewKind = Literal["cancel", "mark", "correct", "isolate", "handoff"]
OnFailure = Literal["compensate", "hold"]


class Review(BaseModel):
    """What a person should do about an action that cannot be undone automatically."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ReviewKind = "handoff"
    owner: str | None = None
    instructions: str | None = None


class Retry(BaseModel):
    """How often to try a call (or an undo) and on which exceptions.

    ``attempts`` counts the first try: ``Retry(attempts=1)`` never retries. Waits grow
    exponentially from ``wait_initial`` to ``wait_max`` seconds.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    attempts: int = Field(default=3, ge=1, le=100)
    on: tuple[type[BaseException], ...] = (Exception,)
    wait_initial: float = Field(default=0.05, ge=0)
    wait_max: float = Field(default=2.0, ge=0)


class UndoTool(BaseModel):
    """An undo that is another tool: ``UndoTool(tool="cancel_order", args={"id": "result.id"})``.

    ``args`` maps each of the undo tool's parameters to a path into the action: ``args.*`` (the
    original arguments), ``result.*``, ``external_ids.*`` or ``snapshot.*``. With no ``args`` the
    undo tool gets the original arguments. The tool is looked up by name when the undo runs, among
    the guard's tools (``@guard.tool``, ``guard.register``, wrapped toolkits).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tool: str = Field(min_length=1, max_length=200)
    args: Mapping[str, str] = Field(default_factory=dict)

    def kwargs(self, scope: Mapping[str, Any]) -> dict[str, Any]:
        if not self.args:
            return dict(scope.get("args") or {})
        return {name: resolve_path(path, scope) for name, path in self.args.items()}


class Approval(BaseModel):
    """A gate before the call: when ``when`` holds, a person must approve these exact arguments.

    ``when`` is a CEL expression over ``args``, ``tool`` and ``run`` (see
    :mod:`guardrail.conditions`) or a Python callable taking the arguments. ``ttl`` (seconds)
    limits how long an approval stays valid after it is given; ``None`` means until used.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    when: str | Callable[[Mapping[str, Any]], bool]
    ttl: float | None = Field(default=None, gt=0)

    @field_validator("when")
    @classmethod
    def _compiles(cls, when: Any) -> Any:
        if isinstance(when, str):
            condition(when)  # raises ConditionError (a ValueError) with what is wrong
        return when

    def holds(self, scope: Mapping[str, Any]) -> bool:
        """Whether the call needs approval; an expression that fails counts as yes (fail closed)."""
        if isinstance(self.when, str):
            return condition(self.when).holds(scope)
        try:
            return bool(self.when(scope["args"]))
        except Exception as exc:
            raise ConditionError(f"the approval condition failed: {exc!r}") from None


@functools.lru_cache(maxsize=1024)
def condition(source: str) -> Condition:
    return Condition(source)


@functools.lru_cache(maxsize=256)
def result_condition(source: str) -> Condition:
    """A condition over a tool's ``result`` (see :class:`ErrorResult`)."""
    return Condition(source, frozenset({"result"}))


class ErrorResult(BaseModel):
    """A tool that reports failure in its result instead of raising (an MCP ``isError`` result,
    a string starting ``"Error:"``): ``when`` says which results are errors, as a CEL expression
    over ``result`` or a callable taking the result.

    ``means``: ``unknown`` (the tool may have done something before it failed; the default) or
    ``not_done`` (an error result proves nothing happened). ``then``: ``halt`` the run (the
    default) or ``return`` the error to the model to correct, for ``not_done`` errors only.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    when: str | Callable[[Any], bool]
    means: Literal["not_done", "unknown"] = "unknown"
    then: Literal["halt", "return"] = "halt"

    @field_validator("when")
    @classmethod
    def _compiles(cls, when: Any) -> Any:
        if isinstance(when, str):
            result_condition(when)
        return when

    @model_validator(mode="after")
    def _returns_only_what_did_not_happen(self) -> ErrorResult:
        if self.then == "return" and self.means != "not_done":
            raise ValueError(
                "then='return' gives the error back to the model and lets the run go on; that "
                "is safe only for errors that prove nothing happened: set means='not_done'"
            )
        return self

    def holds(self, result: Any) -> bool:
        """Whether ``result`` is an error; a condition that fails counts as yes (fail closed)."""
        if isinstance(self.when, str):
            from guardrail.redact import NotJSON, to_jsonable

            try:
                plain = to_jsonable(result)
            except NotJSON:
                plain = str(result)
            try:
                return result_condition(self.when).holds({"result": plain})
            except ConditionError:
                return True  # cannot tell: fail closed
        try:
            return bool(self.when(result))
        except Exception:
            return True


NO_RETRY = Retry(attempts=1)
SAFE_RETRY = Retry(attempts=3)
UNDO_RETRY = Retry(attempts=3)


class Policy(BaseModel):
    """The declared behaviour of one tool.

    - ``effect``: ``read_only`` (changes nothing), ``reversible`` (has an ``undo``) or
      ``irreversible`` (has a ``review`` a person performs).
    - ``undo``: a callable that takes the action back. It receives, by parameter name, any of
      ``args`` (the recorded arguments), ``result`` (the recorded result), ``external_ids``,
      ``snapshot`` and ``action``; if it names none of these it is called with the original
      arguments as keywords. Or an :class:`UndoTool`: another tool, with mapped arguments.
    - ``snapshot``: a callable run just before the call (it receives ``args`` or the arguments as
      keywords, like an undo); its JSON result is stored with the action and handed to the undo.
      Use it to keep what the call will destroy (a file's previous bytes). If it raises, the call
      is refused and nothing runs.
    - ``approval``: an :class:`Approval` gate evaluated before the call.
    - ``retry``: when to retry the call. Default: read-only and ``idempotent`` tools are retried
      3 times; others are never retried unless a ``retry`` is declared.
    - ``external_ids``: name to path (``result.id``, ``args.path``, ``result.items.0.id``).
    - ``idempotency_key``: a path or a callable over the arguments; default is the framework's
      tool-call id, else the tool, the arguments' hash and how often they occurred in this run.
    - ``redact``: paths (``args.card``, ``result.token``) replaced by ``"[REDACTED]"`` before
      anything is stored or exported.
    - ``on_failure``: ``compensate`` (undo at once) or ``hold`` (undo nothing until a person
      decides).
    - ``probe``: for an action left ``in_doubt`` by a crash: returns the result if the call took
      effect, ``False`` if it did not, ``None`` if it still cannot tell.
    - ``undo_idempotent``: recovery may re-run an undo that a crash interrupted.
    - ``injected``: parameters the caller supplies (a connection, an inbox): passed to the tool
      and, by name, to its hooks, but never recorded, hashed or part of the dedup key (also
      marked in the signature with ``Annotated[T, Injected]``; see :mod:`guardrail.inject`).
    - ``not_done`` / ``unknown``: exception types that prove the call did not take effect
      (validation errors, a declined card), and ones that leave its outcome unknown (a
      timeout after the request was sent). An exception declared neither way leaves the
      outcome **unknown** for reversible and irreversible tools (the action is ``in_doubt``:
      the probe, else a person, says whether it happened) and proves nothing happened for
      read-only ones. ``unknown`` wins when an exception matches both.
    - ``on_not_done``: ``halt`` (the default) or ``raise``: a failure that proves nothing
      happened is recorded as failed and the tool's own exception goes back to the agent (its
      framework shows it to the model, e.g. PydanticAI's ``ModelRetry``) instead of halting.
    - ``error_result``: an :class:`ErrorResult`, for tools that report failure in their result.
    - ``capture``: a callable run after a successful call that returns more external ids (or
      data the undo needs) read from state or a follow-up query, as a mapping of names to JSON
      values; it receives ``args``, ``result`` and injected values by name. If it fails, the
      call still counts as done and the action carries a note for the reviewer.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str
    effect: Effect
    undo: Callable[..., Any] | UndoTool | None = None
    undo_retry: Retry = UNDO_RETRY
    undo_idempotent: bool = False
    review: Review | None = None
    retry: Retry | None = None
    idempotent: bool = False
    external_ids: Mapping[str, str] = Field(default_factory=dict)
    idempotency_key: str | Callable[[Mapping[str, Any]], str] | None = None
    redact: tuple[str, ...] = ()
    on_failure: OnFailure = "compensate"
    probe: Callable[..., Any] | None = None
    snapshot: Callable[..., Any] | None = None
    approval: Approval | None = None
    injected: tuple[str, ...] = ()
    capture: Callable[..., Any] | None = None
    not_done: tuple[type[BaseException], ...] = ()
    unknown: tuple[type[BaseException], ...] = ()
    on_not_done: Literal["halt", "raise"] = "halt"
    error_result: ErrorResult | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        where = f"policy for tool {self.name!r}"
        if self.effect == "reversible" and self.undo is None:
            raise PolicyError(
                f"{where}: effect 'reversible' needs an undo; declare undo=... or use "
                "effect='irreversible' with a review",
                tool=self.name,
                field="undo",
            )
        if self.effect != "reversible" and self.undo is not None:
            raise PolicyError(
                f"{where}: an undo is only used with effect 'reversible', not {self.effect!r}",
                tool=self.name,
                field="undo",
            )
        for name, path in self.external_ids.items():
            _check_path(path, self.name, f"external_ids.{name}", roots=("result", "args"))
        for path in self.redact:
            _check_path(path, self.name, "redact", roots=("args", "result"))
        if isinstance(self.undo, UndoTool):
            if self.undo.tool == self.name:
                raise PolicyError(
                    f"{where}: undo.tool names the tool itself; an undo must be another tool",
                    tool=self.name,
                    field="undo.tool",
                )
            for param, path in self.undo.args.items():
                _check_path(path, self.name, f"undo.args.{param}", roots=UNDO_ROOTS)
        if isinstance(self.idempotency_key, str):
            _check_path(self.idempotency_key, self.name, "idempotency_key", roots=("args",))
        for name in self.injected:
            if not name.isidentifier() or name in HOOK_NAMES:
                raise PolicyError(
                    f"{where}: injected = {name!r} is not a parameter name a hook can ask for "
                    f"(a Python identifier other than {', '.join(sorted(HOOK_NAMES))})",
                    tool=self.name,
                    field="injected",
                )
        return self

    def outcome_of(self, error: BaseException) -> Literal["not_done", "unknown"]:
        """What a call that raised ``error`` (after its retries) tells about its effect."""
        if self.unknown and isinstance(error, self.unknown):
            return "unknown"
        if self.not_done and isinstance(error, self.not_done):
            return "not_done"
        return "not_done" if self.effect == "read_only" else "unknown"

    @property
    def call_retry(self) -> Retry:
        """The retry that applies to the call itself."""
        if self.retry is not None:
            return self.retry
        if self.effect == "read_only" or self.idempotent:
            return SAFE_RETRY
        return NO_RETRY

    @classmethod
    def from_hints(
        cls,
        name: str,
        *,
        read_only: bool | None = None,
        destructive: bool | None = None,
        idempotent: bool | None = None,
    ) -> Policy:
        """A default policy from MCP-style tool hints (``readOnlyHint``, ``destructiveHint``,
        ``idempotentHint``). Hints are claims by the tool's author, so they only seed defaults:
        a declared policy always wins. A tool that is not read-only has no undo we could trust,
        so it becomes irreversible with a review (``isolate`` when destructive, else ``mark``).
        """
        if read_only:
            return cls(name=name, effect="read_only")
        kind: ReviewKind = "mark" if destructive is False else "isolate"
        return cls(
            name=name,
            effect="irreversible",
            idempotent=bool(idempotent),
            review=Review(
                kind=kind,
                instructions=f"{name} changed something outside guardrail's reach; check it",
            ),
        )

    @property
    def review_or_default(self) -> Review:
        return self.review if self.review is not None else Review()


UNDO_ROOTS = ("args", "result", "external_ids", "snapshot")
HOOK_NAMES = frozenset({"args", "result", "external_ids", "snapshot", "action"})
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


def _check_path(path: str, tool: str, field: str, *, roots: tuple[str, ...]) -> None:
    if not isinstance(path, str) or not _PATH.match(path) or path.split(".")[0] not in roots:
        raise PolicyError(
            f"policy for tool {tool!r}: {field} = {path!r} is not a path; "
            "expected a dotted path starting with " + " or ".join(repr(r + ".") for r in roots),
            tool=tool,
            field=field,
        )


_MISSING = object()


def resolve_path(path: str, scope: Mapping[str, Any]) -> Any:
    """Follow ``result.items.0.id`` through dicts, lists and attributes; ``None`` if absent."""
    value: Any = scope
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part, _MISSING)
        elif isinstance(value, list | tuple) and part.isdigit():
            index = int(part)
            value = value[index] if index < len(value) else _MISSING
        else:
            value = getattr(value, part, _MISSING)
        if value is _MISSING:
            return None
    return value


def make_policy(name: str, **fields: Any) -> Policy:
    """Build a policy, turning pydantic's validation errors into a PolicyError naming the tool."""
    from pydantic import ValidationError

    parts: tuple[tuple[str, type[BaseModel]], ...] = (
        ("retry", Retry),
        ("undo_retry", Retry),
        ("review", Review),
        ("undo", UndoTool),
    )
    for key, model in parts:
        if isinstance(fields.get(key), Mapping):
            try:
                fields[key] = model(**fields[key])
            except ValidationError as exc:
                raise _policy_error(name, exc, prefix=(key,)) from None
    if isinstance(fields.get("approval"), str):
        fields["approval"] = {"when": fields["approval"]}
    if isinstance(fields.get("error_result"), Mapping):
        try:
            fields["error_result"] = ErrorResult(**fields["error_result"])
        except ValidationError as exc:
            raise _policy_error(name, exc, prefix=("error_result",)) from None
    for key in ("redact", "injected", "not_done", "unknown"):
        if isinstance(fields.get(key), list):
            fields[key] = tuple(fields[key])
    try:
        return Policy(name=name, **fields)
    except ValidationError as exc:
        raise _policy_error(name, exc) from None


def _policy_error(name: str, exc: Any, prefix: tuple[str, ...] = ()) -> PolicyError:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in (*prefix, *first["loc"])) or "policy"
    message = str(first["msg"]).removeprefix("Value error, ")
    return PolicyError(f"policy for tool {name!r}: {field}: {message}", tool=name, field=field)
