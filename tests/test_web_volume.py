"""The console at volume: search with filters kept in the URL, cursor pages that neither repeat
nor skip a run, groups of like halts, bulk decisions through a preview with an outcome per run,
each run's decision history, and the webhook delivery loop of ``guardrail serve``. Over HTTP
(Starlette's TestClient) and in headless Chromium."""

# ruff: noqa: F811 (the fixtures shared with test_web.py are imported, then asked for by name)

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from html import unescape
from pathlib import Path
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
    served,
    team,
)
from test_web_problems import PHONE, page_width
from typer.testing import CliRunner

from guardrail import Guard, RunHalted
from guardrail.cli import app as cli_app
from guardrail.outbox import Delivery
from guardrail.testing import ScriptedTool
from guardrail.web import create_app
from guardrail.web.delivery import DeliveryLoop, delivering
from guardrail.web.query import QueryError, read_query

OUTAGE = "carrier timeout after {n}s for ord_{n}"


class Orders(Shop):
    """A shop whose halted runs keep their order for the abort to cancel (``on_failure=hold``),
    and count each cancellation."""

    def __init__(self, guard: Guard) -> None:
        super().__init__(guard)
        self.cancelled: list[str] = []
        guard.policy(
            "create_order",
            effect="reversible",
            undo=lambda action: self.cancelled.append(action.result["id"]),
            external_ids={"order_id": "result.id"},
        )
        guard.policy("ship", effect="read_only", on_failure="hold", retry={"attempts": 1})

    def order(self, order_id: str, why: str | None = None, agent: str = "shop") -> str:
        """A run that creates order ``order_id``, then halts on ``why`` (or completes)."""
        failing = ScriptedTool([RuntimeError(why)]) if why else (lambda order: None)
        if why is None:
            with self.guard.run(agent=agent) as run:
                run.call("create_order", {"item": order_id}, fn=lambda item: {"id": item})
                run.call("ship", {"order": order_id}, fn=failing)
            return run.id
        with pytest.raises(RunHalted), self.guard.run(agent=agent) as run:
            run.call("create_order", {"item": order_id}, fn=lambda item: {"id": item})
            run.call("ship", {"order": order_id}, fn=failing)
        return run.id

    def outage(self, count: int) -> list[str]:
        return [self.order(f"ORD_{n:04d}", OUTAGE.format(n=n)) for n in range(count)]


@pytest.fixture
def shop(sqlite_url: str) -> Iterator[Orders]:
    orders = Orders(Guard(store=sqlite_url))
    yield orders
    orders.guard.close()


@pytest.fixture
def client(shop: Orders, team: Team, clock: Clock) -> Iterator[TestClient]:
    with TestClient(console(shop, team, clock), base_url="http://127.0.0.1:8765") as c:
        yield c


def runs_listed(html: str) -> list[str]:
    return [unescape(v) for v in re.findall(r'name="run" value="([^"]+)"', html)]


def next_link(html: str) -> str | None:
    found = re.search(r'<a href="([^"]+)" id="next-page"', html)
    return unescape(found.group(1)) if found else None


# -- search and filters ----------------------------------------------------------------------


def test_search_finds_a_run_by_the_start_of_an_order_id_in_any_case(
    shop: Orders, client: TestClient
) -> None:
    halted = shop.order("ORD_4004", "carrier down")
    done = shop.order("ORD_4005")
    other = shop.order("ORD_7000", "carrier down")
    page = client.get("/?q=ord_400", headers=BEARER)
    assert page.status_code == 200
    assert sorted(runs_listed(page.text)) == sorted([halted, done])
    assert other not in page.text
    # each run says its status and what matched
    assert 'external id order_id: <strong class="mono">ORD_4004</strong>' in page.text
    assert "status-completed" in page.text and "status-pending_review" in page.text
    # the whole order id (any case) leads to its run in one step
    answer = client.get("/?q=%20ord_4004%20", headers=BEARER, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == f"/runs/{halted}"
    # so does a run id
    answer = client.get(f"/?q={done.upper()}", headers=BEARER, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == f"/runs/{done}"
    # a single hit that is not exact offers the link
    page = client.get("/?q=ORD_70", headers=BEARER)
    assert re.search(rf'id="exact"><a href="/runs/{other}">', page.text)
    # words of the reason, an agent
    assert sorted(runs_listed(client.get("/?q=Carrier+DOWN", headers=BEARER).text)) == sorted(
        [halted, other]
    )
    assert client.get("/?q=nothing-like-this", headers=BEARER).text.count('id="empty"') == 1


def test_an_empty_search_is_the_inbox(shop: Orders, client: TestClient) -> None:
    halted = shop.order("ORD_1", "carrier down")
    done = shop.order("ORD_2")
    inbox = client.get("/", headers=BEARER).text
    for blank in ("/?q=", "/?q=+++", "/?q=%09&status=&agent=&tool=&owner=&since=&until="):
        page = client.get(blank, headers=BEARER)
        assert page.status_code == 200
        assert runs_listed(page.text) == runs_listed(inbox) == [halted], blank
    assert done not in inbox


def test_filters_combine_with_the_search_and_stay_in_the_links(
    shop: Orders, client: TestClient
) -> None:
    a = shop.order("ORD_1", "carrier down", agent="checkout")
    b = shop.order("ORD_2", "carrier down", agent="returns")
    c = shop.order("ORD_3", agent="checkout")
    assert runs_listed(client.get("/?q=ord&agent=CHECKOUT", headers=BEARER).text) == [c, a]
    listed = client.get("/?q=ord&agent=checkout&status=pending_review", headers=BEARER).text
    assert runs_listed(listed) == [a]
    assert runs_listed(client.get("/?status=completed", headers=BEARER).text) == [c]
    assert sorted(runs_listed(client.get("/?tool=ship", headers=BEARER).text)) == sorted([a, b, c])
    assert runs_listed(client.get("/?tool=refund", headers=BEARER).text) == []
    assert runs_listed(client.get("/?since=1h&q=ord_", headers=BEARER).text) == [c, b, a]
    assert runs_listed(client.get("/?until=2000-01-01&q=ord", headers=BEARER).text) == []
    assert runs_listed(
        client.get("/?since=2000-01-01T00:00&agent=returns", headers=BEARER).text
    ) == [b]
    owner = shop.guard.require_run(a).owner
    assert owner  # (every run here has this process as its owner)
    mine = client.get("/", params={"owner": owner, "status": "pending_review"}, headers=BEARER)
    assert runs_listed(mine.text) == [b, a]
    assert runs_listed(client.get("/?owner=elsewhere", headers=BEARER).text) == []
    # the form shows what was asked, and the search box keeps the text
    page = client.get("/?q=ord&agent=checkout", headers=BEARER).text
    assert 'name="q" value="ord"' in page and 'id="f-agent" value="checkout"' in page


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("status=bogus", "status 'bogus' is not one the inbox knows"),
        ("since=yesterday", "since 'yesterday' is not a time"),
        ("until=13:99", "until '13:99' is not a time"),
        ("since=1h&until=2h", "until must be later than since"),
        ("cursor=not-a-cursor!", "this page link is not one the inbox made"),
        ("q=" + "x" * 201, "the search is limited to 200 characters"),
    ],
)
def test_a_bad_filter_says_what_is_wrong(
    shop: Orders, client: TestClient, query: str, said: str
) -> None:
    page = client.get(f"/?{query}", headers=BEARER)
    assert page.status_code == 400
    assert said in unescape(page.text)
    assert 'id="query-error"' in page.text and 'id="search"' in page.text


def test_read_query_reads_times_and_defaults() -> None:
    assert read_query({}).status == "needs"
    assert read_query({"q": "  "}).status == "needs"
    assert read_query({"q": "x"}).status == "all"  # a search looks at every status
    assert read_query({"q": "x", "status": "needs"}).status == "all"
    assert read_query({"status": "aborted"}).filters() == {"text": None, "status": ("aborted",)}
    assert read_query({"since": "2h"}, now=10_000.0).since == 10_000.0 - 7200
    assert read_query({"since": "1.5d"}, now=200_000.0).since == 200_000.0 - 129_600
    with pytest.raises(QueryError) as bad:
        read_query({"agent": "a" * 201})
    assert bad.value.field == "agent"
    query = read_query({"q": "ord 1", "tool": "ship", "cursor": ""})
    assert query.url(cursor="abc") == "/?q=ord+1&status=all&tool=ship&cursor=abc"


# -- pages ---------------------------------------------------------------------------------------


def walk(client: TestClient, url: str) -> list[str]:
    """Every run the pages from ``url`` list, following the next-page links."""
    seen: list[str] = []
    pages = 0
    while url:
        page = client.get(url, headers=BEARER)
        assert page.status_code == 200, page.text
        seen += runs_listed(page.text)
        url = next_link(page.text) or ""
        pages += 1
        assert pages < 20
    return seen


def test_pages_follow_a_cursor_and_neither_repeat_nor_skip(
    shop: Orders, client: TestClient
) -> None:
    done = [shop.order(f"ORD_{n:03d}") for n in range(60)]
    halted = [shop.order(f"ORD_{n:03d}", "carrier down") for n in range(60, 112)]
    everything = walk(client, "/?status=all")
    assert len(everything) == len(set(everything)) == 112
    assert set(everything) == set(done + halted)
    # a search's pages keep the search
    first = client.get("/?q=ord_0&agent=shop", headers=BEARER).text
    link = next_link(first)
    assert link is not None and "q=ord_0" in link and "agent=shop" in link and "cursor=" in link
    assert len(walk(client, "/?q=ord_0")) == 100
    # runs that arrive between two pages are not repeated and none is skipped
    page = client.get("/?status=all", headers=BEARER).text
    shown = runs_listed(page)
    newer = [shop.order(f"NEW_{n}") for n in range(3)]
    rest = walk(client, next_link(page) or "")
    assert not set(shown) & set(rest) and set(shown + rest) == set(done + halted)
    assert not set(newer) & set(shown + rest)
    # the inbox's own view pages too: the halted runs, newest first
    needs = walk(client, "/")
    assert needs == list(reversed(halted))


# -- groups and bulk decisions -----------------------------------------------------------------


def preview(client: TestClient, data: dict[str, Any], runs: Sequence[str] = ()) -> Any:
    csrf = csrf_of(client.get("/?status=all", headers=BEARER).text)
    return client.post(
        "/bulk/preview", data={"csrf": csrf, **data, "run": list(runs)}, headers=BEARER
    )


def confirm(client: TestClient, page: str, note: str) -> Any:
    """Post the preview page's confirmation form, as the browser would."""
    form = page[page.index('id="bulk-confirm"') :]
    fields: dict[str, Any] = {"run": [], "note": note}
    for k, v in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form):
        if k == "run":
            fields["run"].append(unescape(v))
        else:
            fields[k] = unescape(v)
    return client.post("/bulk/decide", data=fields, headers=BEARER)


def test_a_group_of_like_halts_is_aborted_through_a_preview(
    shop: Orders, client: TestClient
) -> None:
    outage = shop.outage(20)
    other = shop.order("ORD_X", "address 'Main St 5' not found")
    page = client.get("/groups", headers=BEARER).text
    counts = re.findall(r'class="badge count big group-count">(\d+)<', page)
    assert counts == ["20", "1"]
    assert "carrier timeout after …s for …" in unescape(page)
    assert OUTAGE.format(n=19) in page  # the newest example, as it is
    group = shop.guard.groups()[0].id
    answer = preview(client, {"scope": "group", "group": group, "decision": "abort"})
    assert answer.status_code == 200
    assert sorted(runs_listed(answer.text)) == sorted(outage) and other not in answer.text
    assert answer.text.count("abort: undo 1 action(s), list 0 for review") == 20
    assert ">Abort 20 runs</button>" in answer.text
    assert shop.cancelled == [] and {shop.guard.require_run(r).status for r in outage} == {
        "pending_review"
    }  # a preview changes nothing
    # no note: asked again, nothing recorded
    again = confirm(client, answer.text, "   ")
    assert again.status_code == 422 and 'id="note-bulk-error"' in again.text
    assert shop.cancelled == []
    result = confirm(client, again.text, "carrier outage")
    assert result.status_code == 200
    assert result.text.count('class="landed"') == 20
    assert {shop.guard.require_run(r).status for r in outage} == {"aborted"}
    assert sorted(shop.cancelled) == sorted(f"ORD_{n:04d}" for n in range(20))
    assert shop.guard.require_run(other).status == "pending_review"
    run = shop.guard.require_run(outage[0])
    assert (run.decided_by, run.decision_note) == ("shared-token", "carrier outage")
    # the same confirmation again changes nothing and says so
    twice = confirm(client, again.text, "carrier outage")
    assert twice.text.count('class="not-landed"') == 20 and len(shop.cancelled) == 20


def test_bulk_decisions_on_a_selection_say_what_each_run_would_do(
    shop: Orders, client: TestClient
) -> None:
    halted = shop.order("ORD_1", "carrier down")
    done = shop.order("ORD_2")
    answer = preview(client, {"decision": "resume"}, [halted, done])
    assert answer.status_code == 200
    text = unescape(answer.text)
    assert "resume; 1 done action(s) are not run again" in text
    assert "the run is completed: only a halted run is decided" in text
    assert ">Resume 1 run</button>" in answer.text
    result = confirm(client, answer.text, "carrier is back")
    assert result.text.count('class="landed"') == 1
    assert result.text.count('class="not-landed"') == 1
    assert shop.guard.require_run(halted).status == "running"
    # nothing selected, an unknown decision, a resolution no run has, no CSRF token
    assert preview(client, {"decision": "abort"}).status_code == 422
    assert preview(client, {"decision": "explode"}, [halted]).status_code == 400
    assert preview(client, {"decision": "resolve", "resolution": "x"}, [halted]).status_code == 400
    refused = client.post(
        "/bulk/preview", data={"decision": "abort", "run": halted}, headers=BEARER
    )
    assert refused.status_code == 403
    # a decision names its runs: a search or a group goes through the preview first
    csrf = csrf_of(client.get("/?status=all", headers=BEARER).text)
    sneaky = client.post(
        "/bulk/decide",
        data={"csrf": csrf, "decision": "abort", "scope": "search", "q": "ord", "note": "x"},
        headers=BEARER,
    )
    assert sneaky.status_code == 400 and shop.cancelled == []


def test_bulk_on_a_search_and_a_resolve(shop: Orders, client: TestClient) -> None:
    a = shop.order("ORD_1", "carrier down")
    b = shop.order("ORD_2", "carrier down")
    shop.order("ORD_3")
    answer = preview(
        client, {"scope": "search", "q": "ord", "status": "pending_review", "decision": "abort"}
    )
    assert sorted(runs_listed(answer.text)) == sorted([a, b])
    everything = preview(client, {"scope": "search", "decision": "abort"})
    assert everything.status_code == 400  # not every run in the store at once
    resolve = preview(client, {"decision": "resolve", "resolution": "skipped"}, [a])
    assert "no open review item to resolve" in resolve.text


def test_an_abort_whose_undos_this_console_lacks_is_refused_in_the_preview(
    shop: Orders, team: Team, clock: Clock, sqlite_url: str
) -> None:
    run_id = shop.order("ORD_1", "carrier down")
    for force in (False, True):
        app = create_app(sqlite_url, TOKEN_FOR_TESTS, clock=clock, force=force)
        with TestClient(app, base_url="http://127.0.0.1:8765") as c:
            answer = preview(c, {"decision": "abort"}, [run_id])
            text = unescape(answer.text)
            if not force:
                assert "undos missing here for create_order" in text
                assert 'id="confirm" class="danger" disabled' in answer.text
                assert "guardrail serve --app" in text
            else:
                assert "refused" not in answer.text.split('id="preview"')[1].split("</table>")[0]
                assert ">Abort 1 run</button>" in answer.text
    assert shop.guard.require_run(run_id).status == "pending_review" and shop.cancelled == []


TOKEN_FOR_TESTS = BEARER["Authorization"].split()[1]


# -- the decision history ----------------------------------------------------------------------


def test_the_run_page_shows_who_decided_what(shop: Orders, team: Team, client: TestClient) -> None:
    run_id = shop.order("ORD_1", "carrier down")
    page = client.get(f"/runs/{run_id}", headers=BEARER).text
    assert 'id="no-history"' in page
    shop.guard.resume(run_id, by="Ann", note="carrier <back>")
    with pytest.raises(RunHalted), shop.guard.run(run_id=run_id) as run:
        run.call("ship", {"order": "ORD_1"}, fn=ScriptedTool([RuntimeError("carrier down")]))
    shop.guard.abort(run_id, by="Bob", reason="give up")
    history = client.get(f"/runs/{run_id}", headers=BEARER).text
    section = history[history.index('id="history"') : history.index('id="chain-h"')]
    rows = re.findall(
        r"<strong>([^<]*)</strong></td>\s*<td[^>]*><span class=\"badge res-(\w+)\">", section
    )
    assert rows == [("Ann", "resume"), ("Bob", "abort")]
    assert "carrier &lt;back&gt;" in section and "give up" in section


# -- the delivery loop -------------------------------------------------------------------------


class Deliveries:
    """Stands in for `Guard.deliver`: fails the passes asked to, stops the loop after ``stop``."""

    def __init__(self, fail: set[int], stop: int, loop: list[DeliveryLoop]) -> None:
        self.fail, self.stop, self.loop, self.calls = fail, stop, loop, 0

    def __call__(self) -> Delivery:
        self.calls += 1
        if self.calls >= self.stop:
            self.loop[0].stopping.set()
        if self.calls in self.fail:
            raise ConnectionError("the store is unreachable")
        return Delivery(sent=1)


def test_the_delivery_loop_logs_failures_and_goes_on(
    shop: Orders, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop: list[DeliveryLoop] = []
    fake = Deliveries({2}, stop=4, loop=loop)
    monkeypatch.setattr(shop.guard, "deliver", fake)
    loop.append(DeliveryLoop(shop.guard, every=0.001))
    assert loop[0].once() == Delivery(sent=1)
    with caplog.at_level(logging.WARNING, logger="guardrail"):
        assert loop[0].once() is None  # a failure is logged, never raised
    assert "the store is unreachable" in caplog.text
    loop[0].run()  # runs until the fourth pass stops it
    assert (fake.calls, loop[0].passes, loop[0].failures) == (4, 4, 1)
    with pytest.raises(ValueError):
        DeliveryLoop(shop.guard, every=0)


def test_delivery_runs_in_a_thread_that_stops_with_the_server(
    shop: Orders, monkeypatch: pytest.MonkeyPatch
) -> None:
    with delivering(shop.guard) as none:
        assert none is None  # no webhook: nothing to deliver to
    shop.guard.use_webhook("http://127.0.0.1:9/hook")
    passed = threading.Event()

    def deliver() -> Delivery:
        passed.set()
        return Delivery()

    monkeypatch.setattr(shop.guard, "deliver", deliver)
    with delivering(shop.guard, every=3600) as loop:
        assert loop is not None and loop.thread is not None
        assert passed.wait(30)  # the first pass runs at once
    assert not loop.thread.is_alive()  # stopped without waiting out the hour
    with delivering(shop.guard, every=0) as off:
        assert off is None


def test_serve_delivers_when_the_apps_guard_has_a_webhook(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    module = tmp_path / "hooked_app.py"
    module.write_text(
        "from guardrail import Guard\n"
        f"guard = Guard(store={sqlite_url!r}, webhook_url='http://127.0.0.1:9/hook')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "hooked_app", raising=False)
    seen: list[bool] = []

    def fake_run(app: Any, **options: Any) -> None:
        seen.append(any(t.name == "guardrail-deliver" for t in threading.enumerate()))

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    result = CliRunner().invoke(
        cli_app, ["serve", "--app", "hooked_app:guard"], env={"GUARDRAIL_TOKEN": TOKEN_FOR_TESTS}
    )
    assert result.exit_code == 0, result.output
    assert seen == [True]
    # (the URL's path is left out: a chat tool's webhook URL is its own password)
    assert "delivering webhook events to http://127.0.0.1:9/… every 5 s" in result.stderr
    assert not any(t.name == "guardrail-deliver" for t in threading.enumerate())


# -- in a real browser -------------------------------------------------------------------------


@browser_only
def test_browser_search_an_order_id_and_open_its_run(
    shop: Orders, team: Team, served: str, browser: Any
) -> None:
    run_id = shop.order("ORD_4004", "carrier down")
    shop.order("ORD_4005")
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{served}/")
        with page.expect_navigation():
            browser_log_in(page, team.tokens["Ann"])
        page.fill("#q", "ord_4004")
        with page.expect_navigation():
            page.press("#q", "Enter")
        assert page.text_content("#run-id") == run_id
        assert page.text_content("#run-status") == "pending_review"
    finally:
        context.close()


@browser_only
def test_browser_abort_a_group_of_twenty_through_the_preview(
    shop: Orders, team: Team, served: str, browser: Any
) -> None:
    outage = shop.outage(20)
    other = shop.order("ORD_X", "address 'Main St 5' not found")
    context = browser.new_context(extra_http_headers=team.bearer("Ann"))
    page = context.new_page()
    try:
        page.goto(f"{served}/")
        page.click("#groups-link")
        assert page.locator("article.group").count() == 2
        with page.expect_navigation():
            page.locator("article.group").first.locator(
                "button:has-text('Decide this group: preview abort')"
            ).click()
        assert page.locator("#preview tbody tr.ready").count() == 20
        page.fill("#note-bulk", "carrier outage")
        with page.expect_navigation():
            page.click("#confirm")
        assert page.locator("#outcomes tr.landed").count() == 20
    finally:
        context.close()
    for run_id in outage:
        run = shop.guard.require_run(run_id)
        assert (run.status, run.decided_by, run.decision_note) == (
            "aborted",
            "Ann",
            "carrier outage",
        )
        (comp,) = shop.guard.log(run_id).compensations
        assert (comp.state, comp.attempts) == ("succeeded", 1)
    assert sorted(shop.cancelled) == sorted(f"ORD_{n:04d}" for n in range(20))  # once each
    assert shop.guard.require_run(other).status == "pending_review"


@browser_only
def test_browser_a_phone_fits_search_results_and_bulk_pages(
    shop: Orders, team: Team, served: str, browser: Any
) -> None:
    long_order = "ORD_" + "9F8E7D6C5B4A3928" * 6
    shop.order(long_order, f"carrier timeout for {long_order}")
    shop.outage(3)
    context = browser.new_context(viewport=PHONE, extra_http_headers=team.bearer("Ann"))
    page = context.new_page()
    try:
        for path in ("/?q=ord", "/?q=ord&status=pending_review&agent=shop", "/groups"):
            page.goto(served + path)
            assert page_width(page) <= 390, path
        page.goto(f"{served}/?q=ord_0")
        for box in range(3):
            page.check(f"#pick-{box + 1}")
        with page.expect_navigation():
            page.click("button:has-text('Preview abort')")
        assert page.locator("#preview tbody tr").count() == 3
        assert page_width(page) <= 390
        page.fill("#note-bulk", "outage")
        with page.expect_navigation():
            page.click("#confirm")
        assert page.locator("#outcomes tr.landed").count() == 3
        assert page_width(page) <= 390
    finally:
        context.close()
