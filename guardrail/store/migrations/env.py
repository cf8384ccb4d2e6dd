"""Alembic environment for guardrail's store: run programmatically by guardrail.store.migrate
(``guardrail db upgrade``), on the connection it is handed."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
