"""``guardrail show RUN``: a run's timeline for the person on call (rendered by
:mod:`guardrail.cli.timeline`), or all of it as one JSON document."""

from __future__ import annotations

from typing import Annotated

import typer

from guardrail.cli.common import AsJson, dump_json, history_json, opened, record
from guardrail.cli.loading import (
    App,
    AppStore,
    Loads,
    PackOptions,
    Packs,
    Policies,
    warn_mismatch,
)


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
    """The run's timeline: actions, compensations, review items, the decisions made (when, who,
    what, item, note), what would still be undone, and the hash-chain verdict. Long runs show
    their newest actions (--limit, 0 for all); --json always has everything. What an abort
    would do depends on the undos loaded: pass the application's guard (--app) or its policies
    (--policy, --pack) to see it as they would."""
    from guardrail.decisions import missing_undos
    from guardrail.transitions import DECIDABLE

    with opened(store, Loads.of(app, policy, pack, pack_option)) as guard:
        log = guard.log(run_id)
        verdict = guard.verify(run_id, log=log)
        plan = guard.plan_undo(run_id, log=log)
        history = guard.history(run_id)
        # what an abort from here would lack, for a run that waits for a person's decision
        missing = missing_undos(guard, log.actions) if log.run.status in DECIDABLE else []
        if not as_json:
            warn_mismatch(guard, log.run)
    if as_json:
        dump_json(
            {
                "run": record(log.run),
                "actions": [record(a) for a in log.actions],
                "compensations": [record(c) for c in log.compensations],
                "history": history_json(history),
                "review_items": [record(i) for i in log.review_items],
                "plan_undo": [record(s) for s in plan],
                "missing_undos": [record(s) for s in missing],
                "verification": record(verdict),
            }
        )
        return
    from rich.console import Console

    from guardrail.cli.timeline import render

    render(Console(), log, verdict, plan, missing, limit, history)
