"""The tables, as SQLModel classes: the schema the migrations build (a test compares the two).

Imported only to migrate or to test the migrations: reads return the plain records of
`guardrail.store.records`, whose attributes are these columns.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Column, Index, Text
from sqlmodel import Field, SQLModel


class RunRecord(SQLModel, table=True):
    """One agent run: its status, who owns it, and the head of its hash chain."""

    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_status_updated", "status", "updated_at"),)

    id: str = Field(primary_key=True)
    agent: str = Field(index=True)
    status: str
    owner: str | None = None
    # the fencing token: raised by every takeover, resume and abort (see guardrail.transitions)
    epoch: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    key_id: str | None = None  # the hash key of its chain and args hashes (None: unkeyed, old)
    # the policies it started under (guardrail.fingerprint; None: a run made before 0005)
    policy_fingerprint: str | None = None
    heartbeat_at: float | None = None
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=Column("metadata", JSON))
    reason: str | None = None
    decided_by: str | None = None
    decision_note: str | None = None
    created_at: float
    updated_at: float


class Action(SQLModel, table=True):
    """One tool call in a run's action log."""

    __tablename__ = "actions"
    __table_args__ = ({"sqlite_with_rowid": False},)

    run_id: str = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    tool: str
    call_id: str | None = None
    idempotency_key: str
    effect: str
    state: str
    attempts: int = 0
    args: Any = Field(default=None, sa_column=Column(JSON))
    args_hash: str
    result: Any = Field(default=None, sa_column=Column(JSON))
    result_note: str | None = None
    error: str | None = None
    # name -> JSON value, its type kept (the external_ids rows hold them as searchable text)
    external_ids: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    snapshot: Any = Field(default=None, sa_column=Column(JSON))
    trace_id: str | None = None
    span_id: str | None = None
    started_at: float
    finished_at: float | None = None
    prev_hash: str = ""
    hash: str = ""


class ExternalId(SQLModel, table=True):
    """An external id an action produced, as its own indexed row so it can be searched."""

    __tablename__ = "external_ids"
    __table_args__ = (Index("ix_external_ids_value", "value", "name"), {"sqlite_with_rowid": False})

    run_id: str = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    name: str = Field(primary_key=True)
    value: str


class Compensation(SQLModel, table=True):
    """The one attempt to undo an action (with its retries). At most one per action."""

    __tablename__ = "compensations"

    run_id: str = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    undo: str
    state: str  # started | succeeded | failed | interrupted
    position: int | None = None  # 1 for the first undo the run ran, 2 for the next...
    attempts: int = 0
    error: str | None = None
    started_at: float
    finished_at: float | None = None


class ReviewItem(SQLModel, table=True):
    """Something a person must decide."""

    __tablename__ = "review_items"

    id: str = Field(primary_key=True)
    run_id: str = Field(index=True)
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
    answer: Any = Field(default=None, sa_column=Column(JSON))
    created_at: float
    resolved_at: float | None = None


class Entry(SQLModel, table=True):
    """One committed transition of a run, hash-chained to the one before it."""

    __tablename__ = "journal"
    __table_args__ = ({"sqlite_with_rowid": False},)

    run_id: str = Field(primary_key=True)
    n: int = Field(primary_key=True)
    at: float
    kind: str
    body: str = Field(sa_column=Column(Text, nullable=False))
    prev_hash: str
    hash: str


class OutboxEvent(SQLModel, table=True):
    """A notification to deliver (a halt, a decision): kept until the webhook took it."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "delivered_at", "next_at"),)

    id: str = Field(primary_key=True)  # the event id: the run and its journal entry
    run_id: str
    event: str
    at: float
    body: str = Field(sa_column=Column(Text, nullable=False))
    attempts: int = 0
    next_at: float
    delivered_at: float | None = None
    last_error: str | None = None


TABLES: dict[str, type[SQLModel]] = {
    "runs": RunRecord,
    "actions": Action,
    "external_ids": ExternalId,
    "compensations": Compensation,
    "review_items": ReviewItem,
}
