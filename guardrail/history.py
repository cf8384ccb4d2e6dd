"""Who decided what on a run, and when: the decision history, read back from the run's journal.

Every decision by a person (resume, abort, a resolution of a review item, an approval or a
rejection) is one committed transition, and every transition is one entry of the run's
hash-chained journal. The history is therefore not a second record that could drift from the
first: it is the journal's decision entries, in order, with what they wrote. Tampering with it
is as detectable as tampering with the log (`Guard.verify`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

# journal kinds of decisions, and the word each is shown as
_RUN_DECISIONS = {"run.resume": "resume", "run.abort": "abort"}
_ITEM_DECISIONS = (
    "review.resolve",
    "review.happened",
    "review.not_happened",
    "approval.approved",
    "approval.rejected",
    "approval.replied",
)


class JournalEntry(Protocol):
    """What the history needs of a journal entry (`guardrail.store.Entry` has it)."""

    @property
    def n(self) -> int: ...
    @property
    def at(self) -> float: ...
    @property
    def kind(self) -> str: ...
    @property
    def body(self) -> str: ...


@dataclass(frozen=True, slots=True)
class DecisionEvent:
    """One decision on a run: ``what`` is ``resume``, ``abort``, or a review item's resolution
    (``done_manually``, ``retried``, ``skipped``, ``approved``, ``rejected``, ``replied``,
    ``happened``, ``not_happened``); ``item_id`` names the item it resolved. ``n`` is its
    journal entry; ``answer`` an approval's edited arguments (``{"args": ...}``) or reply
    (``{"reply": ...}``)."""

    run_id: str
    n: int
    at: float
    what: str
    by: str | None
    note: str | None
    item_id: str | None = None
    answer: Any = None


def decisions(run_id: str, entries: Iterable[JournalEntry]) -> list[DecisionEvent]:
    """The decisions among a run's journal entries, oldest first.

    >>> from types import SimpleNamespace as E
    >>> body = '[["runs",{"id":"r1"},{"decided_by":"ana","status":"running"},0]]'
    >>> [d.what for d in decisions("r1", [E(n=7, at=1.0, kind="run.resume", body=body)])]
    ['resume']
    """
    found: list[DecisionEvent] = []
    for entry in entries:
        if entry.kind in _RUN_DECISIONS:
            for table, _key, values in _writes(entry.body):
                if table == "runs" and "decided_by" in values:
                    found.append(
                        DecisionEvent(
                            run_id,
                            entry.n,
                            entry.at,
                            _RUN_DECISIONS[entry.kind],
                            _text(values.get("decided_by")),
                            _text(values.get("decision_note")),
                        )
                    )
                    break
        elif entry.kind in _ITEM_DECISIONS:
            for table, key, values in _writes(entry.body):
                if table == "review_items" and "resolution" in values:
                    found.append(
                        DecisionEvent(
                            run_id,
                            entry.n,
                            entry.at,
                            str(values["resolution"]),
                            _text(values.get("resolved_by")),
                            _text(values.get("note")),
                            _text(key.get("id")),
                        )
                    )
    return found


def _writes(body: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    try:
        rows = json.loads(body)
    except ValueError:
        return []  # (`Guard.verify` reports a damaged entry; the history shows what it can)
    out = []
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, list) and len(row) >= 3:
            table, key, values = row[0], row[1], row[2]
            if isinstance(table, str) and isinstance(key, dict) and isinstance(values, dict):
                out.append((table, key, values))
    return out


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
