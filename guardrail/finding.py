"""The runs a search finds and the groups of like halts, as records: what `Guard.search` and
`Guard.groups` return. (The search's SQL is in `guardrail.search`, pure, so that the store can
use it; this module reads the store.)"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from guardrail.search import Match, RunQuery, reason_group
from guardrail.store import RunRecord, Store


@dataclass(frozen=True, slots=True)
class Found:
    """What `Guard.search` returns: the runs of one page, newest first, each with what matched
    the search text; ``next`` is the cursor of the next page (None on the last)."""

    runs: list[RunRecord]
    matches: dict[str, tuple[Match, ...]]
    next: str | None


def found(store: Store, query: RunQuery) -> Found:
    """One page of the runs ``query`` finds, with what matched (see `Guard.search`)."""
    page = store.search_runs(query)
    runs = [r for r in (store.run(i) for i in page.run_ids) if r is not None]
    return Found(runs, {r.id: page.matches.get(r.id, ()) for r in runs}, page.next)


@dataclass(frozen=True, slots=True)
class Group:
    """Runs halted for the same cause: ``key`` is their reason with what varies blanked, ``id``
    a short stable name of the key (``guardrail abort --filter group=ID``)."""

    key: str
    run_ids: list[str]
    example: str | None  # the newest run's reason as it is

    @property
    def id(self) -> str:
        return group_id(self.key)


def group_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def groups(runs: Iterable[RunRecord]) -> list[Group]:
    """The runs grouped by `reason_group`, the largest group first (then the newest)."""
    found: dict[str, Group] = {}
    for run in sorted(runs, key=lambda r: (r.updated_at, r.id), reverse=True):
        key = reason_group(run.reason)
        if key not in found:
            found[key] = Group(key, [], run.reason)
        found[key].run_ids.append(run.id)
    return sorted(found.values(), key=lambda g: -len(g.run_ids))
