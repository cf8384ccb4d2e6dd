"""The console's ASGI middleware: security headers, the login every page needs, a limit on
request bodies; and `same_site`, the check that a form was posted from the console itself."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse

from guardrail.web.security import Authority
from guardrail.web.throttle import Throttled

# No script may run (the console has none), nothing may frame it, forms post only to itself.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
# Pages show the action log: keep them out of caches. Static files may be cached.
NO_STORE = (b"cache-control", b"no-store")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def same_site(conn: HTTPConnection) -> bool:
    """False when the browser says the request came from another site.

    ``Origin: null`` (which a page with ``Referrer-Policy: no-referrer`` sends on its own form
    posts) says nothing, so it is treated as absent; the CSRF token is what decides then.
    """
    site = conn.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    host = conn.headers.get("host", "").lower()
    for header in ("origin", "referer"):
        value = conn.headers.get(header)
        if value and value != "null":
            return urlsplit(value).netloc.lower() == host
    return True


class SecurityHeaders:
    """ASGI middleware: the security headers on every response, ``no-store`` on pages."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"
                ] + SECURITY_HEADERS
                if not static:
                    headers.append(NO_STORE)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class RequireLogin:
    """ASGI middleware: only requests the authority lets in get past, except to ``public``
    paths (the login form, the stylesheet). The others get ``refuse``'s answer, a 401 that shows
    nothing of the store; a throttled token gets ``throttled``'s 429. The principal is left in
    ``scope["state"]``."""

    def __init__(
        self,
        app: ASGIApp,
        authority: Authority,
        refuse: Callable[[HTTPConnection], ASGIApp],
        throttled: Callable[[HTTPConnection, Throttled], ASGIApp],
        public: tuple[str, ...] = ("/login", "/static/"),
    ) -> None:
        self.app = app
        self.authority = authority
        self.refuse = refuse
        self.throttled = throttled
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        principal = self.authority.authenticate(conn)
        if isinstance(principal, Throttled):
            scope.setdefault("state", {})["principal"] = None
            await self.throttled(conn, principal)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        path = str(scope.get("path", ""))
        if principal is None and not any(
            path == p or (p.endswith("/") and path.startswith(p)) for p in self.public
        ):
            await self.refuse(conn)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes (the console's forms are
    small; the login form is public, so its body must not be able to fill memory)."""

    def __init__(self, app: ASGIApp, limit: int = 256_000) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = HTTPConnection(scope).headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            await PlainTextResponse("request body too large", status_code=413)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, "request body too large")
            return message

        await self.app(scope, limited, send)
