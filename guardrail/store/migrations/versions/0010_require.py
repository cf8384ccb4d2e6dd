"""PostgreSQL gets ``guardrail_require(ok, code)``: true when ``ok``, else an error with SQLSTATE
``code``. A transaction is sent in one round trip (a pipeline) and its checks (the run's fence,
a write's expected values) are statements that call it, so a failed check aborts the
transaction and the SQLSTATE tells which one failed. SQLite needs nothing (the store checks row
counts between statements there).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE OR REPLACE FUNCTION guardrail_require(ok boolean, code text) RETURNS boolean
        LANGUAGE plpgsql AS $$
        BEGIN
            IF ok IS NOT TRUE THEN
                RAISE EXCEPTION USING ERRCODE = code, MESSAGE = 'guardrail check ' || code;
            END IF;
            RETURN true;
        END
        $$
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS guardrail_require(boolean, text)")
