"""What the inbox is asked for, read from its query string: a search text and filters (status,
agent, tool, owner, since, until) and the page's cursor. Everything a page shows is in its URL,
so a search can be shared as a link.

A value the console cannot use raises `QueryError`, whose message names the field and says what
is expected; the inbox shows it next to the search form (400), never a server error.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

from guardrail.errors import GuardrailError
from guardrail.search import RUN_STATUSES, decode_cursor

NEEDS = "needs"  # the inbox's default view: the runs that wait for a person
ALL = "all"
STATUSES = (NEEDS, ALL, *RUN_STATUSES)
MAX_TEXT = 200
FILTERS = ("agent", "tool", "owner")
TIMES = ("since", "until")
DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class QueryError(ValueError):
    """A value in the query string the console cannot use; the message says which and why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class InboxQuery:
    """The inbox's search and filters as typed (``raw``: what goes back into links and the
    form) and as read (times as epoch seconds)."""

    text: str = ""
    status: str = NEEDS
    agent: str = ""
    tool: str = ""
    owner: str = ""
    since: float | None = None
    until: float | None = None
    cursor: str = ""
    raw_since: str = ""
    raw_until: str = ""

    @property
    def searching(self) -> bool:
        """True unless this is the default inbox: what waits for a person."""
        return self.status != NEEDS

    @property
    def filtered(self) -> bool:
        """A search text or a filter other than the status is given."""
        return bool(
            self.text or self.agent or self.tool or self.owner or self.raw_since or self.raw_until
        )

    def params(self, **changes: str) -> dict[str, str]:
        """The query string's fields (without empty ones), with ``changes``."""
        fields = {
            "q": self.text,
            "status": "" if self.status == NEEDS else self.status,
            "agent": self.agent,
            "tool": self.tool,
            "owner": self.owner,
            "since": self.raw_since,
            "until": self.raw_until,
            "cursor": self.cursor,
            **changes,
        }
        return {k: v for k, v in fields.items() if v}

    def url(self, **changes: str) -> str:
        """The inbox's URL for this query (``cursor=""``: its first page)."""
        query = urlencode(self.params(**changes))
        return "/?" + query if query else "/"

    def first_page(self) -> InboxQuery:
        return replace(self, cursor="")

    def filters(self) -> dict[str, Any]:
        """The filters as `Guard.search` (and `guardrail.bulk.select`) take them."""
        found: dict[str, Any] = {"text": self.text or None}
        if self.status not in (NEEDS, ALL):
            found["status"] = (self.status,)
        for name in FILTERS:
            value = getattr(self, name)
            if value:
                found[name] = value
        if self.since is not None:
            found["since"] = self.since
        if self.until is not None:
            found["until"] = self.until
        return found


def read_query(params: Mapping[str, str], now: float | None = None) -> InboxQuery:
    """The inbox query in ``params`` (a query string or a posted form). A search text or a
    filter without a status looks at runs of every status; none of them is the default inbox.
    Whitespace around a value is ignored; a value of only whitespace counts as none."""
    now = time.time() if now is None else now
    text = " ".join(params.get("q", "").split())
    if len(text) > MAX_TEXT:
        raise QueryError("q", f"the search is limited to {MAX_TEXT} characters")
    values = {name: params.get(name, "").strip() for name in FILTERS}
    for name, value in values.items():
        if len(value) > MAX_TEXT:
            raise QueryError(name, f"{name} is limited to {MAX_TEXT} characters")
    raw = {name: params.get(name, "").strip() for name in TIMES}
    times = {name: read_time(name, value, now) for name, value in raw.items()}
    since, until = times["since"], times["until"]
    if since is not None and until is not None and since >= until:
        raise QueryError("until", "until must be later than since")
    status = params.get("status", "").strip()
    if status and status not in STATUSES:
        raise QueryError(
            "status",
            f"status {status!r} is not one the inbox knows; expected one of " + ", ".join(STATUSES),
        )
    cursor = params.get("cursor", "").strip()
    if not status:
        any_filter = text or any(values.values()) or any(raw.values())
        status = ALL if any_filter else NEEDS
    elif status == NEEDS and (text or any(values.values()) or any(raw.values())):
        status = ALL  # a search looks at every status unless one is chosen
    if cursor:
        check_cursor(cursor, status)
    return InboxQuery(
        text=text,
        status=status,
        cursor=cursor,
        since=since,
        until=until,
        raw_since=raw["since"],
        raw_until=raw["until"],
        **values,
    )


def read_time(name: str, value: str, now: float) -> float | None:
    """``30m``, ``2h``, ``1d`` (that long before ``now``), or an ISO date or date and time
    (local time unless it names its zone)."""
    if not value:
        return None
    found = DURATION.fullmatch(value)
    if found:
        return now - float(found.group(1)) * UNITS[found.group(2)]
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise QueryError(
            name,
            f"{name} {value!r} is not a time: expected a duration ago (30m, 2h, 1d) or an ISO "
            "date (2026-05-01) or date and time (2026-05-01T14:30)",
        ) from None


# -- the default inbox's pages ----------------------------------------------------------------
# The runs that wait for a person are gathered from several places (halted runs, runs waiting
# for approval, runs nobody finishes, runs with open review items), so they are paged here:
# the halted and waiting runs first, then the others, newest created first in each; the cursor
# is the last run shown's place in that order (its creation time never changes).


def needs_cursor(rank: int, created_at: float, run_id: str) -> str:
    raw = f"n|{rank}|{created_at!r}|{run_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def read_needs_cursor(cursor: str) -> tuple[int, float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        tag, rank, at, run_id = raw.split("|", 3)
        if tag != "n":
            raise ValueError(tag)
        return int(rank), float(at), run_id
    except (ValueError, UnicodeDecodeError):
        raise QueryError(
            "cursor", "this page link is not one the inbox made; start from the first page"
        ) from None


def check_cursor(cursor: str, status: str) -> None:
    if status == NEEDS:
        read_needs_cursor(cursor)
        return
    try:
        decode_cursor(cursor)
    except GuardrailError:
        raise QueryError(
            "cursor", "this page link is not one the inbox made; start from the first page"
        ) from None
