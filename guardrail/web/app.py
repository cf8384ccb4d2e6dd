"""`create_app` builds the console's Starlette application: its routes (the views are in
:mod:`guardrail.web.console`), its middleware and its lifespan."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from guardrail.guard import Guard
from guardrail.web.bulkviews import BulkViews
from guardrail.web.console import Console
from guardrail.web.middleware import BodyLimit, RequireLogin, SecurityHeaders
from guardrail.web.reviewers import ReviewerFile, ReviewerFileError
from guardrail.web.security import Authority, Clock, Throttle


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
    bulk = BulkViews(console)

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
            Route("/groups", bulk.groups, methods=["GET"]),
            Route("/bulk/preview", bulk.preview, methods=["POST"]),
            Route("/bulk/decide", bulk.decide, methods=["POST"]),
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
