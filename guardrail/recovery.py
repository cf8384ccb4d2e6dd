"""Crash recovery: finishing the runs nobody is executing any more.

Each run being executed has an owner holding a lease (see `guardrail.leases` for the takeover
rule). `recover` takes over a run whose lease expired by compare-and-set on (status, owner,
epoch), raising the epoch, so of several recovery workers exactly one takes it and the old owner,
should it wake up, is fenced off. Then it settles the calls in doubt and halts the run, or
finishes the compensation or abort the old owner was doing. Nothing done is done again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from guardrail import inject
from guardrail import transitions as T
from guardrail.core import Core, commit
from guardrail.drive import Invoke, Steps, attempts
from guardrail.errors import OwnershipLost, StoreError
from guardrail.keys import unseal
from guardrail.leases import make_owner as make_owner
from guardrail.leases import owner_alive as owner_alive
from guardrail.leases import proven_dead as proven_dead
from guardrail.lifecycle import compensate, halt, undo_kwargs
from guardrail.record import finish_values, id_rows
from guardrail.redact import NotJSON, to_jsonable
from guardrail.store import Action, RunRecord
from guardrail.transitions import LIVE, Lease

log = logging.getLogger("guardrail")


def recover(core: Core, only: Callable[[RunRecord], bool] | None = None) -> Steps[list[str]]:
    """Finish the runs whose owner is gone. Returns the ids of the runs this call recovered.

    ``only`` is asked about each run just before it is taken over: a run it refuses (one this
    process lacks the undos for) is left for a recovery that can finish it."""
    store = core.store
    recovered: list[str] = []
    for status in LIVE:
        for run in store.runs(status=status):
            if core.leases.alive(run.owner, run.heartbeat_at):
                continue
            if only is not None and not only(run):
                continue
            t = T.claim(run, core.owner)
            try:
                if not commit(core, t):
                    continue  # another recovery worker took it
            except StoreError as exc:
                # e.g. its row is locked by a worker paused inside a write: come back later
                log.warning("guardrail recover: cannot claim run %s now: %s", run.id, exc)
                continue
            assert t.lease is not None
            core.leases.hold(t.lease)
            try:
                yield from _finish(core, run, t.lease, dead=proven_dead(run.owner))
            except OwnershipLost as exc:
                # this pass was too slow (its own lease ran out) and another recovery took the
                # run over: it finishes the job; nothing this pass did is done twice
                log.warning("guardrail recover: run %s was taken over meanwhile: %s", run.id, exc)
                continue
            finally:
                core.leases.drop(run.id, t.lease.epoch)
            recovered.append(run.id)
    return recovered


def _finish(core: Core, run: RunRecord, lease: Lease, *, dead: bool) -> Steps[None]:
    if run.status == T.RunStatus.RUNNING:
        for action in core.store.actions(run.id):
            if action.state == T.ActionState.STARTED:
                yield from _settle(core, lease, action, dead=dead)
        yield from halt(core, lease, reason=f"recovered: owner {run.owner} is gone")
    elif run.status == T.RunStatus.COMPENSATING:
        yield from compensate(core, lease, T.RunStatus.COMPENSATING)
        commit(core, T.to_review(lease))
        core.hooks.halted(core.require_run(run.id))
    else:
        yield from compensate(core, lease, T.RunStatus.ABORTING)
        commit(core, T.aborted(lease))


def _settle(core: Core, lease: Lease, action: Action, *, dead: bool) -> Steps[None]:
    """An action that started but has no outcome: ask the probe, else mark it in doubt."""
    yield from settle_by_probe(
        core, lease, action, believe_not_done=dead, reason="owner died during the call"
    )


def settle_by_probe(
    core: Core, lease: Lease, action: Action, *, believe_not_done: bool, reason: str
) -> Steps[str]:
    """Settle an action whose outcome is unknown (left ``started`` by a crash, or ``in_doubt``
    after a call that raised without proving it did nothing): ask the policy's probe. Returns
    the action's new state.

    A probe's "it took effect" is always believed. Its "it did not" is believed only when
    nothing can still be running the call (``believe_not_done``): a worker that was only paused
    may still be about to run it, so then the action stays in doubt for a person."""
    policy = core.find_policy(action.tool)
    verdict: Any = None
    if policy is not None and policy.probe is not None:
        injected, _ = inject.for_action(core.live, core.factory, action)
        snapshot = unseal(core.store.keys, action.snapshot)
        kwargs = undo_kwargs(policy.probe, action, {}, snapshot, injected)
        kwargs.pop("result", None)
        outcome = yield from attempts(policy.undo_retry, Invoke(policy.probe, kwargs))
        verdict = outcome.value if outcome.error is None else None
    was = action.state
    if verdict is False and believe_not_done:
        t = T.settled(
            lease, action.seq, T.ActionState.FAILED, "probe: it did not take effect", was=was
        )
    elif verdict is False:
        t = T.settled(
            lease,
            action.seq,
            T.ActionState.IN_DOUBT,
            "the probe found no effect yet, but the worker that started the call may still be "
            "running it (its lease expired; it did not provably die)",
            was=was,
        )
    elif verdict is not None and policy is not None:
        result = None if verdict is True else verdict
        try:
            result = to_jsonable(result)
        except NotJSON:
            result = None
        args = dict(action.args)
        values, ids = finish_values(policy, action.run_id, args, result, core.max_result_bytes)
        values["error"] = f"the probe found it took effect ({(action.error or reason)[:300]})"
        t = T.succeed(lease, action.seq, values, id_rows(ids), was=was)
        t.kind = "action.settle"
    elif was == T.ActionState.IN_DOUBT:
        return was  # already in doubt, with its error: nothing to write
    else:
        t = T.settled(lease, action.seq, T.ActionState.IN_DOUBT, reason, was=was)
    commit(core, t)
    return str(t.writes[0].values["state"])
