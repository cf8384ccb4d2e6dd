"""Finding runs at volume: search by the start of an id (any case), filters, cursor pages and
groups of runs halted for the same reason. On SQLite and PostgreSQL alike."""

from __future__ import annotations

import pytest

from guardrail import Guard, GuardrailError, RunHalted
from guardrail.search import Match, reason_group
from guardrail.testing import ScriptedTool


def _halted(guard: Guard, order: str, *, agent: str = "shop", why: str = "carrier is down") -> str:
    with pytest.raises(RunHalted), guard.run(agent=agent) as run:
        run.call("create_order", {"item": "book"}, fn=lambda item: {"id": order})
        run.call("ship", {"order": order}, fn=ScriptedTool([RuntimeError(f"{why} for {order}")]))
    return run.id


def _done(guard: Guard, order: str, *, agent: str = "shop") -> str:
    with guard.run(agent=agent) as run:
        run.call("create_order", {"item": "pen"}, fn=lambda item: {"id": order})
    return run.id


@pytest.fixture
def shop(guard: Guard) -> Guard:
    guard.policy(
        "create_order",
        effect="reversible",
        undo=lambda action: None,
        external_ids={"order_id": "result.id"},
    )
    guard.policy("ship", effect="read_only", retry={"attempts": 1})
    return guard


def test_an_order_id_prefix_in_any_case_finds_its_run_and_says_why(shop: Guard) -> None:
    wanted = _halted(shop, "ord_40049")
    _halted(shop, "ord_40150")
    _done(shop, "ORD_5")
    found = shop.search("ORD_4004")
    assert [(r.id, r.status) for r in found.runs] == [(wanted, "pending_review")]
    assert Match("external id order_id", "ord_40049") in found.matches[wanted]
    assert {r.id for r in shop.search("ord_").runs} == {r.id for r in shop.runs()}


def test_run_ids_agents_tools_and_reasons_are_searched(shop: Guard) -> None:
    a = _halted(shop, "o-1", agent="Billing-bot", why="gateway timeout")
    b = _done(shop, "o-2", agent="shop")
    assert [r.id for r in shop.search(a[:5].upper()).runs] == [a]
    assert [r.id for r in shop.search("billing").runs] == [a]
    assert {r.id for r in shop.search("SHI").runs} == {a}  # only the halted run called ship
    assert Match("tool", "ship") in shop.search("shi").matches[a]
    assert [r.id for r in shop.search("Gateway TIME").runs] == [a]
    assert b not in [r.id for r in shop.search("timeout").runs]


def test_like_wildcards_in_the_text_are_matched_literally(shop: Guard) -> None:
    _halted(shop, "o-1", why="disk 100% full")
    _halted(shop, "o-2", why="disk 1000 blocks")
    assert len(shop.search("100%").runs) == 1
    assert len(shop.search("_").runs) == 0


def test_filters_hold_together_with_the_search(shop: Guard) -> None:
    halted = _halted(shop, "ord_1", agent="shop")
    _done(shop, "ord_2", agent="shop")
    other = _halted(shop, "ord_3", agent="billing")
    assert [r.id for r in shop.search("ord_", status="pending_review", agent="SHOP").runs] == [
        halted
    ]
    assert {r.id for r in shop.search(status=["pending_review"]).runs} == {halted, other}
    assert {r.id for r in shop.search(tool="ship").runs} == {halted, other}
    run = shop.require_run(other)
    assert [r.id for r in shop.search(since=run.updated_at, tool="ship").runs] == [other]
    assert other not in [r.id for r in shop.search(until=run.updated_at).runs]
    assert shop.search(owner="nobody").runs == []


def test_pages_follow_a_cursor_without_repeats_or_gaps(shop: Guard) -> None:
    made = [_done(shop, f"o-{i}") for i in range(7)]
    seen: list[str] = []
    page = shop.search(limit=3)
    sizes = []
    while True:
        sizes.append(len(page.runs))
        seen.extend(r.id for r in page.runs)
        if page.next is None:
            break
        _done(shop, "o-late")  # a run that arrives meanwhile is newer: it is not on later pages
        page = shop.search(limit=3, cursor=page.next)
    assert sizes == [3, 3, 1]
    assert seen == list(reversed(made))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"status": "pending"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 10_000}, "limit"),
        ({"cursor": "not a cursor!"}, "cursor"),
    ],
)
def test_bad_queries_are_refused_naming_the_field(
    shop: Guard, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(GuardrailError) as refused:
        shop.search(**kwargs)  # type: ignore[arg-type]
    assert refused.value.field == field
    if field == "status":
        assert "pending_review" in str(refused.value)


def test_runs_halted_by_the_same_cause_fall_in_one_group() -> None:
    a = reason_group("ship failed: RuntimeError: carrier timeout after 30s for ord_40041")
    b = reason_group("ship failed: RuntimeError: carrier timeout after 45s for ord_40077")
    c = reason_group("ship failed: RuntimeError: address 'Main St 5' not found")
    d = reason_group("ship failed: RuntimeError: address 'Elm Rd 9' not found")
    e = reason_group("pay failed: card declined for ch_3Nx9a2b")
    assert a == b and c == d
    assert len({a, c, e}) == 3
    assert reason_group(None) == reason_group("") == "(no reason)"


def test_searches_of_many_shapes_leave_the_statement_cache_as_it_was(shop: Guard) -> None:
    """A search's IN lists have any length: a long-lived console must not keep a statement per
    length."""
    for i in range(6):
        _halted(shop, f"ord_{i}")
    shop.search("ord_")
    cached = len(shop.store._sql_cache)  # type: ignore[attr-defined]
    for text in ("ord_1", "ord_", "o", "ship", "carrier"):
        for limit in (1, 2, 3, 5):
            shop.search(text, limit=limit)
    assert len(shop.store._sql_cache) == cached  # type: ignore[attr-defined]
