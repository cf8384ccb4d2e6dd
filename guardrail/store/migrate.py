"""Schema versions, managed by Alembic (``guardrail db upgrade``), for SQLite and PostgreSQL.

Opening a store creates a fresh database at the newest version. A database made by an older
guardrail is not changed behind anyone's back (other workers may still run the old version): the
store refuses it with the command to run, as it refuses one made by a newer guardrail. Opening a
store at the newest version reads its version with plain SQL: SQLAlchemy, Alembic and the
table definitions (`guardrail.store.schema`) are imported only when something is migrated.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardrail.errors import StoreError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from guardrail.store.dialect import Dialect
    from guardrail.store.url import StoreURL

HEAD = "0010"  # the newest revision in migrations/versions (a test keeps the two in step)
MIGRATIONS = Path(__file__).parent / "migrations"


def found(conn: Any, dialect: Dialect) -> tuple[str | None, bool]:
    """On a DB-API connection: the database's revision (None when it has none), and whether
    it has guardrail's tables at all."""
    tables = dialect.tables(conn, ("alembic_version", "actions"))
    version = None
    if "alembic_version" in tables:
        rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        version = str(rows[0][0]) if rows else None
    return version, "actions" in tables


def ensure(conn: Any, dialect: Dialect, url: StoreURL) -> None:
    """Create a fresh database at HEAD; refuse one at another version with what to do."""
    version, has_tables = found(conn, dialect)
    if version == HEAD:
        return
    if version is None and not has_tables:
        try:
            _create(url)
        except Exception:
            if found(conn, dialect)[0] == HEAD:  # another process created it meanwhile
                return
            raise
        return
    shown = url.shown()
    raise StoreError(
        f"the store at {shown} has schema version {version or 'unversioned'}, this guardrail "
        f"needs {HEAD}: run `guardrail db upgrade --store {shown}` (stop old workers first)",
        field="schema",
    )


def _create(url: StoreURL) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(url.sqlalchemy())
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def current(conn: Connection) -> str | None:
    """The database's revision, or None when it has none (on a SQLAlchemy connection)."""
    from sqlalchemy import inspect, text

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
    from sqlalchemy import inspect, text

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
