"""Approval conditions in CEL, the Common Expression Language (https://cel.dev).

CEL is a small, safe, non-Turing-complete language made for policies: no Python ``eval``, no
I/O, no loops that do not end. This module is the one place that touches the CEL library.

An expression sees ``args`` (the call's arguments), ``tool`` (its name) and ``run`` (``id``,
``agent`` and ``metadata``) and must give a boolean, for example::

    args.amount > 1000
    size(args.remove) * 2 > size(args.bundle.items)
    run.metadata.env == "prod" && tool.startsWith("delete_")
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import cel

VARIABLES = frozenset({"args", "tool", "run"})
MAX_LENGTH = 4_000


class ConditionError(ValueError):
    """An expression that does not compile, or that failed or gave no boolean when evaluated."""


class Condition:
    """A compiled CEL expression; compile once, evaluate per call (a few microseconds)."""

    __slots__ = ("program", "source")

    def __init__(self, source: str) -> None:
        if not isinstance(source, str) or not source.strip():
            raise ConditionError("expected a CEL expression such as 'args.amount > 1000'")
        if len(source) > MAX_LENGTH:
            raise ConditionError(
                f"the expression is {len(source):,} characters, over the limit of {MAX_LENGTH:,}"
            )
        try:
            self.program = cel.compile(source)
        except Exception as exc:  # the library raises ValueError, but be sure nothing leaks
            raise ConditionError(f"not valid CEL: {_parse_error(exc, source)}") from None
        unknown = sorted(set(self.program.variables()) - VARIABLES)
        if unknown:
            raise ConditionError(
                f"unknown name(s) {', '.join(unknown)} in {source!r}; an expression can use "
                "args, tool and run"
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
