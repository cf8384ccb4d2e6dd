"""The console's decision forms: what a posted form asks for, checked, and the decision made.

A form a person filled in badly (a note left empty or only spaces, or too long) raises
`FieldError`: the page shows the form again with the message next to the field, and nothing is
recorded. A form no page of the console makes (an unknown decision, no target) is a 400.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from starlette.exceptions import HTTPException

from guardrail import decisions
from guardrail.decisions import Decision, UndosMissing, explain_missing
from guardrail.drive import drive
from guardrail.errors import GuardrailError, RunNotFound
from guardrail.guard import Guard

ITEM_DECISIONS = ("resolve", "approve", "reject", "approve_resume")
DECISIONS = ("resume", "abort", *ITEM_DECISIONS)
RESOLUTIONS = ("done_manually", "retried", "skipped", "happened", "not_happened")
MAX_NOTE = 2000
REMEDY = (
    "restart the console with the application's guard (guardrail serve --app MODULE:ATTRIBUTE, "
    "or GUARDRAIL_APP) or the policies that name these undos (--policy FILE, --pack NAME), or "
    "abort from the application itself"
)


@dataclass(frozen=True, slots=True)
class DecisionForm:
    """A posted decision. ``key`` names the form on the run's page: the item's id, or
    ``resume`` / ``abort``."""

    decision: str
    target: str  # the item (item decisions) or the run
    note: str
    resolution: str

    @property
    def key(self) -> str:
        return self.target if self.decision in ITEM_DECISIONS else self.decision


class FieldError(Exception):
    """A field a person can correct; the form is shown again with ``message`` next to it."""

    def __init__(self, form: DecisionForm, field: str, message: str) -> None:
        super().__init__(message)
        self.form = form
        self.field = field
        self.message = message


def parse(fields: Mapping[str, str]) -> DecisionForm:
    """The decision a form asks for; HTTPException 400 for a form the console never makes,
    `FieldError` for a note a person must write again."""
    decision = fields.get("decision", "").strip()
    if decision not in DECISIONS:
        raise HTTPException(400, f"unknown decision {decision!r}")
    target = fields.get("item_id" if decision in ITEM_DECISIONS else "run_id", "").strip()
    if not target:
        raise HTTPException(400, f"the {decision} form names no run or item")
    resolution = fields.get("resolution", "").strip()
    if decision == "resolve" and resolution not in RESOLUTIONS:
        raise HTTPException(400, f"resolution must be one of {', '.join(RESOLUTIONS)}")
    raw = fields.get("note", "")
    form = DecisionForm(decision, target, raw.strip(), resolution)
    if not form.note:
        why = "only spaces" if raw else "empty"
        raise FieldError(
            form, "note", f"Write a note saying why (it was {why}); nothing was recorded."
        )
    if len(form.note) > MAX_NOTE:
        raise FieldError(
            form,
            "note",
            f"The note is limited to {MAX_NOTE} characters (this one has {len(form.note)}); "
            "nothing was recorded.",
        )
    return form


def item_run(guard: Guard, item_id: str) -> str:
    item = guard.store.review_item(item_id)
    if item is None:
        raise RunNotFound(f"no review item {item_id!r} in this store")
    return item.run_id


def apply_decision(
    guard: Guard, form: DecisionForm, by: str, *, force: bool = False
) -> tuple[str, str, str]:
    """Make the decision; return the run to show and the outcome as (run_id, kind, message).

    ``kind`` is ``ok`` (it landed), ``warn`` (the same decision was already recorded: nothing
    changed; or an approval landed but the run could not resume) or ``error`` (another decision
    came first, the run is in the wrong state, or an abort needs undos this console lacks and
    ``force`` is off: then nothing changed).
    """
    decision, target, note = form.decision, form.target, form.note
    run_id = item_run(guard, target) if decision in ITEM_DECISIONS else target
    act: dict[str, Callable[[], Decision]] = {
        "resume": lambda: guard.resume(target, by=by, note=note),
        "abort": lambda: drive(decisions.abort(guard, target, by, note, require_undos=not force)),
        "resolve": lambda: guard.resolve(target, form.resolution, by=by, note=note),
        "approve": lambda: guard.approve(target, by=by, note=note),
        "reject": lambda: guard.reject(target, by=by, reason=note),
    }
    try:
        if decision == "approve_resume":
            return run_id, *approve_and_resume(guard, target, by, note)
        outcome = act[decision]()
    except RunNotFound:
        raise
    except UndosMissing as exc:
        return run_id, "error", f"Not done: {explain_missing(target, exc.steps, REMEDY)}."
    except GuardrailError as exc:
        return run_id, "error", f"Not done: {exc}"
    return run_id, *describe(guard, decision, target, outcome)


def approve_and_resume(guard: Guard, item_id: str, by: str, note: str) -> tuple[str, str]:
    """Approve the request and resume its run, both recorded as ``by``. Refused, with nothing
    changed, when someone else decided the request first (they may have meant the run to wait);
    an approval that landed on a run that cannot resume yet says why."""
    approved = guard.approve(item_id, by=by, note=note)  # Conflict when it was rejected
    if not approved.landed:
        item = guard.store.review_item(item_id)
        if item is None or item.resolved_by != by:
            who = item.resolved_by if item is not None else "someone else"
            return "error", (
                f"Not done: approval request {item_id} was already approved by {who}; nothing "
                "changed and the run was not resumed (resume it yourself if it should go on)."
            )
    run_id = approved.run_id
    try:
        resumed = guard.resume(run_id, by=by, note=note)
    except GuardrailError as exc:
        return "warn", f"Approved item {item_id} (by {by}), but the run was not resumed: {exc}"
    if not resumed.landed:
        return "warn", (
            f"Approved item {item_id} (by {by}); run {run_id} was already resumed "
            f"({resumed.status}): nothing more changed."
        )
    return "ok", (
        f"Approved item {item_id} and resumed run {run_id} (by {by}). Restart the agent on this "
        "run: the approved call runs once, with the approved arguments."
    )


def describe(guard: Guard, decision: str, target: str, outcome: Decision) -> tuple[str, str]:
    if not outcome.landed:
        what = {"resume": "resumed", "abort": "aborted"}.get(decision, outcome.status)
        by = f" by {outcome.by}" if decision == "abort" and outcome.by else ""
        return "warn", f"Already {what}{by}: nothing changed ({target} is {outcome.status})."
    if decision == "resume":
        return "ok", (
            f"Resumed run {target} (by {outcome.by}). Restart the agent on this run; what "
            "already succeeded will not run again."
        )
    if decision == "abort":
        left = guard.store.review_items(run_id=target, status="open")
        tail = f" {len(left)} review item(s) still need a person." if left else ""
        return "ok", f"Aborted run {target} (by {outcome.by}): undone what could be undone.{tail}"
    if decision == "approve":
        return "ok", (
            f"Approved item {target} (by {outcome.by}). Resume the run to let the call go ahead."
        )
    if decision == "reject":
        return "ok", (
            f"Rejected item {target} (by {outcome.by}). After a resume the agent is told the "
            "call was rejected."
        )
    return "ok", f"Resolved item {target} as {outcome.status} (by {outcome.by})."
