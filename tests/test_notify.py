"""Notification on every transition to pending_review or awaiting_approval: the on_halt
callable and a webhook, tested against a local HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from guardrail import Guard, GuardrailError, RunHalted
from guardrail.history import DecisionEvent
from guardrail.testing import ScriptedTool


@pytest.fixture
def hook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(500 if received[-1]["agent"] == "broken" else 204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()
    server.server_close()


def test_webhook_and_callable_on_halt_and_approval(
    store_url: str, hook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = hook
    seen: list[str] = []
    guard = Guard(store=store_url, webhook_url=url, on_halt=lambda run: seen.append(run.status))

    @guard.tool(effect="irreversible", review={"kind": "correct", "owner": "support"})
    def send(to: str) -> str:
        return "sent"

    @guard.tool(effect="read_only", approval="args.n > 10")
    def fail(n: int) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RunHalted), guard.run(agent="mailer") as run:
        send(to="a@example.com")
        fail(n=1)
    with pytest.raises(RunHalted), guard.run(agent="gate") as gated:
        fail(n=11)
    guard.close()
    assert seen == ["pending_review", "awaiting_approval"]
    assert [(r["event"], r["run_id"]) for r in received] == [
        ("run.pending_review", run.id),
        ("run.awaiting_approval", gated.id),
    ]
    (item,) = received[0]["review_items"]
    assert (item["reason"], item["kind"], item["owner"], item["seq"]) == (
        "irreversible",
        "correct",
        "support",
        1,
    )
    assert received[1]["review_items"][0]["reason"] == "approval"


def test_a_failing_webhook_does_not_break_the_halt(
    sqlite_url: str, hook: tuple[str, list[dict[str, Any]]], caplog: pytest.LogCaptureFixture
) -> None:
    url, received = hook
    with Guard(store=sqlite_url, webhook_url=url) as guard:

        @guard.tool(effect="read_only")
        def fail() -> None:
            raise RuntimeError("boom")

        with pytest.raises(RunHalted), guard.run(agent="broken") as run:
            fail()
        assert guard.require_run(run.id).status == "pending_review"
    assert len(received) == 1
    assert "webhook" in caplog.text


def test_unreachable_webhook_and_bad_url(sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(GuardrailError, match="not an http"):
        Guard(store=sqlite_url, webhook_url="ftp://example.com")
    with Guard(store=sqlite_url, webhook_url="http://127.0.0.1:9/nothing") as guard:

        @guard.tool(effect="read_only")
        def fail() -> None:
            raise RuntimeError("boom")

        with pytest.raises(RunHalted), guard.run() as run:
            fail()
        assert guard.require_run(run.id).status == "pending_review"
    assert "webhook" in caplog.text


def test_decision_events_reach_the_callable_and_the_webhook(
    store_url: str,
    hook: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = hook
    events: list[DecisionEvent] = []
    guard = Guard(store=store_url, webhook_url=url, on_decision=events.append)
    guard.policy("ship", effect="read_only", on_failure="hold", retry={"attempts": 1})
    with pytest.raises(RunHalted) as halted, guard.run(agent="shop") as run:
        run.call("ship", {"order": 1}, fn=ScriptedTool([RuntimeError("carrier is down")]))
    run_id = halted.value.run_id
    guard.resume(run_id, by="ana", note="carrier back")
    guard.resume(run_id, by="ana", note="carrier back")  # a repeat does not land: no event
    guard.close()
    assert [(e.run_id, e.what, e.by, e.note) for e in events] == [
        (run_id, "resume", "ana", "carrier back")
    ]
    decided = [r for r in received if r["event"].startswith("decision.")]
    assert [(r["event"], r["status"], r["decision"]["by"]) for r in decided] == [
        ("decision.resume", "running", "ana")
    ]
