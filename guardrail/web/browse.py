"""What the inbox shows, read from the guard: the counts at the top, and a page of runs, either
the default view (the runs that wait for a person) or a search with filters (`Guard.search`),
``PAGE_SIZE`` runs at a time behind a cursor.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from guardrail.guard import Guard
from guardrail.recovery import owner_alive
from guardrail.search import Match
from guardrail.store import RunRecord
from guardrail.transitions import LIVE
from guardrail.web.query import NEEDS, InboxQuery, needs_cursor, read_needs_cursor

WAITING = ("pending_review", "awaiting_approval")
PAGE_SIZE = 50


@dataclass(slots=True)
class RunRow:
    run: RunRecord
    open_items: int
    matched: tuple[Match, ...] = ()  # what of the run matched the search text
    exact: bool = False  # its id or an external id is the search text, whole


@dataclass(slots=True)
class InboxPage:
    rows: list[RunRow]
    counts: dict[str, int]
    next: str | None  # the cursor of the next page
    exact: list[RunRow] = field(default_factory=list)  # the runs the text names exactly


def counts(guard: Guard, open_items: Counter[str] | None = None) -> dict[str, int]:
    """The counts at the top of the inbox; the open review items' only when they were read
    (the default view reads them all; a search reads those of the runs it shows)."""
    found = {
        "pending_review": len(guard.runs(status="pending_review")),
        "awaiting_approval": len(guard.runs(status="awaiting_approval")),
    }
    if open_items is not None:
        found["open_items"] = sum(open_items.values())
        found["runs_with_open_items"] = len(open_items)
    return found


def load_counts(guard: Guard) -> dict[str, int]:
    return counts(guard)


def load_inbox(guard: Guard, query: InboxQuery, size: int = PAGE_SIZE) -> InboxPage:
    """A page of the inbox for ``query``."""
    if query.status == NEEDS:
        open_items = Counter(guard.open_item_counts())
        runs, cursor = needs_page(guard, open_items, query.cursor, size)
        rows = [RunRow(r, open_items.get(r.id, 0)) for r in runs]
        return InboxPage(rows, counts(guard, open_items), cursor)
    found = guard.search(**query.filters(), limit=size, cursor=query.cursor or None)
    needle = query.text.lower()
    open_items = Counter(
        {r.id: len(guard.review_items(run_id=r.id, status="open")) for r in found.runs}
    )
    rows = []
    for run in found.runs:
        matched = found.matches.get(run.id, ())
        exact = bool(needle) and any(
            m.value.lower() == needle for m in matched if m.field not in ("reason", "agent", "tool")
        )
        rows.append(RunRow(run, open_items.get(run.id, 0), matched, exact))
    return InboxPage(rows, counts(guard), found.next, [r for r in rows if r.exact])


def needs_page(
    guard: Guard, open_items: Counter[str], cursor: str, size: int
) -> tuple[list[RunRecord], str | None]:
    """The runs that wait for a person (halted or waiting for approval first, then runs nobody
    is finishing and runs with open review items), newest created first; the page after
    ``cursor``, and the next page's cursor."""
    found = {r.id: r for s in WAITING for r in guard.runs(status=s)}
    # runs nobody is finishing (a dead owner, a lease not renewed after a store fault) need a
    # person too, until recovery takes them over
    for s in LIVE:
        for r in guard.runs(status=s):
            if not owner_alive(r.owner, r.heartbeat_at, guard.stale_after):
                found[r.id] = r
    for run_id in open_items:
        if run_id not in found:
            record = guard.run_record(run_id)
            if record is not None:
                found[run_id] = record

    def place(r: RunRecord) -> tuple[int, float, str]:
        return (0 if r.status in WAITING else 1, -r.created_at, r.id)

    runs = sorted(found.values(), key=place)
    if cursor:
        rank, created_at, run_id = read_needs_cursor(cursor)
        after = (rank, -created_at, run_id)
        runs = [r for r in runs if place(r) > after]
    if len(runs) <= size:
        return runs, None
    last = runs[size - 1]
    return runs[:size], needs_cursor(place(last)[0], last.created_at, last.id)
