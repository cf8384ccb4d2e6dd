"""``guardrail db upgrade`` and ``guardrail db current``: the store's schema version."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="The store's schema (Alembic migrations).", no_args_is_help=True)

Store = Annotated[
    str,
    typer.Option("--store", envvar="GUARDRAIL_STORE", help="Store URL."),
]


@app.command()
def upgrade(
    store: Store = "sqlite:///guardrail.db",
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Bring the store's schema to the newest version (keeps every row)."""
    from sqlalchemy import create_engine

    from guardrail.store import migrate

    try:
        before, after = migrate.upgrade(create_engine(store), revision)
    except Exception as exc:
        typer.echo(f"error: cannot upgrade {store}: {exc}", err=True)
        raise typer.Exit(1) from None
    if before == after:
        typer.echo(f"{store}: already at {after}")
    else:
        typer.echo(f"{store}: upgraded from {before or 'an empty database'} to {after}")


@app.command()
def current(store: Store = "sqlite:///guardrail.db") -> None:
    """Print the store's schema version and the one this guardrail needs."""
    from sqlalchemy import create_engine

    from guardrail.store import migrate

    with create_engine(store).connect() as conn:
        found = migrate.current(conn)
    typer.echo(f"{found or 'none'} (this guardrail needs {migrate.HEAD})")
    raise typer.Exit(0 if found == migrate.HEAD else 1)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="db")
