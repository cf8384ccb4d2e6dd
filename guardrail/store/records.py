"""The stored records, as reads return them: plain typed models, one per table.

Their attributes are the tables' columns (``RunRecord.meta`` is the ``metadata`` column); the
tables themselves are defined in `guardrail.store.schema`, for the migrations only (a test keeps
the two in step). Times are seconds since the epoch (floats): cheap to write, easy to compare.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# validation and serialization are built on first use, not at import (reads construct records
# from rows without validating them)
_LAZY = ConfigDict(defer_build=True)


class RunRecord(BaseModel):
    """One agent run: its status, who owns it, and the head of its hash chain."""

    model_config = _LAZY

    id: str
    agent: str
    status: str
    owner: str | None = None
    # the fencing token: raised by every takeover, resume and abort (see guardrail.transitions)
    epoch: int = 0
    key_id: str | None = None  # the hash key of its chain and args hashes (None: unkeyed, old)
    # the policies it started under (guardrail.fingerprint; None: a run made before 0005)
    policy_fingerprint: str | None = None
    heartbeat_at: float | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    reason: str | None = None
    decided_by: str | None = None
    decision_note: str | None = None
    created_at: float
    updated_at: float


class Action(BaseModel):
    """One tool call in a run's action log."""

    model_config = _LAZY

    run_id: str
    seq: int
    tool: str
    call_id: str | None = None
    idempotency_key: str
    effect: str
    state: str
    attempts: int = 0
    args: Any = None
    args_hash: str
    result: Any = None
    result_note: str | None = None
    error: str | None = None
    # name -> JSON value, its type kept (the external_ids rows hold them as searchable text)
    external_ids: dict[str, Any] = Field(default_factory=dict)
    snapshot: Any = None
    trace_id: str | None = None
    span_id: str | None = None
    started_at: float
    finished_at: float | None = None
    prev_hash: str = ""
    hash: str = ""


class ExternalId(BaseModel):
    """An external id an action produced, as its own indexed row so it can be searched."""

    model_config = _LAZY

    run_id: str
    seq: int
    name: str
    value: str


class Compensation(BaseModel):
    """The one attempt to undo an action (with its retries). At most one per action."""

    model_config = _LAZY

    run_id: str
    seq: int
    undo: str
    state: str  # started | succeeded | failed | interrupted
    position: int | None = None  # 1 for the first undo the run ran, 2 for the next...
    attempts: int = 0
    error: str | None = None
    started_at: float
    finished_at: float | None = None


class ReviewItem(BaseModel):
    """Something a person must decide."""

    model_config = _LAZY

    id: str
    run_id: str
    seq: int | None = None
    reason: str  # irreversible | compensation_failed | in_doubt | held | approval | ...
    kind: str
    owner: str | None = None
    instructions: str | None = None
    status: str = "open"  # open | resolved
    resolution: str | None = None
    resolved_by: str | None = None
    note: str | None = None
    # an approval's answer besides yes or no: {"args": edited arguments} or {"reply": value}
    answer: Any = None
    created_at: float
    resolved_at: float | None = None


class Entry(BaseModel):
    """One committed transition of a run, hash-chained to the one before it."""

    model_config = _LAZY

    run_id: str
    n: int
    at: float
    kind: str
    body: str
    prev_hash: str
    hash: str


# table -> the record its rows are read as
RECORDS: dict[str, type[BaseModel]] = {
    "runs": RunRecord,
    "actions": Action,
    "external_ids": ExternalId,
    "compensations": Compensation,
    "review_items": ReviewItem,
    "journal": Entry,
}


class OutboxEvent(BaseModel):
    """A notification to deliver (a halt, a decision): kept until the webhook took it."""

    model_config = _LAZY

    id: str  # the event id: the run and its journal entry
    run_id: str
    event: str
    at: float
    body: str
    attempts: int = 0
    next_at: float
    delivered_at: float | None = None
    last_error: str | None = None
