"""The console's views: the inbox, a run's page, the decisions, logging in and out.

Pages are rendered on the server (Jinja2, autoescaped: tool arguments are untrusted and show as
text) and run no JavaScript. Every call into the guard runs in a worker thread: the store is
synchronous and an abort runs the undos.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from guardrail.errors import GuardrailError, RunNotFound
from guardrail.guard import Guard
from guardrail.transitions import RunStatus
from guardrail.web.answers import MAX_ARGS, MAX_REPLY, answered
from guardrail.web.browse import InboxPage, load_counts, load_inbox
from guardrail.web.flash import FLASH_COOKIE, Flash, clear_flash, read_flash, set_flash
from guardrail.web.forms import (
    ITEM_DECISIONS,
    MAX_NOTE,
    REMEDY,
    RESOLUTIONS,
    DecisionForm,
    FieldError,
    apply_decision,
    item_run,
    parse,
)
from guardrail.web.middleware import same_site
from guardrail.web.pages import WAITING, RunPage, ago, load_run, run_url, when
from guardrail.web.query import STATUSES, QueryError, read_query
from guardrail.web.reviewers import SHARED_IDENTITY
from guardrail.web.security import SESSION_COOKIE, SESSION_SECONDS, Authority, Principal, client_key
from guardrail.web.throttle import Throttled

RUN_STATUSES = tuple(s.value for s in RunStatus)
INBOX_FIELDS = ("q", "status", "agent", "tool", "owner", "since", "until")
UNREAD = Flash("", "")  # page(): read the flash cookie


class Console:
    """The views. One instance per application, holding the guard, the authority and the
    templates."""

    def __init__(
        self, guard: Guard, authority: Authority, title: str, *, force: bool = False
    ) -> None:
        self.guard = guard
        self.authority = authority
        self.title = title
        self.force = force
        self.templates = Environment(
            loader=PackageLoader("guardrail.web", "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters.update(when=when, ago=ago, run_url=run_url, answered=answered)
        self.templates.globals.update(
            statuses=RUN_STATUSES,
            inbox_statuses=STATUSES,
            resolutions=RESOLUTIONS,
            remedy=REMEDY,
            shared_identity=SHARED_IDENTITY,
            max_note=MAX_NOTE,
            max_reply=MAX_REPLY,
            logins={
                "reviewers": authority.reviewers is not None,
                "shared": authority.shared,
                "header": authority.trust_header,
            },
        )

    # -- rendering -----------------------------------------------------------------------------

    def page(
        self,
        conn: HTTPConnection,
        template: str,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        flash: Flash | None = UNREAD,
        **context: Any,
    ) -> HTMLResponse:
        """A page; the outcome of the last decision (the flash cookie) is shown on it once."""
        principal: Principal | None = conn.scope.get("state", {}).get("principal")
        if flash is UNREAD:
            flash = self.flash(conn)
        html = self.templates.get_template(template).render(
            title=self.title,
            store=self.guard.store.url,
            principal=principal,
            csrf=self.authority.csrf(principal) if principal is not None else "",
            flash=flash,
            **context,
        )
        response = HTMLResponse(html, status_code=status_code, headers=headers)
        if principal is not None and FLASH_COOKIE in conn.cookies:
            clear_flash(response)  # shown once: a reload does not show it again
        return response

    def flash(self, conn: HTTPConnection) -> Flash | None:
        principal: Principal | None = conn.scope.get("state", {}).get("principal")
        return read_flash(conn, self.authority, principal) if principal is not None else None

    def refuse(self, conn: HTTPConnection) -> Response:
        """What a request without a valid token or session gets: 401 and the login form,
        nothing else. A session cookie that no longer works (logged out, expired, its reviewer
        removed) is dropped."""
        wanted = conn.url.path + (f"?{conn.url.query}" if conn.url.query else "")
        cookie = conn.cookies.get(SESSION_COOKIE)
        ended = bool(cookie) and self.authority.from_cookie(cookie or "") is None
        response = self.page(
            conn,
            "login.html",
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="guardrail"'},
            next=safe_next(wanted) if conn.scope.get("method") == "GET" else "/",
            error="Your session has ended; log in again." if ended else None,
        )
        if ended:
            response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict")
        return response

    def throttled(self, conn: HTTPConnection, verdict: Throttled) -> Response:
        """What a client gets while too many wrong tokens were tried: 429, ``Retry-After``."""
        return self.page(
            conn,
            "login.html",
            status_code=429,
            headers={"Retry-After": str(verdict.retry_after)},
            next="/",
            error=f"Too many wrong tokens; try again in {verdict.retry_after} s.",
        )

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return self.page(
            request,
            "error.html",
            status_code=exc.status_code,
            headers=exc.headers,
            flash=None,
            code=exc.status_code,
            message=exc.detail,
        )

    # -- pages ---------------------------------------------------------------------------------

    async def inbox(self, request: Request) -> Response:
        """The runs that wait for a person, or what a search with filters finds, a page at a
        time. A search naming one run exactly (its id, an order id) opens that run."""
        typed = {k: v for k, v in request.query_params.items() if k in INBOX_FIELDS}
        try:
            query = read_query(request.query_params)
            data = await run_in_threadpool(load_inbox, self.guard, query)
        except (QueryError, GuardrailError) as exc:
            message = exc.message if isinstance(exc, QueryError) else str(exc)
            tiles = await run_in_threadpool(load_counts, self.guard)
            return self.page(
                request,
                "inbox.html",
                status_code=400,
                query=None,
                typed=typed,
                data=InboxPage([], tiles, None),
                error=message,
            )
        if (
            query.text
            and not query.cursor
            and data.next is None
            and len(data.rows) == 1
            and data.rows[0].exact
        ):
            return RedirectResponse(run_url(data.rows[0].run.id), status_code=303)
        return self.page(
            request,
            "inbox.html",
            query=query,
            typed=typed,
            data=data,
            error=None,
        )

    async def run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        part = request.query_params.get("part", "")
        flash = self.flash(request)
        data = await self.run_page(
            run_id, int(part) if part.isdigit() else None, flash.item if flash else None
        )
        return self.run_response(request, data, flash)

    async def run_page(self, run_id: str, part: int | None, just_decided: str | None) -> RunPage:
        try:
            return await run_in_threadpool(load_run, self.guard, run_id, part, just_decided)
        except RunNotFound:
            raise HTTPException(404, f"no run {run_id!r} in this store") from None

    def run_response(
        self,
        request: Request,
        data: RunPage,
        flash: Flash | None,
        status_code: int = 200,
        errors: Mapping[str, Mapping[str, str]] | None = None,
        typed: DecisionForm | None = None,
    ) -> Response:
        # the outcome of an item's decision shows in the item's place, else at the top
        inline = flash is not None and any(f"item-{flash.item}" == p.key for p in data.problems)
        return self.page(
            request,
            "run.html",
            status_code=status_code,
            flash=flash,
            page=data,
            run=data.log.run,
            waiting=data.log.run.status in WAITING,
            force=self.force,
            inline=inline,
            errors=errors or {},
            typed=typed,
        )

    # -- decisions -----------------------------------------------------------------------------

    async def checked_form(self, request: Request, max_fields: int = 20) -> FormData:
        """The POSTed form, once it is known to come from one of the console's own pages."""
        principal: Principal | None = request.state.principal
        if not same_site(request):
            raise HTTPException(403, "this form was posted from another site; refused")
        form = await request.form(max_files=0, max_fields=max_fields, max_part_size=64_000)
        csrf = form.get("csrf")
        if (
            principal is None
            or not isinstance(csrf, str)
            or not self.authority.csrf_matches(principal, csrf)
        ):
            raise HTTPException(
                403, "the form's CSRF token is missing or wrong; reload the page and try again"
            )
        return form

    async def decide(self, request: Request) -> Response:
        """Make the decision and redirect to the run's page (to the item's place for an item's
        decision), where its outcome shows once. A note to write again, or an edit of the
        arguments the core refuses, shows the page with the form again (422), nothing
        recorded."""
        form = await self.checked_form(request, max_fields=MAX_ARGS + 20)
        principal: Principal = request.state.principal
        # who decides is who logged in; a "reviewer" field (older forms, scripts) is ignored
        try:
            decision = parse({k: v for k, v in form.items() if isinstance(v, str)})
        except FieldError as exc:
            return await self.ask_again(request, exc)
        try:
            run_id, kind, message = await run_in_threadpool(
                apply_decision, self.guard, decision, principal.identity, force=self.force
            )
        except FieldError as exc:
            return await self.ask_again(request, exc)
        except RunNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        item = decision.target if decision.decision in ITEM_DECISIONS else ""
        anchor = f"#item-{item}" if item else ""
        response = RedirectResponse(f"{run_url(run_id)}{anchor}", status_code=303)
        set_flash(
            response,
            self.authority,
            principal,
            Flash(kind, message, item),
            secure=request.url.scheme == "https",
        )
        return response

    async def ask_again(self, request: Request, error: FieldError) -> Response:
        form = error.form
        try:
            run_id = (
                await run_in_threadpool(item_run, self.guard, form.target)
                if form.decision in ITEM_DECISIONS
                else form.target
            )
        except RunNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        data = await self.run_page(run_id, None, None)
        return self.run_response(
            request,
            data,
            self.flash(request),
            status_code=422,
            errors={form.key: error.fields},
            typed=form,
        )

    # -- login -----------------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        wanted = safe_next(request.query_params.get("next", "/"))
        if request.state.principal is not None:
            return RedirectResponse(wanted, status_code=303)
        return self.page(request, "login.html", next=wanted, error=None)

    async def login(self, request: Request) -> Response:
        if not same_site(request):
            raise HTTPException(403, "this form was posted from another site; refused")
        form = await request.form(max_files=0, max_fields=5, max_part_size=8_000)
        token, wanted = form.get("token"), form.get("next")
        wanted = safe_next(wanted if isinstance(wanted, str) else "/")
        token = token if isinstance(token, str) else ""
        if not token.strip():  # nothing to check: no guess to count either
            why = "only spaces" if token else "empty"
            return self.page(
                request,
                "login.html",
                status_code=422,
                next=wanted,
                error=f"Enter your token (it was {why}).",
            )
        outcome = self.authority.login(token, client_key(request))
        if isinstance(outcome, Throttled):
            return self.throttled(request, outcome)
        if outcome is None:
            return self.page(
                request,
                "login.html",
                status_code=401,
                next=wanted,
                error="That is not a token this console accepts.",
            )
        previous: Principal | None = request.state.principal
        if previous is not None:  # one session per browser: the one it had ends
            self.authority.logout(previous)
        _, cookie = outcome
        response = RedirectResponse(wanted, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        """End the session here and on the server: the cookie, even copied, stops working."""
        await self.checked_form(request)
        self.authority.logout(request.state.principal)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict")
        clear_flash(response)
        return response


def safe_next(target: str) -> str:
    """Only a path on this site: never ``//evil.example`` or ``https://...``."""
    if (
        not target.startswith("/")
        or target.startswith(("//", "/\\"))
        or any(ord(c) < 32 for c in target)
    ):
        return "/"
    return target
