"""Approval conditions in CEL, the Common Expression Language (https://cel.dev).

CEL is a small, safe, non-Turing-complete language made for policies: no Python ``eval``, no
I/O, no loops that do not end. This module is the one place that touches the CEL library.

An expression sees ``args`` (the call's arguments), ``tool`` (its name) and ``run`` (``id``,
``agent`` and ``metadata``) and must give a boolean, for example::

    args.amount > 1000
    size(args.remove) * 2 > size(args.bundle.items)
    run.metadata.env == "prod" && tool.startsWith("delete_")
    args.items.exists(i, i.qty > 100) || args.tags.all(t, t != "vip")

The macros ``all``, ``exists``, ``exists_one``, ``map`` and ``filter`` bind a variable inside
their parentheses; any other name is refused when the expression is compiled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

VARIABLES = frozenset({"args", "tool", "run"})
MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
MAX_LENGTH = 4_000


class ConditionError(ValueError):
    """An expression that does not compile, or that failed or gave no boolean when evaluated."""


class Condition:
    """A compiled CEL expression; compile once, evaluate per call (a few microseconds)."""

    __slots__ = ("program", "source")

    def __init__(self, source: str, variables: frozenset[str] = VARIABLES) -> None:
        if not isinstance(source, str) or not source.strip():
            raise ConditionError("expected a CEL expression such as 'args.amount > 1000'")
        if len(source) > MAX_LENGTH:
            raise ConditionError(
                f"the expression is {len(source):,} characters, over the limit of {MAX_LENGTH:,}"
            )
        import cel  # here, not at import: it loads its own CLI (prompt_toolkit), ~0.1 s

        try:
            self.program = cel.compile(source)
        except Exception as exc:  # the library raises ValueError, but be sure nothing leaks
            raise ConditionError(f"not valid CEL: {_parse_error(exc, source)}") from None
        bound, free = loop_variables(source)
        unknown = sorted(set(self.program.variables()) - variables - (bound - free))
        if unknown:
            outside = sorted(set(unknown) & bound)
            hint = (
                f" ({', '.join(outside)}: a macro's variable exists only inside its parentheses)"
                if outside
                else ""
            )
            names = "args, tool and run" if variables == VARIABLES else ", ".join(sorted(variables))
            raise ConditionError(
                f"unknown name(s) {', '.join(unknown)} in {source!r}; an expression can use "
                f"{names}, and inside a macro (all, exists, exists_one, map, filter) "
                f"the variable it binds, as in args.items.all(i, i.qty < 10){hint}"
            )
        self.source = source

    def holds(self, scope: Mapping[str, Any]) -> bool:
        """Evaluate over ``scope``; raises ConditionError unless the answer is a boolean."""
        try:
            value = self.program.execute(dict(scope))
        except KeyError as exc:
            raise ConditionError(
                f"{self.source!r} failed: no value for {exc}; the call has no such argument or "
                "field (test for it first with has(args.name))"
            ) from None
        except Exception as exc:
            raise ConditionError(
                f"{self.source!r} failed: {type(exc).__name__}: {_first_line(exc)}"
            ) from None
        if not isinstance(value, bool):
            raise ConditionError(
                f"{self.source!r} gave {value!r} ({type(value).__name__}), expected true or false"
            )
        return value

    def __repr__(self) -> str:
        return f"Condition({self.source!r})"


_TOKEN = re.compile(
    r"""
    (?P<space>\s+|//[^\n]*)
    |(?P<string>
        [bB]?[rR][bB]?(?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|"[^"\n]*"|'[^'\n]*')
        |[bB]?(?:\"\"\"(?:\\[\s\S]|[^\\])*?\"\"\"|'''(?:\\[\s\S]|[^\\])*?'''
            |"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')
    )
    |(?P<number>0[xX][0-9a-fA-F]+[uU]?|(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?[uU]?)
    |(?P<name>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_OPERAND_END = frozenset({"name", "number", "string", ")", "]", "}"})
_KEYWORDS = frozenset({"true", "false", "null", "in"})


def loop_variables(source: str) -> tuple[set[str], set[str]]:
    """The names the expression's macros bind (the ``i`` of ``args.items.all(i, i.qty < 10)``),
    and the names it uses outside any macro binding them.

    The CEL library reports a macro's variable as one more variable of the expression; this
    tells the two apart, so that a variable is accepted only where a macro binds it. Used only to
    accept names: a name this scan misreads stays refused, or fails closed at run time.
    """
    tokens: list[tuple[str, str]] = []
    for found in _TOKEN.finditer(source):
        kind = found.lastgroup or "punct"
        if kind != "space":
            tokens.append((kind, found.group()))
    bound: set[str] = set()
    free: set[str] = set()
    scopes: list[tuple[str, int]] = []  # (variable, depth of the macro's parenthesis)
    binders: set[int] = set()  # token indexes of the variables being bound
    depth = 0

    def member(dot: int) -> bool:  # a field or method (a.b), not a root-scoped name (.b)
        if dot == 0:
            return False
        kind, text = tokens[dot - 1]
        return kind in _OPERAND_END or text in _OPERAND_END

    for i, (kind, text) in enumerate(tokens):
        if kind == "punct" and text in "([{":
            depth += 1
            if (
                text == "("
                and i >= 2
                and tokens[i - 1][0] == "name"
                and tokens[i - 1][1] in MACROS
                and tokens[i - 2] == ("punct", ".")
                and member(i - 2)
                and i + 2 < len(tokens)
                and tokens[i + 1][0] == "name"
                and tokens[i + 2] == ("punct", ",")
            ):
                scopes.append((tokens[i + 1][1], depth))
                binders.add(i + 1)
                bound.add(tokens[i + 1][1])
        elif kind == "punct" and text in ")]}":
            while scopes and scopes[-1][1] >= depth:
                scopes.pop()
            depth -= 1
        elif kind == "name" and i not in binders and text not in _KEYWORDS:
            if i > 0 and tokens[i - 1] == ("punct", "."):
                continue  # a field, a method, or a root-scoped name (.args): never a variable
            if i + 1 < len(tokens) and tokens[i + 1] == ("punct", "("):
                continue  # a function: size(...), has(...)
            if not any(name == text for name, _ in scopes):
                free.add(text)
    return bound, free


def _parse_error(exc: BaseException, source: str) -> str:
    """The parser's reason and position, without its echo of the (possibly long) expression."""
    text = str(exc).removeprefix(f"Failed to parse expression '{source}': ")
    if "ERROR: " in text:
        text = text[text.index("ERROR: ") :].removeprefix("ERROR: ").replace("<input>:", "at ", 1)
    deep = re.search(r'msg: "([^"]{1,200})"', text)
    if deep:  # e.g. ParseError { ..., msg: "Recursion limit of 96 exceeded", ... }
        position = text.split(": ", 1)[0] if text.startswith("at ") else ""
        return f"{position}: {deep.group(1)}" if position else deep.group(1)
    return _first_line(Exception(text))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
