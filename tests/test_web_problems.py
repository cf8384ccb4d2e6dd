"""The console for a reviewer at volume: a long run's page opens on what needs a person (failed
undos, calls in doubt, approvals, the failing call) with their forms, and a decision returns to
the item's place; the outcome is shown once; approve-and-resume in one step; a phone-sized
screen. Over HTTP (Starlette's TestClient) and in headless Chromium."""

# ruff: noqa: F811 (the fixtures shared with test_web.py are imported, then asked for by name)

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape
from typing import Any

import pytest
from starlette.testclient import TestClient
from test_web import (  # noqa: F401 (fixtures)
    BEARER,
    Clock,
    Shop,
    Team,
    browser,
    browser_log_in,
    browser_only,
    clock,
    console,
    csrf_of,
    decide,
    served,
    shop,
    shown_flash,
    team,
)

from guardrail import Guard, Retry, RunHalted
from guardrail.web.flash import FLASH_COOKIE
from guardrail.web.security import Principal

LONG_RUN = "acme-prod/order-agent/thread-" + "9f8e7d6c5b4a3928" * 6  # no place to break it
LONG_VALUE = "SKU-" + "A1B2C3D4" * 30


def long_run(
    guard: Guard, actions: int = 600, failed_undos: int = 6, run_id: str | None = None
) -> str:
    """A halted run of ``actions`` actions: read-only lookups with long values, a reservation
    every 100 actions (from action 14) whose undo fails, and a failing call at the end."""

    def release(args: dict[str, str]) -> None:
        raise RuntimeError(f"the warehouse refused to release {args['sku'][:12]}")

    @guard.tool(effect="read_only")
    def lookup(sku: str) -> dict[str, str]:
        return {"sku": sku, "stock": "12"}

    @guard.tool(
        effect="reversible",
        undo=release,
        undo_retry=Retry(attempts=1),
        external_ids={"reservation": "result.id"},
    )
    def reserve(sku: str) -> dict[str, str]:
        return {"id": "res_" + "0123456789abcdef" * 5}

    @guard.tool(effect="read_only")
    def ship(sku: str) -> None:
        raise ConnectionError("carrier API returned 503 for " + LONG_VALUE)

    reserved = 0
    with pytest.raises(RunHalted), guard.run(agent="orders", run_id=run_id) as run:
        for n in range(1, actions):
            if n % 100 == 14 and reserved < failed_undos:
                reserve(sku=f"{LONG_VALUE}-{n}")
                reserved += 1
            else:
                lookup(sku=f"{LONG_VALUE}-{n}")
        ship(sku=LONG_VALUE)
    return run.id


@pytest.fixture
def client(shop: Shop, team: Team, clock: Clock) -> Iterator[TestClient]:
    with TestClient(console(shop, team, clock), base_url="http://127.0.0.1:8765") as c:
        yield c


def failed_undos(guard: Guard, run_id: str) -> list[str]:
    """The run's open failed undos, in the order of the log (the undos ran newest first)."""
    items = guard.store.review_items(run_id=run_id, status="open")
    return [
        i.id for i in sorted(items, key=lambda i: i.seq or 0) if i.reason == "compensation_failed"
    ]


def problem_keys(html: str) -> list[str]:
    section = html.split('id="problems"', 1)[1].split("</section>", 1)[0]
    return re.findall(r'<article class="item [^"]*" id="([^"]+)"', section)


# -- over HTTP ------------------------------------------------------------------------------------


def test_a_long_run_opens_on_what_needs_a_person(shop: Shop, client: TestClient) -> None:
    run_id = long_run(shop.guard)
    undos = failed_undos(shop.guard, run_id)
    assert len(undos) == 6
    html = client.get(f"/runs/{run_id}", headers=BEARER).text
    # at the top, before the run's decision and the timeline: the six failed undos, in the
    # order of the log, then the call that stopped the run
    assert html.index('id="problems"') < html.index('id="decide"') < html.index('id="timeline"')
    assert problem_keys(html) == [f"item-{i}" for i in undos] + ["failing-call"]
    summary = unescape(html.split('id="problem-summary">', 1)[1].split("</p>", 1)[0])
    assert "6 failed undos" in summary and "the call that stopped the run" in summary
    for item in undos:
        assert f'action="/decide#item-{item}"' in html  # each with its form
    assert "the warehouse refused to release" in html
    # the timeline shows the actions around each problem and the newest, not all 600
    seqs = [int(s) for s in re.findall(r'<tr id="action-(\d+)"', html)]
    assert len(seqs) < 60 and seqs == sorted(seqs)
    for problem in (14, 114, 214, 314, 414, 514, 600):
        assert {problem - 2, problem, min(problem + 2, 600)} <= set(seqs)
    assert set(range(581, 601)) <= set(seqs)  # the newest
    gaps = re.findall(r"(\d+) actions not shown \(seq (\d+)&ndash;(\d+)\)", html)
    assert sum(int(n) for n, _, _ in gaps) + len(seqs) == 600
    # the whole log is still there, in parts
    part = client.get(f"/runs/{run_id}?part=1", headers=BEARER).text
    assert re.findall(r'<tr id="action-(\d+)"', part)[:2] == ["1", "2"]
    assert len(re.findall(r'<tr id="action-', part)) == 100  # 600 = 100 + 500


def test_a_decision_on_an_item_returns_to_its_place(
    shop: Shop, team: Team, client: TestClient
) -> None:
    run_id = long_run(shop.guard)
    undos = failed_undos(shop.guard, run_id)
    ann = team.bearer("Ann")
    csrf = csrf_of(client.get(f"/runs/{run_id}", headers=ann).text)
    third = undos[2]
    form = {"decision": "resolve", "item_id": third, "resolution": "done_manually"}
    answer = client.post(
        "/decide",
        data={**form, "csrf": csrf, "note": "released by hand"},
        headers=ann,
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/runs/{run_id.replace('/', '%2F')}#item-{third}"
    page = client.get(answer.headers["location"], headers=ann).text
    # the item stays in its place among the problems, decided, with the outcome
    assert problem_keys(page) == [f"item-{i}" for i in undos] + ["failing-call"]
    card = page.split(f'id="item-{third}"', 1)[1].split("</article>", 1)[0]
    assert "Resolved item" in card and "(by Ann)" in card and 'id="flash"' in card
    assert "done_manually by <strong>Ann</strong>: released by hand" in card
    assert "<form" not in card
    assert page.count('id="flash"') == 1 and page.count(f'id="item-{third}"') == 1
    assert "5 failed undos" in page
    # once: after a reload it is one of the decided items, further down
    again = client.get(answer.headers["location"], headers=ann).text
    assert shown_flash(again) is None
    assert problem_keys(again) == [f"item-{i}" for i in undos if i != third] + ["failing-call"]
    assert again.index(f'id="item-{third}"') > again.index('id="decided-items"')
    item = shop.guard.store.review_item(third)
    assert item is not None and (item.resolution, item.resolved_by) == ("done_manually", "Ann")


def test_the_outcome_is_shown_once_and_only_to_the_session_it_was_for(
    shop: Shop, team: Team, client: TestClient
) -> None:
    run_id = shop.halted()
    csrf = csrf_of(client.get(f"/runs/{run_id}", headers=BEARER).text)
    answer = client.post(
        "/decide",
        data={"csrf": csrf, "decision": "resume", "run_id": run_id, "note": "carrier back"},
        headers=BEARER,
        follow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["location"] == f"/runs/{run_id}"
    cookie = answer.headers["set-cookie"].lower()
    assert cookie.startswith(FLASH_COOKIE) and "httponly" in cookie and "samesite=strict" in cookie
    value = client.cookies[FLASH_COOKIE]
    # the session it was for sees it once, on whatever page comes next; the page clears it
    shown = client.get("/", headers=BEARER)
    assert shown_flash(shown.text) == (
        "ok",
        f"Resumed run {run_id} (by shared-token). Restart the agent on this run; what already "
        "succeeded will not run again.",
    )
    assert re.search(rf'{FLASH_COOKIE}=""; .*Max-Age=0', shown.headers["set-cookie"])
    assert FLASH_COOKIE not in client.cookies
    assert shown_flash(client.get("/", headers=BEARER).text) is None
    # another session (Ann's token) does not see what the shared token's decision said
    client.cookies.clear()
    client.cookies.set(FLASH_COOKIE, value)
    assert shown_flash(client.get(f"/runs/{run_id}", headers=team.bearer("Ann")).text) is None
    client.cookies.clear()
    client.cookies.set(FLASH_COOKIE, value)
    assert shown_flash(client.get(f"/runs/{run_id}", headers=BEARER).text) is not None
    # a cookie the console did not sign, or signed for something else, shows nothing
    authority = client.app.state.authority  # type: ignore[attr-defined]
    shared = Principal("shared-token", "bearer", "bearer:shared-token")
    payload = value.split(".")[0]
    for forged in (
        payload + ".00",
        payload + "." + authority.csrf(shared),
        payload + "." + authority.sign("csrf", shared, payload),
        "W1wib2tcIiwgXCJDYWxsIDU1NS0wMTAwXCIsIFwiXCJdIg." + authority.sign("x", shared, "y"),
        "not base64!." + authority.sign("flash", shared, "not base64!"),
    ):
        client.cookies.clear()
        client.cookies.set(FLASH_COOKIE, forged)
        page = client.get(f"/runs/{run_id}", headers=BEARER).text
        assert shown_flash(page) is None, forged
    assert shop.guard.require_run(run_id).status == "running"


def test_approve_and_resume_in_one_step(shop: Shop, team: Team, client: TestClient) -> None:
    guard = shop.guard
    ann = team.bearer("Ann")
    run_id, item = shop.awaiting()
    page = unescape(client.get(f"/runs/{run_id}", headers=ann).text)
    button = re.search(r'value="approve_resume" class="primary"\s*(disabled)?\s*>', page)
    assert button and button.group(1) is None
    kind, text = decide(
        client, run_id, ann, decision="approve_resume", item_id=item, note="known customer"
    )
    assert kind == "ok" and f"Approved item {item} and resumed run {run_id} (by Ann)" in text
    run, approval = guard.require_run(run_id), guard.store.review_item(item)
    assert approval is not None
    assert (approval.resolution, approval.resolved_by, approval.note) == (
        "approved",
        "Ann",
        "known customer",
    )
    assert (run.status, run.decided_by, run.decision_note) == ("running", "Ann", "known customer")

    # someone else decided first: refused, nothing changed, the run not resumed
    other, second = shop.awaiting()
    csrf = csrf_of(client.get(f"/runs/{other}", headers=ann).text)  # Ann's page, loaded before
    guard.approve(second, by="Bob", note="wait for the fraud check before resuming")
    answer = client.post(
        "/decide",
        data={"csrf": csrf, "decision": "approve_resume", "item_id": second, "note": "go"},
        headers=ann,
    )
    kind, text = shown_flash(answer.text) or ("", "")
    assert kind == "error" and "already approved by Bob" in text and "not resumed" in text
    assert guard.require_run(other).status == "awaiting_approval"
    approval = guard.store.review_item(second)
    assert approval is not None and approval.resolved_by == "Bob"
    # rejected first: refused the same way
    third_run, third = shop.awaiting()
    guard.reject(third, by="Bob", reason="fraud")
    kind, text = decide(client, third_run, ann, decision="approve_resume", item_id=third, note="x")
    assert kind == "error" and "already rejected by Bob" in text
    assert guard.require_run(third_run).status == "awaiting_approval"
    # Ann repeating her own approve-and-resume (a second click) changes nothing
    answer = client.post(
        "/decide",
        data={"csrf": csrf, "decision": "approve_resume", "item_id": item, "note": "again"},
        headers=ann,
    )
    kind, text = shown_flash(answer.text) or ("", "")
    assert kind == "warn" and f"run {run_id} was already resumed" in text
    run = guard.require_run(run_id)
    assert (run.status, run.decided_by, run.decision_note) == ("running", "Ann", "known customer")


def test_an_approval_that_lands_on_a_run_that_cannot_resume_says_so(
    shop: Shop, team: Team, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The approval is recorded; the resume is refused (here: another decision holds the run)
    and the page says the run was not resumed."""
    from guardrail.errors import RunStateError

    run_id, item = shop.awaiting()

    def refused(run: str, *, by: str, note: str | None = None) -> Any:
        raise RunStateError(f"run {run} has call(s) whose outcome is unknown", run_id=run)

    monkeypatch.setattr(shop.guard, "resume", refused)
    kind, text = decide(
        client, run_id, team.bearer("Dee"), decision="approve_resume", item_id=item, note="ok"
    )
    assert kind == "warn" and f"Approved item {item} (by Dee)" in text
    assert "but the run was not resumed: run" in text and "outcome is unknown" in text
    approval = shop.guard.store.review_item(item)
    assert approval is not None and (approval.resolution, approval.resolved_by) == (
        "approved",
        "Dee",
    )
    assert shop.guard.require_run(run_id).status == "awaiting_approval"


def test_approve_and_resume_is_offered_only_when_nothing_else_holds_the_run() -> None:
    from guardrail.store import ReviewItem
    from guardrail.web.pages import blockers

    def item(id: str, reason: str) -> ReviewItem:
        return ReviewItem(id=id, run_id="r", seq=1, reason=reason, kind="k", created_at=1.0)

    alone = [item("a", "approval"), item("e", "irreversible")]
    assert blockers(alone) == {"a": []}
    crowded = [item("a", "approval"), item("b", "approval"), item("d", "in_doubt")]
    assert blockers(crowded) == {
        "a": ["approval b", "in_doubt d"],
        "b": ["approval a", "in_doubt d"],
    }


# -- in a real browser ----------------------------------------------------------------------------

PHONE = {"width": 390, "height": 844}


def page_width(page: Any) -> int:
    return int(page.evaluate("document.documentElement.scrollWidth"))


@browser_only
def test_browser_a_phone_fits_the_inbox_and_a_run(
    shop: Shop, team: Team, served: str, browser: Any
) -> None:
    run_id = long_run(shop.guard, actions=230, failed_undos=2, run_id=LONG_RUN)
    waiting, _ = shop.awaiting()
    context = browser.new_context(viewport=PHONE, extra_http_headers=team.bearer("Ann"))
    page = context.new_page()
    try:
        for path in ("/", "/?status=all", f"/runs/{run_id.replace('/', '%2F')}", "/runs/nope"):
            page.goto(served + path)
            assert page_width(page) <= 390, path
        # on the inbox the runs stack as cards: nothing to scroll sideways, even inside a box
        page.goto(f"{served}/")
        assert LONG_RUN in (page.text_content("table.runs") or "")
        box = "document.querySelector('table.runs').parentElement"
        assert page.evaluate(f"{box}.scrollWidth <= {box}.clientWidth")
        page.goto(f"{served}/runs/{run_id.replace('/', '%2F')}?part=1")
        assert page_width(page) <= 390
        assert page.locator("#problems").is_visible()
        assert page.text_content("#run-id") == LONG_RUN
        page.goto(f"{served}/runs/{waiting}")
        assert page_width(page) <= 390
        # the form asked again for a note is as narrow
        page.goto(f"{served}/runs/{run_id.replace('/', '%2F')}")
        page.fill("#note-abort", "   ")
        with page.expect_navigation():
            page.click("button:has-text('Abort run')")
        assert page.is_visible("#note-abort-error")
        assert page_width(page) <= 390
    finally:
        context.close()
    login = browser.new_context(viewport=PHONE)
    try:
        page = login.new_page()
        page.goto(f"{served}/")
        assert page_width(page) <= 390
    finally:
        login.close()


@browser_only
def test_browser_working_through_the_problems_of_a_long_run(
    shop: Shop, team: Team, served: str, browser: Any
) -> None:
    run_id = long_run(shop.guard)
    undos = failed_undos(shop.guard, run_id)
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{served}/runs/{run_id}")
        with page.expect_navigation():
            browser_log_in(page, team.tokens["Ann"])
        page.wait_for_selector("#problems")
        problems = page.locator("#problems article.item-compensation_failed:not(.item-decided)")
        assert problems.count() == 6
        assert "6 failed undos" in (page.text_content("#problem-summary") or "")
        top = page.locator("#problems").bounding_box()
        timeline = page.locator("#timeline").bounding_box()
        assert top is not None and timeline is not None and top["y"] < timeline["y"]
        assert page.locator("table.timeline tbody tr[id^=action-]").count() < 60
        # resolve the fourth: the browser comes back to it, not to the top of the page
        item = undos[3]
        page.select_option(f"#resolution-{item}", "skipped")
        page.fill(f"#note-{item}", "the reservation had expired")
        with page.expect_navigation():
            page.click(f"#form-{item} button:has-text('Resolve')")
        assert page.url.endswith(f"#item-{item}")
        card = page.locator(f"#item-{item}")
        assert "item-decided" in (card.get_attribute("class") or "")
        assert "skipped by Ann" in (card.text_content() or "")
        assert "Resolved item" in (page.text_content(f"#item-{item} #flash") or "")
        box = card.bounding_box()
        assert box is not None and 0 <= box["y"] < page.viewport_size["height"]
        assert page.evaluate("window.scrollY") > 0
        assert problems.count() == 5
        # a reload shows the outcome no more
        page.reload()
        assert page.locator("#flash").count() == 0
        assert page.locator("#problems article.item-compensation_failed").count() == 5
    finally:
        context.close()
    resolved = shop.guard.store.review_item(undos[3])
    assert resolved is not None and (resolved.resolution, resolved.resolved_by) == (
        "skipped",
        "Ann",
    )
