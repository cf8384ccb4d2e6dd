"""``guardrail serve``: the web review console on a local port, behind reviewers' tokens, a
shared token, or an authenticating proxy's header.

uvicorn is imported only when the command runs.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer

from guardrail.cli.common import opened
from guardrail.cli.loading import (
    USAGE,
    App,
    AppStore,
    Force,
    Loads,
    PackOptions,
    Packs,
    Policies,
    fail,
)


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
    store: AppStore = None,
    app: App = None,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="GUARDRAIL_TOKEN",
            show_envvar=True,
            help="A shared token for the console (at least 16 characters); decisions made with "
            "it are recorded as 'shared-token', not as a person. Prefer the GUARDRAIL_TOKEN "
            "variable: a --token shows in the process list.",
        ),
    ] = None,
    reviewers: Annotated[
        str | None,
        typer.Option(
            envvar="GUARDRAIL_REVIEWERS",
            show_envvar=True,
            help="The reviewers file (guardrail reviewers add NAME): each reviewer logs in with "
            "a token of their own and decides under their name. Default "
            "~/.config/guardrail/reviewers.json, used when it exists.",
        ),
    ] = None,
    trust_header: Annotated[
        str | None,
        typer.Option(
            help="Take the reviewer's name from this request header (e.g. X-Forwarded-User), "
            "set by an authenticating proxy in front of the console. Only when every request "
            "comes through that proxy and it strips the header from clients' requests.",
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
    policy: Policies = None,
    pack: Packs = None,
    pack_option: PackOptions = None,
    force: Force = False,
    ssl_certfile: Annotated[str | None, typer.Option(help="Serve HTTPS with this cert.")] = None,
    ssl_keyfile: Annotated[str | None, typer.Option(help="The certificate's key.")] = None,
    deliver_every: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds between passes that post the webhook events that are due, when the "
            "app's guard has a webhook_url (0: never; leave it to guardrail deliver).",
        ),
    ] = 5.0,
) -> None:
    """Serve the web review console: the runs waiting for a person, their timelines, and the
    decisions (resume, abort, resolve, approve, reject), each recording who logged in.

    Aborts run the undos in this process: load the application's guard (--app
    MODULE:ATTRIBUTE or GUARDRAIL_APP) or the policies that name them (--policy, --pack). A run
    whose abort needs an undo the console lacks shows why and cannot be aborted here, unless
    --force (its undos then become review items). A guard with a webhook_url has its events
    delivered (and retried) every --deliver-every seconds while the console runs.
    """
    from guardrail.web.reviewers import ReviewerFile, ReviewerFileError, default_path
    from guardrail.web.security import check_header_name, check_token

    reviewer_file: ReviewerFile | None = None
    count = 0
    path = Path(reviewers) if reviewers else default_path()
    if reviewers or path.exists():
        reviewer_file = ReviewerFile(path)
        if not reviewer_file.path.exists():
            fail(
                f"no reviewers file at {path}; make one with guardrail reviewers add NAME "
                f"--file {path}",
                USAGE,
            )
        try:
            count = len(reviewer_file.load())
        except ReviewerFileError as exc:
            fail(str(exc), USAGE)
    if not token and reviewer_file is None and not trust_header:
        fail(
            "the console needs to know who is deciding: add reviewers (guardrail reviewers add "
            "NAME), or set GUARDRAIL_TOKEN to a shared token (e.g. the output of python -c "
            "'import secrets; print(secrets.token_urlsafe(32))'), or pass --trust-header",
            USAGE,
        )
    try:
        if token:
            check_token(token)
        if trust_header:
            check_header_name(trust_header)
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
    loads = Loads.of(app, policy, pack, pack_option)

    import uvicorn

    from guardrail.web import create_app
    from guardrail.web.delivery import delivering

    with opened(store, loads) as guard:
        console = create_app(
            guard,
            token or None,
            reviewers=reviewer_file,
            trust_header=trust_header or None,
            force=force,
        )
        scheme = "https" if ssl_certfile else "http"
        shown = f"[{host}]" if ":" in host else host
        ways = []
        if reviewer_file is not None:
            ways.append(f"{count} reviewer token(s) from {reviewer_file.path}")
        if token:
            ways.append("the shared token (decisions recorded as 'shared-token')")
        if trust_header:
            ways.append(f"the {trust_header} header from the proxy in front")
        typer.echo(
            f"guardrail console on {scheme}://{shown}:{port}/ for {guard.store.url} under "
            f"policies {guard.policy_fingerprint}; who decides comes from {' and '.join(ways)} "
            "(Ctrl+C stops it)",
            err=True,
        )
        if trust_header and not is_loopback(host):
            typer.echo(
                f"warning: --trust-header on {host}: anyone who reaches this port without the "
                f"proxy can send {trust_header} and decide as anybody",
                err=True,
            )
        with delivering(guard, deliver_every) as loop:
            if loop is not None:
                from guardrail import webhook

                where = webhook.shown(guard.webhook_url or "")
                typer.echo(
                    f"delivering webhook events to {where} every {deliver_every:g} s", err=True
                )
            uvicorn.run(
                console,
                host=host,
                port=port,
                log_level="info",
                server_header=False,
                ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile,
            )
