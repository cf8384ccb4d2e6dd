"""Schema versions, managed by Alembic (``guardrail db upgrade``), for SQLite and PostgreSQL.

Opening a store creates a fresh database at the newest version. A database made by an older
guardrail is not changed behind anyone's back (other workers may still run the old version): the
store refuses it with the command to run. Alembic is imported only when something is migrated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from guardrail.errors import StoreError

HEAD = "0009"  # the newest revision in migrations/versions (a test keeps the two in step)
MIGRATIONS = Path(__file__).parent / "migrations"


def current(conn: Connection) -> str | None:
    """The database's revision, or None when it has none."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
    return str(row[0]) if row is not None else None


def _config(conn: Connection) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    return config


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the database to ``revision``; returns (before, after)."""
    from alembic import command

    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # one migrator at a time across hosts; released at commit
            conn.execute(text("SELECT pg_advisory_xact_lock(7215000042)"))
        before = current(conn)
        if before is None and inspect(conn).has_table("actions"):
            # made before versioning: the same tables as the first revision
            command.stamp(_config(conn), "0001")
        command.upgrade(_config(conn), revision)
        after = current(conn)
    return before, after


def ensure(engine: Engine, url: str) -> None:
    """Create a fresh database at HEAD; refuse one at an older version with what to do."""
    with engine.connect() as conn:
        found = current(conn)
        fresh = found is None and not inspect(conn).has_table("actions")
    if found == HEAD:
        return
    if fresh:
        try:
            upgrade(engine)
        except Exception:
            with engine.connect() as conn:  # another process may have created it meanwhile
                if current(conn) == HEAD:
                    return
            raise
        return
    raise StoreError(
        f"the store at {url} has schema version {found or 'unversioned'}, this guardrail needs "
        f"{HEAD}: run `guardrail db upgrade --store {url}` (stop old workers first)",
        field="schema",
    )
