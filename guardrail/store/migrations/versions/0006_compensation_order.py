"""Compensations record their position: 1 for the first undo a halt or an abort ran, 2 for the
next... so the order in which they ran is part of the log, not a guess from timestamps.
Compensations made before stay NULL.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("compensations", sa.Column("position", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("compensations") as batch:
        batch.drop_column("position")
