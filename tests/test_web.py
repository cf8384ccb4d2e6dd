"""The web review console: the token, CSRF, escaping and every decision, over HTTP (Starlette's
TestClient) and in a real headless Chromium driven by Playwright."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from guardrail import Approval, Guard, Review, RunHalted
from guardrail.cli import app as cli_app
from guardrail.web import create_app
from guardrail.web.security import SESSION_COOKIE, SESSION_SECONDS, Keys, Principal

TOKEN = "test-token-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
CHROMIUM = "/usr/bin/chromium"
XSS = "<script>window.__pwned = 1; document.title = 'pwned'</script>"
IMG = "<img src=x onerror=\"window.__pwned = 2; document.title = 'pwned'\">"


@dataclass
class Shop:
    """A guard with a small shop's tools, and what their undos did."""

    guard: Guard
    tools: dict[str, Any] = field(default_factory=dict)
    undone: list[str] = field(default_factory=list)

    def call(self, tool: str, **kwargs: Any) -> Any:
        return self.tools[tool](**kwargs)

    def halted(self, item: str = "book", agent: str = "checkout") -> str:
        """A run halted after an order (undone), an email (a review item) and a failure."""
        with pytest.raises(RunHalted), self.guard.run(agent=agent) as run:
            self.call("create_order", item=item)
            self.call("send_email", to="ann@example.com", body=f"your {item}")
            self.call("ship", address="1 Main St")
        return run.id

    def awaiting(self, amount: int = 5000) -> tuple[str, str]:
        """A run waiting for approval of a charge; returns (run id, approval item id)."""
        with pytest.raises(RunHalted) as halt, self.guard.run(agent="checkout") as run:
            self.call("create_order", item="tv")
            self.call("charge", amount=amount)
        return run.id, halt.value.review_items[0]

    def completed(self) -> str:
        with self.guard.run(agent="checkout") as run:
            self.call("create_order", item="pen")
        return run.id


def make_shop(url: str) -> Shop:
    guard = Guard(store=url)
    shop = Shop(guard)

    def cancel_order(external_ids: dict[str, str]) -> None:
        shop.undone.append(external_ids["order_id"])

    @guard.tool(effect="reversible", undo=cancel_order, external_ids={"order_id": "result.id"})
    def create_order(item: str) -> dict[str, str]:
        return {"id": f"ord_{len(shop.undone)}_{item[:3]}"}

    @guard.tool(
        effect="irreversible",
        review=Review(kind="correct", owner="support", instructions="Send a correction"),
    )
    def send_email(to: str, body: str) -> str:
        return "sent"

    @guard.tool(
        effect="reversible", undo=lambda args: None, approval=Approval(when="args.amount > 1000")
    )
    def charge(amount: int) -> dict[str, int]:
        return {"amount": amount}

    @guard.tool(effect="read_only")
    def ship(address: str) -> None:
        raise ConnectionError("carrier API returned 503")

    shop.tools.update(create_order=create_order, send_email=send_email, charge=charge, ship=ship)
    return shop


@pytest.fixture
def shop(sqlite_url: str) -> Iterator[Shop]:
    shop = make_shop(sqlite_url)
    yield shop
    shop.guard.close()


@pytest.fixture
def client(shop: Shop) -> Iterator[TestClient]:
    with TestClient(create_app(shop.guard, TOKEN), base_url="http://127.0.0.1:8765") as c:
        yield c


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def decide(client: TestClient, on: str, **fields: str) -> tuple[str, str]:
    """Post a decision from run ``on``'s page as a browser would; return the flash."""
    page = client.get(f"/runs/{on}", headers=BEARER)
    assert page.status_code == 200
    data = {"csrf": csrf_of(page.text), **fields}
    answer = client.post("/decide", data=data, headers=BEARER, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    query = parse_qs(urlsplit(answer.headers["location"]).query)
    shown = client.get(answer.headers["location"], headers=BEARER)
    assert query["flash"][0] in unescape(shown.text)
    return query["kind"][0], query["flash"][0]


# -- the token ----------------------------------------------------------------------------------


def test_every_page_needs_the_token(shop: Shop, client: TestClient) -> None:
    run_id = shop.halted(item="secret-widget")
    for method, path in [
        ("GET", "/"),
        ("GET", "/?status=all"),
        ("GET", f"/runs/{run_id}"),
        ("GET", "/runs/no-such-run"),
        ("POST", "/decide"),
        ("POST", "/logout"),
    ]:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Cookie": "x"}):
            answer = client.request(method, path, headers=headers)
            assert answer.status_code == 401, (method, path, headers)
            assert answer.headers["www-authenticate"].startswith("Bearer")
            # no data: the login form echoes the path asked for, nothing from the store
            for data in ("secret-widget", "create_order", "checkout", shop.guard.store.url):
                assert data not in answer.text
            assert 'name="token"' in answer.text  # the login form, nothing else
    assert client.get("/", headers=BEARER).status_code == 200
    assert client.get("/static/console.css").status_code == 200  # public: no data in it
    assert shop.guard.require_run(run_id).status == "pending_review"


def test_login_sets_a_strict_httponly_session(shop: Shop, client: TestClient) -> None:
    run_id = shop.halted()
    wrong = client.post("/login", data={"token": "nope", "next": "/"}, follow_redirects=False)
    assert wrong.status_code == 401 and "not the console" in wrong.text
    assert SESSION_COOKIE not in client.cookies
    good = client.post(
        "/login", data={"token": TOKEN, "next": f"/runs/{run_id}"}, follow_redirects=False
    )
    assert good.status_code == 303 and good.headers["location"] == f"/runs/{run_id}"
    cookie = good.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert TOKEN.lower() not in cookie  # the cookie is a signed session, not the token
    assert client.get(f"/runs/{run_id}").status_code == 200
    # a redirect after login never leaves the site
    away = client.post("/login", data={"token": TOKEN, "next": "//evil.example/x"})
    assert away.url.path == "/" and away.url.host == "127.0.0.1"
    # log out: the cookie is dropped
    page = client.get("/")
    out = client.post("/logout", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert out.status_code == 303 and SESSION_COOKIE not in client.cookies
    assert client.get("/").status_code == 401


def test_sessions_are_signed_and_expire(shop: Shop, client: TestClient) -> None:
    keys = Keys(TOKEN)
    fresh = keys.new_session()
    issued, nonce, mac = fresh.split(".")
    for cookie, code in [
        (fresh, 200),
        (f"{issued}.{nonce}.{'0' * len(mac)}", 401),  # forged
        (f"{int(issued) + 5}.{nonce}.{mac}", 401),  # edited
        (keys.new_session(now=time.time() - SESSION_SECONDS - 10), 401),  # expired
        (Keys("another-token-0123456789").new_session(), 401),  # the token changed
    ]:
        client.cookies.clear()
        client.cookies.set(SESSION_COOKIE, cookie)
        assert client.get("/").status_code == code, cookie
    with pytest.raises(ValueError, match="at least 16"):
        create_app(shop.guard, "short")


def test_security_headers(shop: Shop, client: TestClient) -> None:
    run_id = shop.halted()
    for answer in (client.get("/"), client.get(f"/runs/{run_id}", headers=BEARER)):
        csp = answer.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'none'" in csp
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["cache-control"] == "no-store"


def test_big_bodies_are_refused(client: TestClient) -> None:
    big = b"token=" + b"x" * 300_000
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    assert client.post("/login", content=big, headers=headers).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b"token="
        for _ in range(30):
            yield b"x" * 10_000

    answer = client.post("/login", content=chunks(), headers=headers)
    assert answer.status_code == 413 and SESSION_COOKIE not in client.cookies


# -- CSRF ---------------------------------------------------------------------------------------


def test_decisions_without_the_csrf_token_or_from_another_site_are_refused(
    shop: Shop, client: TestClient
) -> None:
    run_id = shop.halted()
    undone = list(shop.undone)
    page = client.get(f"/runs/{run_id}", headers=BEARER).text
    good = csrf_of(page)
    form = {"decision": "abort", "run_id": run_id, "reviewer": "mallory", "note": "x"}
    other_session = Keys(TOKEN).csrf(Principal("another-nonce", "cookie"))
    for csrf, headers in [
        (None, {}),
        ("", {}),
        ("0" * 64, {}),
        (other_session, {}),  # a token of another session
        (good, {"Origin": "https://evil.example"}),
        (good, {"Origin": "http://127.0.0.1:9999"}),  # same site, another origin
        (good, {"Referer": "https://evil.example/page"}),
        (good, {"Sec-Fetch-Site": "cross-site"}),
        (good, {"Sec-Fetch-Site": "same-site"}),
    ]:
        data = dict(form) if csrf is None else {**form, "csrf": csrf}
        answer = client.post(
            "/decide", data=data, headers={**BEARER, **headers}, follow_redirects=False
        )
        assert answer.status_code == 403, (csrf, headers)
    assert shop.guard.require_run(run_id).status == "pending_review"
    assert shop.undone == undone
    # the same form from the console's own page lands (Origin: null is what a no-referrer
    # page sends; it says nothing either way)
    for headers in (
        {"Origin": "null", "Sec-Fetch-Site": "same-origin"},
        {"Origin": "http://127.0.0.1:8765"},
    ):
        answer = client.post(
            "/decide",
            data={**form, "decision": "resume", "csrf": good},
            headers={**BEARER, **headers},
            follow_redirects=False,
        )
        assert answer.status_code == 303
    assert shop.guard.require_run(run_id).decided_by == "mallory"


def test_logout_and_login_need_the_same_site(client: TestClient) -> None:
    assert client.post("/logout", headers=BEARER, data={}).status_code == 403
    answer = client.post(
        "/login",
        data={"token": TOKEN},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert answer.status_code == 403 and SESSION_COOKIE not in client.cookies


# -- decisions ----------------------------------------------------------------------------------


def test_every_decision_records_the_reviewer(shop: Shop, client: TestClient) -> None:
    guard = shop.guard
    halted = shop.halted()
    (email,) = guard.store.review_items(run_id=halted, status="open")
    kind, text = decide(
        client,
        halted,
        decision="resolve",
        item_id=email.id,
        resolution="done_manually",
        reviewer="Ann",
        note="sent the correction",
    )
    assert kind == "ok" and "Resolved" in text
    item = guard.store.review_item(email.id)
    assert item is not None
    assert (item.resolution, item.resolved_by, item.note) == (
        "done_manually",
        "Ann",
        "sent the correction",
    )
    # a repeat changes nothing; a different resolution is a conflict
    kind, text = decide(
        client,
        halted,
        decision="resolve",
        item_id=email.id,
        resolution="done_manually",
        reviewer="Ann",
        note="again",
    )
    assert kind == "warn" and text.startswith("Already")
    kind, text = decide(
        client,
        halted,
        decision="resolve",
        item_id=email.id,
        resolution="skipped",
        reviewer="Bob",
        note="no",
    )
    assert kind == "error" and "already resolved as done_manually by Ann" in text

    kind, text = decide(
        client, halted, decision="resume", run_id=halted, reviewer="Ann", note="carrier is back"
    )
    run = guard.require_run(halted)
    assert kind == "ok" and (run.status, run.decided_by, run.decision_note) == (
        "running",
        "Ann",
        "carrier is back",
    )

    aborted = shop.halted()
    kind, text = decide(
        client, aborted, decision="abort", run_id=aborted, reviewer="Bob", note="customer left"
    )
    run = guard.require_run(aborted)
    assert kind == "ok" and "Aborted" in text and "1 review item(s) still need" in text
    assert (run.status, run.decided_by, run.decision_note) == ("aborted", "Bob", "customer left")
    kind, text = decide(
        client, aborted, decision="abort", run_id=aborted, reviewer="Cy", note="me too"
    )
    assert kind == "warn" and "Already aborted by Bob" in text
    kind, text = decide(
        client, aborted, decision="resume", run_id=aborted, reviewer="Cy", note="oops"
    )
    assert kind == "error" and "cannot be resumed" in text
    assert guard.require_run(aborted).decided_by == "Bob"

    waiting, approval = shop.awaiting()
    kind, text = decide(
        client, waiting, decision="resume", run_id=waiting, reviewer="Ann", note="go"
    )
    assert kind == "error" and "approve or reject" in text
    kind, text = decide(
        client, waiting, decision="approve", item_id=approval, reviewer="Dee", note="known"
    )
    assert kind == "ok" and "Approved" in text
    item = guard.store.review_item(approval)
    assert item is not None and (item.resolution, item.resolved_by) == ("approved", "Dee")

    rejected_run, rejected = shop.awaiting(amount=9000)
    kind, text = decide(
        client, rejected_run, decision="reject", item_id=rejected, reviewer="Eve", note="fraud"
    )
    item = guard.store.review_item(rejected)
    assert kind == "ok" and item is not None
    assert (item.resolution, item.resolved_by, item.note) == ("rejected", "Eve", "fraud")
    # the run page shows who decided what
    page = client.get(f"/runs/{rejected_run}", headers=BEARER).text
    assert "rejected" in page and "Eve" in page and "fraud" in page


def test_a_decision_needs_a_reviewer_and_a_note(shop: Shop, client: TestClient) -> None:
    run_id = shop.halted()
    csrf = csrf_of(client.get(f"/runs/{run_id}", headers=BEARER).text)
    base = {"csrf": csrf, "decision": "abort", "run_id": run_id}
    for extra in (
        {},
        {"reviewer": "Ann"},
        {"note": "why"},
        {"reviewer": "   ", "note": "why"},
        {"reviewer": "Ann", "note": "x" * 2001},
        {"reviewer": "Ann", "note": "why", "decision": "delete"},
        {"reviewer": "Ann", "note": "why", "decision": "resolve", "item_id": "x"},
    ):
        answer = client.post("/decide", data={**base, **extra}, headers=BEARER)
        assert answer.status_code == 400, extra
    answer = client.post(
        "/decide",
        data={**base, "decision": "approve", "item_id": "nope", "reviewer": "A", "note": "n"},
        headers=BEARER,
    )
    assert answer.status_code == 404
    assert shop.guard.require_run(run_id).status == "pending_review"


# -- what the pages show ------------------------------------------------------------------------


def test_tool_arguments_render_as_text(shop: Shop, client: TestClient) -> None:
    run_id = shop.halted(item=XSS + IMG, agent="<b>agent</b>")
    for path in ("/", f"/runs/{run_id}"):
        html = client.get(path, headers=BEARER).text
        assert "<script>window" not in html and "<img src=x" not in html
        assert "<b>agent</b>" not in html and "&lt;b&gt;agent&lt;/b&gt;" in html
    html = client.get(f"/runs/{run_id}", headers=BEARER).text
    assert "&lt;script&gt;window.__pwned" in html and "&lt;img src=x onerror=" in html
    # the outcome of a decision is shown only when the console signed it
    forged = client.get(
        f"/runs/{run_id}?kind=ok&flash=Call+555-0100+now&sig=00", headers=BEARER
    ).text
    assert "555-0100" not in forged


def test_inbox_shows_what_waits_and_filters(shop: Shop, client: TestClient) -> None:
    halted = shop.halted()
    waiting, _ = shop.awaiting()
    done = shop.completed()
    html = client.get("/", headers=BEARER).text
    assert halted in html and waiting in html and done not in html
    assert re.search(r'id="count-pending-review">1<', html)
    assert re.search(r'id="count-awaiting-approval">1<', html)
    assert re.search(r'id="count-open-items">2<', html)
    html = client.get("/?status=all", headers=BEARER).text
    assert halted in html and waiting in html and done in html
    html = client.get("/?status=completed", headers=BEARER).text
    assert done in html and halted not in html
    assert client.get("/?status=bogus", headers=BEARER).status_code == 400
    page = client.get(f"/runs/{halted}", headers=BEARER).text
    for shown in ("create_order", "compensated", "send_email", "Send a correction", "ship"):
        assert shown in page
    assert "carrier API returned 503" in page and 'id="chain">ok<' in page
    assert client.get("/runs/no-such-run", headers=BEARER).status_code == 404


def test_an_aborted_run_with_open_items_stays_in_the_inbox(shop: Shop, client: TestClient) -> None:
    run_id = shop.halted()
    shop.guard.abort(run_id, by="ann")
    html = client.get("/", headers=BEARER).text
    assert run_id in html  # the email still needs its correction


def test_a_run_nobody_finishes_is_in_the_inbox(shop: Shop, client: TestClient) -> None:
    """A run whose owner gave up after a store fault (its lease no longer renewed) needs a
    person until recovery takes it over; a run executing now does not."""
    from guardrail.testing import FaultyStore

    faulty = FaultyStore(shop.guard)
    faulty.fail("run.halt")
    with pytest.raises(RunHalted), shop.guard.run(agent="checkout") as stuck:
        shop.call("create_order", item="pen")
        shop.call("ship", address="x")
    faulty.heal()
    live = shop.guard.run(agent="checkout").start()
    assert shop.guard.require_run(stuck.id).status == "running"
    shop.guard.stale_after = 3600.0
    html = client.get("/", headers=BEARER).text
    assert stuck.id not in html and live.id not in html  # both leases are fresh
    shop.guard.stale_after = -1.0  # an hour later: the stuck run's lease expired
    html = client.get("/", headers=BEARER).text
    assert stuck.id in html
    live.complete()


def test_a_tampered_log_shows_a_broken_chain(shop: Shop, client: TestClient) -> None:
    import sqlite3

    run_id = shop.halted()
    path = shop.guard.store.url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE actions SET tool = 'nothing_to_see' WHERE run_id = ? AND seq = 2", (run_id,)
        )
    html = client.get(f"/runs/{run_id}", headers=BEARER).text
    assert 'id="chain">BROKEN<' in html and "changed outside guardrail" in html


def test_odd_run_ids_and_long_timelines(
    shop: Shop, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import guardrail.web.app as web_app

    monkeypatch.setattr(web_app, "ACTIONS_PER_PART", 2)
    run_id = "thread/42 <b>"
    with pytest.raises(RunHalted), shop.guard.run(run_id=run_id, agent="graph"):
        for item in ("a", "b", "c", "d", "e"):
            shop.call("create_order", item=item)
        shop.call("ship", address="x")
    inbox = client.get("/", headers=BEARER).text
    assert 'href="/runs/thread%2F42%20%3Cb%3E"' in inbox and "thread/42 &lt;b&gt;" in inbox
    html = client.get("/runs/thread%2F42%20%3Cb%3E", headers=BEARER).text
    # six actions in parts of two; the last part (where the failure is) comes first
    assert re.findall(r'<tr id="action-(\d+)"', html) == ["5", "6"]
    assert "?part=1#timeline" in html and "?part=3#timeline" in html
    html = client.get("/runs/thread%2F42%20%3Cb%3E?part=1", headers=BEARER).text
    assert re.findall(r'<tr id="action-(\d+)"', html) == ["1", "2"]
    kind, _ = decide(
        client, "thread%2F42%20%3Cb%3E", decision="abort", run_id=run_id, reviewer="A", note="n"
    )
    assert kind == "ok" and shop.guard.require_run(run_id).status == "aborted"


def test_a_console_on_a_store_url_owns_its_guard(shop: Shop, sqlite_url: str) -> None:
    from guardrail import StoreError

    run_id = shop.halted()
    app = create_app(sqlite_url, TOKEN)
    with TestClient(app) as c:
        assert run_id in c.get("/", headers=BEARER).text
        kind, _ = decide(c, run_id, decision="abort", run_id=run_id, reviewer="Ann", note="n")
        assert kind == "ok"
    assert shop.guard.require_run(run_id).decided_by == "Ann"
    with pytest.raises(StoreError, match="closed"):
        app.state.guard.runs()  # closed at shutdown


# -- guardrail serve ----------------------------------------------------------------------------


def test_serve_refuses_without_a_token_or_on_a_public_address(
    shop: Shop, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    started: list[dict[str, Any]] = []

    def fake_run(app: Any, **options: Any) -> None:
        with TestClient(app) as c:
            assert c.get("/").status_code == 401
            assert c.get("/?status=all", headers=BEARER).status_code == 200
        started.append(options)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.delenv("GUARDRAIL_TOKEN", raising=False)
    runner = CliRunner()
    shop.completed()
    for args in (
        [],
        ["--token", "short"],
        ["--token", TOKEN, "--host", "0.0.0.0"],
        ["--token", TOKEN, "--host", "192.168.1.5"],
    ):
        result = runner.invoke(cli_app, ["serve", "--store", sqlite_url, *args])
        assert result.exit_code == 2, (args, result.output)
        assert started == []
    result = runner.invoke(
        cli_app, ["serve", "--store", sqlite_url], env={"GUARDRAIL_TOKEN": TOKEN}
    )
    assert result.exit_code == 0, result.output
    assert started[-1]["host"] == "127.0.0.1" and started[-1]["port"] == 8765
    result = runner.invoke(
        cli_app,
        ["serve", "--store", sqlite_url, "--token", TOKEN, "--host", "0.0.0.0", "--allow-remote"],
    )
    assert result.exit_code == 0 and started[-1]["host"] == "0.0.0.0"


# -- in a real browser --------------------------------------------------------------------------

browser_only = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"the browser tests need Debian's chromium at {CHROMIUM}"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def served(shop: Shop) -> Iterator[str]:
    """The console for the shop's guard, served by uvicorn on a free loopback port."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # connections wait in the backlog until the server accepts them
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(shop.guard, TOKEN), log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@browser_only
def test_browser_halt_review_and_abort(shop: Shop, served: str, browser: Any) -> None:
    run_id = shop.halted(item="book")
    context = browser.new_context()
    page = context.new_page()
    try:
        answer = page.goto(f"{served}/")
        assert answer is not None and answer.status == 401
        page.fill("#token", TOKEN)
        page.click("button:has-text('Log in')")
        assert page.text_content("#count-pending-review") == "1"
        page.click(f"a:has-text('{run_id}')")
        assert page.text_content("#run-status") == "pending_review"
        # the order was undone when the run halted: an abort has only the email left
        assert "review action 2 (send_email)" in (page.text_content("#plan") or "")
        assert page.is_visible("text=Send a correction")
        page.fill("#reviewer-abort", "Ann On-Call")
        page.fill("#note-abort", "customer cancelled on the phone")
        page.click("button:has-text('Abort run')")
        page.wait_for_selector("#flash")
        assert "Aborted run" in (page.text_content("#flash") or "")
        assert page.text_content("#run-status") == "aborted"
        assert "Ann On-Call" in (page.text_content("#decided") or "")
        # the name is remembered for the next decision
        assert (
            page.input_value(f"#reviewer-{shop.guard.store.review_items(run_id=run_id)[0].id}")
            == "Ann On-Call"
        )
    finally:
        context.close()
    run = shop.guard.require_run(run_id)
    assert (run.status, run.decided_by, run.decision_note) == (
        "aborted",
        "Ann On-Call",
        "customer cancelled on the phone",
    )
    assert shop.guard.verify(run_id).ok


@browser_only
def test_browser_runs_no_script_from_tool_arguments(shop: Shop, served: str, browser: Any) -> None:
    run_id = shop.halted(item=XSS + IMG)
    dialogs: list[str] = []
    # Without the CSP too: the escaping alone must keep the script from running.
    for bypass_csp in (False, True):
        context = browser.new_context(extra_http_headers=BEARER, bypass_csp=bypass_csp)
        page = context.new_page()
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        try:
            for path in ("/", f"/runs/{run_id}"):
                answer = page.goto(served + path)
                assert answer is not None and answer.status == 200
                page.wait_for_load_state("load")
                assert page.evaluate("window.__pwned") is None
                assert page.title() != "pwned"
            assert page.locator("pre.args", has_text="<script>window.__pwned").first.is_visible()
            assert page.locator("pre.args", has_text="<img src=x onerror=").first.is_visible()
            assert page.locator("img").count() == 0
            assert dialogs == []
        finally:
            context.close()


@browser_only
def test_browser_without_the_token_is_refused(shop: Shop, served: str, browser: Any) -> None:
    run_id = shop.halted(item="secret-widget")
    context = browser.new_context()
    page = context.new_page()
    try:
        answer = page.goto(f"{served}/runs/{run_id}")
        assert answer is not None and answer.status == 401
        assert "secret-widget" not in page.content() and "create_order" not in page.content()
        page.fill("#token", "not-the-token-at-all")
        page.click("button:has-text('Log in')")
        assert "not the console" in (page.text_content("p.error") or "")
        assert context.cookies() == []
        api = context.request.get(f"{served}/?status=all")
        assert api.status == 401 and run_id not in api.text()
        # a same-site page on another port cannot post a decision, even with a session and a
        # stolen CSRF token: the browser says where the form came from
        page.fill("#token", TOKEN)
        page.click("button:has-text('Log in')")  # back to the run it asked for
        assert page.text_content("#run-id") == run_id
        csrf = page.get_attribute("input[name=csrf]", "value")
        evil = "http://127.0.0.1:1/"
        page.route(
            evil,
            lambda route: route.fulfill(
                content_type="text/html",
                body=f'<form method="post" action="{served}/decide">'
                f'<input name="csrf" value="{csrf}"><input name="decision" value="abort">'
                f'<input name="run_id" value="{run_id}"><input name="reviewer" value="evil">'
                '<input name="note" value="x"><button>go</button></form>',
            ),
        )
        page.goto(evil)
        with page.expect_navigation():
            page.click("button")
        assert "another site" in page.content()
    finally:
        context.close()
    assert shop.guard.require_run(run_id).status == "pending_review"
