"""``guardrail show RUN`` for people: a timeline that reads at any terminal width.

One line per action (seq, tool, effect, state, duration), its details (external ids, undo,
review) on the same line when they fit and stacked under it when they do not; long values are
cut with an ellipsis and prose (reasons, errors, instructions) is wrapped on words to a few
lines. Every line is fitted to the console's width here, so the terminal never folds one.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

from guardrail.cli.common import STATE_COLOURS, STATUS_COLOURS, when
from guardrail.cli.loading import LOAD_HINT

if TYPE_CHECKING:
    from guardrail.audit import ActionLog, Verification
    from guardrail.history import DecisionEvent
    from guardrail.lifecycle import PlannedStep
    from guardrail.store import Action

INDENT = 6  # where an action's stacked details start
GAP = "  "
TOOL_WIDTH = 32  # a longer tool name is cut in the aligned column
ERROR_LINES = 4  # an error is wrapped to at most this many lines
INSTRUCTION_LINES = 8
NOTE_LINES = 3  # a decision's note


def render(
    console: Console,
    log: ActionLog,
    verdict: Verification,
    plan: Sequence[PlannedStep],
    missing: Sequence[PlannedStep],
    limit: int,
    history: Sequence[DecisionEvent] = (),
) -> None:
    width = max(console.width, 20)
    lines = [
        *_header(log, width),
        *_actions(log, limit, width),
        *_items(log, limit, width),
        *_decisions(history, limit, width),
        *_abort(log, plan, missing, limit, width),
    ]
    for line in lines:
        console.print(line, no_wrap=True, overflow="ellipsis", crop=True)
    if missing and log.run.status in ("pending_review", "awaiting_approval"):
        console.print(
            f"[red]{len(missing)} undo(s) it needs are not loaded here[/red] (actions "
            + ", ".join(str(s.seq) for s in missing[:20])
            + f"): an abort from this command would refuse; {LOAD_HINT}"
        )
    console.print(
        "hash chain: [green]ok[/green]"
        if verdict.ok
        else f"hash chain: [red]BROKEN[/red] {'; '.join(verdict.problems)}"
    )


def fit(text: Text | str, width: int) -> Text:
    """``text`` on one line of at most ``width`` cells, cut with an ellipsis."""
    line = Text(text) if isinstance(text, str) else text.copy()
    line.truncate(width, overflow="ellipsis")
    return line


def prose(text: str, width: int, indent: int, max_lines: int) -> list[Text]:
    """``text`` wrapped on words under ``indent``, at most ``max_lines`` lines (then "…")."""
    wrapper = textwrap.TextWrapper(
        width=max(width, indent + 10),
        initial_indent=" " * indent,
        subsequent_indent=" " * indent,
        max_lines=max_lines,
        placeholder=" …",
        break_on_hyphens=False,
    )
    return [fit(line, width) for line in wrapper.wrap(" ".join(text.split()))]


def _header(log: ActionLog, width: int) -> list[Text]:
    run = log.run
    lines = [
        fit(
            Text.assemble(
                ("run ", "bold"),
                (run.id, "bold"),
                f"{GAP}agent {run.agent}{GAP}",
                (run.status, STATUS_COLOURS.get(run.status, "")),
            ),
            width,
        )
    ]
    if run.reason:
        lines += prose(f"reason: {run.reason}", width, 2, 3)
    if run.decided_by:
        lines += prose(f"decided by {run.decided_by}: {run.decision_note or ''}", width, 2, 2)
    if run.policy_fingerprint:
        lines.append(fit(f"  policies: {run.policy_fingerprint}", width))
    counts: dict[str, int] = {}
    for a in log.actions:
        counts[a.state] = counts.get(a.state, 0) + 1
    opened = sum(1 for i in log.review_items if i.status == "open")
    lines += prose(
        f"{len(log.actions):,} action(s): "
        + ", ".join(f"{n:,} {state}" for state, n in sorted(counts.items()))
        + f"; {opened:,} open review item(s)",
        width,
        0,
        2,
    )
    return lines


def _actions(log: ActionLog, limit: int, width: int) -> list[Text]:
    actions = log.actions[-limit:] if limit > 0 else log.actions
    if not actions:
        return []
    title = "actions"
    if len(actions) < len(log.actions):
        title += f" (the newest {len(actions):,} of {len(log.actions):,}; --limit 0 for all)"
    lines = [Text(""), *prose(title, width, 0, 2)]
    lines[-1].stylize("bold")
    comps = {c.seq: c for c in log.compensations}
    comp_errors = {c.seq: c.error for c in log.compensations if c.error}
    reviews: dict[int | None, list[str]] = {}
    for i in log.review_items:
        reviews.setdefault(i.seq, []).append(f"{i.reason} ({i.status})")
    seq_w = max(len(str(a.seq)) for a in actions)
    tool_w = min(max(len(a.tool) for a in actions), TOOL_WIDTH)
    effect_w = max(len(a.effect) for a in actions)
    state_w = max(len(a.state) for a in actions)
    for a in actions:
        tool = a.tool if len(a.tool) <= tool_w else a.tool[: tool_w - 1] + "…"
        head = Text.assemble(
            f"{a.seq:>{seq_w}}{GAP}{tool:<{tool_w}}{GAP}{a.effect:<{effect_w}}{GAP}",
            (f"{a.state:<{state_w}}", STATE_COLOURS.get(a.state, "")),
            _took(a),
        )
        head.rstrip()
        comp = comps.get(a.seq)
        details = [
            *(f"{k}={v}" for k, v in a.external_ids.items()),
            *([f"undo {comp.undo}: {comp.state}"] if comp else []),
            *(f"review {r}" for r in reviews.get(a.seq, [])),
        ]
        one_line = head.copy()
        for detail in details:
            one_line.append(GAP + detail)
        if one_line.cell_len <= width:
            lines.append(one_line)
        else:
            lines.append(fit(head, width))
            lines += [fit(" " * INDENT + detail, width) for detail in details]
        if a.error:
            lines += prose(f"error: {a.error}", width, INDENT, ERROR_LINES)
        if a.seq in comp_errors:
            lines += prose(f"undo error: {comp_errors[a.seq]}", width, INDENT, ERROR_LINES)
    return lines


def _took(a: Action) -> str:
    if a.finished_at is None:
        return ""
    return f"{GAP}{(a.finished_at - a.started_at) * 1000:.1f} ms"


def _items(log: ActionLog, limit: int, width: int) -> list[Text]:
    # open items first: they are what the reader must act on
    items = sorted(log.review_items, key=lambda i: (i.status != "open", -(i.seq or 0)))
    if limit > 0:
        items = items[:limit]
    if not items:
        return []
    opened = sum(1 for i in log.review_items if i.status == "open")
    title = f"review items ({opened:,} open)"
    if len(items) < len(log.review_items):
        title += f", {len(items):,} of {len(log.review_items):,}, open first; --limit 0 for all"
    lines = [Text(""), *prose(title, width, 0, 2)]
    lines[-1].stylize("bold")
    for i in items:
        status = (
            Text("open", "red")
            if i.status == "open"
            else Text(f"{i.resolution} by {i.resolved_by}")
        )
        where = f"action {i.seq}" if i.seq is not None else "the run"
        owner = f"{GAP}owner {i.owner}" if i.owner else ""
        lines.append(
            fit(
                Text.assemble(
                    f"  {i.id}{GAP}", status, f"{GAP}{where}{GAP}{i.reason}{GAP}{i.kind}{owner}"
                ),
                width,
            )
        )
        if i.instructions:
            lines += prose(i.instructions, width, INDENT, INSTRUCTION_LINES)
    return lines


def _decisions(history: Sequence[DecisionEvent], limit: int, width: int) -> list[Text]:
    """Who decided what, oldest first (the newest ``limit``): when, who, what, the item it
    resolved, and the note, beside them when it fits and wrapped under them when not."""
    events = history[-limit:] if limit > 0 else history
    if not events:
        return []
    title = f"decisions ({len(history):,})"
    if len(events) < len(history):
        title += f", the newest {len(events):,}; --limit 0 for all"
    lines = [Text(""), *prose(title, width, 0, 2)]
    lines[-1].stylize("bold")
    by_w = min(max(len(e.by or "?") for e in events), 16)
    what_w = max(len(e.what) for e in events)
    for e in events:
        by = e.by or "?"
        by = by if len(by) <= by_w else by[: by_w - 1] + "…"
        head = Text.assemble(
            f"  {when(e.at)}{GAP}",
            (f"{by:<{by_w}}", "bold"),
            f"{GAP}{e.what:<{what_w}}",
            f"{GAP}item {e.item_id}" if e.item_id else "",
        )
        head.rstrip()
        note = " ".join((e.note or "").split())
        if note and head.cell_len + len(GAP) + len(note) <= width:
            head.append(GAP + note)
            note = ""
        lines.append(fit(head, width))
        if note:
            lines += prose(note, width, INDENT, NOTE_LINES)
    return lines


def _abort(
    log: ActionLog,
    plan: Sequence[PlannedStep],
    missing: Sequence[PlannedStep],
    limit: int,
    width: int,
) -> list[Text]:
    todo = [s for s in plan if s.do != "nothing"]
    if not todo or log.run.status not in ("pending_review", "awaiting_approval"):
        return []
    lines = [Text(""), Text("an abort would now:", "bold")]
    for s in todo[:limit] if limit > 0 else todo:
        lines += prose(f"{s.do} action {s.seq} ({s.tool}): {s.detail}", width, 2, 2)
    if limit > 0 and len(todo) > limit:
        lines.append(fit(f"  ... and {len(todo) - limit:,} more", width))
    return lines
