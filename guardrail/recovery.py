"""Crash recovery: owners, liveness, and finishing the runs whose owner died.

Each running run has an owner (``host|pid|start``) and a heartbeat. `recover` claims a dead
owner's run by compare-and-set on the owner column (so of several recovery workers exactly one
takes it), settles its calls in doubt, and halts it, or finishes the compensation or abort the
dead owner was doing. Nothing done is done again.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import TYPE_CHECKING, Any

from guardrail.drive import Invoke, Steps, attempts
from guardrail.lifecycle import compensate, halt, now, run_write, undo_kwargs
from guardrail.redact import NotJSON, to_jsonable
from guardrail.store import Action, RunRecord, Write

if TYPE_CHECKING:
    from guardrail.guard import Guard

LIVE = ("running", "compensating", "aborting")


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def make_owner() -> str:
    """``host|pid|start`` names this process so another one can tell whether it is alive."""
    pid = os.getpid()
    return f"{socket.gethostname()}|{pid}|{_start_time(pid) or uuid.uuid4().hex[:8]}"


def owner_alive(owner: str | None, heartbeat_at: float | None, stale_after: float) -> bool:
    """Dead when its process is gone from this host, or its heartbeat stopped."""
    if owner is None:
        return True  # nobody is executing it: it waits for a person or an agent to restart it
    host, _, rest = owner.partition("|")
    pid_text, _, start = rest.partition("|")
    if host == socket.gethostname() and pid_text.isdigit():
        seen = _start_time(int(pid_text))
        if os.path.exists("/proc/self/stat"):
            return seen is not None and seen == start
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    return heartbeat_at is not None and heartbeat_at >= now() - stale_after


def recover(guard: Guard) -> Steps[list[str]]:
    """Finish the runs whose owner died. Returns the ids of the runs this call recovered."""
    store = guard.store
    recovered: list[str] = []
    for status in LIVE:
        for run in store.runs(status=status):
            if owner_alive(run.owner, run.heartbeat_at, guard.stale_after):
                continue
            claimed = store.transact(
                run.id,
                "run.claim",
                [
                    Write(
                        "runs",
                        {"id": run.id},
                        {"owner": guard.owner, "heartbeat_at": now(), "updated_at": now()},
                        expect={"owner": (run.owner,), "status": (status,)},
                    )
                ],
            )
            if not claimed:
                continue  # another recovery worker took it
            guard.beat()
            yield from _finish(guard, run)
            recovered.append(run.id)
    return recovered


def _finish(guard: Guard, run: RunRecord) -> Steps[None]:
    store = guard.store
    if run.status == "running":
        for action in store.actions(run.id):
            if action.state == "started":
                yield from _settle(guard, action)
        yield from halt(guard, run.id, reason=f"recovered: owner {run.owner} is gone")
    elif run.status == "compensating":
        yield from compensate(guard, run.id)
        store.transact(
            run.id, "run.review", [run_write(run.id, ("compensating",), status="pending_review")]
        )
        guard.notify(guard.require_run(run.id))
    else:
        yield from compensate(guard, run.id)
        store.transact(
            run.id, "run.aborted", [run_write(run.id, ("aborting",), status="aborted", owner=None)]
        )


def _settle(guard: Guard, action: Action) -> Steps[None]:
    """An action that started but has no outcome: ask the probe, else mark it in doubt."""
    from guardrail.call import finish_writes

    policy = guard.find_policy(action.tool)
    verdict: Any = None
    if policy is not None and policy.probe is not None:
        kwargs = undo_kwargs(policy.probe, action, {})
        kwargs.pop("result", None)
        outcome = yield from attempts(policy.undo_retry, Invoke(policy.probe, kwargs))
        verdict = outcome.value if outcome.error is None else None
    key = {"run_id": action.run_id, "seq": action.seq}
    if verdict is False:
        writes = [
            Write(
                "actions",
                key,
                {"state": "failed", "error": "probe: it did not take effect", "finished_at": now()},
                expect={"state": ("started",)},
            )
        ]
    elif verdict is not None and policy is not None:
        result = None if verdict is True else verdict
        try:
            result = to_jsonable(result)
        except NotJSON:
            result = None
        writes = finish_writes(guard, policy, action.run_id, action.seq, dict(action.args), result)
        writes[0].expect = {"state": ("started",)}
    else:
        writes = [
            Write(
                "actions",
                key,
                {"state": "in_doubt", "error": "owner died during the call", "finished_at": now()},
                expect={"state": ("started",)},
            )
        ]
    guard.store.transact(action.run_id, "action.settle", writes)
