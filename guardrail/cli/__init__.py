"""The ``guardrail`` command line: tables for people, ``--json`` for scripts.

Exit codes: 0 ok, 1 not found or problems found, 2 usage (a bad option value, a question not
answered yes, no terminal to ask on), 3 conflict.

Building the command table imports every command module, so they import only typer and
the standard library at module level; the store, the guard, policy files, the web console,
Alembic and the MCP adapter are imported inside the commands that need them.
"""

from __future__ import annotations

import typer

from guardrail.cli import db, decide, policy, recover, reviewers, runs, serve, show, volume
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
for command in (
    runs.runs,
    decide.resume,
    decide.abort,
    decide.resolve,
    decide.approve,
    decide.reject,
    decide.reply,
    runs.find,
    runs.export,
    runs.verify,
):
    app.command()(command)
recover.register(app)
show.register(app)
db.register(app)
mcp_proxy.register(app)
serve.register(app)
volume.register(app)


def main() -> None:
    app()
