"""Decisions by people: resume, abort and resolve are idempotent, and racing deciders (threads or
processes) see exactly one decision land. Asserted on the stored log and on the world."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from guardrail import Conflict, Decision, Guard, RunHalted, RunNotFound, RunStateError
from guardrail.store import Action
from guardrail.testing import ScriptedTool

REPEATS = 20
WAIT = 60  # seconds a barrier waits at most; a deadline, never a sleep


class World:
    """The side effects outside the guard's store: orders, and every undo that ran."""

    def __init__(self, undo_log: Path | None = None) -> None:
        self.orders: dict[str, str] = {}
        self.undone: list[tuple[str, int]] = []
        self.undo_log = undo_log
        self._lock = threading.Lock()

    def undo(self, action: Action) -> None:
        with self._lock:
            self.undone.append((action.run_id, action.seq))
            self.orders.pop(f"{action.run_id}/{action.seq}", None)
        if self.undo_log is not None:
            # O_APPEND: one small write is atomic, so processes can share the file.
            with open(self.undo_log, "a") as f:
                f.write(f"{action.run_id} {action.seq}\n")

    def create(self, item: str) -> dict[str, str]:
        return {"item": item}


def declare(guard: Guard, world: World) -> None:
    """A reversible ``create`` (whose undo the world counts) and a ``ship`` that is held on
    failure, so a run halts with nothing undone yet and an abort has something to undo. The
    ship is a read-only check that is not retried: its failure proves it did nothing."""
    guard.policy("create", effect="reversible", undo=world.undo)
    guard.policy("ship", effect="read_only", on_failure="hold", retry={"attempts": 1})


def held_run(guard: Guard, world: World) -> str:
    """A run in ``pending_review`` with one undoable action and one open ``held`` review item."""
    with pytest.raises(RunHalted) as halted, guard.run(agent="shop") as run:
        created = run.call("create", {"item": "book"}, fn=world.create)
        world.orders[f"{run.id}/1"] = created["item"]
        run.call("ship", {"order": "book"}, fn=ScriptedTool([RuntimeError("carrier is down")]))
    assert halted.value.status == "pending_review"
    assert len(halted.value.review_items) == 1
    return run.id


def snapshot(guard: Guard, run_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Everything stored about a run: its log and its journal."""
    log = guard.log(run_id).model_dump()
    log["run"].pop("heartbeat_at")  # liveness, not part of the decision
    return log, [e.model_dump() for e in guard.store.entries(run_id)]


def race(*deciders: Callable[[], Decision]) -> list[Decision | Exception]:
    """Run the deciders in threads that start together; return each one's decision or error."""
    barrier = threading.Barrier(len(deciders))
    outcomes: list[Decision | Exception | None] = [None] * len(deciders)

    def work(i: int, decide: Callable[[], Decision]) -> None:
        barrier.wait(timeout=WAIT)
        try:
            outcomes[i] = decide()
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=work, args=(i, d)) for i, d in enumerate(deciders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=WAIT)
        assert not t.is_alive(), "a decider hung"
    assert all(o is not None for o in outcomes)
    return outcomes  # type: ignore[return-value]


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def shop(guard: Guard, world: World) -> Guard:
    declare(guard, world)
    return guard


# -- repeats -----------------------------------------------------------------------------------


def test_abort_twice_equals_abort_once(shop: Guard, world: World) -> None:
    run_id = held_run(shop, world)
    first = shop.abort(run_id, by="bob", reason="customer cancelled")
    assert (first.landed, first.status, first.by) == (True, "aborted", "bob")
    assert world.undone == [(run_id, 1)]
    assert world.orders == {}
    stored = snapshot(shop, run_id)

    again = shop.abort(run_id, by="bob", reason="customer cancelled")
    assert (again.landed, again.status) == (False, "aborted")
    other = shop.abort(run_id, by="carol", reason="me too")
    assert (other.landed, other.status, other.by) == (False, "aborted", "bob")

    assert world.undone == [(run_id, 1)]  # the undo ran once
    assert snapshot(shop, run_id) == stored  # nothing more was written
    log = shop.log(run_id)
    assert (log.run.status, log.run.decided_by, log.run.decision_note) == (
        "aborted",
        "bob",
        "customer cancelled",
    )
    assert [(a.seq, a.state) for a in log.actions] == [(1, "compensated"), (2, "failed")]
    assert [c.state for c in log.compensations] == ["succeeded"]
    assert shop.verify(run_id).ok


def test_resume_twice(shop: Guard, world: World) -> None:
    run_id = held_run(shop, world)
    first = shop.resume(run_id, by="ann", note="carrier is back")
    assert (first.landed, first.status, first.by) == (True, "running", "ann")
    stored = snapshot(shop, run_id)

    again = shop.resume(run_id, by="ann", note="carrier is back")
    assert (again.landed, again.status) == (False, "running")
    late = shop.resume(run_id, by="dave", note="also looked")
    assert (late.landed, late.status) == (False, "running")

    assert snapshot(shop, run_id) == stored
    run = shop.log(run_id).run
    assert (run.status, run.decided_by, run.decision_note, run.owner) == (
        "running",
        "ann",
        "carrier is back",
        None,
    )
    assert world.undone == []
    assert shop.verify(run_id).ok


def test_resume_after_abort_is_a_conflict(shop: Guard, world: World) -> None:
    run_id = held_run(shop, world)
    assert shop.abort(run_id, by="bob", reason="too late").landed
    stored = snapshot(shop, run_id)
    with pytest.raises(Conflict) as err:
        shop.resume(run_id, by="ann", note="go on")
    assert err.value.run_id == run_id
    assert err.value.status == "aborted"
    assert run_id in str(err.value) and "aborted" in str(err.value) and "bob" in str(err.value)
    assert snapshot(shop, run_id) == stored
    assert world.undone == [(run_id, 1)]


def test_abort_after_resume_is_a_conflict(shop: Guard, world: World) -> None:
    run_id = held_run(shop, world)
    assert shop.resume(run_id, by="ann").landed
    stored = snapshot(shop, run_id)
    with pytest.raises(Conflict) as err:
        shop.abort(run_id, by="bob")
    assert err.value.status == "running"
    assert run_id in str(err.value) and "ann" in str(err.value)
    assert snapshot(shop, run_id) == stored
    assert world.undone == []  # a refused abort undoes nothing


def test_decisions_record_reviewer_and_note(shop: Guard, world: World) -> None:
    resumed = held_run(shop, world)
    shop.resume(resumed, by="ann", note="carrier confirmed by phone")
    run = shop.log(resumed).run
    assert (run.decided_by, run.decision_note) == ("ann", "carrier confirmed by phone")

    aborted = held_run(shop, world)
    shop.abort(aborted, by="bob", reason="customer cancelled")
    run = shop.log(aborted).run
    assert (run.decided_by, run.decision_note) == ("bob", "customer cancelled")

    waiting = held_run(shop, world)
    [item] = shop.log(waiting).review_items
    decision = shop.resolve(item.id, "done_manually", by="carol", note="shipped by hand")
    assert (decision.landed, decision.run_id, decision.status, decision.by) == (
        True,
        waiting,
        "done_manually",
        "carol",
    )
    [item] = shop.log(waiting).review_items
    assert (item.status, item.resolution, item.resolved_by, item.note) == (
        "resolved",
        "done_manually",
        "carol",
        "shipped by hand",
    )
    assert item.resolved_at is not None
    assert shop.log(waiting).run.status == "pending_review"  # an item is not the run's decision
    assert shop.verify(resumed).ok and shop.verify(aborted).ok and shop.verify(waiting).ok


def test_resolve_twice(shop: Guard, world: World) -> None:
    run_id = held_run(shop, world)
    [item] = shop.log(run_id).review_items
    assert shop.resolve(item.id, "skipped", by="ann", note="not needed").landed
    stored = snapshot(shop, run_id)
    again = shop.resolve(item.id, "skipped", by="ann", note="not needed")
    assert not again.landed
    with pytest.raises(Conflict) as err:
        shop.resolve(item.id, "retried", by="bob")
    assert err.value.run_id == run_id
    assert "skipped" in str(err.value) and "ann" in str(err.value)
    assert snapshot(shop, run_id) == stored
    [item] = shop.log(run_id).review_items
    assert (item.resolution, item.resolved_by, item.note) == ("skipped", "ann", "not needed")


def test_resolve_with_an_unknown_resolution_is_refused(shop: Guard, world: World) -> None:
    run_id = held_run(shop, world)
    [item] = shop.log(run_id).review_items
    with pytest.raises(RunStateError, match="done_manually"):
        shop.resolve(item.id, "whatever", by="ann")
    assert shop.log(run_id).review_items[0].status == "open"


def test_unknown_run_or_item(shop: Guard) -> None:
    for decide in (
        lambda: shop.resume("no-such-run", by="ann"),
        lambda: shop.abort("no-such-run", by="ann"),
    ):
        with pytest.raises(RunNotFound) as err:
            decide()
        assert err.value.run_id == "no-such-run"
        assert "no-such-run" in str(err.value)
    with pytest.raises(RunNotFound) as err:
        shop.resolve("no-such-item", "skipped", by="ann")
    assert "no-such-item" in str(err.value)
    assert shop.runs() == []


# -- racing threads ----------------------------------------------------------------------------


@pytest.mark.parametrize("place", ["one guard", "two guards"])
def test_threads_racing_resume_and_abort(store_url: str, world: World, place: str) -> None:
    first = Guard(store=store_url)
    second = first if place == "one guard" else Guard(store=store_url)
    try:
        declare(first, world)
        declare(second, world)
        winners = []
        for _ in range(REPEATS):
            run_id = held_run(first, world)
            resume, abort = race(
                lambda: first.resume(run_id, by="resumer", note="go on"),  # noqa: B023
                lambda: second.abort(run_id, by="aborter", reason="stop"),  # noqa: B023
            )
            outcomes = {"resume": resume, "abort": abort}
            landed = [k for k, o in outcomes.items() if isinstance(o, Decision) and o.landed]
            assert len(landed) == 1, outcomes
            [winner] = landed
            loser = outcomes["abort" if winner == "resume" else "resume"]
            assert isinstance(loser, Conflict), outcomes  # a different decision: never silent
            assert loser.run_id == run_id
            winners.append(winner)

            log = first.log(run_id)
            undone = world.undone.count((run_id, 1))
            if winner == "resume":
                assert (log.run.status, log.run.decided_by, log.run.decision_note) == (
                    "running",
                    "resumer",
                    "go on",
                )
                assert undone == 0
                assert log.action(1).state == "succeeded"
            else:
                assert (log.run.status, log.run.decided_by, log.run.decision_note) == (
                    "aborted",
                    "aborter",
                    "stop",
                )
                assert undone == 1
                assert log.action(1).state == "compensated"
            assert second.verify(run_id).ok
        assert len(world.undone) == winners.count("abort")
    finally:
        if second is not first:
            second.close()
        first.close()


@pytest.mark.parametrize("place", ["one guard", "two guards"])
def test_threads_racing_abort_and_abort(store_url: str, world: World, place: str) -> None:
    first = Guard(store=store_url)
    second = first if place == "one guard" else Guard(store=store_url)
    try:
        declare(first, world)
        declare(second, world)
        for _ in range(REPEATS):
            run_id = held_run(first, world)
            a, b = race(
                lambda: first.abort(run_id, by="alice", reason="a"),  # noqa: B023
                lambda: second.abort(run_id, by="bert", reason="b"),  # noqa: B023
            )
            assert isinstance(a, Decision) and isinstance(b, Decision), (a, b)
            assert sorted([a.landed, b.landed]) == [False, True]
            winner = "alice" if a.landed else "bert"
            log = first.log(run_id)
            assert (log.run.status, log.run.decided_by) == ("aborted", winner)
            assert log.run.decision_note == ("a" if winner == "alice" else "b")
            assert world.undone.count((run_id, 1)) == 1  # undone exactly once
            assert [c.seq for c in log.compensations] == [1]
            assert second.verify(run_id).ok
    finally:
        if second is not first:
            second.close()
        first.close()


@pytest.mark.parametrize("place", ["one guard", "two guards"])
def test_threads_racing_resolve(store_url: str, world: World, place: str) -> None:
    first = Guard(store=store_url)
    second = first if place == "one guard" else Guard(store=store_url)
    try:
        declare(first, world)
        declare(second, world)
        for _ in range(REPEATS):
            run_id = held_run(first, world)
            [item] = first.log(run_id).review_items
            a, b = race(
                lambda: first.resolve(item.id, "done_manually", by="ann", note="n1"),  # noqa: B023
                lambda: second.resolve(item.id, "skipped", by="bob", note="n2"),  # noqa: B023
            )
            landed = [o for o in (a, b) if isinstance(o, Decision) and o.landed]
            conflicts = [o for o in (a, b) if isinstance(o, Conflict)]
            assert (len(landed), len(conflicts)) == (1, 1), (a, b)
            [won] = landed
            [stored] = first.log(run_id).review_items
            assert (stored.status, stored.resolution, stored.resolved_by) == (
                "resolved",
                won.status,
                won.by,
            )
            assert stored.note == ("n1" if won.by == "ann" else "n2")
            assert conflicts[0].run_id == run_id
            assert second.verify(run_id).ok
    finally:
        if second is not first:
            second.close()
        first.close()


# -- racing processes --------------------------------------------------------------------------


def decide_in_process(
    url: str,
    undo_log: str,
    plan: list[tuple[str, str, str]],
    barrier: Any,
    results: Any,
) -> None:
    """A reviewer in another process: for each (run, op, by) meet the other one, then decide."""
    world = World(Path(undo_log))
    guard = Guard(store=url)
    try:
        declare(guard, world)
        for run_id, op, by in plan:
            barrier.wait(timeout=WAIT)
            try:
                if op == "resume":
                    d = guard.resume(run_id, by=by, note=f"{op} by {by}")
                else:
                    d = guard.abort(run_id, by=by, reason=f"{op} by {by}")
                results.put((run_id, by, "landed" if d.landed else "repeat", d.status))
            except Conflict as exc:
                results.put((run_id, by, "conflict", str(exc)))
            except Exception as exc:
                results.put((run_id, by, "error", f"{type(exc).__name__}: {exc}"))
    finally:
        guard.close()


def test_processes_racing_resume_abort_and_abort_abort(store_url: str, tmp_path: Path) -> None:
    undo_log = tmp_path / "undone.txt"
    undo_log.touch()
    world = World(undo_log)
    rounds = 8
    with Guard(store=store_url) as guard:
        declare(guard, world)
        versus = [held_run(guard, world) for _ in range(rounds)]  # resume vs abort
        both = [held_run(guard, world) for _ in range(rounds // 2)]  # abort vs abort
        plans = (
            [(r, "resume", "resumer") for r in versus] + [(r, "abort", "p1") for r in both],
            [(r, "abort", "aborter") for r in versus] + [(r, "abort", "p2") for r in both],
        )
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(2)
        results = ctx.Queue()
        procs = [
            ctx.Process(
                target=decide_in_process,
                args=(store_url, str(undo_log), plan, barrier, results),
            )
            for plan in plans
        ]
        for p in procs:
            p.start()
        outcomes: dict[str, dict[str, tuple[str, str]]] = {}
        for _ in range(2 * len(plans[0])):
            run_id, by, kind, detail = results.get(timeout=WAIT)
            outcomes.setdefault(run_id, {})[by] = (kind, detail)
        for p in procs:
            p.join(timeout=WAIT)
            assert p.exitcode == 0

        undone = undo_log.read_text().split("\n")
        for run_id in versus:
            got = outcomes[run_id]
            kinds = sorted(kind for kind, _ in got.values())
            assert kinds == ["conflict", "landed"], got
            [winner] = [by for by, (kind, _) in got.items() if kind == "landed"]
            run = guard.log(run_id).run
            assert run.decided_by == winner
            assert run.status == ("running" if winner == "resumer" else "aborted")
            assert undone.count(f"{run_id} 1") == (1 if winner == "aborter" else 0)
            assert guard.verify(run_id).ok
        for run_id in both:
            got = outcomes[run_id]
            assert sorted(kind for kind, _ in got.values()) == ["landed", "repeat"], got
            [winner] = [by for by, (kind, _) in got.items() if kind == "landed"]
            run = guard.log(run_id).run
            assert (run.status, run.decided_by) == ("aborted", winner)
            assert undone.count(f"{run_id} 1") == 1
            assert guard.verify(run_id).ok


# -- the held item, the undos a decision needs, the policies it runs under ---------------------


def test_resume_and_abort_close_the_held_item_in_their_own_transaction(
    shop: Guard, world: World
) -> None:
    for decide, resolution in (
        (lambda r: shop.resume(r, by="ann", note="carrier is back"), "resumed"),
        (lambda r: shop.abort(r, by="ann", reason="carrier is back"), "aborted"),
    ):
        run_id = held_run(shop, world)
        entries = len(shop.store.entries(run_id))
        assert decide(run_id).landed
        [held] = shop.log(run_id).review_items
        assert (held.reason, held.status, held.resolution, held.resolved_by, held.note) == (
            "held",
            "resolved",
            resolution,
            "ann",
            "carrier is back",
        )
        # one journal entry holds both the decision and the item it answers
        decided = shop.store.entries(run_id)[entries]
        assert decided.kind == ("run.resume" if resolution == "resumed" else "run.abort")
        assert '"review_items"' in decided.body and '"runs"' in decided.body
        assert shop.verify(run_id).ok


def test_a_held_item_a_person_resolved_keeps_their_resolution(shop: Guard, world: World) -> None:
    run_id = held_run(shop, world)
    [item] = shop.log(run_id).review_items
    shop.resolve(item.id, "retried", by="bob", note="shipped by hand")
    assert shop.resume(run_id, by="ann").landed
    [item] = shop.log(run_id).review_items
    assert (item.resolution, item.resolved_by) == ("retried", "bob")
    assert shop.verify(run_id).ok


def test_threads_racing_resume_and_resolving_the_held_item(shop: Guard, world: World) -> None:
    """Resolving the held item while the run is resumed never makes the resume fail: whichever
    lands first, the run is resumed and the item is closed exactly once."""
    for _ in range(REPEATS):
        run_id = held_run(shop, world)
        [item] = shop.log(run_id).review_items
        resumed, resolved = race(
            lambda: shop.resume(run_id, by="ann"),  # noqa: B023
            lambda: shop.resolve(item.id, "skipped", by="bob"),  # noqa: B023
        )
        assert isinstance(resumed, Decision) and resumed.landed, resumed
        [stored] = shop.log(run_id).review_items
        if isinstance(resolved, Decision):
            assert resolved.landed
            assert (stored.resolution, stored.resolved_by) == ("skipped", "bob")
        else:
            assert isinstance(resolved, Conflict), resolved  # the resume closed it first
            assert (stored.resolution, stored.resolved_by) == ("resumed", "ann")
        assert shop.log(run_id).run.status == "running"
        assert shop.verify(run_id).ok


def test_an_abort_that_requires_its_undos_refuses_before_changing_anything(
    store_url: str, world: World
) -> None:
    from guardrail.decisions import UndosMissing, missing_undos

    with Guard(store=store_url) as agent, Guard(store=store_url) as reviewer:
        declare(agent, world)
        run_id = held_run(agent, world)
        before = snapshot(agent, run_id)
        with pytest.raises(UndosMissing) as refused:
            reviewer.abort(run_id, by="bob", require_undos=True)
        assert refused.value.run_id == run_id and refused.value.field == "undo"
        assert [(s.seq, s.tool) for s in refused.value.steps] == [(1, "create")]
        assert "no undo is registered for create" in str(refused.value)
        assert "Nothing was changed" in str(refused.value)
        assert snapshot(agent, run_id) == before and world.undone == []

        # an undo tool that is not registered here is missing too
        reviewer.policy("create", effect="reversible", undo={"tool": "cancel"})
        [step] = missing_undos(reviewer, reviewer.store.actions(run_id))
        assert "its undo is the tool 'cancel', which is not registered here" in step.detail
        reviewer.register(lambda item: world.undone.append((run_id, 1)), name="cancel")
        assert missing_undos(reviewer, reviewer.store.actions(run_id)) == []
        decision = reviewer.abort(run_id, by="bob", require_undos=True)
        assert decision.landed and world.undone == [(run_id, 1)]
        # a repeat is not refused, whatever this process has
        again = agent.abort(run_id, by="bob", require_undos=True)
        assert (again.landed, again.status) == (False, "aborted")


def test_policy_mismatch_names_both_fingerprints(shop: Guard, world: World, store_url: str) -> None:
    from guardrail.decisions import policy_mismatch

    run_id = held_run(shop, world)
    record = shop.require_run(run_id)
    assert record.policy_fingerprint == shop.policy_fingerprint
    assert policy_mismatch(shop, record) is None
    with Guard(store=store_url) as bare:
        assert policy_mismatch(bare, record) is None  # declares nothing: nothing to compare
        bare.policy("create", effect="irreversible")
        warning = policy_mismatch(bare, record)
        assert warning is not None
        assert f"run {run_id} started under policies {record.policy_fingerprint}" in warning
        assert f"fingerprint {bare.policy_fingerprint}" in warning
    assert policy_mismatch(shop, record.model_copy(update={"policy_fingerprint": None})) is None
