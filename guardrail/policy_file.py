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
import stat
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
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

MAX_BYTES = 1_000_000
MAX_DEPTH = 50  # YAML collections within collections
SUFFIXES = (".yaml", ".yml", ".toml")
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


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a policy file, a policy, or a toolkit against its policies."""

    code: str  # syntax | invalid | bad_expression | bad_path | missing_undo_tool | undo_cycle |
    # no_undo_or_review | no_policy | not_in_toolkit
    message: str
    file: str | None = None
    line: int | None = None
    tool: str | None = None
    field: str | None = None
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = self.file or ""
        if self.line is not None:
            where += f":{self.line}"
        return f"{where}: {self.message}" if where else self.message

    def error(self) -> PolicyError:
        return PolicyError(
            str(self), tool=self.tool, field=self.field, file=self.file, line=self.line
        )


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


# -- reading ----------------------------------------------------------------------------------


if TYPE_CHECKING:
    _SafeLoader = yaml.SafeLoader
else:  # libyaml's parser when installed: pure-Python PyYAML takes ~20 us a token
    _SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):
    """Safe YAML that refuses duplicate keys."""


def _mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool) or key is None:
            raise yaml.constructor.ConstructorError(
                None, None, "keys must be plain strings", key_node.start_mark
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
# YAML 1.1 reads on/off/yes/no as booleans ("retry: {on: [...]}" would lose its key): keep only
# true/false, as YAML 1.2 does.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _parse_yaml(text: str) -> tuple[Any, Any]:
    """The node tree (for line numbers) and the data of a YAML text.

    The event stream is checked first, before anything is built: anchors and aliases let a small
    file expand to gigabytes ('billion laughs'), and deep nesting makes the scanner quadratic
    (10 KB of brackets took seconds) and the composer recurse: refuse both.
    """
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            problem = "anchors and aliases are not allowed in policy files"
        elif isinstance(event, yaml.CollectionStartEvent) and depth >= MAX_DEPTH:
            problem = f"nested more than {MAX_DEPTH} levels deep"
        else:
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            continue
        raise yaml.composer.ComposerError(
            None,
            None,
            problem,
            event.start_mark,  # type: ignore[arg-type]
        )
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


@dataclass
class _Source:
    file: str
    text: str
    data: Any
    node: Any  # the YAML node tree (for line numbers) or None


class _Unreadable(PolicyError):
    """A file that cannot be read or parsed at all; carries its one problem."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem), file=problem.file, line=problem.line)
        self.problem = problem


def _read(path: str | Path) -> _Source:
    file = str(path)
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise _Unreadable(
            Problem("syntax", "expected a .yaml, .yml or .toml policy file", file=file)
        )
    try:
        status = p.stat()
    except OSError as exc:
        raise _Unreadable(
            Problem("syntax", f"cannot read policy file: {exc.strerror or exc}", file=file)
        ) from None
    if not stat.S_ISREG(status.st_mode):  # a directory, or a FIFO that would block the read
        raise _Unreadable(Problem("syntax", "cannot read policy file: not a file", file=file))
    size = status.st_size
    if size > MAX_BYTES:
        raise _Unreadable(
            Problem(
                "syntax",
                f"policy file is {size:,} bytes, over the limit of {MAX_BYTES:,}; split it",
                file=file,
            )
        )
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise _Unreadable(
            Problem("syntax", f"cannot read policy file: {exc.strerror or exc}", file=file)
        ) from None
    try:
        text = raw.decode("utf-8-sig")  # a leading byte-order mark is fine
    except UnicodeDecodeError as exc:
        raise _Unreadable(
            Problem(
                "syntax",
                f"not UTF-8 text (byte {exc.start} is {raw[exc.start]:#04x}); is it a binary file?",
                file=file,
                line=raw.count(b"\n", 0, exc.start) + 1,
            )
        ) from None
    if suffix == ".toml":
        try:
            return _Source(file, text, tomllib.loads(text), None)
        except tomllib.TOMLDecodeError as exc:
            line = getattr(exc, "lineno", None) or _toml_line(str(exc))
            raise _Unreadable(
                Problem("syntax", f"not valid TOML: {exc}", file=file, line=line)
            ) from None
        except RecursionError:  # tomllib recurses into nested arrays and inline tables
            raise _Unreadable(
                Problem("syntax", "not valid TOML: nested too deeply", file=file)
            ) from None
    try:
        node, data = _parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        if isinstance(exc, yaml.reader.ReaderError):  # a control character: no mark, a position
            line = text.count("\n", 0, exc.position) + 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if line is not None and "\t" in "".join(text.splitlines()[line - 1 : line]):
            problem += " (a tab: YAML indents with spaces)"
        raise _Unreadable(
            Problem("syntax", f"not valid YAML: {problem}", file=file, line=line)
        ) from None
    except RecursionError:
        raise _Unreadable(
            Problem("syntax", "not valid YAML: nested too deeply", file=file)
        ) from None
    return _Source(file, text, data, node)


def _toml_line(message: str) -> int | None:
    found = re.search(r"line (\d+)", message)
    return int(found.group(1)) if found else None


def _line(source: _Source, loc: tuple[Any, ...]) -> int | None:
    """The line of the value at ``loc`` (YAML: exact; TOML: the nearest key found)."""
    if source.node is not None:
        node, line = source.node, source.node.start_mark.line + 1
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                match = next(
                    ((k, v) for k, v in node.value if getattr(k, "value", None) == str(part)), None
                )
                if match is None:
                    break
                line = match[0].start_mark.line + 1
                node = match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if part >= len(node.value):
                    break
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return int(line)
    lines = source.text.splitlines()
    names = [str(p) for p in loc if not isinstance(p, int)]
    start = 0
    found: int | None = None
    for name in names:
        pattern = re.compile(
            rf"^\s*(\[+\s*)?([\w\-.\"']*\.)?[\"']?{re.escape(name)}[\"']?\s*(=|\]|\.)"
        )
        for i in range(start, len(lines)):
            if pattern.search(lines[i]) or (i > start and f"{name} =" in lines[i]):
                found, start = i + 1, i
                break
    return found


def _issues(source: _Source) -> Iterator[Problem]:
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
                line=_line(source, loc),
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


def _build(source: _Source) -> tuple[list[Policy], list[Problem]]:
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
                    line=_line(source, loc),
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


def _undo_graph(spec: PolicyFile, source: _Source) -> Iterator[Problem]:
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
                line=_line(source, ("tools", start, "undo")),
                tool=start,
                field="undo.tool",
            )


def problems(path: str | Path) -> tuple[list[Policy], list[Problem]]:
    """Every problem in the file (for ``guardrail policy check``), and the policies that built."""
    try:
        source = _read(path)
    except _Unreadable as exc:
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
    policies, found = _build(_Source(file, "", data, None))
    if found:
        raise found[0].error()
    return policies


def check(path: str | Path, tools: Iterable[str] | None = None) -> list[Problem]:
    """Everything ``guardrail policy check`` reports about a file, optionally against a toolkit.

    Errors: the file's own problems; a tool that changes the world with neither undo nor review;
    an undo naming a tool that exists neither in the file nor in the toolkit; a toolkit tool with
    no policy. Warning: a policy for a tool the toolkit does not have.
    """
    policies, found = problems(path)
    if any(p.code == "syntax" for p in found):
        return found
    source = _read(path)
    declared = {p.name for p in policies}
    if isinstance(source.data, Mapping) and isinstance(source.data.get("tools"), Mapping):
        declared |= {str(n) for n in source.data["tools"]}
    return found + check_policies(
        policies, tools, declared=declared, file=str(path), line=lambda loc: _line(source, loc)
    )


def check_policies(
    policies: Iterable[Policy],
    tools: Iterable[str] | None = None,
    *,
    declared: Iterable[str] = (),
    file: str | None = None,
    line: Callable[[tuple[str, ...]], int | None] = lambda loc: None,
) -> list[Problem]:
    """The coverage checks of :func:`check` over built policies (a file's or a pack's)."""
    policies = list(policies)
    found: list[Problem] = []
    names = {p.name for p in policies} | set(declared)
    toolkit = set(tools) if tools is not None else None
    for policy in policies:
        loc = ("tools", policy.name)
        if policy.effect != "read_only" and policy.undo is None and policy.review is None:
            found.append(
                Problem(
                    "no_undo_or_review",
                    f"tool {policy.name!r}: effect {policy.effect} with neither undo nor review; "
                    "declare an undo (reversible) or a review (kind, owner, instructions)",
                    file=file,
                    line=line(loc),
                    tool=policy.name,
                    field="review",
                )
            )
        if isinstance(policy.undo, UndoTool):
            name = policy.undo.tool
            if name not in names and (toolkit is None or name not in toolkit):
                where = "among the policies" + (" or in the toolkit" if toolkit is not None else "")
                found.append(
                    Problem(
                        "missing_undo_tool",
                        f"tool {policy.name!r}: undo.tool: no tool {name!r} {where}",
                        file=file,
                        line=line((*loc, "undo", "tool")),
                        tool=policy.name,
                        field="undo.tool",
                    )
                )
    if toolkit is not None:
        undo_tools = {p.undo.tool for p in policies if isinstance(p.undo, UndoTool)}
        for name in sorted(toolkit - names):
            if name in undo_tools:
                continue  # used only as an undo: it needs no policy of its own
            found.append(
                Problem(
                    "no_policy",
                    f"tool {name!r} of the toolkit has no policy; a strict guard refuses it",
                    file=file,
                    tool=name,
                )
            )
        for name in sorted(names - toolkit):
            found.append(
                Problem(
                    "not_in_toolkit",
                    f"tool {name!r}: the toolkit has no such tool (a typo, or an old policy?)",
                    file=file,
                    line=line(("tools", name)),
                    tool=name,
                    severity="warning",
                )
            )
    return found
