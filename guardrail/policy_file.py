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

A policy file is data, and whoever can edit it must not be able to run code: a dotted path
(``undo.call``, ``snapshot``, ``probe``, and exception types in ``retry.on``) resolves only to a
function registered with the guard (``guard.register``, ``@guard.tool``) or to an object defined
in a module the application allows (``allow=["myapp.payments"]``, also from the environment
variable ``GUARDRAIL_POLICY_ALLOW``). Anything else is refused when the file is loaded, before any
module is imported. See `guardrail.policy_trust`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from guardrail.errors import PolicyError
from guardrail.policy import (
    Approval,
    Effect,
    ErrorResult,
    OnFailure,
    Policy,
    Retry,
    Review,
    UndoTool,
    condition,
    make_policy,
    result_condition,
)
from guardrail.policy_source import (
    MAX_DEPTH,
    MAX_DIGITS,
    Problem,
    Source,
    TooLarge,
    Unreadable,
    line_of,
    read_source,
    too_large,
)
from guardrail.policy_trust import Allowed, allowed, dotted_callable, exception_type

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,199}$")
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

    def build(self, allowed: Allowed) -> Retry:
        return Retry(
            attempts=self.attempts,
            on=tuple(exception_type(n, allowed) for n in self.on),
            wait_initial=self.wait_initial,
            wait_max=self.wait_max,
        )

    @field_validator("on")
    @classmethod
    def _exceptions(cls, names: list[str], info: ValidationInfo) -> list[str]:
        context = info.context if isinstance(info.context, Mapping) else {}
        allowed = context.get("allowed")
        for name in names:
            exception_type(name, allowed if isinstance(allowed, Allowed) else Allowed())
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


class ErrorResultSpec(_Strict):
    when: str
    means: Literal["not_done", "unknown"] = "unknown"
    then: Literal["halt", "return"] = "halt"

    @field_validator("when")
    @classmethod
    def _compiles(cls, when: str) -> str:
        result_condition(when)
        return when


def _exception_names(names: list[str], info: ValidationInfo) -> list[str]:
    context = info.context if isinstance(info.context, Mapping) else {}
    allowed = context.get("allowed")
    for name in names:
        exception_type(name, allowed if isinstance(allowed, Allowed) else Allowed())
    return names


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
    capture: str | None = None
    injected: list[str] = Field(default_factory=list)
    not_done: list[str] = Field(default_factory=list)
    unknown: list[str] = Field(default_factory=list)
    error_result: ErrorResultSpec | None = None
    on_not_done: Literal["halt", "raise"] = "halt"

    _check_not_done = field_validator("not_done", "unknown")(_exception_names)


class PolicyFile(_Strict):
    version: Literal[1] = 1
    tools: dict[Annotated[str, AfterValidator(_check_name)], ToolSpec]


def duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"15m"``, ``"1h"``, ``"2d"`` in seconds."""
    found = _DURATION.match(text)
    if not found:
        raise ValueError(f"{text!r} is not a duration; expected seconds or e.g. 30s, 15m, 1h, 2d")
    return float(found.group(1)) * _UNITS[found.group(2)]


def _issues(source: Source, allowed: Allowed) -> Iterator[Problem]:
    """Validate the data of a policy file; yields every problem, with its line."""
    data, numbers = _numbers(source)
    yield from numbers
    reported = {(p.tool, p.field) for p in numbers}
    try:
        PolicyFile.model_validate(data, context={"allowed": allowed})
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            message = _explain(error)
            problem = _problem(source, loc, message, _code(message))
            if (problem.tool, problem.field) not in reported:  # not the number again
                yield problem


def _problem(source: Source, loc: tuple[Any, ...], message: str, code: str) -> Problem:
    """A problem at ``loc`` in the data (``("tools", name, field...)``), with its line."""
    tool = str(loc[1]) if len(loc) > 1 and loc[0] == "tools" else None
    parts = [str(p) for p in (loc[2:] if tool is not None else loc) if p != "[key]"]
    field = ".".join(parts)
    if tool is not None and loc[-1] == "[key]":  # the tool's name itself
        where = f"tool {tool[:80]!r}"
    elif tool is not None:
        where = f"tool {tool[:80]!r}: {field or 'policy'}"
    else:
        where = field or "file"
    return Problem(
        code,
        f"{where}: {message}",
        file=source.file,
        line=line_of(source, loc),
        tool=tool,
        field=field or None,
    )


_TOO_LARGE = f"a number more than {MAX_DIGITS} digits long; no policy value is that large"


def _numbers(source: Source) -> tuple[Any, list[Problem]]:
    """Numbers too large for any policy value, each as a problem naming where it is; and the data
    with each replaced by a :class:`TooLarge` marker (Python cannot even print an integer of over
    4,300 digits: a ValueError from any message that tried), for the other checks."""
    found: list[Problem] = []

    def clean(value: Any, loc: tuple[Any, ...]) -> Any:
        if too_large(value):
            found.append(_problem(source, loc, _TOO_LARGE, "too_large"))
            return TooLarge(0)
        if len(loc) > 2 * MAX_DEPTH:  # deeper than any policy: let validation refuse it
            return value
        if isinstance(value, Mapping):
            copy = {}
            for key, item in value.items():
                if too_large(key):
                    found.append(_problem(source, loc, "a key is " + _TOO_LARGE, "too_large"))
                else:
                    copy[key] = clean(item, (*loc, key))
            return copy
        if isinstance(value, list | tuple):
            return [clean(item, (*loc, i)) for i, item in enumerate(value)]
        return value

    data = clean(source.data, ())
    return (data if found else source.data), found


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
    if isinstance(value, TooLarge):
        return "a number too large"
    return f"a {type(value).__name__} ({str(value)[:40]})"


def _code(message: str) -> str:
    if "is not allowed: " in message:
        return "not_allowed"
    if "CEL" in message or "expression" in message:
        return "bad_expression"
    if "is not a path" in message:
        return "bad_path"
    return "invalid"


# -- building policies ---------------------------------------------------------------------


def _build(source: Source, allowed: Allowed) -> tuple[list[Policy], list[Problem]]:
    problems = list(_issues(source, allowed))
    if problems:
        return [], problems
    spec = PolicyFile.model_validate(source.data, context={"allowed": allowed})
    policies: list[Policy] = []
    for name, tool in spec.tools.items():
        try:
            policies.append(_policy(name, tool, allowed))
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


def _policy(name: str, spec: ToolSpec, allowed: Allowed) -> Policy:
    fields: dict[str, Any] = spec.model_dump(
        exclude_defaults=True,
        exclude={
            "undo",
            "retry",
            "undo_retry",
            "approval",
            "probe",
            "snapshot",
            "capture",
            "not_done",
            "unknown",
            "error_result",
        },
    )
    fields["effect"] = spec.effect
    if spec.undo is not None:
        if spec.undo.tool is not None:
            fields["undo"] = UndoTool(tool=spec.undo.tool, args=spec.undo.args)
        else:
            fields["undo"] = _hook(spec.undo.call, "undo.call", allowed)
    if spec.retry is not None:
        fields["retry"] = spec.retry.build(allowed)
    if spec.undo_retry is not None:
        fields["undo_retry"] = spec.undo_retry.build(allowed)
    if spec.approval is not None:
        fields["approval"] = Approval(when=spec.approval.when, ttl=spec.approval.ttl)
    if spec.probe is not None:
        fields["probe"] = _hook(spec.probe, "probe", allowed)
    if spec.snapshot is not None:
        fields["snapshot"] = _hook(spec.snapshot, "snapshot", allowed)
    if spec.capture is not None:
        fields["capture"] = _hook(spec.capture, "capture", allowed)
    for key in ("not_done", "unknown"):
        names: list[str] = getattr(spec, key)
        if names:
            fields[key] = tuple(exception_type(n, allowed) for n in names)
    if spec.error_result is not None:
        fields["error_result"] = ErrorResult(**spec.error_result.model_dump())
    if "redact" in fields:
        fields["redact"] = tuple(fields["redact"])
    return make_policy(name, **fields)


def _hook(path: str | None, field: str, allowed: Allowed) -> Callable[..., Any]:
    assert path is not None
    try:
        return dotted_callable(path, allowed)
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


def problems(
    path: str | Path,
    *,
    allow: Iterable[str] = (),
    functions: Iterable[Callable[..., Any]] = (),
) -> tuple[list[Policy], list[Problem]]:
    """Every problem in the file (for ``guardrail policy check``), and the policies that built.

    ``allow`` and ``functions``: the module prefixes and the registered functions its dotted
    paths may name (see `guardrail.policy_trust.Allowed`).
    """
    trusted = allowed(allow, functions)
    try:
        source = read_source(path)
    except Unreadable as exc:
        return [], [exc.problem]
    return _build(source, trusted)


def load(
    path: str | Path,
    *,
    allow: Iterable[str] = (),
    functions: Iterable[Callable[..., Any]] = (),
) -> list[Policy]:
    """The policies in a YAML or TOML file; raises PolicyError on the first problem.

    A dotted path in the file may name only one of ``functions`` (those registered with the
    guard) or an object defined in a module under one of the ``allow`` prefixes.
    """
    policies, found = problems(path, allow=allow, functions=functions)
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


def parse_mapping(
    data: Mapping[str, Any],
    *,
    file: str = "<policies>",
    allow: Iterable[str] = (),
    functions: Iterable[Callable[..., Any]] = (),
) -> list[Policy]:
    """Policies from an already-parsed mapping (``{"tools": {...}}``), e.g. from a config system;
    ``allow`` and ``functions`` as for :func:`load`."""
    policies, found = _build(Source(file, "", data, None), allowed(allow, functions))
    if found:
        raise found[0].error()
    return policies
