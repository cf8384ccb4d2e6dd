"""``guardrail serve``: the web review console on a local port, behind a token.

uvicorn is imported only when the command runs.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from guardrail.cli.runs import DEFAULT_STORE, USAGE, Store, fail, opened


def register(app: typer.Typer) -> None:
    app.command()(serve)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    store: Store = DEFAULT_STORE,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="GUARDRAIL_TOKEN",
            show_envvar=True,
            help="The token that protects the console (at least 16 characters). "
            "Prefer the GUARDRAIL_TOKEN variable: a --token shows in the process list.",
        ),
    ] = None,
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote",
            help="Allow a host other than loopback. Put TLS in front (or pass --ssl-certfile): "
            "the token travels with every request.",
        ),
    ] = False,
    policy: Annotated[
        list[str] | None,
        typer.Option(help="A YAML or TOML policy file, so aborts find undos (repeatable)."),
    ] = None,
    pack: Annotated[
        list[str] | None, typer.Option(help="A policy pack by name (repeatable).")
    ] = None,
    pack_option: Annotated[
        list[str] | None,
        typer.Option(help="KEY=VALUE for the packs, e.g. root_dir=/srv/agent (repeatable)."),
    ] = None,
    ssl_certfile: Annotated[str | None, typer.Option(help="Serve HTTPS with this cert.")] = None,
    ssl_keyfile: Annotated[str | None, typer.Option(help="The certificate's key.")] = None,
) -> None:
    """Serve the web review console: the runs waiting for a person, their timelines, and the
    decisions (resume, abort, resolve, approve, reject), each recording the reviewer's name.

    Aborts run the undos in this process: policy files with dotted-path undos and policy packs
    work here; for undos that live in your code, serve guardrail.web.create_app(guard, token)
    from that code instead.
    """
    if not token:
        fail(
            "the console needs a token: set GUARDRAIL_TOKEN (e.g. to the output of python -c "
            "'import secrets; print(secrets.token_urlsafe(32))') or pass --token",
            USAGE,
        )
    assert token is not None
    from guardrail.web.security import check_token

    try:
        check_token(token)
    except ValueError as exc:
        fail(str(exc), USAGE)
    if not is_loopback(host) and not allow_remote:
        fail(
            f"--host {host} is reachable from other machines; pass --allow-remote to mean it "
            "(and put TLS in front), or keep the default 127.0.0.1",
            USAGE,
        )
    if bool(ssl_certfile) != bool(ssl_keyfile):
        fail("--ssl-certfile and --ssl-keyfile go together", USAGE)
    options: dict[str, str] = {}
    for text in pack_option or []:
        key, sep, value = text.partition("=")
        if not sep or not key:
            fail(f"--pack-option {text!r}: expected KEY=VALUE", USAGE)
        options[key] = value

    import uvicorn

    from guardrail.web import create_app

    with opened(store) as guard:
        for name in pack or []:
            guard.load_policies(name, **options)
        for file in policy or []:
            guard.load_policies(file)
        app = create_app(guard, token)
        scheme = "https" if ssl_certfile else "http"
        shown = f"[{host}]" if ":" in host else host
        typer.echo(
            f"guardrail console on {scheme}://{shown}:{port}/ for {guard.store.url} "
            "(log in with the token; Ctrl+C stops it)",
            err=True,
        )
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level="info",
            server_header=False,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
        )
