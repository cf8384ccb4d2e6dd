"""Reading policy files safely: YAML (1.2 booleans, no aliases, no duplicate keys, bounded
depth) and TOML, bounded in size, with the line of any value for error messages."""

from __future__ import annotations

import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from guardrail.errors import PolicyError

MAX_BYTES = 1_000_000
MAX_DEPTH = 50  # YAML collections within collections
MAX_DIGITS = 100  # no policy value is a number this long (Python converts at most 4,300 digits)
SUFFIXES = (".yaml", ".yml", ".toml")


@dataclass(frozen=True, slots=True)
class TooLarge:
    """A number in a file too long to be any policy value, kept unconverted.

    Python refuses to convert an integer of over 4,300 digits (a ValueError, not a parse error),
    and YAML 1.1's base-60 integers (``1:2:3``) take quadratic time to convert: such a number
    is read as this marker, and the loader reports it with its tool, field and line.
    """

    digits: int


def too_large(value: Any) -> bool:
    """A number no policy field could take: unconvertible, or over :data:`MAX_DIGITS` digits."""
    if isinstance(value, TooLarge):
        return True
    return isinstance(value, int) and not isinstance(value, bool) and (abs(value) >= 10**MAX_DIGITS)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a policy file, a policy, or a toolkit against its policies."""

    code: str  # syntax | invalid | too_large | not_allowed | bad_expression | bad_path |
    # missing_undo_tool | undo_cycle | no_undo_or_review | no_policy | not_in_toolkit
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
        if not isinstance(key, str | int | float | bool) or too_large(key):
            raise yaml.constructor.ConstructorError(
                None, None, "keys must be plain strings", key_node.start_mark
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


def _int(loader: _Loader, node: yaml.ScalarNode) -> int | TooLarge:
    digits = sum(c.isalnum() for c in str(node.value))
    if digits > 4 * MAX_DIGITS:  # too large whatever its base: do not even convert it
        return TooLarge(digits)
    try:
        value: int = yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)
        return value
    except ValueError:
        return TooLarge(digits)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor("tag:yaml.org,2002:int", _int)
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
class Source:
    file: str
    text: str
    data: Any
    node: Any  # the YAML node tree (for line numbers) or None


class Unreadable(PolicyError):
    """A file that cannot be read or parsed at all; carries its one problem."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem), file=problem.file, line=problem.line)
        self.problem = problem


def read_source(path: str | Path) -> Source:
    file = str(path)
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise Unreadable(
            Problem("syntax", "expected a .yaml, .yml or .toml policy file", file=file)
        )
    try:
        status = p.stat()
    except OSError as exc:
        raise Unreadable(
            Problem("syntax", f"cannot read policy file: {exc.strerror or exc}", file=file)
        ) from None
    if not stat.S_ISREG(status.st_mode):  # a directory, or a FIFO that would block the read
        raise Unreadable(Problem("syntax", "cannot read policy file: not a file", file=file))
    size = status.st_size
    if size > MAX_BYTES:
        raise Unreadable(
            Problem(
                "syntax",
                f"policy file is {size:,} bytes, over the limit of {MAX_BYTES:,}; split it",
                file=file,
            )
        )
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise Unreadable(
            Problem("syntax", f"cannot read policy file: {exc.strerror or exc}", file=file)
        ) from None
    try:
        text = raw.decode("utf-8-sig")  # a leading byte-order mark is fine
    except UnicodeDecodeError as exc:
        raise Unreadable(
            Problem(
                "syntax",
                f"not UTF-8 text (byte {exc.start} is {raw[exc.start]:#04x}); is it a binary file?",
                file=file,
                line=raw.count(b"\n", 0, exc.start) + 1,
            )
        ) from None
    if suffix == ".toml":
        try:
            return Source(file, text, tomllib.loads(text), None)
        except tomllib.TOMLDecodeError as exc:
            line = getattr(exc, "lineno", None) or _toml_line(str(exc))
            raise Unreadable(
                Problem("syntax", f"not valid TOML: {exc}", file=file, line=line)
            ) from None
        except ValueError as exc:  # an integer over Python's 4,300 digits (not a TOMLDecodeError)
            return Source(file, text, _toml_too_large(file, text, exc), None)
        except RecursionError:  # tomllib recurses into nested arrays and inline tables
            raise Unreadable(
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
        raise Unreadable(
            Problem("syntax", f"not valid YAML: {problem}", file=file, line=line)
        ) from None
    except RecursionError:
        raise Unreadable(
            Problem("syntax", "not valid YAML: nested too deeply", file=file)
        ) from None
    return Source(file, text, data, node)


_LONG_NUMBER = re.compile(rf"(?<![\w.])[+-]?\d[\d_]{{{MAX_DIGITS},}}(?![\w.])")
_MARK = "__guardrail_number_too_large__"


def _toml_too_large(file: str, text: str, exc: ValueError) -> Any:
    """The data of a TOML text whose long integers tomllib cannot convert, each read as a
    :class:`TooLarge` (so the loader can name its tool and field); else the file is unreadable.
    """
    marked = _LONG_NUMBER.sub(
        lambda m: f"{{{_MARK} = {sum(c.isdigit() for c in m.group())}}}", text
    )
    try:
        data = tomllib.loads(marked)
    except (ValueError, RecursionError):
        found = _LONG_NUMBER.search(text)
        line = text.count("\n", 0, found.start()) + 1 if found else None
        raise Unreadable(
            Problem("syntax", f"not valid TOML: {str(exc)[:200]}", file=file, line=line)
        ) from None
    stack: list[Any] = [data]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in list(items):
            if isinstance(value, dict) and set(value) == {_MARK}:
                node[key] = TooLarge(value[_MARK])
            elif isinstance(value, dict | list):
                stack.append(value)
    return data


def _toml_line(message: str) -> int | None:
    found = re.search(r"line (\d+)", message)
    return int(found.group(1)) if found else None


def line_of(source: Source, loc: tuple[Any, ...]) -> int | None:
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
