"""The console's pages and decisions: `create_app` builds the Starlette application.

Pages are rendered on the server (Jinja2, autoescaped: tool arguments are untrusted and show as
text) and run no JavaScript. Every call into the guard runs in a worker thread: the store is
synchronous and an abort runs the undos.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from guardrail import decisions
from guardrail.audit import ActionLog, Verification
from guardrail.decisions import Decision, UndosMissing, explain_missing, policy_mismatch
from guardrail.drive import drive
from guardrail.errors import GuardrailError, RunNotFound
from guardrail.guard import Guard
from guardrail.lifecycle import PlannedStep
from guardrail.recovery import owner_alive
from guardrail.store import Action, Compensation, ReviewItem, RunRecord
from guardrail.transitions import LIVE, RunStatus
from guardrail.web.reviewers import SHARED_IDENTITY, ReviewerFile, ReviewerFileError
from guardrail.web.security import (
    SESSION_COOKIE,
    SESSION_SECONDS,
    Authority,
    BodyLimit,
    Clock,
    Principal,
    RequireLogin,
    SecurityHeaders,
    Throttle,
    Throttled,
    client_key,
    same_site,
)

WAITING = ("pending_review", "awaiting_approval")
RUN_STATUSES = tuple(s.value for s in RunStatus)
DECISIONS = ("resume", "abort", "resolve", "approve", "reject")
RESOLUTIONS = ("done_manually", "retried", "skipped", "happened", "not_happened")
MAX_NOTE = 2000
MAX_SHOWN_RUNS = 500
MAX_SHOWN_JSON = 20_000
ACTIONS_PER_PART = 500
REMEDY = (
    "restart the console with the application's guard (guardrail serve --app MODULE:ATTRIBUTE, "
    "or GUARDRAIL_APP) or the policies that name these undos (--policy FILE, --pack NAME), or "
    "abort from the application itself"
)


def create_app(
    guard: Guard | str,
    token: str | None = None,
    *,
    reviewers: str | os.PathLike[str] | ReviewerFile | None = None,
    trust_header: str | None = None,
    title: str = "guardrail",
    throttle: Throttle | None = None,
    clock: Clock = time.monotonic,
    force: bool = False,
) -> Starlette:
    """The review console for ``guard`` (or a store URL).

    Example::

        app = create_app("sqlite:///guardrail.db", reviewers="/etc/guardrail/reviewers.json")
        uvicorn.run(app, host="127.0.0.1", port=8765)

    Who may log in, and the name each decision records (never a name typed into a form):

    - ``reviewers``: a reviewers file (``guardrail reviewers add NAME``); each reviewer logs in
      with their own token and decides under their own name;
    - ``token``: a shared token (at least 16 characters); decisions made with it record the
      fixed identity ``shared-token``;
    - ``trust_header``: e.g. ``"X-Forwarded-User"``, for a console reachable only through an
      authenticating proxy that sets the header and strips it from clients' requests.

    At least one is needed; they can be combined. Sessions live in this process (one worker).
    ``throttle`` sets the limits on wrong tokens; ``clock`` (monotonic seconds) drives session
    expiry and the default throttle.

    Given a URL, the console opens a non-strict guard on it (closed at shutdown); give it your
    own ``Guard`` instead when aborts should run your tools' undos in this process. A run whose
    abort needs an undo this guard lacks says which and cannot be aborted here (the page and the
    server refuse alike), unless ``force``: then those actions become review items.
    """
    if isinstance(reviewers, str | os.PathLike):
        reviewers = ReviewerFile(reviewers)
    if reviewers is not None:
        if not reviewers.path.exists():
            raise ValueError(
                f"no reviewers file at {reviewers.path}; make one with guardrail reviewers add NAME"
            )
        try:
            reviewers.load()
        except ReviewerFileError as exc:
            raise ValueError(str(exc)) from None
    authority = Authority(
        token=token,
        reviewers=reviewers,
        trust_header=trust_header,
        throttle=throttle or Throttle(clock=clock),
        clock=clock,
    )
    owned = not isinstance(guard, Guard)
    the_guard = Guard(store=guard, strict=False) if isinstance(guard, str) else guard
    console = Console(the_guard, authority, title, force=force)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if owned:
                the_guard.close()

    app = Starlette(
        routes=[
            Route("/", console.inbox, methods=["GET"]),
            Route("/runs/{run_id:path}", console.run, methods=["GET"]),
            Route("/decide", console.decide, methods=["POST"]),
            Route("/login", console.login_form, methods=["GET"]),
            Route("/login", console.login, methods=["POST"]),
            Route("/logout", console.logout, methods=["POST"]),
            Mount("/static", StaticFiles(packages=[("guardrail.web", "static")]), name="static"),
        ],
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(BodyLimit),
            Middleware(
                RequireLogin,
                authority=authority,
                refuse=console.refuse,
                throttled=console.throttled,
            ),
        ],
        exception_handlers={HTTPException: console.http_error},
        lifespan=lifespan,
    )
    app.state.guard = the_guard
    app.state.authority = authority
    return app


# -- what the templates show ------------------------------------------------------------------


@dataclass(slots=True)
class RunRow:
    run: RunRecord
    open_items: int


@dataclass(slots=True)
class ActionRow:
    action: Action
    duration: str
    compensation: Compensation | None
    items: list[ReviewItem]
    args: str
    result: str
    flag: str  # problem | waiting | "" (how the row is highlighted)


@dataclass(slots=True)
class RunPage:
    log: ActionLog
    verification: Verification
    plan: list[PlannedStep]
    rows: list[ActionRow]
    open_items: list[ReviewItem]
    closed_items: list[ReviewItem]
    open_approvals: list[ReviewItem]
    item_args: dict[str, str] = field(default_factory=dict)
    tools: dict[int, str] = field(default_factory=dict)
    # what an abort here needs and this console lacks, and a warning when the run started
    # under other policies than the console's
    missing: list[PlannedStep] = field(default_factory=list)
    mismatch: str | None = None
    part: int = 1
    parts: list[tuple[int, int, int]] = field(default_factory=list)  # (part, first, last seq)


def pretty(value: Any) -> str:
    if value is None:
        return ""
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if len(text) > MAX_SHOWN_JSON:
        return text[:MAX_SHOWN_JSON] + f"\n... ({len(text) - MAX_SHOWN_JSON} more characters)"
    return text


def duration(action: Action) -> str:
    if action.finished_at is None:
        return ""
    took = action.finished_at - action.started_at
    return f"{took:.2f} s" if took >= 1 else f"{took * 1000:.1f} ms"


def when(stamp: float | None) -> str:
    if stamp is None:
        return ""
    return dt.datetime.fromtimestamp(stamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def ago(stamp: float | None) -> str:
    if stamp is None:
        return ""
    seconds = max(0, int(time.time() - stamp))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def run_url(run_id: str) -> str:
    return "/runs/" + quote(run_id, safe="")


PROBLEM_STATES = ("failed", "compensation_failed", "in_doubt", "started")


def flag(action: Action, compensation: Compensation | None) -> str:
    """What the timeline highlights: what went wrong, and what waits for approval."""
    if action.state in PROBLEM_STATES or (
        compensation is not None and compensation.state != "succeeded"
    ):
        return "problem"
    return "waiting" if action.state == "awaiting_approval" else ""


def load_inbox(guard: Guard, status: str) -> tuple[list[RunRow], dict[str, int]]:
    """The runs to show and the counts for the header."""
    open_items = Counter(i.run_id for i in guard.store.review_items(status="open"))
    waiting = {s: guard.runs(status=s) for s in WAITING}
    if status == "needs":
        found = {r.id: r for s in WAITING for r in waiting[s]}
        # runs nobody is finishing (a dead owner, a lease not renewed after a store fault)
        # need a person too, until recovery takes them over
        for s in LIVE:
            for r in guard.runs(status=s):
                if not owner_alive(r.owner, r.heartbeat_at, guard.stale_after):
                    found[r.id] = r
        for run_id in open_items:
            if run_id not in found:
                record = guard.store.run(run_id)
                if record is not None:
                    found[run_id] = record
        runs = sorted(found.values(), key=lambda r: (r.status not in WAITING, -r.updated_at, r.id))
    elif status == "all":
        runs = guard.runs()
    else:
        runs = guard.runs(status=status)
    counts = {
        "pending_review": len(waiting["pending_review"]),
        "awaiting_approval": len(waiting["awaiting_approval"]),
        "open_items": sum(open_items.values()),
        "runs_with_open_items": len(open_items),
        "shown": len(runs),
    }
    return [RunRow(r, open_items.get(r.id, 0)) for r in runs[:MAX_SHOWN_RUNS]], counts


def part_bounds(count: int) -> list[tuple[int, int]]:
    """The (start, end) indexes of a timeline's parts; the last part is full, the first one
    takes the remainder."""
    first = count - (max(1, -(-count // ACTIONS_PER_PART)) - 1) * ACTIONS_PER_PART
    return [(0, first)] + [
        (start, start + ACTIONS_PER_PART) for start in range(first, count, ACTIONS_PER_PART)
    ]


def load_run(guard: Guard, run_id: str, part: int | None = None) -> RunPage:
    """Everything the run's page shows; long timelines come in parts of ``ACTIONS_PER_PART``
    (``part`` counts from 1; the default is the last part, where a failure usually is)."""
    log = guard.log(run_id)
    verification = guard.verify(run_id)
    plan = guard.plan_undo(run_id)
    comps = {c.seq: c for c in log.compensations}
    by_seq: dict[int | None, list[ReviewItem]] = {}
    for item in log.review_items:
        by_seq.setdefault(item.seq, []).append(item)
    bounds = part_bounds(len(log.actions))
    part = len(bounds) if part is None else min(max(part, 1), len(bounds))
    shown = log.actions[slice(*bounds[part - 1])]
    rows = [
        ActionRow(
            action=a,
            duration=duration(a),
            compensation=comps.get(a.seq),
            items=by_seq.get(a.seq, []),
            args=pretty(a.args),
            result=pretty(a.result),
            flag=flag(a, comps.get(a.seq)),
        )
        for a in shown
    ]
    actions = {a.seq: a for a in log.actions}
    item_args = {
        i.id: pretty(actions[i.seq].args)
        for i in log.review_items
        if i.seq is not None and i.seq in actions
    }
    open_items = [i for i in log.review_items if i.status == "open"]
    waiting = log.run.status in WAITING
    return RunPage(
        log=log,
        verification=verification,
        plan=[s for s in plan if s.do != "nothing"],
        rows=rows,
        open_items=open_items,
        closed_items=[i for i in log.review_items if i.status != "open"],
        open_approvals=[i for i in open_items if i.reason == "approval"],
        item_args=item_args,
        tools={a.seq: a.tool for a in log.actions},
        missing=decisions.missing_undos(guard, log.actions) if waiting else [],
        mismatch=policy_mismatch(guard, log.run),
        part=part,
        parts=[
            (n, log.actions[start].seq, log.actions[end - 1].seq)
            for n, (start, end) in enumerate(bounds, start=1)
        ]
        if len(bounds) > 1
        else [],
    )


# -- the application ----------------------------------------------------------------------------


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
        self.templates.filters.update(when=when, ago=ago, run_url=run_url)
        self.templates.globals.update(
            statuses=RUN_STATUSES,
            resolutions=RESOLUTIONS,
            remedy=REMEDY,
            shared_identity=SHARED_IDENTITY,
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
        **context: Any,
    ) -> HTMLResponse:
        principal: Principal | None = conn.scope.get("state", {}).get("principal")
        html = self.templates.get_template(template).render(
            title=self.title,
            store=self.guard.store.url,
            principal=principal,
            csrf=self.authority.csrf(principal) if principal is not None else "",
            flash=self.flash(conn),
            **context,
        )
        return HTMLResponse(html, status_code=status_code, headers=headers)

    def flash(self, conn: HTTPConnection) -> dict[str, str] | None:
        q = conn.query_params
        kind, message, sig = q.get("kind", ""), q.get("flash", ""), q.get("sig", "")
        if kind in ("ok", "warn", "error") and self.authority.flash_matches(kind, message, sig):
            return {"kind": kind, "message": message}
        return None

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
            code=exc.status_code,
            message=exc.detail,
        )

    # -- pages ---------------------------------------------------------------------------------

    async def inbox(self, request: Request) -> Response:
        status = request.query_params.get("status", "needs")
        if status not in ("needs", "all", *RUN_STATUSES):
            raise HTTPException(400, f"unknown status {status!r}")
        rows, counts = await run_in_threadpool(load_inbox, self.guard, status)
        return self.page(
            request,
            "inbox.html",
            rows=rows,
            counts=counts,
            status=status,
            limit=MAX_SHOWN_RUNS,
        )

    async def run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        part = request.query_params.get("part", "")
        try:
            data = await run_in_threadpool(
                load_run, self.guard, run_id, int(part) if part.isdigit() else None
            )
        except RunNotFound:
            raise HTTPException(404, f"no run {run_id!r} in this store") from None
        return self.page(
            request,
            "run.html",
            page=data,
            run=data.log.run,
            waiting=data.log.run.status in WAITING,
            max_note=MAX_NOTE,
            force=self.force,
        )

    # -- decisions -----------------------------------------------------------------------------

    async def checked_form(self, request: Request) -> FormData:
        """The POSTed form, once it is known to come from one of the console's own pages."""
        principal: Principal | None = request.state.principal
        if not same_site(request):
            raise HTTPException(403, "this form was posted from another site; refused")
        form = await request.form(max_files=0, max_fields=20, max_part_size=64_000)
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
        form = await self.checked_form(request)
        principal: Principal = request.state.principal
        # who decides is who logged in; a "reviewer" field (older forms, scripts) is ignored
        reviewer = principal.identity
        fields = {k: v.strip() for k, v in form.items() if isinstance(v, str)}
        decision = fields.get("decision", "")
        note = fields.get("note", "")
        if decision not in DECISIONS:
            raise HTTPException(400, f"unknown decision {decision!r}")
        if not note:
            raise HTTPException(400, "a decision needs a note; go back and say why")
        if len(note) > MAX_NOTE:
            raise HTTPException(400, f"the note is limited to {MAX_NOTE} characters")
        target = fields.get("item_id" if decision in ("resolve", "approve", "reject") else "run_id")
        if not target:
            raise HTTPException(400, f"the {decision} form names no run or item")
        resolution = fields.get("resolution", "")
        if decision == "resolve" and resolution not in RESOLUTIONS:
            raise HTTPException(400, f"resolution must be one of {', '.join(RESOLUTIONS)}")
        try:
            run_id, kind, message = await run_in_threadpool(
                apply_decision,
                self.guard,
                decision,
                target,
                reviewer,
                note,
                resolution,
                force=self.force,
            )
        except RunNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        query = urlencode(
            {"kind": kind, "flash": message, "sig": self.authority.sign_flash(kind, message)}
        )
        return RedirectResponse(f"{run_url(run_id)}?{query}", status_code=303)

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
        outcome = self.authority.login(token if isinstance(token, str) else "", client_key(request))
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


def apply_decision(
    guard: Guard,
    decision: str,
    target: str,
    by: str,
    note: str,
    resolution: str,
    *,
    force: bool = False,
) -> tuple[str, str, str]:
    """Make the decision; return the run to show and the outcome as (run_id, kind, message).

    ``kind`` is ``ok`` (it landed), ``warn`` (the same decision was already recorded: nothing
    changed) or ``error`` (another decision came first, the run is in the wrong state, or an
    abort needs undos this console lacks and ``force`` is off: then nothing changed).
    """
    run_id = target
    if decision in ("resolve", "approve", "reject"):
        item = guard.store.review_item(target)
        if item is None:
            raise RunNotFound(f"no review item {target!r} in this store")
        run_id = item.run_id
    act: dict[str, Callable[[], Decision]] = {
        "resume": lambda: guard.resume(target, by=by, note=note),
        "abort": lambda: drive(decisions.abort(guard, target, by, note, require_undos=not force)),
        "resolve": lambda: guard.resolve(target, resolution, by=by, note=note),
        "approve": lambda: guard.approve(target, by=by, note=note),
        "reject": lambda: guard.reject(target, by=by, reason=note),
    }
    try:
        outcome = act[decision]()
    except RunNotFound:
        raise
    except UndosMissing as exc:
        return run_id, "error", f"Not done: {explain_missing(target, exc.steps, REMEDY)}."
    except GuardrailError as exc:
        return run_id, "error", f"Not done: {exc}"
    return run_id, *describe(guard, decision, target, outcome)


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
