"""Finding runs at volume: one query for search, filters and pages, and groups of like halts.

A search text matches, case-insensitively, the start of a run's id, its agent, one of its
tools or one of its external ids (an order id, a file path), and anywhere in its reason. Filters
narrow by status, agent, tool, owner and time. Pages follow a cursor (the last run's creation
time and id), so a page never repeats or skips a run when new runs arrive meanwhile.

The SQL is built here, with ``?`` placeholders, for the store to run; the one difference
between the databases is how a prefix is matched through an index (`prefix_match`).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from guardrail.errors import GuardrailError

RUN_STATUSES = (
    "running",
    "awaiting_approval",
    "compensating",
    "pending_review",
    "aborting",
    "aborted",
    "completed",
)
MAX_PAGE = 500
_TOP = "\U0010ffff"  # sorts after every character: [p, p + _TOP) is "starts with p"


@dataclass(frozen=True, slots=True)
class RunQuery:
    """What to look for: ``text`` (a search), and filters that all must hold."""

    text: str | None = None
    status: tuple[str, ...] = ()
    agent: str | None = None
    tool: str | None = None
    owner: str | None = None
    since: float | None = None  # last change at or after
    until: float | None = None  # last change before
    limit: int = 50
    cursor: str | None = None  # from the previous page's `Page.next`

    def __post_init__(self) -> None:
        unknown = [s for s in self.status if s not in RUN_STATUSES]
        if unknown:
            raise GuardrailError(
                f"status {unknown[0]!r} is not a run status; expected one of "
                + ", ".join(RUN_STATUSES),
                field="status",
            )
        if not 1 <= self.limit <= MAX_PAGE:
            raise GuardrailError(
                f"limit={self.limit} is out of range: expected 1 to {MAX_PAGE}", field="limit"
            )
        if self.cursor is not None:
            decode_cursor(self.cursor)  # (refused here, with the field named)

    @property
    def needle(self) -> str | None:
        """The search text as matched: trimmed and lower-cased; None when there is none."""
        text = (self.text or "").strip().lower()
        return text or None


@dataclass(frozen=True, slots=True)
class Match:
    """Why a run is in the results: the field that matched and its value."""

    field: str  # "run id", "agent", "tool", "reason", or "external id <name>"
    value: str


@dataclass(frozen=True, slots=True)
class Page:
    """A page of results, newest run first; ``next`` is the cursor of the next page, if any."""

    run_ids: list[str]
    next: str | None = None
    matches: dict[str, tuple[Match, ...]] = field(default_factory=dict)


def encode_cursor(created_at: float, run_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at!r}|{run_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, run_id = raw.split("|", 1)
        return float(at), run_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise GuardrailError(
            f"cursor {cursor!r} is not one this store gave out; start from the first page",
            field="cursor",
        ) from exc


def prefix_match(expr: str, dialect: str) -> str:
    """SQL testing that ``expr`` starts with a (lower-cased) text, as a range an index serves:
    two placeholders, the text and the text followed by the highest character. PostgreSQL
    compares in the "C" collation, where the range is exactly a prefix test."""
    if dialect == "postgresql":
        return f'({expr} COLLATE "C" >= ? AND {expr} COLLATE "C" < ?)'
    return f"({expr} >= ? AND {expr} < ?)"


def prefix_params(needle: str) -> tuple[str, str]:
    return needle, needle + _TOP


def like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# Search through external ids and tools first lists the runs they point to, up to this many:
# a narrow search (one order id) then tests the runs against that list; a broad one (every run
# has a `ch_` id) tests each run, newest first, and stops at the page's end.
NARROW = 2000


def candidates_sql(table: str, column: str, dialect: str) -> str:
    """The runs (at most NARROW + 1) with a ``column`` of ``table`` starting with the text."""
    return (
        f"SELECT DISTINCT run_id FROM {table} WHERE "
        + prefix_match(f"lower({column})", dialect)
        + " LIMIT ?"
    )


def run_page_sql(
    query: RunQuery,
    dialect: str,
    by_external_id: Sequence[str] | None = None,
    by_tool: Sequence[str] | None = None,
) -> tuple[str, list[object]]:
    """The query of one page of run ids with their creation times, newest first (one more than
    the limit, which tells whether there is a next page). ``by_external_id`` and ``by_tool``:
    the runs a narrow search found there (`candidates_sql`); None when it was broad."""
    where: list[str] = []
    params: list[object] = []
    if query.status:
        where.append(f"r.status IN ({', '.join('?' for _ in query.status)})")
        params.extend(query.status)
    if query.agent is not None:
        where.append("lower(r.agent) = ?")
        params.append(query.agent.strip().lower())
    if query.owner is not None:
        where.append("r.owner = ?")
        params.append(query.owner)
    if query.since is not None:
        where.append("r.updated_at >= ?")
        params.append(query.since)
    if query.until is not None:
        where.append("r.updated_at < ?")
        params.append(query.until)
    if query.tool is not None:
        where.append("EXISTS (SELECT 1 FROM actions a WHERE a.run_id = r.id AND a.tool = ?)")
        params.append(query.tool.strip())
    needle = query.needle
    if needle is not None:
        p = prefix_params(needle)
        tests = [
            prefix_match("lower(r.id)", dialect),
            prefix_match("lower(r.agent)", dialect),
            "lower(r.reason) LIKE ? ESCAPE '\\'",
        ]
        params_of_tests: list[object] = [*p, *p, f"%{like_escape(needle)}%"]
        for found, table, column in (
            (by_external_id, "external_ids", "value"),
            (by_tool, "actions", "tool"),
        ):
            if found is None:
                tests.append(
                    f"EXISTS (SELECT 1 FROM {table} x WHERE x.run_id = r.id AND "
                    + prefix_match(f"lower(x.{column})", dialect)
                    + ")"
                )
                params_of_tests.extend(p)
            elif found:
                tests.append(f"r.id IN ({', '.join('?' for _ in found)})")
                params_of_tests.extend(found)
        where.append("(" + " OR ".join(tests) + ")")
        params.extend(params_of_tests)
    if query.cursor is not None:
        at, run_id = decode_cursor(query.cursor)
        where.append("(r.created_at < ? OR (r.created_at = ? AND r.id < ?))")
        params.extend([at, at, run_id])
    sql = "SELECT r.id, r.created_at FROM runs r"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY r.created_at DESC, r.id DESC LIMIT ?"
    params.append(query.limit + 1)
    return sql, params


def page_of(rows: Sequence[tuple[str, float]], limit: int) -> Page:
    ids = [str(r[0]) for r in rows[:limit]]
    more = len(rows) > limit
    return Page(ids, encode_cursor(float(rows[limit - 1][1]), ids[-1]) if more else None)


def explain(
    needle: str,
    run_id: str,
    agent: str,
    reason: str | None,
    tools: Iterable[str],
    external_ids: Iterable[tuple[str, str]],
) -> tuple[Match, ...]:
    """What of a found run matched the search text (the same tests as the query's)."""
    found: list[Match] = []
    for name, value in external_ids:
        if value.lower().startswith(needle):
            found.append(Match(f"external id {name}", value))
    if run_id.lower().startswith(needle):
        found.append(Match("run id", run_id))
    if agent.lower().startswith(needle):
        found.append(Match("agent", agent))
    found.extend(Match("tool", t) for t in sorted(set(tools)) if t.lower().startswith(needle))
    if reason and needle in reason.lower():
        found.append(Match("reason", reason))
    return tuple(dict.fromkeys(found))


# -- groups of like halts -------------------------------------------------------------------

_VARYING = re.compile(
    r"""
    '[^']*' | "[^"]*"                           # quoted values
    | \b[0-9a-f]{8,}\b                          # hex ids and hashes
    | \b[A-Za-z]+_[A-Za-z0-9]*\d[A-Za-z0-9]*\b  # prefixed ids: ord_40049, ch_3Nx9
    | \d+(?:\.\d+)?                             # numbers, amounts, counts
    """,
    re.VERBOSE,
)


def reason_group(reason: str | None) -> str:
    """A halt's reason with what varies from run to run (ids, numbers, quoted values) blanked,
    so that runs halted by the same cause (a carrier outage) fall in one group."""
    if not reason:
        return "(no reason)"
    return " ".join(_VARYING.sub("…", reason).split())
