"""Fixtures: a guard on a temporary SQLite file and, when GUARDRAIL_TEST_POSTGRES_URL is set,
the same tests on PostgreSQL (each test in a schema of its own)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from guardrail import Guard

POSTGRES_URL = os.environ.get("GUARDRAIL_TEST_POSTGRES_URL")
STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _postgres_schema_url() -> Iterator[str]:
    if not POSTGRES_URL:
        pytest.skip(
            "PostgreSQL tests need GUARDRAIL_TEST_POSTGRES_URL, e.g. "
            "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        )
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    plain = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A fresh, empty store URL: SQLite in tmp_path, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'guardrail.db'}"
    else:
        yield from _postgres_schema_url()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'guardrail.db'}"


@pytest.fixture
def guard(store_url: str) -> Iterator[Guard]:
    g = Guard(store=store_url)
    yield g
    g.close()
