"""What keeps the console safe to leave running: the token, sessions, CSRF, security headers.

Everything is derived from the one token with HMAC, so the server keeps no session state and
changing the token logs everybody out:

- a request is let in with ``Authorization: Bearer TOKEN`` or with the session cookie the login
  form sets (``issued.nonce.mac``; HttpOnly, SameSite=Strict, valid for ``SESSION_SECONDS``);
- every form carries a CSRF token, the HMAC of the session's nonce (``"bearer"`` for bearer
  requests); a POST without the right one is refused, and so is one whose ``Origin``,
  ``Referer`` or ``Sec-Fetch-Site`` says it came from another site;
- the outcome of a decision travels to the next page in the query string, signed, so a crafted
  link cannot put words in the console's mouth.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse

SESSION_COOKIE = "guardrail_session"
SESSION_SECONDS = 12 * 3600
MIN_TOKEN_LENGTH = 16

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


def check_token(token: str) -> str:
    """Refuse tokens a person could guess; return the token."""
    if len(token.strip()) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"the console's token must be at least {MIN_TOKEN_LENGTH} characters; make one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return token


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request was let in as: ``session`` is the cookie's nonce, or ``"bearer"``."""

    session: str
    via: str  # cookie | bearer


class Keys:
    """The token and everything derived from it."""

    def __init__(self, token: str) -> None:
        self._token = check_token(token).encode()

    def _mac(self, purpose: str, *parts: str) -> str:
        message = "\x1f".join((purpose, *parts)).encode()
        return hmac.new(self._token, message, hashlib.sha256).hexdigest()

    def token_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._token)

    def new_session(self, now: float | None = None) -> str:
        issued = str(int(time.time() if now is None else now))
        nonce = secrets.token_urlsafe(16)
        return f"{issued}.{nonce}.{self._mac('session', issued, nonce)}"

    def session_nonce(self, cookie: str, now: float | None = None) -> str | None:
        """The nonce of a valid, unexpired session cookie, else None."""
        issued, _, rest = cookie.partition(".")
        nonce, _, mac = rest.partition(".")
        if not (issued.isdigit() and nonce and mac):
            return None
        if not hmac.compare_digest(mac, self._mac("session", issued, nonce)):
            return None
        age = (time.time() if now is None else now) - int(issued)
        return nonce if 0 <= age <= SESSION_SECONDS else None

    def authenticate(self, conn: HTTPConnection) -> Principal | None:
        scheme, _, credentials = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials:
            if self.token_matches(credentials.strip()):
                return Principal("bearer", "bearer")
            return None
        cookie = conn.cookies.get(SESSION_COOKIE)
        if cookie:
            nonce = self.session_nonce(cookie)
            if nonce is not None:
                return Principal(nonce, "cookie")
        return None

    def csrf(self, principal: Principal) -> str:
        return self._mac("csrf", principal.session)

    def csrf_matches(self, principal: Principal, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self.csrf(principal).encode())

    def sign_flash(self, kind: str, message: str) -> str:
        return self._mac("flash", kind, message)

    def flash_matches(self, kind: str, message: str, signature: str) -> bool:
        return hmac.compare_digest(signature.encode(), self.sign_flash(kind, message).encode())


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


class RequireToken:
    """ASGI middleware: only requests with the token (or a session) get past, except to
    ``public`` paths (the login form, the stylesheet). The others get ``refuse``'s answer, a
    401 that shows nothing of the store. The principal is left in ``scope["state"]``."""

    def __init__(
        self,
        app: ASGIApp,
        keys: Keys,
        refuse: Callable[[HTTPConnection], ASGIApp],
        public: tuple[str, ...] = ("/login", "/static/"),
    ) -> None:
        self.app = app
        self.keys = keys
        self.refuse = refuse
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        principal = self.keys.authenticate(conn)
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
