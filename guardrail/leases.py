"""Owners and leases: who executes a run, and how another process tells whether it still does.

Each run being executed has an owner (``host|pid|start|boot|pidns``) holding a lease: the run's
epoch, renewed by a heartbeat while the owner works on the run. `Leases` is this process's book
of the leases it renews, and its heartbeat thread.

The takeover rule: a run's lease has expired when its heartbeat is older than ``stale_after``
(clocks of the hosts sharing a store are assumed to agree within a small fraction of it). A run
can be taken over sooner only when its owner provably died: the owner ran on this host, in this
boot and in this PID namespace, and its pid is gone or now belongs to a process started at another
time. No signal is ever sent to find out.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

from guardrail.clock import Clock
from guardrail.store import Store
from guardrail.transitions import Lease

log = logging.getLogger("guardrail")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


BOOT = _read("/proc/sys/kernel/random/boot_id")
PIDNS = _namespace()


def _start_time(pid: int) -> str | None:
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def make_owner() -> str:
    """``host|pid|start|boot|pidns`` names this process so another one can tell whether it is
    alive: the pid means something only in the same boot and the same PID namespace."""
    pid = os.getpid()
    start = _start_time(pid) or uuid.uuid4().hex[:8]
    return "|".join((socket.gethostname(), str(pid), start, BOOT or "", PIDNS or ""))


def owner_alive(
    owner: str | None, heartbeat_at: float | None, stale_after: float, now: float | None = None
) -> bool:
    """False when the owner's lease expired at ``now`` (epoch seconds; the system clock if left
    out), or its process provably died (see the module doc)."""
    if owner is None:
        return True  # nobody is executing it: it waits for a person or an agent to restart it
    at = time.time() if now is None else now
    if heartbeat_at is None or heartbeat_at < at - stale_after:
        return False
    return not proven_dead(owner)


def proven_dead(owner: str | None) -> bool:
    """The owner ran on this host, in this boot and PID namespace, and its process is gone."""
    parts = (owner or "").split("|")
    if (
        len(parts) == 5
        and parts[0] == socket.gethostname()
        and parts[1].isdigit()
        and BOOT
        and PIDNS
        and (parts[3], parts[4]) == (BOOT, PIDNS)
    ):
        return _start_time(int(parts[1])) != parts[2]
    return False


class Leases:
    """This process's owner name and the leases it renews (run id -> epoch), with the heartbeat
    thread that renews them every ``interval`` seconds; a lease is stale after ``stale_after``."""

    def __init__(self, store: Store, clock: Clock, owner: str, interval: float) -> None:
        self.store = store
        self.clock = clock
        self.owner = owner
        self.interval = interval
        self.stale_after = interval * 6
        self.held: dict[str, int] = {}  # run id -> epoch of the runs this process executes now
        self._beat: threading.Thread | None = None
        self._stop = threading.Event()

    def alive(self, owner: str | None, heartbeat_at: float | None) -> bool:
        """Whether ``owner`` still holds its run by this book's clock and ``stale_after``."""
        return owner_alive(owner, heartbeat_at, self.stale_after, self.clock())

    def hold(self, lease: Lease) -> None:
        """Keep renewing ``lease`` while this process executes its run (a run, a compensation)."""
        self.held[lease.run_id] = lease.epoch
        self.beat()

    def drop(self, run_id: str, epoch: int | None = None) -> None:
        """Stop renewing the run's lease (done with it, or gave up after a store fault, so
        that recovery can take it over when the lease expires)."""
        if epoch is None or self.held.get(run_id) == epoch:
            self.held.pop(run_id, None)

    def beat(self) -> None:
        """Start the heartbeat thread, unless it runs already."""
        if self._beat is not None and self._beat.is_alive():
            return
        self._stop.clear()
        self._beat = threading.Thread(
            target=self._heartbeat, name="guardrail-heartbeat", daemon=True
        )
        self._beat.start()

    def stop(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.store.heartbeat(self.owner, list(self.held), self.clock())
            except Exception:
                log.warning("guardrail heartbeat failed", exc_info=True)
