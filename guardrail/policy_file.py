"""Policy files in YAML or TOML: the same policies as the code API, validated by pydantic.

::

    tools:
      create_order:
        effect: reversible
        undo: {tool: cancel_order, args: {order_id: result.order_id}}
        external_ids: {order_id: result.order_id}
      charge_payment:
        effect: reversible
        undo: {call: payments.refund}          # dotted path to a Python callable
        approval: {when: "args.amount > 1000", ttl: 1h}
        retry: {attempts: 3, on: [TimeoutError]}

Every problem is reported with the file, the line (YAML; TOML where it can be found), the tool
and the field, and what was expected. :func:`load` raises the first as a PolicyError;
:func:`problems` lists them all (``guardrail policy check``).
"""

from __future__ import annotations

import builtins
import importlib
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from guardrail.errors import PolicyError
from guardrail.policy import (
    Approval,
    Effect,
    OnFailure,
    Policy,
    Retry,
    Review,
    UndoTool,
    condition,
    make_policy,
)
from guardrail.policy_source import (
    Problem,
    Source,
    Unreadable,
    line_of,
    read_source,
)

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,199}$")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(
            f"{name[:80]!r} is not a tool name (1 to 200 letters, digits, _ . : -, not starting "
            "with a digit)"
        )
    return name


class _Strict(BaseModel):
    # strict: a file says what it means (attempts: true or "3", idempotent: 1 are mistakes)
    model_config = ConfigDict(
        extra="forbid", frozen=True, str_max_length=10_000, strict=True, allow_inf_nan=False
    )


class UndoSpec(_Strict):
    tool: str | None = None
    call: str | None = None
    args: dict[str, str] = Field(default_factory=dict)

    @field_validator("tool")
    @classmethod
    def _tool_name(cls, tool: str | None) -> str | None:
        if tool is not None:
            _check_name(tool)
        return tool

    @model_validator(mode="after")
    def _one_kind(self) -> UndoSpec:
        if (self.tool is None) == (self.call is None):
            raise ValueError(
                "give exactly one of tool (another tool's name) or call (a dotted path to a "
                "Python callable)"
            )
        if self.call is not None and self.args:
            raise ValueError("args maps arguments for an undo tool; a call undo takes none")
        return self


class RetrySpec(_Strict):
    attempts: int = Field(default=3, ge=1, le=100)
    on: list[str] = Field(default_factory=lambda: ["Exception"])
    wait_initial: float = Field(default=0.05, ge=0, le=3600)
    wait_max: float = Field(default=2.0, ge=0, le=3600)

    def build(self) -> Retry:
        return Retry(
            attempts=self.attempts,
            on=tuple(exception_type(n) for n in self.on),
            wait_initial=self.wait_initial,
            wait_max=self.wait_max,
        )

    @field_validator("on")
    @classmethod
    def _exceptions(cls, names: list[str]) -> list[str]:
        for name in names:
            exception_type(name)
        return names


class ApprovalSpec(_Strict):
    when: str
    ttl: float | None = Field(default=None, gt=0)

    @field_validator("when")
    @classmethod
    def _compiles(cls, when: str) -> str:
        condition(when)
        return when

    @field_validator("ttl", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return duration(value) if isinstance(value, str) else value


class ToolSpec(_Strict):
    effect: Effect
    undo: UndoSpec | None = None
    undo_retry: RetrySpec | None = None
    undo_idempotent: bool = False
    review: Review | None = None
    retry: RetrySpec | None = None
    idempotent: bool = False
    approval: ApprovalSpec | None = None
    external_ids: dict[str, str] = Field(default_factory=dict)
    idempotency_key: str | None = None
    redact: list[str] = Field(default_factory=list)
    on_failure: OnFailure = "compensate"
    probe: str | None = None
    snapshot: str | None = None


class PolicyFile(_Strict):
    version: Literal[1] = 1
    tools: dict[Annotated[str, AfterValidator(_check_name)], ToolSpec]


def duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"15m"``, ``"1h"``, ``"2d"`` in seconds."""
    found = _DURATION.match(text)
    if not found:
        raise ValueError(f"{text!r} is not a duration; expected seconds or e.g. 30s, 15m, 1h, 2d")
    return float(found.group(1)) * _UNITS[found.group(2)]


def exception_type(name: str) -> type[BaseException]:
    """A builtin exception by name (``TimeoutError``) or a dotted path (``httpx.ReadTimeout``)."""
    found = getattr(builtins, name, None) if "." not in name else _import(name, "exception")
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        raise ValueError(
            f"{name!r} is not an exception type; use a builtin name (TimeoutError) or a dotted "
            "path (package.module.Error)"
        )
    return found


def dotted_callable(path: str) -> Callable[..., Any]:
    found = _import(path, "callable")
    if not callable(found):
        raise ValueError(f"{path!r} is a {type(found).__name__}, not a callable")
    return found  # type: ignore[no-any-return]


def _import(path: str, what: str) -> Any:
    if not _DOTTED.match(path):
        raise ValueError(f"{path!r} is not a dotted path to a {what} (package.module.name)")
    module_name, _, attribute = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"cannot import {module_name!r} for {path!r}: {exc}") from None
    if not hasattr(module, attribute):
        raise ValueError(f"module {module_name!r} has no {attribute!r}")
    return getattr(module, attribute)


def _issues(source: Source) -> Iterator[Problem]:
    """Validate the data of a policy file; yields every problem, with its line."""
    try:
        PolicyFile.model_validate(source.data)
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            tool = str(loc[1]) if len(loc) > 1 and loc[0] == "tools" else None
            parts = [str(p) for p in (loc[2:] if tool is not None else loc) if p != "[key]"]
            field = ".".join(parts)
            message = _explain(error)
            if tool is not None and loc[-1] == "[key]":  # the tool's name itself
                where = f"tool {tool[:80]!r}"
            elif tool is not None:
                where = f"tool {tool[:80]!r}: {field or 'policy'}"
            else:
                where = field or "file"
            yield Problem(
                _code(message),
                f"{where}: {message}",
                file=source.file,
                line=line_of(source, loc),
                tool=tool,
                field=field or None,
            )


def _explain(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see the policy file format in README.md)"
    if kind == "missing":
        return "required, but missing"
    if kind == "literal_error":
        return message.replace("Input should be", "expected")
    given = error.get("input")
    if kind in ("dict_type", "model_type"):
        if error["loc"] == ():
            if given is None:
                return "the file is empty; expected a mapping with a 'tools' key"
            return f"expected a mapping with a 'tools' key at the top, got {_describe(given)}"
        return f"expected a mapping (key: value), got {_describe(given)}"
    if kind == "string_type" and error["loc"][-1:] == ("[key]",):
        return f"{given!r} is not a tool name; tool names are strings (quote it)"
    if kind == "bool_type":  # strict: YAML 1.2 reads yes/no/on/off as strings
        return f"expected true or false, got {_describe(given)}"
    if kind.endswith(("_type", "_parsing")):
        return f"{message}, got {_describe(given)}"[:400]
    return message[:600]


def _describe(value: Any) -> str:
    """A value as a problem message shows it: short, and never a whole structure."""
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, str | int | float | bool):
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__} ({str(value)[:40]})"


def _code(message: str) -> str:
    if "CEL" in message or "expression" in message:
        return "bad_expression"
    if "is not a path" in message:
        return "bad_path"
    return "invalid"


# -- building policies ---------------------------------------------------------------------


def _build(source: Source) -> tuple[list[Policy], list[Problem]]:
    problems = list(_issues(source))
    if problems:
        return [], problems
    spec = PolicyFile.model_validate(source.data)
    policies: list[Policy] = []
    for name, tool in spec.tools.items():
        try:
            policies.append(_policy(name, tool))
        except (PolicyError, ValueError) as exc:
            field = getattr(exc, "field", None)
            loc = ("tools", name, *(field.split(".") if field else ()))
            if isinstance(exc, ValidationError):  # a value the policy model refused
                message = "policy: " + "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'value'}: {_explain(e)}"
                    for e in exc.errors()[:3]
                )
            else:
                message = str(exc).removeprefix(f"policy for tool {name!r}: ")
            if not isinstance(exc, PolicyError | ValidationError):
                message = f"{field or 'policy'}: {message}"
            problems.append(
                Problem(
                    _code(message),
                    f"tool {name!r}: {message}",
                    file=source.file,
                    line=line_of(source, loc),
                    tool=name,
                    field=field,
                )
            )
    problems.extend(_undo_graph(spec, source))
    return policies, problems


class _FieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _policy(name: str, spec: ToolSpec) -> Policy:
    fields: dict[str, Any] = spec.model_dump(
        exclude_defaults=True,
        exclude={"undo", "retry", "undo_retry", "approval", "probe", "snapshot"},
    )
    fields["effect"] = spec.effect
    if spec.undo is not None:
        if spec.undo.tool is not None:
            fields["undo"] = UndoTool(tool=spec.undo.tool, args=spec.undo.args)
        else:
            fields["undo"] = _hook(spec.undo.call, "undo.call")
    if spec.retry is not None:
        fields["retry"] = spec.retry.build()
    if spec.undo_retry is not None:
        fields["undo_retry"] = spec.undo_retry.build()
    if spec.approval is not None:
        fields["approval"] = Approval(when=spec.approval.when, ttl=spec.approval.ttl)
    if spec.probe is not None:
        fields["probe"] = _hook(spec.probe, "probe")
    if spec.snapshot is not None:
        fields["snapshot"] = _hook(spec.snapshot, "snapshot")
    if "redact" in fields:
        fields["redact"] = tuple(fields["redact"])
    return make_policy(name, **fields)


def _hook(path: str | None, field: str) -> Callable[..., Any]:
    assert path is not None
    try:
        return dotted_callable(path)
    except ValueError as exc:
        raise _FieldError(field, str(exc)) from None


def _undo_graph(spec: PolicyFile, source: Source) -> Iterator[Problem]:
    """An undo tool that is itself undone by the tool it undoes (a cycle) is a mistake."""
    edges = {n: t.undo.tool for n, t in spec.tools.items() if t.undo and t.undo.tool}
    for start in edges:
        seen = [start]
        node = edges.get(start)
        while node is not None and node not in seen:
            seen.append(node)
            node = edges.get(node)
        if node == start:
            path = " -> ".join([*seen, start])
            yield Problem(
                "undo_cycle",
                f"tool {start!r}: undo.tool: undo cycle {path}; an undo tool should be "
                "irreversible or read-only, not undone in turn",
                file=source.file,
                line=line_of(source, ("tools", start, "undo")),
                tool=start,
                field="undo.tool",
            )


def problems(path: str | Path) -> tuple[list[Policy], list[Problem]]:
    """Every problem in the file (for ``guardrail policy check``), and the policies that built."""
    try:
        source = read_source(path)
    except Unreadable as exc:
        return [], [exc.problem]
    return _build(source)


def load(path: str | Path) -> list[Policy]:
    """The policies in a YAML or TOML file; raises PolicyError on the first problem."""
    policies, found = problems(path)
    errors = [p for p in found if p.severity == "error"]
    if errors:
        error = errors[0].error()
        if len(errors) > 1:
            error.args = (
                f"{error.args[0]} (and {len(errors) - 1} more problem(s); run "
                f"`guardrail policy check {path}`)",
            )
        raise error
    return policies


def parse_mapping(data: Mapping[str, Any], *, file: str = "<policies>") -> list[Policy]:
    """Policies from an already-parsed mapping (``{"tools": {...}}``), e.g. from a config system."""
    policies, found = _build(Source(file, "", data, None))
    if found:
        raise found[0].error()
    return policies
