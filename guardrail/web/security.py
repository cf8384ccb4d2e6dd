"""What keeps the console safe to leave running: who gets in, as whom, sessions, throttling,
CSRF, signed outcomes. The sessions, the throttle and the middleware have modules of their own
(:mod:`guardrail.web.sessions`, :mod:`guardrail.web.throttle`, :mod:`guardrail.web.middleware`).

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
page in a one-shot cookie signed for the session (:mod:`guardrail.web.flash`), so neither a
crafted link nor a reload can put words in the console's mouth.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from guardrail.web.reviewers import SHARED_IDENTITY, ReviewerFile, check_name
from guardrail.web.sessions import SESSION_SECONDS as SESSION_SECONDS
from guardrail.web.sessions import Sessions
from guardrail.web.throttle import Clock as Clock
from guardrail.web.throttle import Throttle as Throttle
from guardrail.web.throttle import Throttled as Throttled
from guardrail.web.throttle import client_key as client_key

SESSION_COOKIE = "guardrail_session"
MIN_TOKEN_LENGTH = 16
SHARED_CREDENTIAL = "shared"
# Headers a proxy must not be trusted to carry a user name in (they mean something else here).
UNTRUSTABLE_HEADERS = frozenset(
    {"authorization", "cookie", "host", "origin", "referer", "content-length", "content-type"}
)


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


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request was let in as. ``identity`` is recorded with decisions; ``via`` is
    ``cookie``, ``bearer`` or ``header``; ``session`` names the session (the key of a cookie
    session, else ``via:identity``) for the CSRF token and for logout."""

    identity: str
    via: str
    session: str


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

    def sign(self, purpose: str, principal: Principal, payload: str) -> str:
        """A signature of ``payload`` for ``purpose``, valid for this principal's session only
        (and only in this process)."""
        return self._mac(purpose, principal.via, principal.session, payload)

    def signed(self, purpose: str, principal: Principal, payload: str, signature: str) -> bool:
        return hmac.compare_digest(
            signature.encode(), self.sign(purpose, principal, payload).encode()
        )
