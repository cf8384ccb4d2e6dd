"""The console's decision forms: what a posted form asks for, checked, and the decision made.

A form a person filled in badly (a note left empty or only spaces, or too long; an edit of the
arguments the core refuses, or none; an empty reply) raises `FieldError`: the page shows the form
again with the message next to the field, and nothing is recorded. A form no page of the console
makes (an unknown decision, no target) is a 400.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException

from guardrail.decisions import Decision, UndosMissing, explain_missing
from guardrail.errors import GuardrailError, PolicyError, RunNotFound
from guardrail.guard import Guard
from guardrail.web.answers import (
    ARG,
    MAX_REPLY,
    answered,
    changed,
    refused_fields,
    request_action,
)

EDITS = ("approve_edit", "approve_edit_resume")  # approve other values of some arguments
ITEM_DECISIONS = ("resolve", "approve", "reject", "approve_resume", *EDITS, "reply")
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
    edits: tuple[tuple[str, str], ...] = ()  # ("amount", "900"): the arguments' fields as typed
    reply: str = ""

    @property
    def key(self) -> str:
        """The form on the page: an item's decision form, its edit form (``ID-edit``) or its
        reply form (``ID-reply``), or ``resume`` / ``abort``."""
        if self.decision in EDITS:
            return f"{self.target}-edit"
        if self.decision == "reply":
            return f"{self.target}-reply"
        return self.target if self.decision in ITEM_DECISIONS else self.decision

    @property
    def typed_args(self) -> dict[str, str]:
        return dict(self.edits)


class FieldError(Exception):
    """Fields a person can correct; the form is shown again with each message next to its
    field (``note``, ``reply``, ``args``, or ``arg.NAME``)."""

    def __init__(self, form: DecisionForm, fields: Mapping[str, str]) -> None:
        super().__init__("; ".join(fields.values()))
        self.form = form
        self.fields = dict(fields)

    @classmethod
    def at(cls, form: DecisionForm, name: str, message: str) -> FieldError:
        return cls(form, {name: message})


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
    edits = tuple(
        (k[len(ARG) :], v) for k, v in fields.items() if k.startswith(ARG) and decision in EDITS
    )
    reply = fields.get("reply", "") if decision == "reply" else ""
    form = DecisionForm(decision, target, raw.strip(), resolution, edits, reply.strip())
    if decision == "reply" and not form.reply:
        why = "only spaces" if reply else "empty"
        raise FieldError.at(
            form,
            "reply",
            f"Write the reply the agent gets instead (it was {why}); nothing was recorded.",
        )
    if len(form.reply) > MAX_REPLY:
        raise FieldError.at(
            form,
            "reply",
            f"A reply is limited to {MAX_REPLY} characters (this one has {len(form.reply)}); "
            "nothing was recorded.",
        )
    if not form.note:
        why = "only spaces" if raw else "empty"
        raise FieldError.at(
            form, "note", f"Write a note saying why (it was {why}); nothing was recorded."
        )
    if len(form.note) > MAX_NOTE:
        raise FieldError.at(
            form,
            "note",
            f"The note is limited to {MAX_NOTE} characters (this one has {len(form.note)}); "
            "nothing was recorded.",
        )
    return form


def item_run(guard: Guard, item_id: str) -> str:
    item = guard.review_item(item_id)
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
    ``force`` is off: then nothing changed). An edit or a reply the core refuses raises
    `FieldError` (nothing changed).
    """
    decision, target, note = form.decision, form.target, form.note
    run_id = item_run(guard, target) if decision in ITEM_DECISIONS else target
    edit: dict[str, Any] | None = None
    act: dict[str, Callable[[], Decision]] = {
        "resume": lambda: guard.resume(target, by=by, note=note),
        "abort": lambda: guard.abort(target, by=by, reason=note, require_undos=not force),
        "resolve": lambda: guard.resolve(target, form.resolution, by=by, note=note),
        "approve": lambda: guard.approve(target, by=by, note=note),
        "approve_edit": lambda: guard.approve(target, by=by, note=note, args=edit),
        "reject": lambda: guard.reject(target, by=by, reason=note),
        "reply": lambda: guard.reply(target, form.reply, by=by, note=note),
    }
    try:
        if decision in EDITS:
            edit = edited(guard, form)
        if decision in ("approve_resume", "approve_edit_resume"):
            return run_id, *approve_and_resume(guard, target, by, note, edit)
        outcome = act[decision]()
    except RunNotFound:
        raise
    except UndosMissing as exc:
        return run_id, "error", f"Not done: {explain_missing(target, exc.steps, REMEDY)}."
    except PolicyError as exc:
        if decision not in (*EDITS, "reply"):
            return run_id, "error", f"Not done: {exc}"
        field = "reply" if decision == "reply" else "args"
        raise FieldError.at(form, field, f"{exc}; nothing was recorded.") from exc
    except GuardrailError as exc:
        return run_id, "error", f"Not done: {exc}"
    return run_id, *describe(guard, decision, target, outcome, edit)


def edited(guard: Guard, form: DecisionForm) -> dict[str, Any]:
    """The arguments the edit form changed, each one the core would take; else `FieldError`
    (no change, or the core's reason next to each argument it would refuse)."""
    item, action = request_action(guard, form.target)
    edit = changed(action.args, form.edits)
    if item.status != "open":
        # decided meanwhile (the action records an approved edit): the core tells a repeat of
        # the answer recorded from another answer (Conflict, naming who decided)
        recorded = item.answer.get("args") if isinstance(item.answer, dict) else None
        return edit or dict(recorded or {})
    if not edit:
        raise FieldError.at(
            form,
            "args",
            "No argument was changed: change the values to approve instead, or use Approve for "
            "the arguments as asked; nothing was recorded.",
        )
    refused = refused_fields(guard, item, action, edit)
    if refused:
        raise FieldError(form, {k: f"{v}; nothing was recorded." for k, v in refused.items()})
    return edit


def approve_and_resume(
    guard: Guard, item_id: str, by: str, note: str, edit: dict[str, Any] | None = None
) -> tuple[str, str]:
    """Approve the request (with ``edit``, other values of some arguments) and resume its run,
    both recorded as ``by``. Refused, with nothing changed, when someone else decided the
    request first (they may have meant the run to wait); an approval that landed on a run that
    cannot resume yet says why."""
    approved = guard.approve(item_id, by=by, note=note, args=edit)  # Conflict: decided otherwise
    if not approved.landed:
        item = guard.review_item(item_id)
        if item is None or item.resolved_by != by:
            who = item.resolved_by if item is not None else "someone else"
            return "error", (
                f"Not done: approval request {item_id} was already approved by {who}; nothing "
                "changed and the run was not resumed (resume it yourself if it should go on)."
            )
    run_id = approved.run_id
    what = f"Approved item {item_id}" + (f" {answered({'args': edit})}" if edit else "")
    try:
        resumed = guard.resume(run_id, by=by, note=note)
    except GuardrailError as exc:
        return "warn", f"{what} (by {by}), but the run was not resumed: {exc}"
    if not resumed.landed:
        return "warn", (
            f"{what} (by {by}); run {run_id} was already resumed "
            f"({resumed.status}): nothing more changed."
        )
    return "ok", (
        f"{what} and resumed run {run_id} (by {by}). Restart the agent on this "
        "run: the approved call runs once, with the approved arguments."
    )


def describe(
    guard: Guard,
    decision: str,
    target: str,
    outcome: Decision,
    edit: dict[str, Any] | None = None,
) -> tuple[str, str]:
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
        left = guard.review_items(run_id=target, status="open")
        tail = f" {len(left)} review item(s) still need a person." if left else ""
        return "ok", f"Aborted run {target} (by {outcome.by}): undone what could be undone.{tail}"
    if decision == "approve":
        return "ok", (
            f"Approved item {target} (by {outcome.by}). Resume the run to let the call go ahead."
        )
    if decision == "approve_edit":
        return "ok", (
            f"Approved item {target} {answered({'args': edit})} (by {outcome.by}). Resume the "
            "run to let the call go ahead, with these arguments."
        )
    if decision == "reply":
        return "ok", (
            f"Replied to item {target} (by {outcome.by}). After a resume the agent's call "
            "returns the reply; the tool does not run."
        )
    if decision == "reject":
        return "ok", (
            f"Rejected item {target} (by {outcome.by}). After a resume the agent is told the "
            "call was rejected."
        )
    return "ok", f"Resolved item {target} as {outcome.status} (by {outcome.by})."
