"""Deciding many runs at once: first a preview of what each decision would do, then the
decisions, one run at a time, with a result per run.

Each run's decision is the ordinary one (`Guard.resume`, `Guard.abort`, `Guard.resolve`): it
lands or not on its own, so a bulk decision that stops half way (a crash, a run another
reviewer decided meanwhile) leaves every run in a state the inbox shows, never a half-made
decision. A run the preview refuses is not touched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from guardrail import decisions
from guardrail.audit import ActionLog
from guardrail.core import PolicyLookup
from guardrail.decisions import Decision
from guardrail.errors import GuardrailError
from guardrail.finding import found, group_id
from guardrail.lifecycle import PlannedStep
from guardrail.search import MAX_PAGE, RunQuery, reason_group
from guardrail.store import ReviewItem, RunRecord, Store


class Deciding(PolicyLookup, Protocol):
    """What bulk decisions need of the guard: its reads and its one-run decisions."""

    def require_run(self, run_id: str) -> RunRecord: ...
    def log(self, run_id: str) -> ActionLog: ...
    def plan_undo(self, run_id: str, *, log: ActionLog | None = None) -> list[PlannedStep]: ...
    @property
    def store(self) -> Store: ...
    def resume(self, run_id: str, *, by: str, note: str | None = None) -> Decision: ...
    def abort(
        self, run_id: str, *, by: str, reason: str | None = None, require_undos: bool = False
    ) -> Decision: ...
    def resolve(
        self, item_id: str, resolution: str, *, by: str, note: str | None = None
    ) -> Decision: ...


DECISIONS = ("resume", "abort", "resolve")
# resolutions a bulk resolve makes: approvals are decided by approve/reject, held items by the
# run's resume or abort; `happened`/`not_happened` answer in-doubt items only, the rest the others
ITEM_WORDS = ("done_manually", "retried", "skipped", *decisions.DOUBT_WORDS)


@dataclass(frozen=True, slots=True)
class Preview:
    """What one run's decision would do (``would``), or why it would be refused (``refused``)."""

    run_id: str
    status: str
    reason: str | None
    would: str
    refused: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one run's decision did: ``landed`` False and ``error`` set when it did not land."""

    run_id: str
    status: str
    landed: bool
    error: str | None = None


def select(guard: Deciding, *, group: str | None = None, **filters: Any) -> list[str]:
    """The ids of every run (all pages) a search with ``filters`` (`RunQuery`'s fields) finds,
    newest first; with ``group``, only those whose reason falls in that group (`Group.id`)."""
    if group is not None:
        filters.setdefault("status", ("pending_review",))
    if isinstance(filters.get("status"), str):
        filters["status"] = (filters["status"],)
    ids: list[str] = []
    cursor = None
    while True:
        page = found(guard.store, RunQuery(**filters, limit=MAX_PAGE, cursor=cursor))
        ids += [
            r.id for r in page.runs if group is None or group_id(reason_group(r.reason)) == group
        ]
        cursor = page.next
        if cursor is None:
            return ids


def _check(what: str, resolution: str | None) -> None:
    if what not in DECISIONS:
        raise GuardrailError(
            f"{what!r} is not a bulk decision; expected one of {', '.join(DECISIONS)}",
            field="decision",
        )
    if what == "resolve" and resolution not in ITEM_WORDS:
        raise GuardrailError(
            f"resolution {resolution!r} is not one of {', '.join(ITEM_WORDS)}",
            field="resolution",
        )


def preview(
    guard: Deciding,
    run_ids: Iterable[str],
    what: str,
    *,
    resolution: str | None = None,
    force: bool = False,
) -> list[Preview]:
    """What ``what`` (resume, abort, or resolve every open item as ``resolution``) would do to
    each run. Changes nothing."""
    _check(what, resolution)
    return [_preview(guard, run_id, what, resolution, force) for run_id in dict.fromkeys(run_ids)]


def _preview(
    guard: Deciding, run_id: str, what: str, resolution: str | None, force: bool
) -> Preview:
    log = guard.log(run_id)
    run = log.run
    open_items = [i for i in log.review_items if i.status == "open"]

    def made(would: str, refused: str | None = None) -> Preview:
        return Preview(run_id, run.status, run.reason, would, refused)

    if what == "resolve":
        items = _resolvable(open_items, resolution)
        if not items:
            return made("nothing", "no open review item to resolve")
        return made(f"resolve {len(items)} open item(s) as {resolution}")
    if run.status not in ("pending_review", "awaiting_approval"):
        return made("nothing", f"the run is {run.status}: only a halted run is decided")
    if what == "resume":
        waiting = [i.id for i in open_items if i.reason == "approval"]
        doubts = [i.id for i in open_items if i.reason == "in_doubt"]
        if waiting:
            return made("nothing", f"approval(s) {', '.join(waiting)} wait for a decision")
        if doubts:
            return made("nothing", f"in-doubt item(s) {', '.join(doubts)} need an answer first")
        done = sum(1 for a in log.actions if a.state == "succeeded")
        return made(f"resume; {done} done action(s) are not run again")
    steps = guard.plan_undo(run_id, log=log)
    undo = sum(1 for s in steps if s.do == "undo")
    review = sum(1 for s in steps if s.do == "review")
    missing = decisions.missing_undos(guard, log.actions)
    would = f"abort: undo {undo} action(s), list {review} for review"
    if missing and not force:
        names = ", ".join(sorted({s.tool for s in missing}))
        return made(would, f"undos missing here for {names} (load the app's policies, or force)")
    return made(would)


def _resolvable(items: list[ReviewItem], resolution: str | None) -> list[ReviewItem]:
    doubt = resolution in decisions.DOUBT_WORDS
    return [
        i
        for i in items
        if i.reason not in ("approval", "held") and (i.reason == "in_doubt") == doubt
    ]


def decide(
    guard: Deciding,
    run_ids: Iterable[str],
    what: str,
    *,
    by: str,
    note: str | None = None,
    resolution: str | None = None,
    force: bool = False,
) -> list[Outcome]:
    """Make ``what`` on each run the preview does not refuse; a result per run, in order.

    A run another reviewer decided meanwhile, or one that refuses now, gets its error in its
    outcome; the others go on.
    """
    outcomes: list[Outcome] = []
    for p in preview(guard, run_ids, what, resolution=resolution, force=force):
        if p.refused is not None:
            outcomes.append(Outcome(p.run_id, p.status, False, p.refused))
            continue
        try:
            if what == "resume":
                d = guard.resume(p.run_id, by=by, note=note)
                outcomes.append(Outcome(p.run_id, d.status, d.landed))
            elif what == "abort":
                d = guard.abort(p.run_id, by=by, reason=note)
                outcomes.append(Outcome(p.run_id, d.status, d.landed))
            else:
                assert resolution is not None
                landed = False
                items = [i for i in guard.log(p.run_id).review_items if i.status == "open"]
                for item in _resolvable(items, resolution):
                    landed |= guard.resolve(item.id, resolution, by=by, note=note).landed
                outcomes.append(Outcome(p.run_id, guard.require_run(p.run_id).status, landed))
        except GuardrailError as exc:
            outcomes.append(Outcome(p.run_id, guard.require_run(p.run_id).status, False, str(exc)))
    return outcomes
