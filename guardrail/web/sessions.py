"""The console's server-side sessions: a cookie is a random id that means something only to this
process's :class:`Sessions`."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from guardrail.web.throttle import Clock

SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 10_000


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
