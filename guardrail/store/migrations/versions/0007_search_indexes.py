"""Indexes for search: external ids and tool names by a case-insensitive prefix.

A reviewer finds a run by the start of an order id, in any case (`Guard.search`). The indexes
hold the lower-cased values; on PostgreSQL in the "C" collation, where a range of text is
exactly "starts with".

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_INDEXES = {
    "ix_external_ids_value_lower": ("external_ids", "value"),
    "ix_actions_tool_lower": ("actions", "tool"),
}


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for name, (table, column) in _INDEXES.items():
        expr = f'(lower({column}) COLLATE "C")' if postgres else f"lower({column})"
        op.execute(f"CREATE INDEX {name} ON {table} ({expr})")


def downgrade() -> None:
    for name in _INDEXES:
        op.execute(f"DROP INDEX {name}")
