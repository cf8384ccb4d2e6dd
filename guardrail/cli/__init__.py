"""The ``guardrail`` command line: tables for people, ``--json`` for scripts.

Exit codes: 0 ok, 1 not found or problems found, 2 usage, 3 conflict.
"""

from __future__ import annotations

import typer

from guardrail.cli import db, policy, recover, reviewers, runs, serve, show, volume
from guardrail.cli import mcp as mcp_proxy

app = typer.Typer(
    name="guardrail",
    help="Review, resume and abort guarded agent runs; check policy files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(policy.app, name="policy")
app.add_typer(reviewers.app, name="reviewers")
runs.register(app)
recover.register(app)
show.register(app)
db.register(app)
mcp_proxy.register(app)
serve.register(app)
volume.register(app)


def main() -> None:
    app()
