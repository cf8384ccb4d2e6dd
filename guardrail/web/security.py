"""What keeps the console safe to leave running: who gets in, as whom, sessions, throttling,
CSRF, security headers.

Every request is let in as a :class:`Principal` whose ``identity`` is what a decision records as
``by=``; nothing typed into a form can change it:

- a reviewer's own token (``guardrail reviewers add NAME``, see :mod:`guardrail.web.reviewers`)
  is that reviewer;
- the shared console token (``GUARDRAIL_TOKEN``), when configured, is the fixed identity
  ``shared-token``;
- when (and only when) ``trust_header`` is configured, the header an authenticating proxy sets
  (e.g. ``X-Forwarded-User``) is its value. Sent twice, empty or malformed, it lets nobody in.

A token travels as ``Authorization: Bearer TOKEN`` or once to the login form, which opens a
server-side session: the cookie (HttpOnly, SameSite=Strict) is a random 256-bit id that means
something only to this process's :class:`Sessions`. Logging out deletes the session, so a copied
cookie stops working; a session whose reviewer was removed (or given a new token) is refused on
its next request. Sessions last ``SESSION_SECONDS`` and end when the process does.

Wrong tokens (at the login form or as a bearer) are throttled by :class:`Throttle`: per client
address with exponential backoff, and globally with a token bucket; while throttled every token,
right or wrong, gets 429 with ``Retry-After``, so the throttle is not an oracle.

Every form carries a CSRF token (an HMAC, under a per-process secret, of the session); a POST
without the right one is refused, and so is one whose ``Origin``, ``Referer`` or
``Sec-Fetch-Site`` says it came from another site. The outcome of a decision travels to the next
page in the query string, signed, so a crafted link cannot put words in the console's mouth.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse

from guardrail.web.reviewers import SHARED_IDENTITY, ReviewerFile, check_name

SESSION_COOKIE = "guardrail_session"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 10_000
MIN_TOKEN_LENGTH = 16
SHARED_CREDENTIAL = "shared"
Clock = Callable[[], float]

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
# Headers a proxy must not be trusted to carry a user name in (they mean something else here).
UNTRUSTABLE_HEADERS = frozenset(
    {"authorization", "cookie", "host", "origin", "referer", "content-length", "content-type"}
)

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


def check_header_name(name: str) -> str:
    """A header an authenticating proxy may set the user's name in; returns it lower-cased."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", name):
        raise ValueError(f"{name!r} is not a header name")
    if name.lower() in UNTRUSTABLE_HEADERS:
        raise ValueError(f"{name} cannot carry the reviewer's name")
    return name.lower()


def header_identity(raw: str) -> str | None:
    """The name in a trusted header, or None when it is not usable as one. Proxies send UTF-8;
    HTTP hands it over as Latin-1. A comma means a proxy joined two values: refused."""
    try:
        value = raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        value = raw
    value = value.strip()
    try:
        check_name(value)
    except ValueError:
        return None
    return None if "," in value else value


def client_key(conn: HTTPConnection) -> str:
    """Who the throttle counts failures for: the client's address (an IPv6 /64 as one)."""
    host = conn.client.host if conn.client is not None else ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request was let in as. ``identity`` is recorded with decisions; ``via`` is
    ``cookie``, ``bearer`` or ``header``; ``session`` names the session (the key of a cookie
    session, else ``via:identity``) for the CSRF token and for logout."""

    identity: str
    via: str
    session: str


@dataclass(frozen=True, slots=True)
class Throttled:
    """Too many wrong tokens: try again in ``retry_after`` seconds."""

    retry_after: int


# -- throttling ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Strikes:
    failures: int
    last: float
    until: float


class Throttle:
    """Failed logins, per client address and overall.

    An address may fail ``free`` times; from then on each failure locks it out for ``base``
    seconds, doubling with every further failure up to ``cap``; ``forget`` seconds without a
    failure (or a success) clear its count. Overall, failures spend a bucket of ``burst`` that
    refills at ``per_minute``; an empty bucket turns every login away until it refills. ``clock``
    (monotonic seconds) is injectable so tests need no sleeps.
    """

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        free: int = 5,
        base: float = 1.0,
        cap: float = 900.0,
        forget: float = 3600.0,
        burst: int = 50,
        per_minute: float = 10.0,
        max_addresses: int = 10_000,
    ) -> None:
        self.clock = clock
        self.free, self.base, self.cap, self.forget = free, base, cap, forget
        self.burst, self.rate = float(burst), per_minute / 60.0
        self.max_addresses = max_addresses
        self._strikes: OrderedDict[str, _Strikes] = OrderedDict()
        self._bucket = float(burst)
        self._filled = clock()
        self._lock = threading.Lock()

    def _refill(self, now: float) -> None:
        self._bucket = min(self.burst, self._bucket + (now - self._filled) * self.rate)
        self._filled = now

    def wait(self, address: str) -> float:
        """Seconds ``address`` must wait before a token is even looked at (0: go ahead)."""
        with self._lock:
            now = self.clock()
            self._refill(now)
            waits = [0.0]
            strikes = self._strikes.get(address)
            if strikes is not None:
                if now - strikes.last > self.forget:
                    del self._strikes[address]
                else:
                    waits.append(strikes.until - now)
            if self._bucket < 1:
                waits.append((1 - self._bucket) / self.rate)
            return max(waits)

    def failed(self, address: str) -> None:
        with self._lock:
            now = self.clock()
            self._refill(now)
            self._bucket = max(0.0, self._bucket - 1)
            strikes = self._strikes.pop(address, None) or _Strikes(0, now, now)
            strikes.failures += 1
            strikes.last = now
            if strikes.failures >= self.free:
                lock = self.base * 2.0 ** min(strikes.failures - self.free, 60)
                strikes.until = now + min(self.cap, lock)
            self._strikes[address] = strikes  # the most recent last
            while len(self._strikes) > self.max_addresses:
                self._strikes.popitem(last=False)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._strikes.pop(address, None)


# -- sessions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    identity: str
    credential: str  # the reviewer's token digest, or SHARED_CREDENTIAL
    expires: float


class Sessions:
    """The open sessions of this process, by the SHA-256 of the cookie (the cookie itself is
    not kept). Oldest sessions go first past ``limit``."""

    def __init__(
        self, clock: Clock = time.monotonic, lifetime: float = SESSION_SECONDS, limit: int = 0
    ) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.limit = limit or MAX_SESSIONS
        self._open: dict[str, Session] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(cookie: str) -> str:
        return hashlib.sha256(cookie.encode()).hexdigest()

    def open(self, identity: str, credential: str) -> tuple[str, str]:
        """A new session; returns (cookie, key)."""
        cookie = secrets.token_urlsafe(32)
        key = self.key(cookie)
        with self._lock:
            now = self.clock()
            for old in [k for k, s in self._open.items() if s.expires <= now]:
                del self._open[old]
            while len(self._open) >= self.limit:
                del self._open[next(iter(self._open))]
            self._open[key] = Session(identity, credential, now + self.lifetime)
        return cookie, key

    def find(self, cookie: str) -> tuple[str, Session] | None:
        key = self.key(cookie)
        with self._lock:
            session = self._open.get(key)
            if session is None:
                return None
            if session.expires <= self.clock():
                del self._open[key]
                return None
            return key, session

    def revoke(self, key: str) -> None:
        with self._lock:
            self._open.pop(key, None)

    def revoke_identity(self, identity: str) -> int:
        with self._lock:
            gone = [k for k, s in self._open.items() if s.identity == identity]
            for key in gone:
                del self._open[key]
            return len(gone)

    def __len__(self) -> int:
        return len(self._open)


# -- the authority ------------------------------------------------------------------------------


class Authority:
    """Who may log in and as whom: the shared token, the reviewers file, the trusted header, the
    sessions, the throttle, and the per-process secret behind CSRF tokens and signed outcomes."""

    def __init__(
        self,
        *,
        token: str | None = None,
        reviewers: ReviewerFile | None = None,
        trust_header: str | None = None,
        throttle: Throttle | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        trust_header = trust_header or None
        if token is None and reviewers is None and trust_header is None:
            raise ValueError(
                "the console needs a way to know who is deciding: reviewers' tokens "
                "(guardrail reviewers add NAME), a shared token, or a trusted proxy header"
            )
        self._token = check_token(token).encode() if token is not None else None
        self.reviewers = reviewers
        self.trust_header = check_header_name(trust_header) if trust_header is not None else None
        self.throttle = throttle or Throttle(clock=clock)
        self.sessions = Sessions(clock)
        self._secret = secrets.token_bytes(32)

    @property
    def shared(self) -> bool:
        return self._token is not None

    def _mac(self, purpose: str, *parts: str) -> str:
        message = "\x1f".join((purpose, *parts)).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    # -- tokens ------------------------------------------------------------------------------

    def identify(self, token: str) -> tuple[str, str] | None:
        """(identity, credential) for a token, or None. No throttling: see ``check``."""
        token = token.strip()
        found = None
        if self._token is not None and hmac.compare_digest(token.encode(), self._token):
            found = (SHARED_IDENTITY, SHARED_CREDENTIAL)
        if self.reviewers is not None:
            reviewer = self.reviewers.find(token)
            if reviewer is not None:
                found = (reviewer.name, reviewer.digest)
        return found

    def check(self, token: str, address: str) -> tuple[str, str] | Throttled | None:
        """``identify``, behind the throttle: a throttled address gets ``Throttled`` whatever
        the token; a wrong token counts against ``address``."""
        wait = self.throttle.wait(address)
        if wait > 0:
            return Throttled(max(1, math.ceil(wait)))
        found = self.identify(token)
        if found is None:
            self.throttle.failed(address)
        else:
            self.throttle.succeeded(address)
        return found

    def still_valid(self, identity: str, credential: str) -> bool:
        """Does the credential a session was opened with still hold (not removed, not
        replaced)?"""
        if credential == SHARED_CREDENTIAL:
            return self._token is not None
        return self.reviewers is not None and self.reviewers.current(identity, credential)

    # -- requests ------------------------------------------------------------------------------

    def login(self, token: str, address: str) -> tuple[Principal, str] | Throttled | None:
        """Check a token from the login form; on success open a session: (principal, cookie)."""
        found = self.check(token, address)
        if found is None or isinstance(found, Throttled):
            return found
        identity, credential = found
        cookie, key = self.sessions.open(identity, credential)
        return Principal(identity, "cookie", key), cookie

    def logout(self, principal: Principal) -> None:
        if principal.via == "cookie":
            self.sessions.revoke(principal.session)

    def authenticate(self, conn: HTTPConnection) -> Principal | Throttled | None:
        if self.trust_header is not None:
            values = conn.headers.getlist(self.trust_header)
            if values:
                name = header_identity(values[0]) if len(values) == 1 else None
                return Principal(name, "header", f"header:{name}") if name else None
        scheme, _, credentials = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            found = self.check(credentials, client_key(conn))
            if found is None or isinstance(found, Throttled):
                return found
            identity, _ = found
            return Principal(identity, "bearer", f"bearer:{identity}")
        cookie = conn.cookies.get(SESSION_COOKIE)
        return self.from_cookie(cookie) if cookie else None

    def from_cookie(self, cookie: str) -> Principal | None:
        """The principal of an open session whose credential still holds, else None (and a
        session whose reviewer was removed or given a new token is closed)."""
        open_session = self.sessions.find(cookie)
        if open_session is None:
            return None
        key, session = open_session
        if self.still_valid(session.identity, session.credential):
            return Principal(session.identity, "cookie", key)
        self.sessions.revoke(key)
        return None

    # -- CSRF and signed outcomes ----------------------------------------------------------

    def csrf(self, principal: Principal) -> str:
        return self._mac("csrf", principal.via, principal.session)

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
