"""The console's views for many runs at once: the groups of runs halted for the same cause, and
bulk decisions (resume, abort, resolve the open items) on a selection, a search or a group.

A bulk decision is always two steps: a preview (`Guard.preview`: what each run's decision would
do, or why it is refused; nothing changes), then a confirmation with a note, which decides the
runs shown (`Guard.decide`, one run at a time) and shows each run's outcome. Who decides is who
logged in; every form carries the CSRF token.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from guardrail.bulk import DECISIONS, ITEM_WORDS, Outcome, Preview, select
from guardrail.errors import GuardrailError
from guardrail.finding import Group
from guardrail.web.console import Console
from guardrail.web.forms import MAX_NOTE
from guardrail.web.query import QueryError, read_query

MAX_BULK = 1000  # runs one bulk decision may take (a form field each)
SCOPES = ("selected", "search", "group")
EMPTY = {
    "selected": "No run was selected: tick the runs to decide (or use a search or a group).",
    "search": "The search finds no run now: nothing to decide.",
    "group": "No run of this group is in pending_review now (decided meanwhile?): nothing to "
    "decide.",
}
VERBS = {"resume": "Resume", "abort": "Abort", "resolve": "Resolve the open items of"}


@dataclass(frozen=True, slots=True)
class BulkForm:
    """A posted bulk decision: the runs, the decision, the resolution (for resolve)."""

    run_ids: list[str]
    decision: str
    resolution: str
    scope: str
    group: str = ""


class BulkViews:
    """The groups page and the bulk preview and decision, on the console's guard."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.guard = console.guard
        console.templates.globals.update(bulk_resolutions=ITEM_WORDS, max_bulk=MAX_BULK)

    async def groups(self, request: Request) -> Response:
        found: list[Group] = await run_in_threadpool(self.guard.groups, "pending_review")
        return self.console.page(request, "groups.html", groups=found)

    async def preview(self, request: Request) -> Response:
        form = await self.console.checked_form(request, max_fields=MAX_BULK + 20)
        bulk = await self.read(form)
        return await self.show_preview(request, bulk)

    async def show_preview(
        self,
        request: Request,
        bulk: BulkForm,
        status_code: int = 200,
        error: str = "",
        note: str = "",
    ) -> Response:
        if not bulk.run_ids:
            return self.console.page(
                request,
                "bulk_preview.html",
                status_code=422,
                bulk=bulk,
                previews=[],
                refused=0,
                note="",
                error=EMPTY[bulk.scope],
                verb=VERBS[bulk.decision],
                force=self.console.force,
            )
        previews = await self.run_preview(bulk)
        return self.console.page(
            request,
            "bulk_preview.html",
            status_code=status_code,
            bulk=bulk,
            previews=previews,
            refused=sum(1 for p in previews if p.refused),
            note=note,
            error=error,
            verb=VERBS[bulk.decision],
            force=self.console.force,
        )

    async def run_preview(self, bulk: BulkForm) -> list[Preview]:
        try:
            return await run_in_threadpool(
                self.guard.preview,
                bulk.run_ids,
                bulk.decision,
                resolution=bulk.resolution if bulk.decision == "resolve" else None,
                force=self.console.force,
            )
        except GuardrailError as exc:
            raise HTTPException(400, str(exc)) from None

    async def decide(self, request: Request) -> Response:
        form = await self.console.checked_form(request, max_fields=MAX_BULK + 20)
        if form.get("scope", "selected") != "selected":
            raise HTTPException(400, "a bulk decision names the runs its preview showed")
        bulk = await self.read(form)
        if not bulk.run_ids:
            raise HTTPException(400, "a bulk decision names the runs its preview showed")
        raw = form.get("note", "")
        note = raw.strip() if isinstance(raw, str) else ""
        if not note:
            why = "only spaces" if raw else "empty"
            return await self.show_preview(
                request, bulk, 422, f"Write a note saying why (it was {why}); nothing was recorded."
            )
        if len(note) > MAX_NOTE:
            return await self.show_preview(
                request,
                bulk,
                422,
                f"The note is limited to {MAX_NOTE} characters (this one has {len(note)}); "
                "nothing was recorded.",
                note,
            )
        by: str = request.state.principal.identity
        try:
            outcomes: list[Outcome] = await run_in_threadpool(
                lambda: self.guard.decide(
                    bulk.run_ids,
                    bulk.decision,
                    by=by,
                    note=note,
                    resolution=bulk.resolution if bulk.decision == "resolve" else None,
                    force=self.console.force,
                )
            )
        except GuardrailError as exc:
            raise HTTPException(400, str(exc)) from None
        return self.console.page(
            request,
            "bulk_result.html",
            bulk=bulk,
            outcomes=outcomes,
            landed=sum(1 for o in outcomes if o.landed),
            note=note,
            verb=VERBS[bulk.decision],
        )

    async def read(self, form: FormData) -> BulkForm:
        """The runs and the decision a posted form asks for; 400 for a form no page makes."""
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        decision = fields.get("decision", "").strip()
        if decision not in DECISIONS:
            raise HTTPException(
                400, f"unknown bulk decision {decision!r}; expected one of {', '.join(DECISIONS)}"
            )
        resolution = fields.get("resolution", "").strip()
        if decision == "resolve" and resolution not in ITEM_WORDS:
            raise HTTPException(400, f"resolution must be one of {', '.join(ITEM_WORDS)}")
        scope = fields.get("scope", "selected").strip() or "selected"
        if scope not in SCOPES:
            raise HTTPException(400, f"unknown scope {scope!r}")
        group = fields.get("group", "").strip()
        if scope == "selected":
            ids = [v.strip() for v in form.getlist("run") if isinstance(v, str) and v.strip()]
        elif scope == "group":
            if not group:
                raise HTTPException(400, "the group form names no group")
            ids = await run_in_threadpool(lambda: select(self.guard, group=group))
        else:
            try:
                query = read_query(fields)
            except QueryError as exc:
                raise HTTPException(400, exc.message) from None
            filters = query.filters()
            if not query.filtered and query.status in ("needs", "all"):
                raise HTTPException(400, "a bulk decision on a search needs a search or a filter")
            ids = await run_in_threadpool(lambda: select(self.guard, **filters))
        ids = list(dict.fromkeys(ids))
        if len(ids) > MAX_BULK:
            raise HTTPException(
                400,
                f"{len(ids)} runs: a bulk decision takes at most {MAX_BULK}; narrow the search "
                "(a status, a tool, a time) and decide the rest after",
            )
        return BulkForm(ids, decision, resolution, scope, group)
