"""Read commands: ``runs``, ``find``, ``export``, ``verify`` (``show`` is in
:mod:`guardrail.cli.show`, the decisions in :mod:`guardrail.cli.decide`, ``recover`` in
:mod:`guardrail.cli.recover`).

Every command takes ``--store URL`` (or ``GUARDRAIL_STORE``); ``--json`` prints the documents
described in docs/cli.md (keys sorted, times in ISO 8601 UTC). Nothing heavy is imported at
module level: the store and the guard load when a command runs.
Exit codes: 0 ok, 1 not found (``verify``: a problem found), 2 usage.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from guardrail.cli.common import (
    STATUS_COLOURS,
    AsJson,
    ExportFormat,
    RunStatusName,
    Store,
    dump_json,
    history_json,
    opened,
    record,
    since,
    to_json,
    when,
)
from guardrail.cli.loading import DEFAULT_STORE, NOT_FOUND, USAGE, fail

if TYPE_CHECKING:
    from guardrail.audit import Witness
    from guardrail.store import RunRecord

GAP = "  "


def runs(
    store: Store = DEFAULT_STORE,
    status: Annotated[
        RunStatusName | None, typer.Option(help="Only runs with this status.")
    ] = None,
    agent: Annotated[str | None, typer.Option(help="Only runs of this agent.")] = None,
    since_: Annotated[
        str | None, typer.Option("--since", help="Changed since: 30m, 2h, 1d or a date.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most N runs, newest first (0: all).")] = 100,
    as_json: AsJson = False,
) -> None:
    """List runs, newest first."""
    with opened(store) as guard:
        found = guard.runs(
            status=status,
            agent=agent,
            since=since(since_) if since_ else None,
            limit=limit if limit > 0 else None,
        )
    if as_json:
        dump_json([record(r) for r in found])
        return
    _table(found)


def _table(found: Sequence[RunRecord]) -> None:
    """One line per run, fitted to the terminal: the run id first and never cut (a double-click
    copies all of it), the reason, then the agent, give way with an ellipsis."""
    from rich.console import Console
    from rich.text import Text

    from guardrail.cli.timeline import fit

    console = Console()
    columns = ("run", "status", "updated", "agent", "reason")
    rows = [(r.id, r.status, when(r.updated_at), r.agent, r.reason or "") for r in found]
    widths = [max([len(columns[0]), *(len(row[i]) for row in rows)]) for i in range(3)]
    agent_w = min(max([len(columns[3]), *(len(row[3]) for row in rows)]), 24)
    console.print(Text(f"{len(found)} run(s)", "bold"))
    padded = (f"{c:<{w}}" for c, w in zip(columns, [*widths, agent_w, 0], strict=True))
    lines = [Text(GAP.join(padded), "bold")]
    for run_id, status, updated, agent, reason in rows:
        if len(agent) > agent_w:
            agent = agent[: agent_w - 1] + "…"
        lines.append(
            Text.assemble(
                (f"{run_id:<{widths[0]}}", "cyan"),
                GAP,
                (f"{status:<{widths[1]}}", STATUS_COLOURS.get(status, "")),
                f"{GAP}{updated:<{widths[2]}}{GAP}{agent:<{agent_w}}{GAP}{reason}",
            )
        )
    # on a terminal narrower than an id, the line is left to the terminal to wrap
    width = max(console.width, widths[0] + len(GAP))
    for line in lines:
        line.rstrip()
        console.print(fit(line, width), soft_wrap=True)


def find(
    external_id: Annotated[
        str, typer.Option("--external-id", help="VALUE or NAME=VALUE, e.g. order_id=ord_1001.")
    ],
    store: Store = DEFAULT_STORE,
    as_json: AsJson = False,
) -> None:
    """Which actions produced an external id."""
    name, _, value = external_id.rpartition("=")
    with opened(store) as guard:
        found = guard.find(value, name=name or None)
    if as_json:
        dump_json([record(a) for a in found])
        return
    if not found:
        fail(f"no action produced {external_id}", NOT_FOUND)
    for a in found:
        typer.echo(f"{a.run_id}  action {a.seq}  {a.tool}  {a.state}  {a.external_ids}")


def export(
    run_id: Annotated[str, typer.Argument()],
    store: Store = DEFAULT_STORE,
    format: Annotated[ExportFormat, typer.Option(help="json or jsonl.")] = "json",
) -> None:
    """The run's whole log, for archives and other tools."""
    with opened(store) as guard:
        log = guard.log(run_id)
        history = history_json(guard.history(run_id))
        seen = record(guard.witness(run_id))
    if format == "json":
        dump_json(
            {
                "run": record(log.run),
                "actions": [record(a) for a in log.actions],
                "compensations": [record(c) for c in log.compensations],
                "history": history,
                "review_items": [record(i) for i in log.review_items],
                "witness": seen,
            }
        )
        return
    out = sys.stdout
    out.write(to_json({"type": "run", **record(log.run)}, indent=None) + "\n")
    for kind, rows in (
        ("action", log.actions),
        ("compensation", log.compensations),
        ("review_item", log.review_items),
    ):
        for row in rows:
            out.write(to_json({"type": kind, **record(row)}, indent=None) + "\n")
    for event in history:
        out.write(to_json({"type": "decision", **event}, indent=None) + "\n")
    out.write(to_json({"type": "witness", **seen}, indent=None) + "\n")  # for verify --against


def verify(
    run_ids: Annotated[
        list[str] | None, typer.Argument(help="Runs to check (default: all).")
    ] = None,
    against: Annotated[
        list[Path] | None,
        typer.Option(
            help="An export (json or jsonl) or a file of witnesses kept outside the store: "
            "check that no run it saw was deleted, cut off or rewritten. Repeatable."
        ),
    ] = None,
    store: Store = DEFAULT_STORE,
    as_json: AsJson = False,
) -> None:
    """Check runs' hash chains and rows, and the store against witnesses kept elsewhere.

    Exit code 0 when everything checks out, 1 when a problem was found.
    """
    with opened(store) as guard:
        seen = [w for path in against or [] for w in _witnesses(path)]
        ids = list(run_ids or [])
        if not ids:
            ids = [r.id for r in guard.runs()] if not seen else []
        ids += [w.run_id for w in seen if w.run_id not in ids]
        problems: dict[str, list[str]] = {}
        for run_id in ids:
            found: list[str] = []
            if guard.run_record(run_id) is not None:
                found += guard.verify(run_id).problems
            for w in seen:
                if w.run_id == run_id:
                    found += guard.check(w)
            if guard.run_record(run_id) is None and not found:
                found.append(f"no run {run_id} in the store")
            problems[run_id] = found
    bad = {k: v for k, v in problems.items() if v}
    if as_json:
        dump_json({"checked": len(problems), "ok": not bad, "problems": bad})
    else:
        for run_id, found in bad.items():
            for problem in found:
                typer.echo(f"{run_id}: {problem}")
        typer.echo(f"{len(problems)} run(s) checked: " + ("ok" if not bad else f"{len(bad)} bad"))
    if bad:
        raise typer.Exit(1)


def _witnesses(path: Path) -> list[Witness]:
    """Witnesses in an export (json: one run; jsonl: its witness line) or a jsonl of them."""
    from guardrail.audit import Witness

    try:
        text = path.read_text()
    except OSError as exc:
        fail(f"cannot read {path}: {exc}", USAGE)
    try:
        docs = [json.loads(text)]
    except ValueError:
        try:
            docs = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            fail(f"{path} is not JSON or JSON lines: {exc}", USAGE)
    found: list[Witness] = []
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        raw = (
            doc.get("witness")
            if "witness" in doc
            else doc
            if doc.get("type") == "witness"
            else None
        )
        if raw is None and {"run_id", "entries", "head"} <= set(doc):
            raw = doc
        if isinstance(raw, dict):
            try:
                found.append(Witness.model_validate(raw))
            except ValueError as exc:
                fail(f"{path}: a witness is malformed: {exc}", USAGE)
    if not found:
        fail(f"{path} holds no witness (an export of guardrail export, or witness lines)", USAGE)
    return found
