"""The webhook's retries while the console runs: `guardrail serve` on a guard with a
``webhook_url`` posts the events that are due (`Guard.deliver`) every few seconds, in a thread of
its own, and stops with the server.

A pass that fails (the store unreachable, a bug) is logged and the next pass tries again: the
loop never ends the server, and the events stay in the outbox until they are delivered.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from guardrail.guard import Guard
from guardrail.outbox import Delivery

log = logging.getLogger("guardrail")
DELIVER_EVERY = 5.0  # seconds between passes


class DeliveryLoop:
    """Calls ``guard.deliver()`` now and then every ``every`` seconds, until `stop`."""

    def __init__(self, guard: Guard, every: float = DELIVER_EVERY) -> None:
        if every <= 0:
            raise ValueError(f"every={every}: the seconds between passes must be more than 0")
        self.guard = guard
        self.every = every
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.passes = 0
        self.failures = 0

    def once(self) -> Delivery | None:
        """One pass: what it delivered, or None when it failed (logged, never raised)."""
        self.passes += 1
        try:
            return self.guard.deliver()
        except Exception as exc:  # a pass that fails must not end the server
            self.failures += 1
            log.warning(
                "guardrail console: delivering webhook events failed (%s: %s); trying again in "
                "%g s",
                type(exc).__name__,
                exc,
                self.every,
            )
            return None

    def run(self) -> None:
        while not self.stopping.is_set():
            self.once()
            if self.stopping.wait(self.every):
                return

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="guardrail-deliver", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the loop to stop and wait for a pass under way to end (at most ``timeout``)."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout)


@contextmanager
def delivering(guard: Guard, every: float = DELIVER_EVERY) -> Iterator[DeliveryLoop | None]:
    """Deliver in the background while the block runs, if the guard has a webhook (and
    ``every`` is more than 0); yields the loop, or None when there is nothing to deliver to."""
    if not guard.webhook_url or every <= 0:
        yield None
        return
    loop = DeliveryLoop(guard, every)
    loop.start()
    try:
        yield loop
    finally:
        loop.stop()
