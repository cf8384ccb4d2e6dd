"""Runs record the fingerprint of the policies they started under (a short stable hash of the
declared policies, see guardrail.fingerprint), so a command or console that decides about a run
later can tell whether it loaded the same policies. Runs made before stay NULL.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("policy_fingerprint", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("policy_fingerprint")
