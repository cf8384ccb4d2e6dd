"""Schema migrations (Alembic) on SQLite and PostgreSQL: a database made by the previous schema
version is upgraded without losing rows; the migrations build exactly the models' schema."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text
from sqlmodel import SQLModel
from typer.testing import CliRunner

from guardrail import Guard, StoreError
from guardrail.cli import app
from guardrail.store import migrate
from guardrail.store.schema import TABLES, Entry, OutboxEvent


def test_head_is_the_newest_migration() -> None:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrate.MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == migrate.HEAD


# (the search indexes are on expressions, which SQLAlchemy does not reflect on SQLite)
@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
def test_migrations_build_the_models_schema(store_url: str) -> None:
    Guard(store=store_url).close()  # a fresh store is created by the migrations
    engine = create_engine(store_url)
    tables = [m.__table__ for m in (*TABLES.values(), Entry, OutboxEvent)]  # type: ignore[attr-defined]
    metadata = SQLModel.metadata
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"include_name": lambda name, kind, parent: name != "alembic_version"}
        )
        diff = [
            d
            for d in compare_metadata(context, metadata)
            if not (
                isinstance(d, tuple) and getattr(d[1], "name", None) not in {t.name for t in tables}
            )
        ]
    assert diff == []


def test_upgrade_from_the_previous_version_keeps_every_row(store_url: str) -> None:
    engine = create_engine(store_url)
    migrate.upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO runs (id, agent, status, metadata, created_at, updated_at) "
                "VALUES ('old-run', 'shop', 'completed', '{}', 1, 2)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO actions (run_id, seq, tool, idempotency_key, effect, state, "
                "attempts, args, args_hash, external_ids, started_at, prev_hash, hash) VALUES "
                "('old-run', 1, 'create_order', 'k', 'reversible', 'succeeded', 1, "
                "'{\"item\": \"book\"}', 'h', '{}', 1, '', '')"
            )
        )
    with pytest.raises(StoreError, match="guardrail db upgrade"):
        Guard(store=store_url)
    runner = CliRunner()
    result = runner.invoke(app, ["db", "current", "--store", store_url])
    assert result.exit_code == 1 and "0001" in result.output
    result = runner.invoke(app, ["db", "upgrade", "--store", store_url])
    assert result.exit_code == 0, result.output
    assert f"from 0001 to {migrate.HEAD}" in result.output
    assert (
        f"already at {migrate.HEAD}"
        in runner.invoke(app, ["db", "upgrade", "--store", store_url]).output
    )
    with Guard(store=store_url) as guard:
        log = guard.log("old-run")
        assert [(a.tool, a.args, a.snapshot) for a in log.actions] == [
            ("create_order", {"item": "book"}, None)
        ]

        @guard.tool(effect="read_only")
        def lookup(item: str) -> int:
            return 1

        with guard.run() as run:
            lookup(item="x")
        assert guard.verify(run.id).ok


def test_an_unversioned_store_is_stamped_then_upgraded(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    migrate.upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    with pytest.raises(StoreError, match="unversioned"):
        Guard(store=sqlite_url)
    assert migrate.upgrade(engine) == (None, migrate.HEAD)
    Guard(store=sqlite_url).close()


def test_upgrade_to_0005_adds_the_policy_fingerprint_and_keeps_old_runs(store_url: str) -> None:
    """A run made before 0005 keeps its row (fingerprint NULL); runs after it record their
    policies' fingerprint. The downgrade drops the column again and keeps the rows."""
    from alembic import command

    engine = create_engine(store_url)
    migrate.upgrade(engine, "0004")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO runs (id, agent, status, epoch, metadata, created_at, updated_at) "
                "VALUES ('old-run', 'shop', 'pending_review', 3, '{}', 1, 2)"
            )
        )
    with pytest.raises(StoreError, match="guardrail db upgrade"):
        Guard(store=store_url)
    assert migrate.upgrade(engine) == ("0004", migrate.HEAD)
    with Guard(store=store_url) as guard:
        guard.policy("lookup", effect="read_only")
        old = guard.require_run("old-run")
        assert (old.status, old.epoch, old.policy_fingerprint) == ("pending_review", 3, None)
        with guard.run() as new:
            pass
        assert guard.require_run(new.id).policy_fingerprint == guard.policy_fingerprint
        assert guard.verify(new.id).ok

    with engine.begin() as conn:
        command.downgrade(migrate._config(conn), "0004")
        assert migrate.current(conn) == "0004"
        assert conn.execute(text("SELECT COUNT(*) FROM runs")).scalar() == 2


def test_the_records_reads_return_have_the_tables_columns() -> None:
    from guardrail.store.records import RECORDS

    tables: dict[str, type[SQLModel]] = {**TABLES, "journal": Entry}
    assert set(RECORDS) == set(tables)
    for name, record in RECORDS.items():
        table = tables[name]
        assert list(record.model_fields) == list(table.model_fields), name
        for column, field in record.model_fields.items():
            other = table.model_fields[column]
            assert field.annotation == other.annotation, (name, column)
            assert field.get_default(call_default_factory=True) == other.get_default(
                call_default_factory=True
            ), (name, column)
            assert field.is_required() == other.is_required(), (name, column)


def test_a_store_made_by_a_newer_guardrail_is_refused(store_url: str) -> None:
    Guard(store=store_url).close()
    engine = create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(StoreError, match="schema version 9999") as err:
        Guard(store=store_url)
    assert err.value.field == "schema" and "guardrail db upgrade" in str(err.value)
