"""Where the action log lives: one `Store` protocol, one SQL implementation (SQLite, PostgreSQL).

Every change of state is a `transact` call: a list of row writes committed together with one
hash-chained journal entry. Reads return the records of `guardrail.store.records`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from guardrail.keys import Keys, KeySource
from guardrail.search import Page, RunQuery
from guardrail.store.records import (
    Action,
    Compensation,
    Entry,
    ExternalId,
    OutboxEvent,
    ReviewItem,
    RunRecord,
)

__all__ = [
    "Action",
    "Compensation",
    "Entry",
    "ExternalId",
    "OutboxEvent",
    "Fence",
    "Recorded",
    "Fenced",
    "Listener",
    "ReviewItem",
    "RunRecord",
    "Store",
    "Write",
    "open_store",
]


class JournalRow(NamedTuple):
    """A journal entry as plain data (verifying a long run reads many)."""

    n: int
    kind: str
    body: str
    prev_hash: str
    hash: str


class Recorded(NamedTuple):
    """The call an idempotency key already answered (for a replay, or to refuse a reuse)."""

    seq: int
    tool: str
    args_hash: str
    result: Any
    note: str | None


@dataclass(slots=True)
class Write:
    """One row change: insert ``values`` under ``key``, or update the row at ``key``.

    ``expect`` makes the write conditional (column -> allowed current values); when no row
    matches, the whole transaction is rolled back and `Store.transact` returns False. That is how
    two reviewers racing on one run end with exactly one decision.
    """

    table: str
    key: dict[str, Any]
    values: dict[str, Any]
    insert: bool = False
    expect: dict[str, tuple[Any, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Fence:
    """A precondition on the run row for a whole transaction: the run is still at ``epoch`` and
    in one of ``statuses``. Writes made for a worker carry the fence of the lease it holds."""

    epoch: int
    statuses: tuple[str, ...]


class Fenced(Exception):
    """`Store.transact` refused a fenced transaction: the run changed hands or status."""

    def __init__(self, run_id: str, kind: str) -> None:
        super().__init__(f"run {run_id}: {kind} refused, the run is no longer at this epoch")
        self.run_id = run_id
        self.kind = kind


class Listener(Protocol):
    """Notices that a run's status changed (PostgreSQL's LISTEN/NOTIFY)."""

    def wait(self, seconds: float) -> bool:
        """Block until a notice comes (True) or ``seconds`` pass (False)."""
        ...

    def close(self) -> None: ...


class Store(Protocol):
    url: str
    keys: Keys

    def transact(
        self, run_id: str, kind: str, writes: Sequence[Write], fence: Fence | None = None
    ) -> bool: ...
    def heartbeat(self, owner: str, run_ids: Collection[str], now: float) -> None: ...
    def seqs_in_state(self, run_id: str, states: Sequence[str]) -> list[int]: ...
    def forget(self, run_id: str) -> None: ...
    def head(self, run_id: str) -> tuple[int, str] | None: ...
    def run(self, run_id: str) -> RunRecord | None: ...
    def runs(
        self,
        *,
        status: str | None = None,
        agent: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]: ...
    def actions(self, run_id: str) -> list[Action]: ...
    def next_seq(self, run_id: str) -> int: ...
    def done_keys(self, run_id: str) -> dict[str, int]: ...
    def recorded_result(self, run_id: str, seq: int, key: str) -> Recorded | None: ...
    def keyed_actions(self, run_id: str, key: str) -> list[Action]: ...
    def compensations(self, run_id: str) -> list[Compensation]: ...
    def review_items(
        self, *, run_id: str | None = None, status: str | None = None
    ) -> list[ReviewItem]: ...
    def review_item(self, item_id: str) -> ReviewItem | None: ...
    def open_item_counts(self) -> dict[str, int]: ...
    def entries(self, run_id: str) -> list[Entry]: ...
    def journal(self, run_id: str) -> list[JournalRow]: ...
    def external_id_rows(self, run_id: str) -> list[dict[str, Any]]: ...
    def find(self, *, value: str, name: str | None = None) -> list[ExternalId]: ...

    def search_runs(self, query: RunQuery) -> Page: ...
    # the outbox of notifications (not part of the action log: not journaled)
    def queue_event(self, event: OutboxEvent) -> bool: ...
    def due_events(self, now: float, limit: int) -> list[OutboxEvent]: ...
    def claim_event(self, event_id: str, attempts: int, retry_at: float) -> bool: ...
    def event_outcome(
        self, event_id: str, delivered_at: float | None, error: str | None
    ) -> None: ...
    def events(self, *, run_id: str | None = None) -> list[OutboxEvent]: ...
    def listener(self) -> Listener | None:
        """Notices of status changes, where the database sends them (None: poll instead)."""
        ...

    def close(self) -> None: ...


def open_store(
    url: str, *, durability: str = "process", hash_key: KeySource | None = None
) -> Store:
    """Open the store at ``url`` (``sqlite:///path.db`` or ``postgresql+psycopg://...``);
    ``hash_key`` as in `guardrail.keys`."""
    from guardrail.store.sql import SQLStore

    return SQLStore(url, durability=durability, hash_key=hash_key)
