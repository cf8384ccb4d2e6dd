"""What a run's page shows, read from the guard: what needs a person at the top (failed undos,
calls in doubt, approvals, other review items, the failing call), then the timeline, and who
decided what (the decision history).

A long run's timeline opens on its focus: the actions around each problem and the newest ones,
with the gaps between them marked; the whole log is a click away, in parts of
``ACTIONS_PER_PART``.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from guardrail import decisions
from guardrail.audit import ActionLog, Verification
from guardrail.decisions import policy_mismatch
from guardrail.guard import Guard
from guardrail.history import DecisionEvent
from guardrail.lifecycle import PlannedStep
from guardrail.store import Action, Compensation, ReviewItem
from guardrail.web.answers import ArgField, arg_fields

WAITING = ("pending_review", "awaiting_approval")
MAX_SHOWN_JSON = 20_000
ACTIONS_PER_PART = 500  # the whole log, a part at a time
FOCUS_ABOVE = 200  # a run with more actions opens on its focus, not on everything
CONTEXT = 2  # actions shown before and after each problem in the focus
NEWEST = 20  # the newest actions the focus always shows
PROBLEM_STATES = ("failed", "compensation_failed", "in_doubt", "started")
# what the summary at the top calls each kind of review item: (one, many)
REASONS = {
    "compensation_failed": ("failed undo", "failed undos"),
    "in_doubt": ("call in doubt", "calls in doubt"),
    "approval": ("approval request", "approval requests"),
    "irreversible": ("irreversible action to check", "irreversible actions to check"),
    "no_undo": ("action with no undo here", "actions with no undo here"),
    "not_undone": ("action to undo by hand", "actions to undo by hand"),
    "held": ("held run", "held runs"),
}


@dataclass(slots=True)
class ActionRow:
    action: Action
    duration: str
    compensation: Compensation | None
    items: list[ReviewItem]
    args: str
    result: str
    flag: str  # problem | waiting | "" (how the row is highlighted)
    hidden: int = 0  # (an action row hides nothing; see Gap)


@dataclass(slots=True)
class Gap:
    """Actions the focus leaves out: ``hidden`` of them, seq ``first`` to ``last``, which start
    in part ``part`` of the whole log."""

    first: int
    last: int
    hidden: int
    part: int


@dataclass(slots=True)
class Problem:
    """One thing on the run that needs a person: an open review item (with its decision form),
    or the call that stopped the run when no item covers it. ``decided`` marks an item decided
    just now, shown where it was with the outcome; ``failing`` the call that stopped the run."""

    key: str  # the anchor: item-ID, or failing-call
    item: ReviewItem | None
    action: Action | None
    compensation: Compensation | None
    args: str
    failing: bool = False
    decided: bool = False
    fields: list[ArgField] = field(default_factory=list)  # an approval's arguments, to edit


@dataclass(slots=True)
class RunPage:
    log: ActionLog
    verification: Verification
    plan: list[PlannedStep]
    rows: list[ActionRow | Gap]
    problems: list[Problem]
    summary: list[str]  # "6 failed undos", ... for the line above the problems
    open_items: list[ReviewItem]
    closed_items: list[ReviewItem]
    open_approvals: list[ReviewItem]
    blocking: dict[str, list[str]]  # approval item -> what else must be decided before a resume
    tools: dict[int, str] = field(default_factory=dict)
    # what an abort here needs and this console lacks, and a warning when the run started
    # under other policies than the console's
    missing: list[PlannedStep] = field(default_factory=list)
    mismatch: str | None = None
    decided_above: str = ""  # the item decided just now, shown among the problems
    focus: bool = False  # the timeline shows the focus, not a part
    part: int = 1
    parts: list[tuple[int, int, int]] = field(default_factory=list)  # (part, first, last seq)
    history: list[DecisionEvent] = field(default_factory=list)  # who decided what, oldest first


# -- formatting -----------------------------------------------------------------------------------


def pretty(value: Any) -> str:
    if value is None:
        return ""
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if len(text) > MAX_SHOWN_JSON:
        return text[:MAX_SHOWN_JSON] + f"\n... ({len(text) - MAX_SHOWN_JSON} more characters)"
    return text


def duration(action: Action) -> str:
    if action.finished_at is None:
        return ""
    took = action.finished_at - action.started_at
    return f"{took:.2f} s" if took >= 1 else f"{took * 1000:.1f} ms"


def when(stamp: float | None) -> str:
    if stamp is None:
        return ""
    return dt.datetime.fromtimestamp(stamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def ago(stamp: float | None) -> str:
    if stamp is None:
        return ""
    seconds = max(0, int(time.time() - stamp))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def run_url(run_id: str) -> str:
    return "/runs/" + quote(run_id, safe="")


def flag(action: Action, compensation: Compensation | None) -> str:
    """What the timeline highlights: what went wrong, and what waits for approval."""
    if action.state in PROBLEM_STATES or (
        compensation is not None and compensation.state != "succeeded"
    ):
        return "problem"
    return "waiting" if action.state == "awaiting_approval" else ""


# -- a run --------------------------------------------------------------------------------------


def part_bounds(count: int) -> list[tuple[int, int]]:
    """The (start, end) indexes of a timeline's parts; the last part is full, the first one
    takes the remainder."""
    first = count - (max(1, -(-count // ACTIONS_PER_PART)) - 1) * ACTIONS_PER_PART
    return [(0, first)] + [
        (start, start + ACTIONS_PER_PART) for start in range(first, count, ACTIONS_PER_PART)
    ]


def focus(count: int, anchors: set[int]) -> list[int]:
    """The indexes the focus shows: ``CONTEXT`` either side of each anchor, and the newest
    ``NEWEST``."""
    keep = set(range(max(0, count - NEWEST), count))
    for i in anchors:
        keep.update(range(max(0, i - CONTEXT), min(count, i + CONTEXT + 1)))
    return sorted(keep)


def failing_call(log: ActionLog) -> Action | None:
    """The call that stopped a run waiting for review: its newest failed (or in-doubt) action."""
    if log.run.status != "pending_review":
        return None
    for action in reversed(log.actions):
        if action.state in ("failed", "in_doubt"):
            return action
    return None


def find_problems(
    log: ActionLog,
    actions: dict[int, Action],
    comps: dict[int, Compensation],
    just_decided: str | None,
) -> list[Problem]:
    """What needs a person, in the order of the log: the open review items, the item decided
    just now (in its place), and the failing call when no open item covers it."""

    def problem(item: ReviewItem | None, seq: int | None, **kw: Any) -> Problem:
        action = actions.get(seq) if seq is not None else None
        return Problem(
            key=f"item-{item.id}" if item is not None else "failing-call",
            item=item,
            action=action,
            compensation=comps.get(seq) if seq is not None else None,
            args=pretty(action.args) if action is not None else "",
            fields=arg_fields(action.args)
            if action is not None and item is not None and item.reason == "approval"
            else [],
            **kw,
        )

    failing = failing_call(log)
    found = [
        problem(
            i,
            i.seq,
            failing=failing is not None and i.seq == failing.seq,
            decided=i.status != "open",
        )
        for i in log.review_items
        if i.status == "open" or i.id == just_decided
    ]
    if failing is not None and not any(p.failing for p in found):
        found.append(problem(None, failing.seq, failing=True))
    first = -1  # items on the whole run come first
    return sorted(
        found,
        key=lambda p: (
            p.action.seq if p.action is not None else first,
            p.item.created_at if p.item is not None else float("inf"),
        ),
    )


def blockers(open_items: list[ReviewItem]) -> dict[str, list[str]]:
    """For each open approval: the other open items a resume would wait for (other approvals,
    calls in doubt). Empty: approving it lets the run resume."""
    waits = [i for i in open_items if i.reason in ("approval", "in_doubt")]
    return {
        a.id: [f"{i.reason} {i.id}" for i in waits if i.id != a.id]
        for a in open_items
        if a.reason == "approval"
    }


def load_run(
    guard: Guard, run_id: str, part: int | None = None, just_decided: str | None = None
) -> RunPage:
    """Everything the run's page shows. ``part`` (from 1) shows that part of the whole log;
    without one a long run shows its focus, a short one everything. ``just_decided`` is an item
    decided a moment ago, kept in its place among the problems."""
    log = guard.log(run_id)
    verification = guard.verify(run_id, log=log)
    plan = guard.plan_undo(run_id, log=log)
    comps = {c.seq: c for c in log.compensations}
    actions = {a.seq: a for a in log.actions}
    by_seq: dict[int | None, list[ReviewItem]] = {}
    for item in log.review_items:
        by_seq.setdefault(item.seq, []).append(item)
    problems = find_problems(log, actions, comps, just_decided)
    count = len(log.actions)
    bounds = part_bounds(count)
    focused = part is None and count > FOCUS_ABOVE
    if focused:
        wanted = {p.action.seq for p in problems if p.action is not None}
        anchors = {
            n for n, a in enumerate(log.actions) if a.seq in wanted or flag(a, comps.get(a.seq))
        }
        shown = focus(count, anchors)
        part = len(bounds)
    else:
        part = len(bounds) if part is None else min(max(part, 1), len(bounds))
        shown = list(range(*bounds[part - 1]))

    def row(a: Action) -> ActionRow:
        return ActionRow(
            action=a,
            duration=duration(a),
            compensation=comps.get(a.seq),
            items=by_seq.get(a.seq, []),
            args=pretty(a.args),
            result=pretty(a.result),
            flag=flag(a, comps.get(a.seq)),
        )

    rows: list[ActionRow | Gap] = []
    previous = -1
    for n in shown:
        if n > previous + 1:
            rows.append(gap(log.actions, bounds, previous + 1, n))
        rows.append(row(log.actions[n]))
        previous = n
    open_items = [i for i in log.review_items if i.status == "open"]
    waiting = log.run.status in WAITING
    return RunPage(
        log=log,
        verification=verification,
        plan=[s for s in plan if s.do != "nothing"],
        rows=rows,
        problems=problems,
        summary=summarize(problems),
        decided_above=next((p.item.id for p in problems if p.item and p.decided), ""),
        open_items=open_items,
        closed_items=[i for i in log.review_items if i.status != "open"],
        open_approvals=[i for i in open_items if i.reason == "approval"],
        blocking=blockers(open_items),
        tools={a.seq: a.tool for a in log.actions},
        missing=decisions.missing_undos(guard, log.actions) if waiting else [],
        mismatch=policy_mismatch(guard, log.run),
        focus=focused,
        part=part,
        parts=[
            (n, log.actions[start].seq, log.actions[end - 1].seq)
            for n, (start, end) in enumerate(bounds, start=1)
        ]
        if len(bounds) > 1
        else [],
        history=guard.history(run_id),
    )


def gap(actions: list[Action], bounds: list[tuple[int, int]], start: int, end: int) -> Gap:
    part = next(n for n, (s, e) in enumerate(bounds, start=1) if s <= start < e)
    return Gap(actions[start].seq, actions[end - 1].seq, end - start, part)


def summarize(problems: list[Problem]) -> list[str]:
    counts = Counter(p.item.reason for p in problems if p.item is not None and not p.decided)
    said = []
    for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        one, many = REASONS.get(reason, (f"{reason} item", f"{reason} items"))
        said.append(f"{n} {one if n == 1 else many}")
    if any(p.item is None for p in problems):
        said.append("the call that stopped the run")
    return said
