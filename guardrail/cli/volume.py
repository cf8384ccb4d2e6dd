"""Review at volume: ``search``, ``groups``, ``history`` and ``deliver``, and the ``--filter``
language the bulk decisions share.

A filter is words and ``key=value`` terms: ``status=pending_review tool=ship carrier timeout``.
Keys: ``status`` (comma-separated for several), ``agent``, ``tool``, ``owner``, ``since`` and
``until`` (``30m``, ``2h``, ``1d`` ago or an ISO date), ``group`` (an id from ``guardrail
groups``). The other words are the search text (see ``guardrail search``).
"""

from __future__ import annotations

import os
import shlex
from typing import Annotated, Any

import typer

from guardrail.cli.common import (
    RUN_STATUSES,
    AsJson,
    Store,
    dump_json,
    history_json,
    iso,
    opened,
    since,
    status_text,
    when,
)
from guardrail.cli.loading import DEFAULT_STORE, USAGE, App, AppStore, Loads, fail

FILTER_KEYS = ("status", "agent", "tool", "owner", "since", "until", "group")


def register(app: typer.Typer) -> None:
    for command in (search, groups, history, deliver):
        app.command()(command)


def _statuses(values: list[str] | None) -> list[str] | None:
    for value in values or ():
        if value not in RUN_STATUSES:
            raise typer.BadParameter(
                f"{value!r} is not a run status; expected one of {', '.join(RUN_STATUSES)}"
            )
    return values


def parse_filter(text: str) -> dict[str, Any]:
    """The keyword arguments of `guardrail.bulk.select` that a ``--filter`` text means."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        fail(f"--filter {text!r}: {exc}", USAGE)
    found: dict[str, Any] = {}
    free: list[str] = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq:
            free.append(word)
            continue
        if key not in FILTER_KEYS:
            fail(
                f"--filter: unknown key {key!r} in {word!r}; expected one of "
                + ", ".join(FILTER_KEYS)
                + " (other words are searched for)",
                USAGE,
            )
        if not value.strip():
            fail(f"--filter: {key}= needs a value", USAGE)
        if key == "status":
            found["status"] = tuple(s.strip() for s in value.split(",") if s.strip())
        elif key in ("since", "until"):
            found[key] = since(value)
        else:
            found[key] = value
    if free:
        found["text"] = " ".join(free)
    if not found:
        fail("--filter is empty: give at least one term (e.g. status=pending_review)", USAGE)
    return found


def search(
    text: Annotated[str, typer.Argument(help="The start of an id (any case), or reason text.")],
    store: Store = DEFAULT_STORE,
    status: Annotated[
        list[str] | None,
        typer.Option(help="Only runs with this status (repeatable).", callback=_statuses),
    ] = None,
    agent: Annotated[str | None, typer.Option(help="Only runs of this agent.")] = None,
    tool: Annotated[str | None, typer.Option(help="Only runs that called this tool.")] = None,
    limit: Annotated[int, typer.Option(help="Runs per page (1-500).")] = 50,
    cursor: Annotated[str | None, typer.Option(help="The next page's cursor.")] = None,
    as_json: AsJson = False,
) -> None:
    """Find runs by the start of a run id, agent, tool or external id (an order id), in any
    case, or by text in their reason; with each run's status and what matched."""
    with opened(store) as guard:
        found = guard.search(
            text, status=tuple(status or ()), agent=agent, tool=tool, limit=limit, cursor=cursor
        )
        if as_json:
            dump_json(
                {
                    "runs": [
                        {
                            "run_id": r.id,
                            "status": r.status,
                            "agent": r.agent,
                            "updated_at": iso(r.updated_at),
                            "matches": [
                                {"field": m.field, "value": m.value} for m in found.matches[r.id]
                            ],
                        }
                        for r in found.runs
                    ],
                    "next": found.next,
                }
            )
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{len(found.runs)} run(s) matching {text!r}")
        table.add_column("run", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("agent", overflow="ellipsis")
        table.add_column("matched", overflow="fold")
        for r in found.runs:
            matched = "; ".join(f"{m.field} {m.value}" for m in found.matches[r.id])
            table.add_row(r.id, status_text(r.status), r.agent, matched)
        Console().print(table)
        if found.next:
            typer.echo(f"more: guardrail search {shlex.quote(text)} --cursor {found.next}")


def groups(
    store: Store = DEFAULT_STORE,
    status: Annotated[
        list[str] | None,
        typer.Option(help="Runs of this status (default pending_review).", callback=_statuses),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Runs grouped by the cause they halted for, the largest group first; decide a group at
    once with ``guardrail abort --filter group=ID`` (or resume, resolve)."""
    with opened(store) as guard:
        found = guard.groups(tuple(status or ("pending_review",)))
        if as_json:
            dump_json(
                [
                    {"group": g.id, "key": g.key, "runs": g.run_ids, "example": g.example}
                    for g in found
                ]
            )
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{len(found)} group(s)")
        table.add_column("group", no_wrap=True)
        table.add_column("runs", justify="right", no_wrap=True)
        table.add_column("reason", overflow="fold")
        for g in found:
            table.add_row(g.id, str(len(g.run_ids)), g.key)
        Console().print(table)


def history(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    store: Store = DEFAULT_STORE,
    as_json: AsJson = False,
) -> None:
    """Who decided what on the run, and when (from its hash-chained journal)."""
    with opened(store) as guard:
        events = guard.history(run_id)
        if as_json:
            dump_json(history_json(events))
            return
        if not events:
            typer.echo(f"run {run_id}: no decision yet")
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"decisions on run {run_id}")
        for column in ("when", "by", "what", "item", "note"):
            table.add_column(column, overflow="fold", no_wrap=column in ("when", "what"))
        for e in events:
            table.add_row(when(e.at), e.by or "", e.what, e.item_id or "", e.note or "")
        Console().print(table)


def deliver(
    store: AppStore = None,
    app: App = None,
    webhook: Annotated[
        str | None,
        typer.Option(
            envvar="GUARDRAIL_WEBHOOK_URL",
            help="The webhook URL (default: the --app guard's); its secret is read from "
            "GUARDRAIL_WEBHOOK_SECRET.",
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Post the webhook events that are due (new, or failed before and due again). Run it
    from cron, or leave it to ``guardrail serve``, which runs it every few seconds."""
    with opened(store, Loads(app=app)) as guard:
        if webhook is not None:
            guard.use_webhook(webhook, secret=os.environ.get("GUARDRAIL_WEBHOOK_SECRET"))
        done = guard.deliver()
        if as_json:
            dump_json({"sent": done.sent, "failed": done.failed})
        else:
            typer.echo(f"{done.sent} event(s) sent, {done.failed} failed")
