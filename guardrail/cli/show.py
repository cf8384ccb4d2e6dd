"""``guardrail show RUN``: a run's timeline for the person on call."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from guardrail.cli.loading import (
    LOAD_HINT,
    App,
    AppStore,
    Loads,
    PackOptions,
    Packs,
    Policies,
    warn_mismatch,
)
from guardrail.cli.runs import AsJson, dump_json, opened, status_text
from guardrail.decisions import missing_undos
from guardrail.transitions import DECIDABLE


def register(app: typer.Typer) -> None:
    app.command()(show)


def show(
    run_id: Annotated[str, typer.Argument(help="The run id.")],
    store: AppStore = None,
    app: App = None,
    policy: Policies = None,
    pack: Packs = None,
    pack_option: PackOptions = None,
    limit: Annotated[
        int, typer.Option(help="Show the newest N actions and review items (0: all).")
    ] = 100,
    as_json: AsJson = False,
) -> None:
    """The run's timeline: actions, compensations, review items, what would still be undone,
    and the hash-chain verdict. Long runs show their newest actions (--limit, 0 for all);
    --json always has everything. What an abort would do depends on the undos loaded: pass the
    application's guard (--app) or its policies (--policy, --pack) to see it as they would."""
    with opened(store, Loads.of(app, policy, pack, pack_option)) as guard:
        log = guard.log(run_id)
        verdict = guard.verify(run_id, log=log)
        plan = guard.plan_undo(run_id, log=log)
        # what an abort from here would lack, for a run that waits for a person's decision
        missing = missing_undos(guard, log.actions) if log.run.status in DECIDABLE else []
        if not as_json:
            warn_mismatch(guard, log.run)
        if as_json:
            dump_json(
                {
                    **log.model_dump(),
                    "plan_undo": [_slots(s) for s in plan],
                    "missing_undos": [_slots(s) for s in missing],
                    "verification": verdict.model_dump(),
                }
            )
            return
        console = Console()
        run = log.run
        console.print(
            f"[bold]run {run.id}[/bold]  agent {run.agent}  {status_text(run.status)}"
            + (f"  ({run.reason})" if run.reason else "")
        )
        if run.decided_by:
            console.print(f"decided by {run.decided_by}: {run.decision_note or ''}")
        if run.policy_fingerprint:
            console.print(f"policies: {run.policy_fingerprint}")
        actions = log.actions[-limit:] if limit > 0 else log.actions
        shown = {a.seq for a in actions}
        # open items first: they are what the reader must act on
        items_shown = sorted(log.review_items, key=lambda i: (i.status != "open", -(i.seq or 0)))
        if limit > 0:
            items_shown = items_shown[:limit]
        counts: dict[str, int] = {}
        for a in log.actions:
            counts[a.state] = counts.get(a.state, 0) + 1
        opened_items = sum(1 for i in log.review_items if i.status == "open")
        console.print(
            f"{len(log.actions):,} action(s): "
            + ", ".join(f"{n:,} {state}" for state, n in sorted(counts.items()))
            + f"; {opened_items:,} open review item(s)"
        )
        comps = {c.seq: c for c in log.compensations}
        reviews: dict[int | None, list[str]] = {}
        for i in log.review_items:
            reviews.setdefault(i.seq, []).append(f"{i.reason} ({i.status})")
        table = Table(title="actions")
        for column in ("seq", "tool", "effect", "state", "ms"):
            table.add_column(column, no_wrap=True)
        for column in ("external ids", "undo", "review"):
            table.add_column(column, overflow="fold")
        for a in actions:
            took = (
                f"{(a.finished_at - a.started_at) * 1000:.1f}" if a.finished_at is not None else ""
            )
            comp = comps.get(a.seq)
            table.add_row(
                str(a.seq),
                a.tool,
                a.effect,
                _state(a.state),
                took,
                ", ".join(f"{k}={v}" for k, v in a.external_ids.items()),
                f"{comp.undo}: {comp.state}" if comp else "",
                ", ".join(reviews.get(a.seq, [])),
            )
        if len(actions) < len(log.actions):
            table.caption = (
                f"the newest {len(actions):,} of {len(log.actions):,} actions; --limit 0 for all"
            )
        console.print(table)
        for a in actions:
            if a.error:
                console.print(f"action {a.seq} ({a.tool}): {a.error[:300]}", markup=False)
        for c in log.compensations:
            if c.error and c.seq in shown:
                console.print(f"undo of action {c.seq}: {c.error[:300]}", markup=False)
        if items_shown:
            items = Table(title="review items")
            if len(items_shown) < len(log.review_items):
                items.caption = (
                    f"{len(items_shown):,} of {len(log.review_items):,}, open first; "
                    "--limit 0 for all"
                )
            for column in ("item", "action", "reason", "kind", "owner", "status"):
                items.add_column(column, no_wrap=True)
            items.add_column("instructions", overflow="fold")
            for i in items_shown:
                status = i.status if i.status == "open" else f"{i.resolution} by {i.resolved_by}"
                items.add_row(
                    i.id,
                    str(i.seq or ""),
                    i.reason,
                    i.kind,
                    i.owner or "",
                    status,
                    i.instructions or "",
                )
            console.print(items)
        todo = [s for s in plan if s.do != "nothing"]
        if todo and run.status in ("pending_review", "awaiting_approval"):
            console.print("an abort would now:")
            for s in todo[:limit] if limit > 0 else todo:
                console.print(f"  {s.do} action {s.seq} ({s.tool}): {s.detail}")
            if limit > 0 and len(todo) > limit:
                console.print(f"  ... and {len(todo) - limit:,} more")
            if missing:
                console.print(
                    f"[red]{len(missing)} undo(s) it needs are not loaded here[/red] (actions "
                    + ", ".join(str(s.seq) for s in missing[:20])
                    + f"): an abort from this command would refuse; {LOAD_HINT}",
                    markup=True,
                )
        console.print(
            "hash chain: [green]ok[/green]"
            if verdict.ok
            else f"hash chain: [red]BROKEN[/red] {'; '.join(verdict.problems)}"
        )


def _state(state: str) -> str:
    colour = {
        "failed": "red",
        "compensation_failed": "red",
        "in_doubt": "red",
        "awaiting_approval": "yellow",
        "compensated": "cyan",
        "succeeded": "green",
    }.get(state)
    return f"[{colour}]{state}[/{colour}]" if colour else state


def _slots(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}
