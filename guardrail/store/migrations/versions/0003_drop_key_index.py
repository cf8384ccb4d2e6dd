"""Drop the idempotency-key index: a run's succeeded keys are kept in memory by its owner, so
the hot path no longer looks keys up, and one index fewer makes every write-ahead record cheaper.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_actions_key", table_name="actions")


def downgrade() -> None:
    op.create_index("ix_actions_key", "actions", ["idempotency_key", "run_id"])
