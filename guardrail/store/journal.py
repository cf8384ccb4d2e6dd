"""The journal's rules, as pure functions: what a write records, and how entries chain.

Shared by the store (which writes entries) and `guardrail.audit` (which replays them): a row
change is journaled as ``[table, key, values, inserted]``, JSON columns by their canonical text
(or that text's digest when it is long), and each entry's hash is an HMAC, under the run's key,
of the previous entry's hash, the entry's kind and its body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guardrail.redact import canonical, digest

if TYPE_CHECKING:
    from collections.abc import Sequence

    from guardrail.keys import Keys
    from guardrail.store import Write

# The primary key columns of each table a write may touch.
KEYS: dict[str, tuple[str, ...]] = {
    "runs": ("id",),
    "actions": ("run_id", "seq"),
    "external_ids": ("run_id", "seq", "name"),
    "compensations": ("run_id", "seq"),
    "review_items": ("id",),
}
# Columns that change without a transition (liveness, chain bookkeeping): not journaled.
UNJOURNALED = frozenset({"heartbeat_at", "prev_hash", "hash"})
# Columns holding JSON (stored as its canonical text)
JSON_COLUMNS = frozenset({"meta", "args", "result", "external_ids", "snapshot", "answer"})
# Attribute -> column, where they differ
COLUMN_NAMES = {"meta": "metadata"}
# The states whose call a replay must not run again (see `Store.done_keys`)
DONE_STATES = ("succeeded", "compensation_failed", "in_doubt")


def entry_hash(keys: Keys, kid: str | None, prev_hash: str, kind: str, body: str) -> str:
    """A journal entry's hash: HMAC under the run's key of the previous hash, kind and body."""
    return keys.mac(f"{prev_hash}\n{kind}\n{body}", kid)


def journal_text(text: str) -> str:
    """A JSON column's canonical text as journaled: itself, or its digest when long."""
    return text if len(text) <= 64 else "sha256:" + digest(text)


def journal_value(column: str, value: Any) -> Any:
    """How a column's value appears in a journal entry: JSON columns by their canonical text,
    or that text's digest when it is long (the row holds the value; the journal proves it)."""
    if column not in JSON_COLUMNS:
        return value
    return journal_text(canonical(value))


def row_values(values: dict[str, Any]) -> dict[str, Any]:
    """The values of a write as bound to its row: JSON columns as canonical text, and NUL
    escaped in text (PostgreSQL text cannot hold it; both stores record the same). Text is
    bound as a plain str (a StrEnum could bind as its name)."""
    out = {c: v.replace("\x00", "\\x00") if isinstance(v, str) else v for c, v in values.items()}
    for c in JSON_COLUMNS.intersection(values):
        out[c] = canonical(values[c])
    return out


def body(writes: Sequence[Write], rows: Sequence[dict[str, Any]]) -> str:
    """The body of the journal entry for ``writes`` (``rows``: their `row_values`)."""
    entries = []
    for w, r in zip(writes, rows, strict=True):
        journaled = dict(r)
        for c in JSON_COLUMNS.intersection(r):
            journaled[c] = journal_text(r[c])
        entries.append([w.table, w.key, journaled, int(w.insert)])
    return canonical(entries)
