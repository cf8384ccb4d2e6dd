"""Review commands: ``runs``, ``resume``, ``abort``, ``resolve``, ``approve``,
``reject``, ``recover``, ``find``, ``export`` (``show`` is in :mod:`guardrail.cli.show`).

Every command takes ``--store URL`` (or ``GUARDRAIL_STORE``). Decisions record ``--by`` (default:
``GUARDRAIL_REVIEWER``, else the login name) and ``--note``, ask for confirmation unless
``--yes``, and are safe to repeat. Exit codes: 0 ok, 1 not found, 2 usage, 3 conflict.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from guardrail.audit import Witness
from guardrail.decisions import Decision
from guardrail.errors import Conflict, GuardrailError, RunNotFound, RunStateError, StoreError
from guardrail.guard import Guard

T = TypeVar("T")

NOT_FOUND, USAGE, CONFLICT = 1, 2, 3

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

DEFAULT_STORE = "sqlite:///guardrail.db"


def register(app: typer.Typer) -> None:
    for command in (runs, resume, abort, resolve, approve, reject, recover, find, export, verify):
        app.command()(command)


@contextmanager
def opened(store: str) -> Iterator[Guard]:
    """A non-strict guard on the store; errors become exit codes with a one-line message."""
    url = store or DEFAULT_STORE
    if url.startswith("sqlite:///") and not os.path.exists(url.removeprefix("sqlite:///")):
        fail(f"no store at {url} (pass --store URL or set GUARDRAIL_STORE)", NOT_FOUND)
    try:
        guard = Guard(store=store or DEFAULT_STORE, strict=False)
    except StoreError as exc:
        fail(str(exc), NOT_FOUND)
    try:
        yield guard
    except RunNotFound as exc:
        fail(str(exc), NOT_FOUND)
    except Conflict as exc:
        fail(str(exc), CONFLICT)
    except RunStateError as exc:
        fail(str(exc), CONFLICT)
    except GuardrailError as exc:
        fail(str(exc), USAGE)
    finally:
        guard.close()


def fail(message: str, code: int) -> Any:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


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
    store: Store = DEFAULT_STORE,
    by: By = None,
    note: Note = None,
    yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Let a halted run continue (restart the agent on the same run afterwards)."""
    with opened(store) as guard:
        guard.require_run(run_id)
        who = _reviewer(by)
        _decide("resume", run_id, yes, as_json, lambda: guard.resume(run_id, by=who, note=note))


def abort(
    run_id: Annotated[str, typer.Argument()],
    store: Store = DEFAULT_STORE,
    by: By = None,
    note: Note = None,
    yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Undo whatever is still undoable and end the run as aborted.

    Undos run in this process, so it needs the tools' undo callables: for runs of an agent whose
    undos live in code, abort from that code (guard.abort) or with the policy pack loaded.
    """
    with opened(store) as guard:
        guard.require_run(run_id)
        who = _reviewer(by)
        _decide("abort", run_id, yes, as_json, lambda: guard.abort(run_id, by=who, reason=note))


def resolve(
    item_id: Annotated[str, typer.Argument()],
    as_: Annotated[
        str, typer.Option("--as", help="done_manually, retried or skipped.")
    ] = "done_manually",
    store: Store = DEFAULT_STORE,
    by: By = None,
    note: Note = None,
    yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Record a person's decision on a review item."""
    with opened(store) as guard:
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
    store: Store = DEFAULT_STORE,
    by: By = None,
    note: Note = None,
    resume_run: Annotated[bool, typer.Option("--resume", help="Also resume the run.")] = False,
    yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Approve an approval request (these exact arguments)."""
    with opened(store) as guard:
        who = _reviewer(by)
        _decide("approve", item_id, yes, as_json, lambda: guard.approve(item_id, by=who, note=note))
        item = guard.store.review_item(item_id)
        if resume_run and item is not None:
            run_id = item.run_id
            _decide(
                "resume", run_id, True, as_json, lambda: guard.resume(run_id, by=who, note=note)
            )


def reject(
    item_id: Annotated[str, typer.Argument()],
    store: Store = DEFAULT_STORE,
    by: By = None,
    note: Note = None,
    yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Reject an approval request; the agent gets CallRejected for that call."""
    with opened(store) as guard:
        who = _reviewer(by)
        _decide("reject", item_id, yes, as_json, lambda: guard.reject(item_id, by=who, reason=note))


def recover(
    store: Store = DEFAULT_STORE,
    policy: Annotated[
        list[str] | None,
        typer.Option(help="A YAML or TOML policy file with the undos (repeatable)."),
    ] = None,
    pack: Annotated[
        list[str] | None, typer.Option(help="A policy pack by name (repeatable).")
    ] = None,
    pack_option: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE for the packs (repeatable).")
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Keep recovering until interrupted (Ctrl-C, SIGTERM).")
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.0, help="Seconds between passes with --watch.")
    ] = 5.0,
    iterations: Annotated[
        int | None, typer.Option(min=1, hidden=True, help="Stop after N passes (for tests).")
    ] = None,
    stale_after: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Seconds without a heartbeat after which an owner on another host counts as "
            "dead (default 30: six times the default heartbeat_interval of 5 s).",
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Finish the runs whose owner process died.

    Undos run in this process: load the policies that name them (--policy, --pack), else what
    would be undone is listed for review instead. With --watch, pass after pass until
    interrupted, printing what each pass recovered (--json: one line each). Any number of
    watchers, on any number of hosts, may share a store: each dead run is claimed by exactly
    one of them.
    """
    options = dict(_option(o) for o in pack_option or [])
    with opened(store) as guard:
        if stale_after is not None:
            guard.stale_after = stale_after
        for name in pack or []:
            guard.load_policies(name, **options)
        for file in policy or []:
            guard.load_policies(file)
        if not watch:
            done = guard.recover()
            if as_json:
                dump_json({"recovered": done})
            else:
                typer.echo(
                    f"recovered {len(done)} run(s)" + (": " + ", ".join(done) if done else "")
                )
            return
        _watch(guard, interval, iterations, as_json)


def _watch(guard: Guard, interval: float, iterations: int | None, as_json: bool) -> None:
    stop = threading.Event()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if main else None
    passes = 0
    try:
        while not stop.is_set():
            try:
                done = guard.recover()
            except GuardrailError as exc:
                # e.g. the database is away for a while (a failover): report it and carry on
                typer.echo(f"error: {exc}", err=True)
                done = []
            if done:
                stamp = dt.datetime.now().isoformat(timespec="seconds")
                if as_json:
                    typer.echo(json.dumps({"at": stamp, "recovered": done}))
                else:
                    typer.echo(f"{stamp} recovered {len(done)} run(s): {', '.join(done)}")
            passes += 1
            if iterations is not None and passes >= iterations:
                break
            stop.wait(interval)
    except KeyboardInterrupt:
        pass  # Ctrl-C between or during passes: a run cut short is finished by the next watcher
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def _option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"{text!r}: expected KEY=VALUE", param_hint="--pack-option")
    return key, value


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
