"""Coverage checks over policies (``guardrail policy check``): what the loader cannot see alone.

A file's own problems come from :func:`guardrail.policy_file.problems`; this adds the checks
across policies and against a toolkit: a tool that changes the world with neither undo nor
review, an undo naming a tool that does not exist, a toolkit tool without a policy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from guardrail.policy import Policy, UndoTool
from guardrail.policy_file import problems
from guardrail.policy_source import Problem, line_of, read_source


def check(
    path: str | Path,
    tools: Iterable[str] | None = None,
    *,
    allow: Iterable[str] = (),
    functions: Iterable[Callable[..., Any]] = (),
) -> list[Problem]:
    """Everything ``guardrail policy check`` reports about a file, optionally against a toolkit.

    Errors: the file's own problems (among them a dotted path outside the ``allow`` prefixes and
    the registered ``functions``); a tool that changes the world with neither undo nor review;
    an undo naming a tool that exists neither in the file nor in the toolkit; a toolkit tool with
    no policy. Warning: a policy for a tool the toolkit does not have.
    """
    policies, found = problems(path, allow=allow, functions=functions)
    if any(p.code == "syntax" for p in found):
        return found
    source = read_source(path)
    declared = {p.name for p in policies}
    if isinstance(source.data, Mapping) and isinstance(source.data.get("tools"), Mapping):
        declared |= {str(n) for n in source.data["tools"]}
    return found + check_policies(
        policies, tools, declared=declared, file=str(path), line=lambda loc: line_of(source, loc)
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
