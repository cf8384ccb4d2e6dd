"""``guardrail policy check FILE [--tools MODULE:OBJECT] [--allow PREFIX]... [--json]
[-- SERVER [ARGS]...]``."""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from guardrail.cli.common import to_json
from guardrail.errors import PolicyError

app = typer.Typer(help="Check policy files.", no_args_is_help=True)


@app.command()
def check(
    file: Annotated[
        str, typer.Argument(help="A YAML or TOML policy file, or the name of a policy pack.")
    ],
    tools: Annotated[
        str | None,
        typer.Option(
            help="The toolkit to check against, as MODULE:OBJECT (a list of tools, a toolkit "
            "with get_tools(), a mapping of name to tool, or a function returning one)."
        ),
    ] = None,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            help="A module prefix whose functions the file may name (undo.call, snapshot, probe, "
            "retry.on), e.g. myapp.payments; repeat for more. Also read from "
            "GUARDRAIL_POLICY_ALLOW. Allow only your own code, safe to run on what an agent sends. "
            "Imported with the current directory on the path.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    server: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="-- SERVER [ARGS]",
            help="An MCP server to check against instead of --tools, started over stdio after "
            "`--` (e.g. `-- uvx mcp-server-git`): the tools it lists are the toolkit.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Report every problem in a policy file; exit 0 only when it is clean.

    Errors: malformed files, bad expressions and paths, a dotted path outside the allowed
    modules (--allow), a tool that changes the world with neither undo nor review, an undo
    naming a tool that does not exist, a toolkit tool with no policy (e.g. one that a newer
    version of an MCP server added). Warnings (do not fail): policies for tools the toolkit
    lacks.
    """
    from guardrail import policy_check, policy_source
    from guardrail.guard import load_pack

    if tools is not None and server:
        raise typer.BadParameter("give --tools or an MCP server command, not both")
    names = tool_names(tools) if tools is not None else None
    if server:
        names = server_tool_names(server)
    if Path(file).suffix.lower() in policy_source.SUFFIXES:
        if allow and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            found = policy_check.check(file, names, allow=allow or ())
        except PolicyError as exc:  # a malformed --allow or GUARDRAIL_POLICY_ALLOW
            raise typer.BadParameter(str(exc), param_hint="--allow") from None
    else:
        try:
            pack = load_pack(file)
        except PolicyError as exc:
            raise typer.BadParameter(str(exc), param_hint="FILE") from None
        found = policy_check.check_policies(pack, names, file=file)
    errors = [p for p in found if p.severity == "error"]
    if as_json:
        typer.echo(
            to_json({"file": str(file), "ok": not errors, "problems": [asdict(p) for p in found]})
        )
    else:
        from rich.console import Console
        from rich.table import Table

        console = Console()
        if not found:
            console.print(f"[green]{file}: ok[/green]")
        else:
            table = Table(
                title=f"{file}: {len(errors)} error(s), {len(found) - len(errors)} warning(s)"
            )
            for column in ("line", "severity", "tool", "problem", "message"):
                table.add_column(column, overflow="fold")
            for p in found:
                colour = "red" if p.severity == "error" else "yellow"
                table.add_row(
                    str(p.line or ""),
                    f"[{colour}]{p.severity}[/{colour}]",
                    p.tool or "",
                    p.code,
                    p.message.removeprefix(f"tool {p.tool!r}: "),
                )
            console.print(table)
    raise typer.Exit(1 if errors else 0)


def tool_names(spec: str) -> list[str]:
    """The tool names of ``MODULE:OBJECT`` (imported with the current directory on the path)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise typer.BadParameter(f"{spec!r}: expected MODULE:OBJECT", param_hint="--tools")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise typer.BadParameter(f"{spec!r}: {exc}", param_hint="--tools") from None
    try:
        if isinstance(found, type) or (
            callable(found) and not hasattr(found, "name") and not hasattr(found, "get_tools")
        ):
            found = found()  # a toolkit class or a factory function
        if hasattr(found, "get_tools"):
            found = found.get_tools()
    except Exception as exc:
        raise typer.BadParameter(
            f"{spec!r}: building the toolkit failed: {exc}", param_hint="--tools"
        ) from None
    if isinstance(found, Mapping):
        return [str(k) for k in found]
    if not isinstance(found, Iterable):
        raise typer.BadParameter(
            f"{spec!r} is a {type(found).__name__}, not a list of tools or a toolkit",
            param_hint="--tools",
        )
    names = []
    for tool in found:
        name = getattr(tool, "name", None) or getattr(tool, "__name__", None)
        if not isinstance(name, str):
            raise typer.BadParameter(f"{spec!r}: {tool!r} has no name", param_hint="--tools")
        names.append(name)
    return names


SERVER_TIMEOUT = 60.0  # seconds to start an MCP server and list its tools


def server_tool_names(command: list[str]) -> list[str]:
    """The names of the tools an MCP server lists, started over stdio (needs the mcp package).

    The server inherits this process's environment; its stderr is shown only if it fails.
    """
    try:
        import anyio

        mcp: Any = importlib.import_module("mcp")
    except ImportError as exc:
        raise typer.BadParameter(
            f"checking against an MCP server needs the mcp package ({exc}); install "
            "agent-guardrail[mcp]",
            param_hint="SERVER",
        ) from None

    async def listing(errlog: Any) -> list[str]:
        params = mcp.StdioServerParameters(
            command=command[0], args=command[1:], env=dict(os.environ)
        )
        names: list[str] = []
        with anyio.fail_after(SERVER_TIMEOUT):
            async with (
                mcp.stdio_client(params, errlog=errlog) as (read, write),
                mcp.ClientSession(read, write) as session,
            ):
                await session.initialize()
                cursor = None
                while True:
                    page = await session.list_tools(
                        params=mcp.types.PaginatedRequestParams(cursor=cursor) if cursor else None
                    )
                    names.extend(tool.name for tool in page.tools)
                    cursor = page.next_cursor
                    if not cursor:
                        return names

    with tempfile.TemporaryFile("w+") as errlog:
        try:
            return anyio.run(listing, errlog)
        except Exception as exc:  # an OSError, a protocol error, a timeout, or a group of them
            errlog.seek(0)
            said = " ".join(errlog.read().split())[-500:]
            leaf = _first_leaf(exc)
            raise typer.BadParameter(
                f"cannot list the tools of {' '.join(command)}: {type(leaf).__name__}: {leaf}"
                + (f" (it said: {said})" if said else ""),
                param_hint="SERVER",
            ) from None


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
