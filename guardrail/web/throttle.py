"""Wrong tokens, counted: per client address with exponential backoff, and overall with a token
bucket (see :class:`Throttle`)."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import HTTPConnection

Clock = Callable[[], float]


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
