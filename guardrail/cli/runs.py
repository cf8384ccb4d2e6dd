"""Review commands: ``runs``, ``resume``, ``abort``, ``resolve``, ``approve``,
``reject``, ``find``, ``export``, ``verify`` (``show`` is in :mod:`guardrail.cli.show`,
``recover`` in :mod:`guardrail.cli.recover`).

Every command takes ``--store URL`` (or ``GUARDRAIL_STORE``). Decisions record ``--by`` (default:
``GUARDRAIL_REVIEWER``, else the login name) and ``--note``, ask for confirmation unless
``--yes``, and are safe to repeat. Decisions load the application's guard
(``--app``) or policy files and packs (``--policy``, ``--pack``), see :mod:`guardrail.cli.loading`;
``abort`` refuses to compensate without the undos it needs unless ``--force``.
Exit codes: 0 ok, 1 not found, 2 usage, 3 conflict.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from guardrail import decisions
from guardrail.audit import Witness
from guardrail.cli.loading import (
    CONFLICT,
    DEFAULT_STORE,
    NOT_FOUND,
    USAGE,
    App,
    AppStore,
    Force,
    Loads,
    PackOptions,
    Packs,
    Policies,
    fail,
    forced,
    loaded,
    refusal,
    warn_mismatch,
)
from guardrail.decisions import Decision, UndosMissing
from guardrail.drive import drive
from guardrail.errors import Conflict, GuardrailError, RunNotFound, RunStateError
from guardrail.guard import Guard
from guardrail.transitions import DECIDABLE

T = TypeVar("T")

Store = Annotated[
    str,
    typer.Option(
        "--store", envvar="GUARDRAIL_STORE", help="Store URL (default sqlite:///guardrail.db)."
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
By = Annotated[
    str | None,
    typer.Option(help="Who decides (default: GUARDRAIL_REVIEWER, else the login name)."),
]
Note = Annotated[str | None, typer.Option(help="Why; stored with the decision.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def register(app: typer.Typer) -> None:
    for command in (runs, resume, abort, resolve, approve, reject, find, export, verify):
        app.command()(command)


@contextmanager
def opened(store: str | None, loads: Loads | None = None) -> Iterator[Guard]:
    """A non-strict guard on the store, or the app's guard, with the policies ``loads`` names;
    errors become exit codes with a one-line message."""
    with loaded(store, loads or Loads()) as guard:
        try:
            yield guard
        except RunNotFound as exc:
            fail(str(exc), NOT_FOUND)
        except Conflict as exc:
            fail(str(exc), CONFLICT)
        except RunStateError as exc:
            fail(str(exc), CONFLICT)
        except UndosMissing as exc:  # the run changed between the check and the abort
            fail(refusal(exc.run_id or "?", exc.steps, "abort"), USAGE)
        except GuardrailError as exc:
            fail(str(exc), USAGE)


def _reviewer(by: str | None) -> str:
    if by:
        return by
    try:
        return os.environ.get("GUARDRAIL_REVIEWER") or getpass.getuser()
    except Exception:
        return "unknown"


def _when(stamp: float | None) -> str:
    if stamp is None:
        return ""
    return dt.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def _since(text: str) -> float:
    """``30m``, ``2h``, ``1d`` ago, or an ISO date/time."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if found:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[found.group(2)]
        return time.time() - float(found.group(1)) * unit
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: expected a duration (30m, 2h, 1d) or an ISO date", param_hint="--since"
        ) from None


def dump_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _decide(what: str, target: str, yes: bool, as_json: bool, act: Callable[[], Decision]) -> None:
    if not yes and not typer.confirm(f"{what} {target}?", default=False):
        fail("cancelled; nothing changed", USAGE)
    decision = act()
    if as_json:
        dump_json({"run_id": decision.run_id, "status": decision.status, "landed": decision.landed})
    elif decision.landed:
        typer.echo(f"{what}: {target} is now {decision.status} (by {decision.by})")
    else:
        typer.echo(f"{what}: already done; {target} is {decision.status} (nothing changed)")


def runs(
    store: Store = DEFAULT_STORE,
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only runs of this agent.")] = None,
    since: Annotated[str | None, typer.Option(help="Changed since: 30m, 2h, 1d or a date.")] = None,
    limit: Annotated[int, typer.Option(help="At most N runs, newest first (0: all).")] = 100,
    as_json: AsJson = False,
) -> None:
    """List runs, newest first."""
    with opened(store) as guard:
        found = guard.runs(
            status=status,
            agent=agent,
            since=_since(since) if since else None,
            limit=limit if limit > 0 else None,
        )
        if as_json:
            dump_json([r.model_dump() for r in found])
            return
        table = Table(title=f"{len(found)} run(s)")
        for column in ("run", "agent", "status", "updated", "reason"):
            table.add_column(column, overflow="fold")
        for r in found:
            table.add_row(r.id, r.agent, status_text(r.status), _when(r.updated_at), r.reason or "")
        Console().print(table)


def status_text(status: str) -> str:
    colour = {
        "pending_review": "red",
        "awaiting_approval": "yellow",
        "completed": "green",
        "aborted": "dim",
    }.get(status)
    return f"[{colour}]{status}[/{colour}]" if colour else status


def resume(
    run_id: Annotated[str, typer.Argument()],
    store: AppStore = None,
    app: App = None,
    policy: Policies = None,
    pack: Packs = None,
    pack_option: PackOptions = None,
    by: By = None,
    note: Note = None,
    yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Let a halted run continue (restart the agent on the same run afterwards).

    With --app, --policy or --pack, warns when the run started under other policies.
    """
    with opened(store, Loads.of(app, policy, pack, pack_option)) as guard:
        warn_mismatch(guard, guard.require_run(run_id))
        who = _reviewer(by)
        _decide("resume", run_id, yes, as_json, lambda: guard.resume(run_id, by=who, note=note))


def abort(
    run_id: Annotated[str, typer.Argument()],
    store: AppStore = None,
    app: App = None,
    policy: Policies = None,
    pack: Packs = None,
    pack_option: PackOptions = None,
    force: Force = False,
    by: By = None,
    note: Note = None,
    yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Undo whatever is still undoable and end the run as aborted.

    Undos run in this process, so it needs the application's guard (--app MODULE:ATTRIBUTE or
    GUARDRAIL_APP) or the policies that name the undos (--policy, --pack). Without an undo it
    needs, it refuses and changes nothing (exit 2); --force aborts anyway and lists those
    actions for a person. Warns when the run started under other policies than the ones loaded.
    """
    with opened(store, Loads.of(app, policy, pack, pack_option)) as guard:
        run = guard.require_run(run_id)
        warn_mismatch(guard, run)
        if run.status in DECIDABLE:
            missing = decisions.missing_undos(guard, guard.store.actions(run_id))
            if missing and not force:
                fail(refusal(run_id, missing, "abort"), USAGE)
            if missing:
                forced(run_id, missing)
        who = _reviewer(by)
        _decide(
            "abort",
            run_id,
            yes,
            as_json,
            lambda: drive(decisions.abort(guard, run_id, who, note, require_undos=not force)),
        )


def resolve(
    item_id: Annotated[str, typer.Argument()],
    as_: Annotated[
        str,
        typer.Option(
            "--as",
            help="done_manually, retried or skipped; for a call whose outcome is unknown "
            "(in_doubt): happened or not_happened.",
        ),
    ] = "done_manually",
    store: AppStore = None,
    app: App = None,
    policy: Policies = None,
    pack: Packs = None,
    pack_option: PackOptions = None,
    by: By = None,
    note: Note = None,
    yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Record a person's decision on a review item."""
    with opened(store, Loads.of(app, policy, pack, pack_option)) as guard:
        who = _reviewer(by)
        _decide(
            f"resolve as {as_}",
            item_id,
            yes,
            as_json,
            lambda: guard.resolve(item_id, as_, by=who, note=note),
        )


def approve(
    item_id: Annotated[str, typer.Argument()],
    store: AppStore = None,
    app: App = None,
    policy: Policies = None,
    pack: Packs = None,
    pack_option: PackOptions = None,
    by: By = None,
    note: Note = None,
    resume_run: Annotated[bool, typer.Option("--resume", help="Also resume the run.")] = False,
    yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Approve an approval request (these exact arguments)."""
    with opened(store, Loads.of(app, policy, pack, pack_option)) as guard:
        who = _reviewer(by)
        _decide("approve", item_id, yes, as_json, lambda: guard.approve(item_id, by=who, note=note))
        item = guard.store.review_item(item_id)
        if resume_run and item is not None:
            run_id = item.run_id
            warn_mismatch(guard, guard.require_run(run_id))
            _decide(
                "resume", run_id, True, as_json, lambda: guard.resume(run_id, by=who, note=note)
            )


def reject(
    item_id: Annotated[str, typer.Argument()],
    store: AppStore = None,
    app: App = None,
    policy: Policies = None,
    pack: Packs = None,
    pack_option: PackOptions = None,
    by: By = None,
    note: Note = None,
    yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Reject an approval request; the agent gets CallRejected for that call."""
    with opened(store, Loads.of(app, policy, pack, pack_option)) as guard:
        who = _reviewer(by)
        _decide("reject", item_id, yes, as_json, lambda: guard.reject(item_id, by=who, reason=note))


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
            dump_json([a.model_dump() for a in found])
            return
        if not found:
            fail(f"no action produced {external_id}", NOT_FOUND)
        for a in found:
            typer.echo(f"{a.run_id}  action {a.seq}  {a.tool}  {a.state}  {a.external_ids}")


def export(
    run_id: Annotated[str, typer.Argument()],
    store: Store = DEFAULT_STORE,
    format: Annotated[str, typer.Option(help="json or jsonl.")] = "json",
) -> None:
    """The run's whole log, for archives and other tools."""
    if format not in ("json", "jsonl"):
        raise typer.BadParameter("expected json or jsonl", param_hint="--format")
    with opened(store) as guard:
        log = guard.log(run_id)
        seen = guard.witness(run_id).model_dump()
        if format == "json":
            dump_json({**log.model_dump(), "witness": seen})
            return
        out = sys.stdout
        out.write(json.dumps({"type": "run", **log.run.model_dump()}, default=str) + "\n")
        for kind, rows in (
            ("action", log.actions),
            ("compensation", log.compensations),
            ("review_item", log.review_items),
        ):
            for row in rows:
                out.write(json.dumps({"type": kind, **row.model_dump()}, default=str) + "\n")
        out.write(json.dumps({"type": "witness", **seen}) + "\n")  # for verify --against


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
    as_json: Annotated[bool, typer.Option("--json")] = False,
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
            if guard.store.run(run_id) is not None:
                found += guard.verify(run_id).problems
            for w in seen:
                if w.run_id == run_id:
                    found += guard.check(w)
            if guard.store.run(run_id) is None and not found:
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
