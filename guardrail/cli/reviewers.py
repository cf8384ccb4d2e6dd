"""``guardrail reviewers``: the console's reviewers, each with a token of their own.

``add NAME`` prints a fresh token once and keeps only its SHA-256; ``list`` shows who may log
in; ``remove NAME`` takes a reviewer out, which a running console notices on the next request
(their token and sessions stop working). The file is ``--file`` or ``GUARDRAIL_REVIEWERS``,
else ``~/.config/guardrail/reviewers.json``; ``guardrail serve`` reads the same one.

The web package is imported only when a command runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from guardrail.cli.common import AsJson, dump_json, iso, when
from guardrail.cli.loading import CONFLICT, NOT_FOUND, USAGE, fail

if TYPE_CHECKING:
    from guardrail.web.reviewers import ReviewerFile

app = typer.Typer(
    help="Reviewers of the web console, each with a token of their own (guardrail serve).",
    no_args_is_help=True,
)

File = Annotated[
    str | None,
    typer.Option(
        "--file",
        envvar="GUARDRAIL_REVIEWERS",
        show_envvar=True,
        help="The reviewers file (default ~/.config/guardrail/reviewers.json, under "
        "$XDG_CONFIG_HOME when set).",
    ),
]
Name = Annotated[str, typer.Argument(help="The reviewer's name, as decisions record it.")]


def _file(path: str | None) -> ReviewerFile:
    from guardrail.web.reviewers import ReviewerFile, default_path

    return ReviewerFile(path or default_path())


@app.command()
def add(
    name: Name,
    file: File = None,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Give an existing reviewer a new token; the old one and its sessions stop "
            "working.",
        ),
    ] = False,
) -> None:
    """Add a reviewer and print their token, once: only its hash is stored.

    The token goes to stdout alone (TOKEN=$(guardrail reviewers add ann)); hand it to the
    reviewer over a private channel. They log in to the console with it, and their decisions
    are recorded under NAME.
    """
    from guardrail.web.reviewers import ReviewerExists

    reviewers = _file(file)
    try:
        token = reviewers.add(name, replace=replace)
    except ReviewerExists as exc:
        fail(f"{exc}; pass --replace to give them a new token", CONFLICT)
    except (ValueError, OSError) as exc:
        fail(str(exc), USAGE)
    typer.echo(token)
    typer.echo(
        f"reviewer {name!r} {'has a new token' if replace else 'added'} in {reviewers.path}; "
        "the token above is shown only this once",
        err=True,
    )


@app.command("list")
def list_(file: File = None, as_json: AsJson = False) -> None:
    """The reviewers who may log in to the console (names only: tokens are not stored)."""
    reviewers = _file(file)
    try:
        found = reviewers.load()
    except ValueError as exc:
        fail(str(exc), USAGE)
    if as_json:
        dump_json([{"name": r.name, "created_at": iso(r.created_at)} for r in found])
        return
    if not found:
        typer.echo(f"no reviewers in {reviewers.path}", err=True)
        return
    width = max(len(r.name) for r in found)
    for r in found:
        typer.echo(f"{r.name:<{width}}  added {when(r.created_at)}")


@app.command()
def remove(name: Name, file: File = None) -> None:
    """Remove a reviewer: their token and its console sessions stop working.

    A running console notices on its next request; nothing needs restarting.
    """
    reviewers = _file(file)
    try:
        removed = reviewers.remove(name)
    except (ValueError, OSError) as exc:
        fail(str(exc), USAGE)
    if not removed:
        fail(f"no reviewer {name!r} in {reviewers.path}", NOT_FOUND)
    typer.echo(f"reviewer {name!r} removed from {reviewers.path}", err=True)
