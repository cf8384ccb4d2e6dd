"""The web review console: who gets in and as whom (reviewers' own tokens, the shared token, a
trusted proxy header), server-side sessions, throttled logins, CSRF, escaping and every
decision, over HTTP (Starlette's TestClient) and in a real headless Chromium driven by
Playwright."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient
from typer.testing import CliRunner

from guardrail import Approval, Guard, Review, RunHalted
from guardrail.cli import app as cli_app
from guardrail.web import create_app
from guardrail.web.reviewers import ReviewerFile
from guardrail.web.security import (
    SESSION_COOKIE,
    SESSION_SECONDS,
    Principal,
    Throttle,
    client_key,
)

TOKEN = "test-token-0123456789abcdef"  # the shared token
BEARER = {"Authorization": f"Bearer {TOKEN}"}
SHARED = "shared-token"  # what decisions made with the shared token record
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


class Clock:
    """A monotonic clock the test moves by hand: throttling and expiry without sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Team:
    """A reviewers file and the token each reviewer was given."""

    file: ReviewerFile
    tokens: dict[str, str]

    def bearer(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}


@pytest.fixture
def shop(sqlite_url: str) -> Iterator[Shop]:
    shop = make_shop(sqlite_url)
    yield shop
    shop.guard.close()


@pytest.fixture
def team(tmp_path: Path) -> Team:
    file = ReviewerFile(tmp_path / "reviewers.json")
    return Team(file, {name: file.add(name) for name in ("Ann", "Bob", "Dee", "Eve")})


@pytest.fixture
def clock() -> Clock:
    return Clock()


def console(shop: Shop, team: Team, clock: Clock, **options: Any) -> Starlette:
    """The console with the shared token and the team's file; a throttle that stays out of
    the way unless the test brings its own."""
    options.setdefault("throttle", Throttle(clock=clock, free=1000, burst=10_000))
    return create_app(shop.guard, TOKEN, reviewers=team.file, clock=clock, **options)


@pytest.fixture
def client(shop: Shop, team: Team, clock: Clock) -> Iterator[TestClient]:
    with TestClient(console(shop, team, clock), base_url="http://127.0.0.1:8765") as c:
        yield c


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


FLASH = re.compile(
    r'<div class="flash flash-(ok|warn|error)" role="status" id="flash">([^<]*)</div>'
)


def shown_flash(html: str) -> tuple[str, str] | None:
    """The outcome a page shows, as (kind, message), if it shows one."""
    found = FLASH.findall(html)
    assert len(found) <= 1, found
    return (found[0][0], unescape(found[0][1])) if found else None


def decide(
    client: TestClient, on: str, who: dict[str, Any] | None = None, **fields: str
) -> tuple[str, str]:
    """Post a decision from run ``on``'s page as a browser would, authenticated by ``who``
    (default: the shared token; ``{}``: the client's session cookie); return the outcome the
    next page shows (once: a reload does not show it again)."""
    headers = BEARER if who is None else who
    page = client.get(f"/runs/{on}", headers=headers)
    assert page.status_code == 200
    data = {"csrf": csrf_of(page.text), **fields}
    answer = client.post("/decide", data=data, headers=headers, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    assert "flash" not in location and "?" not in location  # the outcome is not in the URL
    shown = client.get(location, headers=headers)
    flash = shown_flash(shown.text)
    assert flash is not None, shown.text
    assert shown_flash(client.get(location, headers=headers).text) is None
    return flash


def use_cookie(client: TestClient, value: str) -> None:
    """Send this session cookie, and no other."""
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, value)


def log_in(client: TestClient, token: str) -> str:
    """Log in through the form (with no cookie from before); return the session cookie."""
    client.cookies.clear()
    answer = client.post("/login", data={"token": token, "next": "/"}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return client.cookies[SESSION_COOKIE]


# -- who gets in ---------------------------------------------------------------------------------


def test_every_page_needs_a_login(shop: Shop, team: Team, client: TestClient) -> None:
    run_id = shop.halted(item="secret-widget")
    for method, path in [
        ("GET", "/"),
        ("GET", "/?status=all"),
        ("GET", f"/runs/{run_id}"),
        ("GET", "/runs/no-such-run"),
        ("POST", "/decide"),
        ("POST", "/logout"),
    ]:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token-0123456789"},
            {"Authorization": f"Bearer {team.tokens['Ann']}x"},
            {"Authorization": f"Bearer {team.file.load()[0].digest}"},  # the hash is no token
            {"X-Forwarded-User": "Ann"},  # not configured: means nothing
            {"Cookie": "x"},
            {"Cookie": f"{SESSION_COOKIE}={team.tokens['Ann']}"},
        ):
            answer = client.request(method, path, headers=headers)
            assert answer.status_code == 401, (method, path, headers)
            assert answer.headers["www-authenticate"].startswith("Bearer")
            # no data: the login form echoes the path asked for, nothing from the store
            for data in ("secret-widget", "create_order", "checkout", shop.guard.store.url):
                assert data not in answer.text
            assert 'name="token"' in answer.text  # the login form, nothing else
    for name in team.tokens:
        assert client.get("/", headers=team.bearer(name)).status_code == 200
    assert client.get("/", headers=BEARER).status_code == 200
    assert client.get("/static/console.css").status_code == 200  # public: no data in it
    assert shop.guard.require_run(run_id).status == "pending_review"


def test_login_opens_a_strict_httponly_server_side_session(
    shop: Shop, team: Team, client: TestClient
) -> None:
    run_id = shop.halted()
    wrong = client.post("/login", data={"token": "nope", "next": "/"}, follow_redirects=False)
    assert wrong.status_code == 401 and "not a token this console accepts" in wrong.text
    assert SESSION_COOKIE not in client.cookies
    good = client.post(
        "/login",
        data={"token": team.tokens["Ann"], "next": f"/runs/{run_id}"},
        follow_redirects=False,
    )
    assert good.status_code == 303 and good.headers["location"] == f"/runs/{run_id}"
    cookie = good.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    # the cookie is a random session id: not the token, not its hash, not the name
    value = client.cookies[SESSION_COOKIE]
    for secret in (team.tokens["Ann"], team.file.load()[0].digest.removeprefix("sha256:"), "Ann"):
        assert secret not in value
    page = client.get(f"/runs/{run_id}")
    assert page.status_code == 200 and re.search(r'id="who">Ann<', page.text)
    # a redirect after login never leaves the site
    away = client.post("/login", data={"token": team.tokens["Ann"], "next": "//evil.example/x"})
    assert away.url.path == "/" and away.url.host == "127.0.0.1"
    # log out: the cookie is dropped
    page = client.get("/")
    out = client.post("/logout", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert out.status_code == 303 and SESSION_COOKIE not in client.cookies
    assert client.get("/").status_code == 401
    # the shared token still logs in, as the fixed identity
    log_in(client, TOKEN)
    assert re.search(rf'id="who">{SHARED}<', client.get("/").text)


def test_logout_revokes_the_session_on_the_server(
    shop: Shop, team: Team, clock: Clock, client: TestClient
) -> None:
    run_id = shop.halted()
    app = client.app
    copied = log_in(client, team.tokens["Ann"])
    with TestClient(app, base_url="http://127.0.0.1:8765") as laptop:
        other = log_in(laptop, team.tokens["Ann"])  # Ann's second session, elsewhere
        csrf = csrf_of(client.get(f"/runs/{run_id}").text)
        out = client.post("/logout", data={"csrf": csrf}, follow_redirects=False)
        assert out.status_code == 303
        with TestClient(app, base_url="http://127.0.0.1:8765") as thief:
            use_cookie(thief, copied)  # a copy taken before the logout
            answer = thief.get("/")
            assert answer.status_code == 401 and "session has ended" in answer.text
            use_cookie(thief, copied)
            posted = thief.post(
                "/decide",
                data={"csrf": csrf, "decision": "abort", "run_id": run_id, "note": "x"},
            )
            assert posted.status_code == 401
        # logging out ends that session only
        assert laptop.get("/").status_code == 200
        assert laptop.cookies[SESSION_COOKIE] == other
    assert shop.guard.require_run(run_id).status == "pending_review"


def test_sessions_expire_and_live_in_this_process(
    shop: Shop, team: Team, clock: Clock, client: TestClient
) -> None:
    cookie = log_in(client, team.tokens["Bob"])
    clock.advance(SESSION_SECONDS - 10)
    assert client.get("/").status_code == 200
    clock.advance(11)  # 12 hours after the login
    assert client.get("/").status_code == 401
    # a session of another console (another process, or before a restart) means nothing here
    with TestClient(console(shop, team, clock)) as other:
        theirs = log_in(other, team.tokens["Bob"])
    for value in (theirs, cookie, "0" * 43, ""):
        use_cookie(client, value)
        assert client.get("/").status_code == 401, value
    with pytest.raises(ValueError, match="at least 16"):
        create_app(shop.guard, "short")
    with pytest.raises(ValueError, match="who is deciding"):
        create_app(shop.guard)
    with pytest.raises(ValueError, match="no reviewers file"):
        create_app(shop.guard, reviewers=team.file.path.with_name("nobody.json"))


def test_a_removed_reviewer_is_refused(shop: Shop, team: Team, client: TestClient) -> None:
    run_id = shop.halted()
    bob = log_in(client, team.tokens["Bob"])
    assert client.get("/").status_code == 200
    assert client.get("/", headers=team.bearer("Bob")).status_code == 200
    runner = CliRunner()
    result = runner.invoke(cli_app, ["reviewers", "remove", "Bob", "--file", str(team.file.path)])
    assert result.exit_code == 0, result.output
    # the running console notices at once: the token and the session it opened stop working
    assert client.get("/").status_code == 401
    assert client.get("/", headers=team.bearer("Bob")).status_code == 401
    assert client.post("/login", data={"token": team.tokens["Bob"]}).status_code == 401
    assert client.get("/", headers=team.bearer("Ann")).status_code == 200
    # added again, Bob has a new token; the old one and the old session stay dead
    result = runner.invoke(cli_app, ["reviewers", "add", "Bob", "--file", str(team.file.path)])
    assert result.exit_code == 0, result.output
    new_token = result.stdout.strip()
    use_cookie(client, bob)
    assert client.get("/").status_code == 401
    assert client.get("/", headers=team.bearer("Bob")).status_code == 401
    assert client.get("/", headers={"Authorization": f"Bearer {new_token}"}).status_code == 200
    # a new token for Ann (--replace) ends her old token and sessions the same way
    ann = log_in(client, team.tokens["Ann"])
    result = runner.invoke(
        cli_app, ["reviewers", "add", "Ann", "--replace", "--file", str(team.file.path)]
    )
    assert result.exit_code == 0, result.output
    use_cookie(client, ann)
    assert client.get("/").status_code == 401
    assert client.get("/", headers=team.bearer("Ann")).status_code == 401
    kind, _ = decide(
        client,
        run_id,
        {"Authorization": f"Bearer {result.stdout.strip()}"},
        decision="abort",
        run_id=run_id,
        note="n",
    )
    assert kind == "ok" and shop.guard.require_run(run_id).decided_by == "Ann"


def test_a_reviewers_file_that_cannot_be_trusted_lets_nobody_in(
    team: Team, client: TestClient
) -> None:
    path = team.file.path
    good = path.read_text()
    assert client.get("/", headers=team.bearer("Ann")).status_code == 200
    path.write_text("{not json")
    assert client.get("/", headers=team.bearer("Ann")).status_code == 401
    path.write_text(good)
    assert client.get("/", headers=team.bearer("Ann")).status_code == 200
    os.chmod(path, 0o666)  # anyone could add themselves: nobody gets in by it
    assert client.get("/", headers=team.bearer("Ann")).status_code == 401
    os.chmod(path, 0o600)
    assert client.get("/", headers=team.bearer("Ann")).status_code == 200
    path.unlink()
    assert client.get("/", headers=team.bearer("Ann")).status_code == 401
    assert client.get("/", headers=BEARER).status_code == 200  # the shared token still works


def test_reviewers_commands(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "reviewers.json"
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(cli_app, ["reviewers", *args, "--file", str(path)])

    added = run("add", "Ann On-Call")
    assert added.exit_code == 0, added.output
    token = added.stdout.strip()
    assert token.startswith("grv_") and len(token) >= 40 and "\n" not in token
    assert "shown only this once" in added.stderr
    # only the hash is stored; the file and its folder are private
    text = path.read_text()
    assert token not in text and token[4:] not in text
    data = json.loads(text)
    assert [r["name"] for r in data["reviewers"]] == ["Ann On-Call"]
    assert data["reviewers"][0]["digest"].startswith("sha256:")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ReviewerFile(path).find(token) is not None
    assert ReviewerFile(path).find(token + "x") is None

    assert run("add", "Bob").exit_code == 0
    assert run("add", "Bob").exit_code == 3  # a second token needs --replace
    listed = run("list")
    assert listed.exit_code == 0 and "Ann On-Call" in listed.stdout and "Bob" in listed.stdout
    assert token not in listed.stdout
    as_json = runner.invoke(cli_app, ["reviewers", "list", "--json", "--file", str(path)])
    assert [r["name"] for r in json.loads(as_json.stdout)] == ["Ann On-Call", "Bob"]
    for bad in ("", " Ann", "Ann\n", "a\x1bb", "x" * 101, SHARED):
        assert run("add", bad).exit_code == 2, bad
    assert run("remove", "Carol").exit_code == 1
    assert run("remove", "Bob").exit_code == 0
    assert [r.name for r in ReviewerFile(path).load()] == ["Ann On-Call"]
    # GUARDRAIL_REVIEWERS names the file too
    listed = runner.invoke(cli_app, ["reviewers", "list"], env={"GUARDRAIL_REVIEWERS": str(path)})
    assert "Ann On-Call" in listed.stdout


def test_reviewers_added_at_once_are_all_kept(tmp_path: Path) -> None:
    """Each change is a locked read-modify-write and an atomic rename: none is lost, and a
    reader never sees half a file."""
    path = tmp_path / "reviewers.json"
    names = [f"reviewer-{n}" for n in range(16)]
    seen: list[int] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(len(ReviewerFile(path).load()))

    reader = threading.Thread(target=read)
    reader.start()
    workers = [threading.Thread(target=ReviewerFile(path).add, args=(name,)) for name in names]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    reader.join()
    assert sorted(r.name for r in ReviewerFile(path).load()) == sorted(names)
    assert seen == sorted(seen)  # only ever whole files, growing


# -- throttled logins -----------------------------------------------------------------------------


def test_failed_logins_are_throttled_per_address_and_the_throttle_lifts(
    shop: Shop, team: Team, clock: Clock
) -> None:
    app = console(shop, team, clock, throttle=None)  # the default limits, on the test's clock
    ann = team.tokens["Ann"]

    def attempt(c: TestClient, token: str) -> Any:
        return c.post("/login", data={"token": token, "next": "/"}, follow_redirects=False)

    with (
        TestClient(app, client=("203.0.113.7", 4000)) as guesser,
        TestClient(app, client=("198.51.100.2", 4000)) as colleague,
    ):
        for n in range(5):
            assert attempt(guesser, f"guess-{n}").status_code == 401
        # locked out: even the right token is not looked at (no oracle), 429 with Retry-After
        for token in ("guess-5", ann):
            answer = attempt(guesser, token)
            assert answer.status_code == 429 and answer.headers["retry-after"] == "1"
            assert "Too many wrong tokens" in answer.text
            assert SESSION_COOKIE not in guesser.cookies
        # bearer guesses are the same guesses
        assert guesser.get("/", headers=team.bearer("Ann")).status_code == 429
        # another address is not held up
        assert attempt(colleague, team.tokens["Bob"]).status_code == 303
        # the lock lifts; each further failure doubles it
        clock.advance(1)
        assert attempt(guesser, "guess-6").status_code == 401
        assert attempt(guesser, ann).headers["retry-after"] == "2"
        clock.advance(2)
        assert attempt(guesser, "guess-7").status_code == 401
        assert attempt(guesser, ann).headers["retry-after"] == "4"
        clock.advance(4)
        assert attempt(guesser, ann).status_code == 303  # and a success clears the count
        assert guesser.get("/").status_code == 200
        guesser.cookies.clear()
        for n in range(4):
            assert attempt(guesser, f"again-{n}").status_code == 401
        assert attempt(guesser, ann).status_code == 303
        # wrong bearer tokens count against the address too
        guesser.cookies.clear()
        for n in range(5):
            wrong = {"Authorization": f"Bearer wrong-bearer-{n:016d}"}
            assert guesser.get("/", headers=wrong).status_code == 401
        answer = guesser.get("/", headers=team.bearer("Ann"))
        assert answer.status_code == 429 and answer.headers["retry-after"] == "1"
        # failures are forgotten after an hour without one
        clock.advance(3601)
        assert guesser.get("/", headers=team.bearer("Ann")).status_code == 200
    # a session already open is not a guess: throttling never logs anybody out
    with TestClient(app, client=("203.0.113.7", 4001)) as same_address:
        log_in(same_address, team.tokens["Dee"])
        for n in range(8):
            attempt_answer = same_address.get("/", headers={"Authorization": f"Bearer no-{n}"})
            assert attempt_answer.status_code in (401, 429)
        assert same_address.get("/").status_code == 200


def test_failed_logins_are_throttled_overall(shop: Shop, team: Team, clock: Clock) -> None:
    """Guesses spread over many addresses run into the global bucket."""
    app = console(shop, team, clock, throttle=Throttle(clock=clock, burst=3, per_minute=6))
    for n in range(3):
        with TestClient(app, client=(f"192.0.2.{n}", 4000)) as c:
            assert c.post("/login", data={"token": f"guess-{n}"}).status_code == 401
    with TestClient(app, client=("192.0.2.200", 4000)) as c:
        answer = c.post("/login", data={"token": team.tokens["Eve"]}, follow_redirects=False)
        assert answer.status_code == 429 and answer.headers["retry-after"] == "10"
        clock.advance(10)  # the bucket refills at 6 a minute
        answer = c.post("/login", data={"token": team.tokens["Eve"]}, follow_redirects=False)
        assert answer.status_code == 303


def test_the_throttle_counts_an_ipv6_network_as_one_client() -> None:
    from starlette.requests import HTTPConnection

    def key(host: str) -> str:
        return client_key(HTTPConnection({"type": "http", "client": (host, 1), "headers": []}))

    assert key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert key("2001:db8:1:3::1") != key("2001:db8:1:2::1")
    assert key("::ffff:192.0.2.1") == key("192.0.2.1") == "192.0.2.1"
    assert key("testclient") == "testclient"

    clock = Clock()
    throttle = Throttle(clock=clock, free=2, base=10, cap=15, max_addresses=3)
    for _ in range(4):
        throttle.failed("a")
    assert throttle.wait("a") == 15  # capped
    for address in ("b", "c", "d"):
        throttle.failed(address)
    assert throttle.wait("a") == 0  # memory is bounded: the oldest address was dropped


# -- a trusted proxy header ------------------------------------------------------------------------


def test_the_trusted_header_is_honoured_only_when_configured(
    shop: Shop, team: Team, clock: Clock, client: TestClient
) -> None:
    run_id = shop.halted()
    # not configured: the header changes nothing, not even alongside a valid token
    forged = {"X-Forwarded-User": "the-CFO"}
    assert client.get("/", headers=forged).status_code == 401
    kind, _ = decide(
        client, run_id, {**BEARER, **forged}, decision="resume", run_id=run_id, note="n"
    )
    assert kind == "ok" and shop.guard.require_run(run_id).decided_by == SHARED

    app = create_app(shop.guard, trust_header="X-Forwarded-User", clock=clock)
    with TestClient(app, base_url="http://127.0.0.1:8765") as proxied:
        other = shop.halted()
        zoe: dict[str, Any] = {"X-Forwarded-User": "Zoë Admin".encode()}  # proxies send UTF-8
        page = proxied.get(f"/runs/{other}", headers=zoe)
        assert page.status_code == 200 and "signed in as" in page.text
        assert "Zoë Admin" in page.text and "log out" not in page.text  # the proxy's session
        kind, _ = decide(
            proxied,
            other,
            zoe,
            decision="abort",
            run_id=other,
            reviewer="the-CFO",
            note="by proxy",
        )
        assert kind == "ok" and shop.guard.require_run(other).decided_by == "Zoë Admin"
        # missing, empty, sent twice, joined, odd or reserved: nobody gets in
        answer = proxied.get("/")
        assert answer.status_code == 401 and 'name="token"' not in answer.text
        for headers in (
            {"X-Forwarded-User": ""},
            [("X-Forwarded-User", "mallory"), ("X-Forwarded-User", "Ann")],
            {"X-Forwarded-User": "mallory, Ann"},
            {"X-Forwarded-User": "Ann\x1b[2J"},
            {"X-Forwarded-User": SHARED},
            {"X-Forwarded-User": "x" * 101},
            BEARER,  # no shared token in this console
        ):
            assert proxied.get("/", headers=headers).status_code == 401, headers
        # CSRF is still needed: the proxy's login is ambient, like a cookie
        answer = proxied.post(
            "/decide",
            data={"decision": "resume", "run_id": run_id, "note": "x"},
            headers={"X-Forwarded-User": "Ann"},
        )
        assert answer.status_code == 403
        csrf = csrf_of(proxied.get(f"/runs/{run_id}", headers={"X-Forwarded-User": "Ann"}).text)
        answer = proxied.post(
            "/decide",
            data={"decision": "abort", "run_id": run_id, "note": "x", "csrf": csrf},
            headers={"X-Forwarded-User": "Bob"},  # Ann's CSRF token is not Bob's
        )
        assert answer.status_code == 403
    # with the header and tokens both configured, the header names who decides
    both = console(shop, team, clock, trust_header="X-Remote-User")
    with TestClient(both) as c:
        assert re.search(r'id="who">Dee<', c.get("/", headers={"X-Remote-User": "Dee"}).text)
        page = c.get("/", headers={**team.bearer("Ann"), "X-Remote-User": "Dee"})
        assert re.search(r'id="who">Dee<', page.text)
        assert re.search(r'id="who">Ann<', c.get("/", headers=team.bearer("Ann")).text)
    for bad in ("Authorization", "Cookie", "X Forwarded User", ""):
        with pytest.raises(ValueError):
            create_app(shop.guard, trust_header=bad)


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
    shop: Shop, team: Team, client: TestClient
) -> None:
    run_id = shop.halted()
    undone = list(shop.undone)
    ann = team.bearer("Ann")
    page = client.get(f"/runs/{run_id}", headers=ann).text
    good = csrf_of(page)
    form = {"decision": "abort", "run_id": run_id, "note": "x"}
    authority = client.app.state.authority  # type: ignore[attr-defined]
    other_session = authority.csrf(Principal("Ann", "cookie", "another-session"))
    bobs = csrf_of(client.get(f"/runs/{run_id}", headers=team.bearer("Bob")).text)
    for csrf, headers in [
        (None, {}),
        ("", {}),
        ("0" * 64, {}),
        (other_session, {}),  # a token of another session
        (bobs, {}),  # another reviewer's
        (good, {"Origin": "https://evil.example"}),
        (good, {"Origin": "http://127.0.0.1:9999"}),  # same site, another origin
        (good, {"Referer": "https://evil.example/page"}),
        (good, {"Sec-Fetch-Site": "cross-site"}),
        (good, {"Sec-Fetch-Site": "same-site"}),
    ]:
        data = dict(form) if csrf is None else {**form, "csrf": csrf}
        answer = client.post(
            "/decide", data=data, headers={**ann, **headers}, follow_redirects=False
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
            headers={**ann, **headers},
            follow_redirects=False,
        )
        assert answer.status_code == 303
    assert shop.guard.require_run(run_id).decided_by == "Ann"


def test_logout_and_login_need_the_same_site(team: Team, client: TestClient) -> None:
    assert client.post("/logout", headers=BEARER, data={}).status_code == 403
    answer = client.post(
        "/login",
        data={"token": team.tokens["Ann"]},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert answer.status_code == 403 and SESSION_COOKIE not in client.cookies


# -- decisions ----------------------------------------------------------------------------------


def test_every_decision_records_the_reviewer_who_made_it(
    shop: Shop, team: Team, client: TestClient
) -> None:
    guard = shop.guard
    ann, bob, dee, eve = (team.bearer(n) for n in ("Ann", "Bob", "Dee", "Eve"))
    halted = shop.halted()
    (email,) = guard.store.review_items(run_id=halted, status="open")
    kind, text = decide(
        client,
        halted,
        ann,
        decision="resolve",
        item_id=email.id,
        resolution="done_manually",
        note="sent the correction",
    )
    assert kind == "ok" and "Resolved" in text and "(by Ann)" in text
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
        ann,
        decision="resolve",
        item_id=email.id,
        resolution="done_manually",
        note="again",
    )
    assert kind == "warn" and text.startswith("Already")
    kind, text = decide(
        client, halted, bob, decision="resolve", item_id=email.id, resolution="skipped", note="no"
    )
    assert kind == "error" and "already resolved as done_manually by Ann" in text

    kind, text = decide(client, halted, ann, decision="resume", run_id=halted, note="carrier back")
    run = guard.require_run(halted)
    assert kind == "ok" and (run.status, run.decided_by, run.decision_note) == (
        "running",
        "Ann",
        "carrier back",
    )

    aborted = shop.halted()
    kind, text = decide(client, aborted, bob, decision="abort", run_id=aborted, note="left")
    run = guard.require_run(aborted)
    assert kind == "ok" and "Aborted" in text and "1 review item(s) still need" in text
    assert (run.status, run.decided_by, run.decision_note) == ("aborted", "Bob", "left")
    kind, text = decide(client, aborted, dee, decision="abort", run_id=aborted, note="me too")
    assert kind == "warn" and "Already aborted by Bob" in text
    kind, text = decide(client, aborted, dee, decision="resume", run_id=aborted, note="oops")
    assert kind == "error" and "cannot be resumed" in text
    assert guard.require_run(aborted).decided_by == "Bob"

    waiting, approval = shop.awaiting()
    kind, text = decide(client, waiting, ann, decision="resume", run_id=waiting, note="go")
    assert kind == "error" and "approve or reject" in text
    kind, text = decide(client, waiting, dee, decision="approve", item_id=approval, note="known")
    assert kind == "ok" and "Approved" in text
    item = guard.store.review_item(approval)
    assert item is not None and (item.resolution, item.resolved_by) == ("approved", "Dee")

    rejected_run, rejected = shop.awaiting(amount=9000)
    kind, text = decide(
        client, rejected_run, eve, decision="reject", item_id=rejected, note="fraud"
    )
    item = guard.store.review_item(rejected)
    assert kind == "ok" and item is not None
    assert (item.resolution, item.resolved_by, item.note) == ("rejected", "Eve", "fraud")
    # the run page shows who decided what
    page = client.get(f"/runs/{rejected_run}", headers=ann).text
    assert "rejected" in page and "Eve" in page and "fraud" in page


def test_a_typed_name_cannot_change_who_decided(shop: Shop, team: Team, client: TestClient) -> None:
    """The adversarial review's finding: a typed reviewer name was recorded as given."""
    first, second, third = shop.halted(), shop.halted(), shop.halted()
    log_in(client, team.tokens["Ann"])
    page = client.get(f"/runs/{first}").text
    assert 'name="reviewer"' not in page  # nothing to type a name into
    assert re.search(r'Recorded as <strong class="identity">Ann<', page)
    # a hand-made form with a name field: the name is ignored
    for who, run_id, expected in (
        ({}, first, "Ann"),  # Ann's session cookie
        (team.bearer("Bob"), second, "Bob"),
        (BEARER, third, SHARED),  # the shared token is nobody in particular
    ):
        kind, text = decide(
            client,
            run_id,
            who,
            decision="abort",
            run_id=run_id,
            reviewer="the-CFO",
            by="the-CFO",
            note="approved by the CFO",
        )
        assert kind == "ok" and f"(by {expected})" in text and "the-CFO" not in text
        run = shop.guard.require_run(run_id)
        assert (run.decided_by, run.decision_note) == (expected, "approved by the CFO")
    waiting, approval = shop.awaiting()
    page = client.get(f"/runs/{waiting}", headers=BEARER).text
    assert "the shared token: log in with your own reviewer token" in page
    kind, _ = decide(
        client, waiting, BEARER, decision="approve", item_id=approval, reviewer="Ann", note="ok"
    )
    item = shop.guard.store.review_item(approval)
    assert kind == "ok" and item is not None and item.resolved_by == SHARED


def test_a_decision_needs_a_note(shop: Shop, team: Team, client: TestClient) -> None:
    run_id = shop.halted()
    (email,) = shop.guard.store.review_items(run_id=run_id, status="open")
    ann = team.bearer("Ann")
    csrf = csrf_of(client.get(f"/runs/{run_id}", headers=ann).text)
    base = {"csrf": csrf, "decision": "abort", "run_id": run_id}
    # a note left empty, only spaces, or too long: the form again, the message by the field
    item = {"decision": "resolve", "item_id": email.id, "resolution": "skipped"}
    for extra, key, message in (
        ({}, "abort", "it was empty"),
        ({"reviewer": "Ann"}, "abort", "it was empty"),
        ({"note": "   "}, "abort", "it was only spaces"),
        ({"note": " \t\n ", "decision": "resume"}, "resume", "it was only spaces"),
        ({"note": "x" * 2001}, "abort", "limited to 2000 characters (this one has 2001)"),
        ({**item, "note": "    "}, email.id, "it was only spaces"),
    ):
        answer = client.post("/decide", data={**base, **extra}, headers=ann)
        assert answer.status_code == 422, extra
        html = unescape(answer.text)
        error = re.search(rf'class="field-error" id="note-{key}-error" role="alert">([^<]*)<', html)
        assert error and message in error.group(1) and "nothing was recorded" in error.group(1)
        assert f'id="note-{key}" name="note"' in html and 'aria-invalid="true"' in html
        assert html.count('class="field-error"') == 1  # only next to the field concerned
        assert 'id="run-status">pending_review<' in html  # the run's page, with its forms
    # the resolution chosen is kept when the form comes back
    answer = client.post("/decide", data={**base, **item, "note": " "}, headers=ann)
    assert '<option value="skipped" selected>' in answer.text
    # forms the console never makes
    for extra in (
        {"note": "why", "decision": "delete"},
        {"note": "why", "decision": "resolve", "item_id": "x"},
        {"note": "why", "run_id": ""},
    ):
        answer = client.post("/decide", data={**base, **extra}, headers=ann)
        assert answer.status_code == 400, extra
    for decision in ("approve", "approve_resume"):
        answer = client.post(
            "/decide",
            data={**base, "decision": decision, "item_id": "nope", "note": "n"},
            headers=ann,
        )
        assert answer.status_code == 404
    answer = client.post(
        "/decide", data={**base, **item, "item_id": "nope", "note": " "}, headers=ann
    )
    assert answer.status_code == 404
    assert shop.guard.require_run(run_id).status == "pending_review"
    assert shop.guard.store.review_items(run_id=run_id, status="open") == [email]
    assert stored_decisions(shop.guard, run_id) == []


def stored_decisions(guard: Guard, run_id: str) -> list[str]:
    """Who decided anything on the run: the run's decider and the items' resolvers."""
    run = guard.require_run(run_id)
    return [run.decided_by or ""] * bool(run.decided_by) + [
        i.resolved_by or "" for i in guard.log(run_id).review_items if i.resolved_by
    ]


def test_a_blank_token_asks_again_and_is_not_a_guess(team: Team, clock: Clock, shop: Shop) -> None:
    app = console(shop, team, clock, throttle=Throttle(clock=clock, free=1, burst=1000))
    with TestClient(app) as c:
        for token in ("", "   ", "\t"):
            answer = c.post("/login", data={"token": token, "next": "/"}, follow_redirects=False)
            assert answer.status_code == 422 and "Enter your token" in answer.text
            assert SESSION_COOKIE not in c.cookies
        # none of them counted against the address: one wrong token is still only a 401
        assert c.post("/login", data={"token": "wrong"}).status_code == 401
        answer = c.post("/login", data={"token": team.tokens["Ann"]}, follow_redirects=False)
        assert answer.status_code == 429  # the second real failure would have locked it


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


def held_order(shop: Shop) -> str:
    """A run held on failure after an order: nothing undone yet, so an abort must undo it."""
    with pytest.raises(RunHalted), shop.guard.run(agent="checkout", on_failure="hold") as run:
        shop.call("create_order", item="lamp")
        shop.call("ship", address="1 Main St")
    return run.id


def stored(guard: Guard, run_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    log = guard.log(run_id).model_dump()
    log["run"].pop("heartbeat_at")
    return log, [e.model_dump() for e in guard.store.entries(run_id)]


ABORT_BUTTON = re.compile(r'<button type="submit" class="danger"\s*(disabled)?\s*>Abort run<')


def test_a_call_whose_outcome_is_unknown_is_answered_in_the_console(
    shop: Shop, client: TestClient
) -> None:
    """An in_doubt item offers "it happened" / "it did not happen"; a resume waits for it."""

    def deliver(address: str) -> None:
        raise TimeoutError("the courier did not answer")

    shop.guard.policy("deliver", effect="irreversible")
    with pytest.raises(RunHalted), shop.guard.run(agent="checkout") as run:
        shop.call("create_order", item="desk")
        run.call("deliver", {"address": "1 Main St"}, fn=deliver)
    [item] = [i for i in shop.guard.log(run.id).review_items if i.reason == "in_doubt"]
    html = client.get(f"/runs/{run.id}", headers=BEARER).text
    assert '<option value="not_happened">it did not happen</option>' in html
    # at the top, among what needs a person, with the call it is about
    problems = html.split('id="problems"', 1)[1].split("</section>", 1)[0]
    assert "1 call in doubt" in problems and f'id="item-{item.id}"' in problems
    assert "the courier did not answer" in problems
    kind, text = decide(client, run.id, decision="resume", run_id=run.id, note="go on")
    assert kind == "error" and "not_happened" in text  # a person must say first
    kind, _ = decide(
        client, run.id, item_id=item.id, decision="resolve", resolution="not_happened", note="no"
    )
    assert kind == "ok"
    kind, _ = decide(client, run.id, decision="resume", run_id=run.id, note="go on")
    assert kind == "ok" and shop.guard.require_run(run.id).status == "running"
    # the words answer only a call in doubt
    other = shop.halted()
    [email] = [i for i in shop.guard.log(other).review_items if i.reason == "irreversible"]
    kind, text = decide(
        client, other, item_id=email.id, decision="resolve", resolution="happened", note="x"
    )
    assert kind == "error" and "answers only in_doubt items" in text


def test_an_abort_that_needs_undos_the_console_lacks_is_refused(
    shop: Shop, team: Team, clock: Clock, sqlite_url: str
) -> None:
    """A console without the run's undos says which, disables the abort button, and refuses
    an abort posted anyway; with force it aborts as before; with the app's guard it undoes."""
    run_id = held_order(shop)
    before = stored(shop.guard, run_id)
    throttle = Throttle(clock=clock, free=1000, burst=10_000)
    bare = create_app(sqlite_url, TOKEN, clock=clock, throttle=throttle)
    with TestClient(bare) as c:
        html = unescape(c.get(f"/runs/{run_id}", headers=BEARER).text)
        assert 'id="missing-undos"' in html
        assert "action 1 (create_order): no undo is registered for create_order" in html
        assert "restart the console with the application's guard" in html
        found = ABORT_BUTTON.search(html)
        assert found and found.group(1) == "disabled"
        # the button is only a hint: the server refuses the same abort posted by hand
        kind, text = decide(c, run_id, decision="abort", run_id=run_id, note="stop")
        assert kind == "error" and text.startswith("Not done: run " + run_id)
        assert "guardrail serve --app MODULE:ATTRIBUTE" in text and "Nothing was changed" in text
    assert stored(shop.guard, run_id) == before
    assert shop.undone == []

    forced = create_app(sqlite_url, TOKEN, clock=clock, throttle=throttle, force=True)
    with TestClient(forced) as c:
        html = unescape(c.get(f"/runs/{run_id}", headers=BEARER).text)
        assert "started with <code>--force</code>" in html
        found = ABORT_BUTTON.search(html)
        assert found and found.group(1) is None
        kind, _ = decide(c, run_id, decision="abort", run_id=run_id, note="stop anyway")
        assert kind == "ok"
    log = shop.guard.log(run_id)
    assert (log.run.status, log.action(1).state) == ("aborted", "succeeded")
    assert {(i.reason, i.status) for i in log.review_items} == {
        ("no_undo", "open"),
        ("held", "resolved"),
    }
    assert shop.undone == []

    other = held_order(shop)
    with TestClient(console(shop, team, clock)) as c:  # the application's own guard
        html = c.get(f"/runs/{other}", headers=BEARER).text
        assert 'id="missing-undos"' not in html
        found = ABORT_BUTTON.search(html)
        assert found and found.group(1) is None
        kind, _ = decide(c, other, decision="abort", run_id=other, note="stop")
        assert kind == "ok"
    assert shop.guard.log(other).action(1).state == "compensated"
    assert shop.undone == [shop.guard.log(other).action(1).external_ids["order_id"]]


def test_the_run_page_shows_its_policies_and_a_console_with_others(
    shop: Shop, team: Team, clock: Clock, sqlite_url: str
) -> None:
    run_id = shop.halted()
    fingerprint = shop.guard.require_run(run_id).policy_fingerprint
    assert fingerprint == shop.guard.policy_fingerprint
    with TestClient(console(shop, team, clock)) as c:
        html = c.get(f"/runs/{run_id}", headers=BEARER).text
        assert re.search(f'id="policies"[^>]*>{fingerprint}<', html)
        assert 'id="policy-mismatch"' not in html
    with Guard(store=sqlite_url) as other:
        other.policy("create_order", effect="irreversible")
        app = create_app(other, TOKEN, clock=clock)
        with TestClient(app) as c:
            html = unescape(c.get(f"/runs/{run_id}", headers=BEARER).text)
            assert 'id="policy-mismatch"' in html
            assert f"started under policies {fingerprint}" in html
            assert f"fingerprint {other.policy_fingerprint}" in html
    with TestClient(create_app(sqlite_url, TOKEN, clock=clock)) as c:  # declares no policies
        assert 'id="policy-mismatch"' not in c.get(f"/runs/{run_id}", headers=BEARER).text


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
    import guardrail.web.pages as web_pages

    monkeypatch.setattr(web_pages, "ACTIONS_PER_PART", 2)
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
    # a longer run opens on its focus: around the failing call, and the newest; gaps marked
    monkeypatch.setattr(web_pages, "FOCUS_ABOVE", 4)
    monkeypatch.setattr(web_pages, "NEWEST", 1)
    monkeypatch.setattr(web_pages, "CONTEXT", 1)
    html = unescape(client.get("/runs/thread%2F42%20%3Cb%3E", headers=BEARER).text)
    assert re.findall(r'<tr id="action-(\d+)"', html) == ["5", "6"]
    assert "4 actions not shown (seq 1\N{EN DASH}4)" in html and "?part=1#action-1" in html
    assert 'id="failing-call"' in html and "carrier API returned 503" in html
    kind, _ = decide(client, "thread%2F42%20%3Cb%3E", decision="abort", run_id=run_id, note="n")
    assert kind == "ok" and shop.guard.require_run(run_id).status == "aborted"


def test_a_console_on_a_store_url_owns_its_guard(shop: Shop, team: Team, sqlite_url: str) -> None:
    from guardrail import StoreError

    run_id = shop.halted()
    app = create_app(sqlite_url, reviewers=team.file.path)
    with TestClient(app) as c:
        assert run_id in c.get("/", headers=team.bearer("Ann")).text
        kind, _ = decide(c, run_id, team.bearer("Ann"), decision="abort", run_id=run_id, note="n")
        assert kind == "ok"
    assert shop.guard.require_run(run_id).decided_by == "Ann"
    with pytest.raises(StoreError, match="closed"):
        app.state.guard.runs()  # closed at shutdown


# -- guardrail serve ----------------------------------------------------------------------------


def test_serve_needs_a_way_to_know_who_decides_and_a_private_address(
    shop: Shop, team: Team, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    started: list[dict[str, Any]] = []
    checks: list[Any] = []

    def fake_run(app: Any, **options: Any) -> None:
        with TestClient(app) as c:
            assert c.get("/").status_code == 401
            for check in checks:
                check(c)
        started.append(options)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    for name in ("GUARDRAIL_TOKEN", "GUARDRAIL_REVIEWERS"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))  # no default reviewers file yet
    runner = CliRunner()
    shop.completed()
    for args in (
        [],
        ["--token", "short"],
        ["--token", TOKEN, "--host", "0.0.0.0"],
        ["--token", TOKEN, "--host", "192.168.1.5"],
        ["--reviewers", str(tmp_path / "nobody.json")],
        ["--trust-header", "Cookie"],
    ):
        result = runner.invoke(cli_app, ["serve", "--store", sqlite_url, *args])
        assert result.exit_code == 2, (args, result.output)
        assert started == []

    def shared(c: TestClient) -> None:
        assert c.get("/?status=all", headers=BEARER).status_code == 200

    checks[:] = [shared]
    result = runner.invoke(
        cli_app, ["serve", "--store", sqlite_url], env={"GUARDRAIL_TOKEN": TOKEN}
    )
    assert result.exit_code == 0, result.output
    assert started[-1]["host"] == "127.0.0.1" and started[-1]["port"] == 8765
    assert "shared-token" in result.stderr
    result = runner.invoke(
        cli_app,
        ["serve", "--store", sqlite_url, "--token", TOKEN, "--host", "0.0.0.0", "--allow-remote"],
    )
    assert result.exit_code == 0 and started[-1]["host"] == "0.0.0.0"

    def reviewers_only(c: TestClient) -> None:
        page = c.get("/", headers=team.bearer("Ann"))
        assert page.status_code == 200 and re.search(r'id="who">Ann<', page.text)
        assert c.get("/", headers=BEARER).status_code == 401  # no shared token configured

    checks[:] = [reviewers_only]
    result = runner.invoke(
        cli_app, ["serve", "--store", sqlite_url, "--reviewers", str(team.file.path)]
    )
    assert result.exit_code == 0, result.output
    assert "4 reviewer token(s)" in result.stderr
    # the default file, when there is one
    default = config / "guardrail" / "reviewers.json"
    default.parent.mkdir(parents=True)
    default.write_bytes(team.file.path.read_bytes())
    default.chmod(0o600)
    result = runner.invoke(cli_app, ["serve", "--store", sqlite_url])
    assert result.exit_code == 0, result.output
    assert str(default) in result.stderr

    def header(c: TestClient) -> None:
        page = c.get("/", headers={"X-Forwarded-User": "<b>proxy-user</b>"})
        assert page.status_code == 200 and "&lt;b&gt;proxy-user&lt;/b&gt;" in page.text

    checks[:] = [header]
    default.unlink()
    result = runner.invoke(
        cli_app, ["serve", "--store", sqlite_url, "--trust-header", "X-Forwarded-User"]
    )
    assert result.exit_code == 0, result.output
    assert len(started) == 5


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
def served(shop: Shop, team: Team, clock: Clock) -> Iterator[str]:
    """The console for the shop's guard (the shared token and the team's tokens), served by
    uvicorn on a free loopback port; sessions and the throttle run on the test's clock."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # connections wait in the backlog until the server accepts them
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(shop.guard, TOKEN, reviewers=team.file, clock=clock),
            log_level="warning",
            lifespan="on",
        )
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


def browser_log_in(page: Any, token: str) -> None:
    page.fill("#token", token)
    page.click("button:has-text('Log in')")


@browser_only
def test_browser_halt_review_and_abort(shop: Shop, team: Team, served: str, browser: Any) -> None:
    run_id = shop.halted(item="book")
    context = browser.new_context()
    page = context.new_page()
    try:
        answer = page.goto(f"{served}/")
        assert answer is not None and answer.status == 401
        browser_log_in(page, team.tokens["Ann"])
        assert page.text_content("#who") == "Ann"
        assert page.text_content("#count-pending-review") == "1"
        page.click(f"a:has-text('{run_id}')")
        assert page.text_content("#run-status") == "pending_review"
        # the order was undone when the run halted: an abort has only the email left
        assert "review action 2 (send_email)" in (page.text_content("#plan") or "")
        assert page.is_visible("text=Send a correction")
        # nobody types a name: the form says who the decision is recorded as
        assert page.locator("input[name=reviewer]").count() == 0
        assert page.text_content("#form-abort .identity") == "Ann"
        page.fill("#note-abort", "customer cancelled on the phone")
        page.click("button:has-text('Abort run')")
        page.wait_for_selector("#flash")
        assert "Aborted run" in (page.text_content("#flash") or "")
        assert page.text_content("#run-status") == "aborted"
        assert "Ann" in (page.text_content("#decided") or "")
    finally:
        context.close()
    run = shop.guard.require_run(run_id)
    assert (run.status, run.decided_by, run.decision_note) == (
        "aborted",
        "Ann",
        "customer cancelled on the phone",
    )
    assert shop.guard.verify(run_id).ok


@browser_only
def test_browser_a_copied_cookie_dies_with_logout_and_with_the_reviewer(
    shop: Shop, team: Team, served: str, browser: Any
) -> None:
    run_id = shop.halted()
    mine, thief = browser.new_context(), browser.new_context()
    try:
        page = mine.new_page()
        page.goto(f"{served}/")
        browser_log_in(page, team.tokens["Bob"])
        assert page.text_content("#who") == "Bob"
        stolen = mine.cookies()
        assert [c["name"] for c in stolen] == [SESSION_COOKIE]
        assert stolen[0]["httpOnly"] and stolen[0]["sameSite"] == "Strict"
        thief.add_cookies(stolen)
        other = thief.new_page()
        answer = other.goto(f"{served}/runs/{run_id}")
        assert answer is not None and answer.status == 200  # the copy works while Bob is in
        page.click("button:has-text('log out')")
        page.wait_for_selector("#token")
        assert mine.cookies() == []
        # the copy is refused now, also when it posts a form it loaded before the logout
        other.fill("#note-abort", "with a stolen cookie")
        other.click("button:has-text('Abort run')")
        assert "session has ended" in other.content()
        answer = other.goto(f"{served}/")
        assert answer is not None and answer.status == 401
        # the same with a reviewer removed while logged in
        browser_log_in(page, team.tokens["Dee"])
        assert page.text_content("#who") == "Dee"
        assert team.file.remove("Dee")
        answer = page.goto(f"{served}/")
        assert answer is not None and answer.status == 401
        assert "session has ended" in (page.text_content("p.error") or "")
    finally:
        mine.close()
        thief.close()
    assert shop.guard.require_run(run_id).status == "pending_review"


@browser_only
def test_browser_runs_no_script_from_tool_arguments(shop: Shop, served: str, browser: Any) -> None:
    run_id = shop.halted(item=XSS + IMG)
    dialogs: list[str] = []
    # Without the CSP too: the escaping alone must keep the script from running.
    for bypass_csp in (False, True):
        context = browser.new_context(extra_http_headers=BEARER, bypass_csp=bypass_csp)
        page = context.new_page()

        def dismiss(dialog: Any) -> None:
            dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", dismiss)
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
def test_browser_without_a_token_is_refused_and_guessing_is_throttled(
    shop: Shop, team: Team, served: str, browser: Any
) -> None:
    run_id = shop.halted(item="secret-widget")
    context = browser.new_context()
    page = context.new_page()
    try:
        answer = page.goto(f"{served}/runs/{run_id}")
        assert answer is not None and answer.status == 401
        assert "secret-widget" not in page.content() and "create_order" not in page.content()
        browser_log_in(page, "not-the-token-at-all")
        assert "not a token this console accepts" in (page.text_content("p.error") or "")
        assert context.cookies() == []
        api = context.request.get(f"{served}/?status=all")
        assert api.status == 401 and run_id not in api.text()
        # a same-site page on another port cannot post a decision, even with a session and a
        # stolen CSRF token: the browser says where the form came from
        page.goto(f"{served}/runs/{run_id}")
        browser_log_in(page, team.tokens["Eve"])  # back to the run it asked for
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
        # a stranger guessing tokens is held up after a few tries
        stranger = browser.new_context().new_page()
        stranger.goto(f"{served}/")
        for n in range(5):  # (Eve's login cleared this address's earlier failure)
            browser_log_in(stranger, f"guess-number-{n}")
            assert "not a token" in (stranger.text_content("p.error") or "")
        with stranger.expect_response(f"{served}/login") as response:
            browser_log_in(stranger, team.tokens["Ann"])
        assert response.value.status == 429 and response.value.headers["retry-after"] == "1"
        assert "Too many wrong tokens" in (stranger.text_content("p.error") or "")
        stranger.context.close()
    finally:
        context.close()
    assert shop.guard.require_run(run_id).status == "pending_review"
