"""Webhook events from a durable outbox: an outage loses none, retries back off, two deliverers
never post one event at once, and each POST is signed. Against a local HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from guardrail import Guard, RunHalted, outbox, webhook
from guardrail.testing import ScriptedTool

SECRET = "whsec_test_only"


class Receiver:
    """A webhook receiver answering the scripted statuses in turn (then 204)."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.url = ""

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.got]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            r.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(r.statuses.pop(0) if r.statuses else 204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    r.url = f"http://127.0.0.1:{server.server_port}/hook"
    yield r
    server.shutdown()
    server.server_close()


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _guard(store_url: str, receiver: Receiver, clock: Clock, **kw: Any) -> Guard:
    guard = Guard(
        store=store_url,
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        console_url="https://review.example/console",
        clock=clock,
        **kw,
    )
    guard.policy("ship", effect="read_only", retry={"attempts": 1})
    return guard


def _halt(guard: Guard) -> str:
    with pytest.raises(RunHalted), guard.run(agent="shop", metadata={"ticket": "T-1"}) as run:
        run.call("ship", {"order": 1}, fn=ScriptedTool([RuntimeError("carrier is down")]))
    return run.id


def test_an_outage_loses_nothing_retries_back_off_and_repeat_the_same_event(
    store_url: str, receiver: Receiver
) -> None:
    clock = Clock()
    guard = _guard(store_url, receiver, clock)
    receiver.statuses = [503, 502]  # down for the first two attempts
    run_id = _halt(guard)
    assert len(receiver.got) == 1  # posted at once, and failed

    assert guard.deliver() == outbox.Delivery(0, 0)  # not due yet
    clock.now += outbox.retry_after(1)
    assert guard.deliver() == outbox.Delivery(0, 1)
    clock.now += outbox.retry_after(2) - 1
    assert guard.deliver() == outbox.Delivery(0, 0)  # backing off: 20 s after the 2nd attempt
    clock.now += 1
    assert guard.deliver() == outbox.Delivery(1, 0)
    assert guard.deliver() == outbox.Delivery(0, 0)  # delivered: never again

    ids = {h["guardrail-event-id"] for h, _ in receiver.got}
    assert len(receiver.got) == 3 and len(ids) == 1
    (row,) = guard.store.events(run_id=run_id)
    assert (row.attempts, row.delivered_at, row.last_error) == (3, clock.now, None)
    guard.close()


def test_the_event_says_what_where_and_when_and_is_signed(
    store_url: str, receiver: Receiver
) -> None:
    clock = Clock()
    guard = _guard(store_url, receiver, clock)
    run_id = _halt(guard)
    guard.resume(run_id, by="ana", note="carrier back")
    guard.close()
    halt, decided = receiver.bodies
    assert halt["event"] == "run.pending_review" and halt["id"].startswith(run_id + ".")
    assert halt["at"] == "2027-01-15T08:00:00.000000Z"
    assert halt["metadata"] == {"ticket": "T-1"}
    assert halt["url"] == f"https://review.example/console/runs/{run_id}"
    assert decided["event"] == "decision.resume" and decided["status"] == "running"
    assert decided["decision"]["by"] == "ana" and decided["decision"]["note"] == "carrier back"
    assert decided["id"] != halt["id"]
    for headers, body in receiver.got:
        sig = headers["guardrail-signature"]
        assert webhook.verify_signature(SECRET, sig, body, now=clock.now)
        assert not webhook.verify_signature("other", sig, body, now=clock.now)
        assert not webhook.verify_signature(SECRET, sig, body + b" ", now=clock.now)
        assert not webhook.verify_signature(SECRET, sig, body, now=clock.now + 3600)  # a replay


def test_a_deliverer_that_died_mid_post_leaves_the_event_to_the_next_pass(
    store_url: str, receiver: Receiver
) -> None:
    clock = Clock()
    receiver.statuses = [500]
    guard = _guard(store_url, receiver, clock)
    run_id = _halt(guard)
    (row,) = guard.store.events(run_id=run_id)
    # another process claims it, then dies before it reports
    assert guard.store.claim_event(row.id, row.attempts, clock.now + 99)
    assert not guard.store.claim_event(row.id, row.attempts, clock.now + 99)  # one claim wins
    clock.now += 98
    assert guard.deliver() == outbox.Delivery(0, 0)
    clock.now += 1
    assert guard.deliver() == outbox.Delivery(1, 0)
    guard.close()


def test_an_endpoint_down_for_good_is_given_up_on_and_kept_with_its_error(
    store_url: str, receiver: Receiver
) -> None:
    clock = Clock()
    receiver.statuses = [503] * outbox.MAX_ATTEMPTS
    guard = _guard(store_url, receiver, clock)
    run_id = _halt(guard)
    for attempt in range(1, outbox.MAX_ATTEMPTS + 3):
        clock.now += outbox.retry_after(attempt)
        guard.deliver()
    assert len(receiver.got) == outbox.MAX_ATTEMPTS
    (row,) = guard.store.events(run_id=run_id)
    assert row.delivered_at is None
    assert (row.last_error or "").startswith(f"gave up after {outbox.MAX_ATTEMPTS} attempts")
    guard.close()


def test_chat_tools_get_one_line_with_the_console_link(store_url: str, receiver: Receiver) -> None:
    guard = _guard(store_url, receiver, Clock(), webhook_body=webhook.chat_text)
    run_id = _halt(guard)
    guard.abort(run_id, by="bo", reason="customer left")
    guard.close()
    halt, decided = receiver.bodies
    assert list(halt) == ["text"]
    assert f"run {run_id} (shop) is pending_review: ship failed" in halt["text"]
    assert f"https://review.example/console/runs/{run_id}" in halt["text"]
    assert decided["text"].startswith(f"bo decided abort on run {run_id}")


def test_an_event_is_queued_once(store_url: str, receiver: Receiver) -> None:
    guard = _guard(store_url, receiver, Clock())
    event = {"id": "r.1", "run_id": "r", "event": "run.pending_review"}
    assert outbox.queue(guard.store, event, 1.0)
    assert not outbox.queue(guard.store, event, 2.0)
    guard.close()


def test_a_failing_webhook_is_logged_without_the_secret_part_of_its_url(
    store_url: str, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A chat tool's incoming-webhook URL is its own password: a log shows its host only."""
    receiver.statuses = [503]
    secret_path = "/services/T000/B000/XXXXsecretXXXX"
    guard = _guard(store_url, receiver, Clock())
    guard.use_webhook(receiver.url + secret_path)
    with caplog.at_level("WARNING", logger="guardrail"):
        _halt(guard)
    guard.close()
    assert any("failed for event" in r.getMessage() for r in caplog.records)
    assert "XXXXsecretXXXX" not in caplog.text
    assert webhook.shown(receiver.url + secret_path).endswith("/…")


def test_run_metadata_that_looks_secret_is_redacted_before_it_is_stored_or_sent(
    store_url: str, receiver: Receiver
) -> None:
    guard = _guard(store_url, receiver, Clock())
    key = "sk_live_51HqLyjWDarjtT1zdp7dcXYZabc"
    with pytest.raises(RunHalted), guard.run(agent="shop", metadata={"key": key, "t": 1}) as run:
        run.call("ship", {"order": 1}, fn=ScriptedTool([RuntimeError("carrier is down")]))
    stored = guard.require_run(run.id).meta
    guard.close()
    assert key not in json.dumps(stored) and stored["t"] == 1
    assert key not in receiver.got[0][1].decode()
