"""Reading a run's action log, and proving that nobody edited it.

Every committed transition appended a journal entry whose hash covers the previous entry's
hash and the rows it wrote. `verify` recomputes the chain and replays the entries to check that
every stored row still says what the journal says it was set to: an edited entry, an edited or
deleted row, a deleted entry with rows after it, or a row the journal never wrote all show.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from guardrail.store import Action, Compensation, ReviewItem, RunRecord, Store
from guardrail.store.journal import KEYS, UNJOURNALED, entry_hash, journal_value
from guardrail.store.records import RECORDS


class ActionLog(BaseModel):
    """Everything recorded about one run, in order."""

    model_config = ConfigDict(arbitrary_types_allowed=True, defer_build=True)

    run: RunRecord
    actions: list[Action]
    compensations: list[Compensation]
    review_items: list[ReviewItem]

    def action(self, seq: int) -> Action:
        return next(a for a in self.actions if a.seq == seq)


class Verification(BaseModel):
    """The verdict of `Guard.verify`: ``ok`` when the chain and every row check out."""

    model_config = ConfigDict(defer_build=True)

    run_id: str
    ok: bool
    entries: int
    problems: list[str]


class Witness(BaseModel):
    """What a run's journal had at a moment: how many entries, and the newest one's hash.

    Sent out with the run's end (span, webhook, export) and kept elsewhere, it lets `check`
    detect what the store alone cannot prove: entries cut off the end, a deleted run, or (for a
    writer holding the key) a rewritten chain.
    """

    model_config = ConfigDict(defer_build=True)

    run_id: str
    entries: int
    head: str


def witness(store: Store, run_id: str) -> Witness | None:
    found = store.head(run_id)
    return Witness(run_id=run_id, entries=found[0], head=found[1]) if found else None


def check(store: Store, seen: Witness) -> list[str]:
    """Problems between a witness kept outside and the store now (empty: it still holds)."""
    rows = store.journal(seen.run_id)
    if not rows:
        return [
            f"run {seen.run_id} is gone from the store (the witness saw {seen.entries} entries)"
        ]
    if len(rows) < seen.entries:
        return [
            f"run {seen.run_id} has {len(rows)} journal entries, the witness saw {seen.entries}: "
            "entries were cut off"
        ]
    if rows[seen.entries - 1].hash != seen.head:
        return [
            f"run {seen.run_id}: journal entry {seen.entries} is not the one the witness saw: the "
            "chain was rewritten"
        ]
    return []


def read_log(store: Store, run: RunRecord) -> ActionLog:
    return ActionLog(
        run=run,
        actions=store.actions(run.id),
        compensations=store.compensations(run.id),
        review_items=store.review_items(run_id=run.id),
    )


_DEFAULTS: dict[str, dict[str, Any]] = {}


def _defaults(table: str) -> dict[str, Any]:
    found = _DEFAULTS.get(table)
    if found is None:
        fields = RECORDS[table].model_fields
        found = _DEFAULTS[table] = {
            c: f.get_default(call_default_factory=True) for c, f in fields.items()
        }
    return found


def verify(store: Store, run: RunRecord, log: ActionLog | None = None) -> Verification:
    """Replay the run's journal against its rows. ``log`` saves reading the rows again."""
    problems: list[str] = []
    entries = store.journal(run.id)
    if not store.keys.has(run.key_id):
        return Verification(
            run_id=run.id,
            ok=False,
            entries=len(entries),
            problems=[
                f"the run's hash key {run.key_id} is not available here, so its chain cannot be "
                "checked; add the key to GUARDRAIL_HASH_KEY or the key file"
            ],
        )
    prev = ""
    expected: dict[tuple[str, tuple[Any, ...]], dict[str, Any]] = {}
    last_touch: dict[tuple[Any, ...], str] = {}
    for i, entry in enumerate(entries, start=1):
        if entry.n != i:
            problems.append(f"journal entry {i} is missing (found {entry.n} next)")
        if entry.prev_hash != prev:
            problems.append(f"journal entry {entry.n} does not follow the entry before it")
        if (
            entry_hash(store.keys, run.key_id, entry.prev_hash, entry.kind, entry.body)
            != entry.hash
        ):
            problems.append(f"journal entry {entry.n} ({entry.kind}) was edited")
        prev = entry.hash
        try:
            writes = json.loads(entry.body)
        except ValueError:
            problems.append(f"journal entry {entry.n} is not readable")
            continue
        for table, key, values, _insert in writes:
            ident = (table, tuple(key[k] for k in KEYS[table]))
            expected.setdefault(ident, {}).update(values)
            if table == "actions":
                last_touch[ident[1]] = entry.hash
    if not entries:
        problems.append("the run has no journal entries")

    actual: dict[tuple[str, tuple[Any, ...]], dict[str, Any]] = {}
    log = log if log is not None else read_log(store, run)
    rows: list[tuple[str, dict[str, Any]]] = [("runs", log.run.model_dump())]
    rows += [("actions", a.model_dump()) for a in log.actions]
    rows += [("compensations", c.model_dump()) for c in log.compensations]
    rows += [("review_items", r.model_dump()) for r in log.review_items]
    rows += [("external_ids", x) for x in store.external_id_rows(run.id)]
    for table, row in rows:
        actual[(table, tuple(row[k] for k in KEYS[table]))] = row
    for ident, values in expected.items():
        row_values = actual.get(ident)
        table, key = ident
        label = f"{table} row {'/'.join(str(k) for k in key)}"
        if row_values is None:
            problems.append(f"{label} was deleted")
            continue
        for column, value in values.items():
            if column in UNJOURNALED:
                continue
            if journal_value(column, row_values.get(column)) != value:
                problems.append(f"{label}: {column} was changed outside guardrail")
        defaults = _defaults(table)
        for column, value in row_values.items():
            if column in values or column in UNJOURNALED or column in KEYS[table]:
                continue
            if value != defaults[column]:
                problems.append(f"{label}: {column} was set outside guardrail")
        if table == "actions" and row_values.get("hash") != last_touch.get(key):
            problems.append(f"{label}: its hash does not match the journal")
    for ident in actual.keys() - expected.keys():
        problems.append(
            f"{ident[0]} row {'/'.join(str(k) for k in ident[1])} is not in the journal"
        )
    return Verification(run_id=run.id, ok=not problems, entries=len(entries), problems=problems)
