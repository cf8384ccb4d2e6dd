"""``guardrail mcp-proxy [--app MODULE:ATTRIBUTE] [--policy FILE] [--pack NAME] -- COMMAND...``.

Serves an MCP server's tools through the guard over stdio (see ``guardrail.adapters.mcp``).
stdout is the MCP channel: everything for people goes to stderr. The adapter (and the ``mcp``
package) is imported only when the command runs, so ``guardrail`` works without the extra.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from guardrail.cli.common import OnFailure
from guardrail.cli.loading import App, AppStore, Force, Loads, PackOptions, Packs, open_guard
from guardrail.errors import GuardrailError, PolicyError

USAGE, FAILED = 2, 1


def register(app: typer.Typer) -> None:
    app.command("mcp-proxy")(mcp_proxy)


def mcp_proxy(
    command: Annotated[
        list[str],
        typer.Argument(
            metavar="-- COMMAND [ARGS]...",
            help="The upstream MCP server to start over stdio, after `--`.",
            show_default=False,
        ),
    ],
    policy: Annotated[
        list[Path] | None,
        typer.Option(help="A YAML or TOML policy file (repeatable; a later file wins)."),
    ] = None,
    pack: Packs = None,
    pack_option: PackOptions = None,
    app: App = None,
    store: AppStore = None,
    force: Force = False,
    agent: Annotated[str, typer.Option(help="The agent name recorded on the run.")] = "mcp",
    run_id: Annotated[
        str | None,
        typer.Option(
            help="The session's run: continued if it exists (e.g. after a person resumed it), "
            "else created with this id. Default: a new run."
        ),
    ] = None,
    on_failure: Annotated[
        OnFailure | None,
        typer.Option(
            help="hold: on a failure undo nothing until a person decides (resume or abort). "
            "Default: each tool's policy (compensate at once).",
        ),
    ] = None,
) -> None:
    """Serve an MCP server's tools through the guard, over stdio.

    With --app, the application's guard serves (its policies, tools and undos, and its store);
    packs load first, then policy files (files win); tool annotations seed defaults for tools
    with no policy; tools with neither are refused. One run per client session. A failure
    compensates and halts the run; the client gets a tool error naming the run, and later calls
    are refused until a person resumes it (`guardrail resume RUN`). The proxy does not start
    when an undo it would need is not available (an undo tool the server does not have, or an
    undo of the continued --run-id run), unless --force.
    """
    _log_to_stderr()
    loads = Loads.of(app, [str(p) for p in policy or []], pack, pack_option)
    guard, owned = open_guard(store, loads, strict=True, must_exist=False)
    try:
        try:
            import anyio

            adapter: Any = importlib.import_module("guardrail.adapters.mcp")
        except ImportError as exc:
            fail(
                f"the MCP proxy needs the mcp package ({exc}); install agent-guardrail[mcp]",
                FAILED,
            )
        try:
            run = anyio.run(
                lambda: adapter.serve(
                    guard,
                    command,
                    agent=agent,
                    run_id=run_id,
                    on_failure=on_failure,
                    force=force,
                )
            )
        except Exception as exc:  # an ExceptionGroup from the task groups, or one error
            known = [e for e in _leaves(exc) if isinstance(e, OSError | GuardrailError)]
            if not known:
                raise
            code = USAGE if isinstance(known[0], PolicyError) else FAILED
            fail(f"cannot serve {' '.join(command)}: {known[0]}", code)
        if run is not None:
            logging.getLogger("guardrail.mcp").info(
                "session over; run %s is %s", run, guard.require_run(run).status
            )
    finally:
        if owned:
            guard.close()


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _log_to_stderr() -> None:
    logger = logging.getLogger("guardrail")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("guardrail mcp-proxy: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def fail(message: str, code: int) -> Any:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
