"""Runs carry the id of the hash key their chain and argument hashes are made with (keys live
outside the store and can be rotated), and a fencing epoch: every takeover, resume and abort
raises it, and every write made for a worker is conditional on the epoch the worker holds, so a
worker that lost its run (a pause past its lease, a partition) can no longer start a tool or
record into it.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "runs", sa.Column("epoch", sa.Integer(), nullable=False, server_default=sa.text("0"))
    )
    op.add_column("runs", sa.Column("key_id", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("epoch")
        batch.drop_column("key_id")
