"""``guardrail recover [--watch]``: finish the runs whose owner died, with the undos of the
application's guard (``--app``) or of policy files and packs (``--policy``, ``--pack``).

A pass that would compensate a run without an undo it needs recovers nothing and says what to
load (``--watch`` recovers the other runs and leaves that one for a watcher that has them);
``--force`` lists those actions for review instead.
"""

from __future__ import annotations

import datetime as dt
import signal
import threading
import time
from typing import TYPE_CHECKING, Annotated

import typer

from guardrail.cli.common import AsJson, dump_json, iso, opened, to_json
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
    forced,
    refusal,
    warn_mismatch,
)

if TYPE_CHECKING:
    from guardrail.guard import Guard
    from guardrail.lifecycle import PlannedStep


def register(app: typer.Typer) -> None:
    app.command()(recover)


def recover(
    store: AppStore = None,
    app: App = None,
    policy: Policies = None,
    pack: Packs = None,
    pack_option: PackOptions = None,
    force: Force = False,
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

    Undos run in this process: load the application's guard (--app) or the policies that name
    them (--policy, --pack). A pass that would compensate a run without an undo it needs
    recovers nothing and says what to load (exit 2 without --watch); --force lists those
    actions for review instead. With --watch, pass after pass until interrupted, printing what
    each pass recovered (--json: one line each). Any number of watchers, on any number of
    hosts, may share a store: each dead run is claimed by exactly one of them.
    """
    with opened(store, Loads.of(app, policy, pack, pack_option)) as guard:
        if stale_after is not None:
            guard.stale_after = stale_after
        if not watch:
            blocked = _blocked(guard, force)
            if blocked:
                run_id, steps = next(iter(blocked.items()))
                others = f" (and {len(blocked) - 1} other run(s))" if len(blocked) > 1 else ""
                fail(refusal(run_id, steps, "recover") + others, USAGE)
            done = guard.recover(require_undos=not force)
            if as_json:
                dump_json({"recovered": done})
            else:
                typer.echo(
                    f"recovered {len(done)} run(s)" + (": " + ", ".join(done) if done else "")
                )
            return
        _watch(guard, interval, iterations, as_json, force)


def _blocked(guard: Guard, force: bool) -> dict[str, list[PlannedStep]]:
    """The runs a recovery pass would take over now that need undos this process lacks (with
    --force: none, after a warning), warning about runs started under other policies."""
    from guardrail import decisions
    from guardrail.recovery import owner_alive
    from guardrail.transitions import LIVE

    blocked: dict[str, list[PlannedStep]] = {}
    for status in LIVE:
        for run in guard.runs(status=status):
            if owner_alive(run.owner, run.heartbeat_at, guard.stale_after):
                continue
            warn_mismatch(guard, run)
            missing = decisions.missing_undos(guard, guard.actions(run.id))
            if missing and force:
                forced(run.id, missing)
            elif missing:
                blocked[run.id] = missing
    return blocked


def _watch(
    guard: Guard, interval: float, iterations: int | None, as_json: bool, force: bool
) -> None:
    from guardrail.errors import GuardrailError

    stop = threading.Event()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if main else None
    passes = 0
    told: set[str] = set()
    try:
        while not stop.is_set():
            try:
                blocked = _blocked(guard, force)
                # runs this watcher lacks undos for wait for a watcher (or a person) that has
                # them; say so once per run, and recover the others
                for run_id, steps in blocked.items():
                    if run_id not in told:
                        typer.echo(f"error: {refusal(run_id, steps, 'recover')}", err=True)
                told = set(blocked)
                done = guard.recover(require_undos=not force)
            except GuardrailError as exc:
                # e.g. the database is away for a while (a failover): report it and carry on
                typer.echo(f"error: {exc}", err=True)
                done = []
            if done:
                if as_json:
                    typer.echo(to_json({"at": iso(time.time()), "recovered": done}, indent=None))
                else:
                    stamp = dt.datetime.now().isoformat(timespec="seconds")
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
