"""The guard's clock (``Guard(clock=...)``): every time the core reads and every timestamp it
records comes from it, so tests move time by moving a clock, not by patching modules."""

from __future__ import annotations

import pytest

from guardrail import Guard, GuardrailError, RunHalted
from guardrail.testing import ManualClock

T0 = 1_000_000.0  # long ago by the system clock: a stamp from it cannot be the system's


def test_what_a_run_records_is_stamped_by_the_guards_clock(store_url: str) -> None:
    clock = ManualClock(T0)
    with Guard(store=store_url, clock=clock) as guard:
        guard.policy("create", effect="reversible", undo=lambda args: None)
        guard.policy("charge", effect="irreversible")

        def create(item: str) -> str:
            clock.advance(2)  # the call takes two seconds
            return item

        def charge(amount: int) -> None:
            raise ValueError("card declined")

        with pytest.raises(RunHalted), guard.run(agent="shop") as run:
            run.call("create", {"item": "book"}, fn=create)
            clock.advance(10)
            run.call("charge", {"amount": 5}, fn=charge)
        log = guard.log(run.id)
        assert (log.run.created_at, log.run.heartbeat_at) == (T0, T0)
        assert log.run.updated_at == T0 + 12  # the halt
        create_action, charge_action = log.actions
        assert (create_action.started_at, create_action.finished_at) == (T0, T0 + 2)
        assert (charge_action.started_at, charge_action.finished_at) == (T0 + 12, T0 + 12)
        [undo] = log.compensations
        assert (undo.started_at, undo.finished_at) == (T0 + 12, T0 + 12)
        assert {i.created_at for i in log.review_items} == {T0 + 12}

        clock.advance(60)
        item = log.review_items[0].id
        guard.resolve(item, "done_manually", by="ann")
        resolved = guard.store.review_item(item)
        assert resolved is not None and resolved.resolved_at == T0 + 72


def test_a_lease_expires_by_the_clock(store_url: str) -> None:
    """A run its worker gave up on is taken over once its heartbeat is older than
    ``stale_after`` by the recovering guard's clock, not before."""
    clock = ManualClock(T0)
    with (
        Guard(store=store_url, clock=clock) as worker,
        Guard(store=store_url, clock=clock) as rescuer,
    ):
        worker.policy("create", effect="reversible", undo=lambda args: None)
        run = worker.run(agent="shop").start()
        run.call("create", {"item": "book"}, fn=lambda item: item)
        worker.drop_lease(run.id)  # nothing renews it any more (this process lives on)
        assert rescuer.stale_after == 30.0
        clock.advance(30)
        assert rescuer.recover() == []  # 30 s old: not yet stale
        clock.advance(1)
        assert rescuer.recover() == [run.id]
        record = rescuer.require_run(run.id)
        assert (record.status, record.updated_at) == ("pending_review", T0 + 31)


def test_a_clock_that_is_no_clock_is_refused(sqlite_url: str) -> None:
    with pytest.raises(GuardrailError) as not_callable:
        Guard(store=sqlite_url, clock=1.5)  # type: ignore[arg-type]
    assert not_callable.value.field == "clock" and "not callable" in str(not_callable.value)
    with pytest.raises(GuardrailError) as not_seconds:
        Guard(store=sqlite_url, clock=lambda: "noon")  # type: ignore[arg-type, return-value]
    assert not_seconds.value.field == "clock" and "'noon'" in str(not_seconds.value)
