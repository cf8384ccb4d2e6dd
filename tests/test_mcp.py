"""The MCP proxy end to end: real processes (`guardrail mcp-proxy` and the upstream server) and
a real MCP client session (``mcp.ClientSession`` over ``stdio_client``).

1. A small Python MCP server written here (``MCPServer``, mcp 2's FastMCP) with annotated tools
   and one that fails on demand: calls are logged, names and schemas are preserved, a failure
   compensates and halts with a clear tool error, later calls are refused, and after a person
   resumes the run, calls work again without re-running what the run already did.
2. The reference filesystem server from npm under the ``mcp-filesystem`` pack: after a failing
   step the directory tree is byte-identical to before.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp import types as mcp_types

from guardrail import Guard, UndoTool
from guardrail.testing import tree_hash

ROOT = Path(__file__).resolve().parents[1]
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
FILESYSTEM_PACKAGE = "@modelcontextprotocol/server-filesystem"
FILESYSTEM_VERSION = "2026.8.31"  # also installed by .ci/run
NPM_PREFIX = Path(os.environ.get("GUARDRAIL_TEST_NPM_PREFIX", ROOT / ".venv" / "npm"))
TIMEOUT = 60

NOTES_SERVER = '''
"""Notes in a JSON file; every execution is appended to executions.jsonl with its _meta."""
import json
import sys
from pathlib import Path
from typing import TypedDict

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

STATE = Path(sys.argv[1])
server = MCPServer("notes", instructions="Keeps notes.")


class Note(TypedDict):
    id: str


def record(tool, ctx, **args):
    meta = ctx.request_context.meta or {}
    with (STATE / "executions.jsonl").open("a") as log:
        log.write(json.dumps({"tool": tool, "args": args, "traceparent": meta.get("traceparent")}))
        log.write("\\n")


def load():
    path = STATE / "notes.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save(notes):
    (STATE / "notes.json").write_text(json.dumps(notes))


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def lookup(key: str, ctx: Context) -> str:
    """Read a note."""
    record("lookup", ctx, key=key)
    return load().get(key, "")


@server.tool(annotations=ToolAnnotations(destructiveHint=True))
def create_note(text: str, ctx: Context) -> Note:
    """Create a note; returns its id."""
    record("create_note", ctx, text=text)
    notes = load()
    note_id = f"n{len(notes) + 1}"
    while note_id in notes:
        note_id += "x"
    notes[note_id] = text
    save(notes)
    return {"id": note_id}


@server.tool(title="Delete", annotations=ToolAnnotations(destructiveHint=True, idempotentHint=True))
def delete_note(note_id: str, ctx: Context) -> str:
    """Delete a note."""
    record("delete_note", ctx, note_id=note_id)
    notes = load()
    notes.pop(note_id, None)
    save(notes)
    return "deleted"


@server.tool(annotations=ToolAnnotations(destructiveHint=False))
def send_email(to: str, body: str, ctx: Context) -> str:
    """Send an email; it cannot be unsent."""
    record("send_email", ctx, to=to, body=body)
    return f"sent to {to}"


@server.tool(annotations=ToolAnnotations(destructiveHint=True))
def deploy(target: str, ctx: Context) -> str:
    """Deploy; fails while the file `broken` exists in the state folder."""
    record("deploy", ctx, target=target)
    if (STATE / "broken").exists():
        raise ToolError(f"deploy to {target} failed: the build server is down")
    return f"deployed {target}"


@server.tool()
def unlabelled(x: int, ctx: Context) -> int:
    """No annotations and no policy."""
    record("unlabelled", ctx, x=x)
    return x


if __name__ == "__main__":
    server.run()
'''

NOTES_POLICIES = """
tools:
  create_note:            # declared: wins over its destructiveHint
    effect: reversible
    undo: {tool: delete_note, args: {note_id: result.structuredContent.id}}
    external_ids: {note_id: result.structuredContent.id}
"""


# -- helpers ----------------------------------------------------------------------------------


def proxy(store_url: str, *options: str, upstream: list[str]) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "guardrail.cli", "mcp-proxy", "--store", store_url, *options, "--", *upstream],
    )


@asynccontextmanager
async def connect(params: StdioServerParameters, errlog: Path) -> AsyncIterator[ClientSession]:
    with errlog.open("a") as err:
        async with (
            stdio_client(params, errlog=err) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session


def run_async(main: Callable[[], Awaitable[None]], errlog: Path) -> None:
    async def bounded() -> None:
        with anyio.fail_after(TIMEOUT):
            await main()

    try:
        anyio.run(bounded)
    except BaseException:
        if errlog.exists():
            sys.stderr.write(f"--- proxy stderr ---\n{errlog.read_text()[-5000:]}\n")
        raise


def dump(tools: list[mcp_types.Tool]) -> list[dict[str, Any]]:
    return [t.model_dump(by_alias=True, mode="json", exclude_none=True) for t in tools]


def meta(result: mcp_types.CallToolResult) -> dict[str, Any]:
    assert result.meta is not None, "the result has no _meta"
    return dict(result.meta)


def text(result: mcp_types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, mcp_types.TextContent))


def guardrail_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardrail.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=TIMEOUT,
    )


class Notes:
    """The notes server's state folder: its notes, what it executed, the failure switch."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir()
        self.script = folder.parent / "notes_server.py"
        self.script.write_text(NOTES_SERVER)
        self.policies = folder.parent / "policies.yaml"
        self.policies.write_text(NOTES_POLICIES)

    @property
    def command(self) -> list[str]:
        return [sys.executable, str(self.script), str(self.folder)]

    def executions(self) -> list[dict[str, Any]]:
        log = self.folder / "executions.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def count(self, tool: str) -> int:
        return sum(1 for e in self.executions() if e["tool"] == tool)

    def notes(self) -> dict[str, str]:
        path = self.folder / "notes.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def break_deploys(self, broken: bool = True) -> None:
        flag = self.folder / "broken"
        flag.touch() if broken else flag.unlink()


@pytest.fixture
def notes(tmp_path: Path) -> Notes:
    return Notes(tmp_path / "state")


# -- 1. a Python MCP server -------------------------------------------------------------------


def test_tools_are_served_with_their_names_schemas_and_annotations(
    notes: Notes, sqlite_url: str, tmp_path: Path
) -> None:
    errlog = tmp_path / "proxy.log"
    seen: dict[str, Any] = {}

    async def main() -> None:
        direct = StdioServerParameters(command=notes.command[0], args=notes.command[1:])
        async with connect(direct, errlog) as upstream:
            seen["direct"] = dump((await upstream.list_tools()).tools)
        params = proxy(sqlite_url, "--policy", str(notes.policies), upstream=notes.command)
        async with connect(params, errlog) as client:
            seen["info"] = client.initialize_result
            seen["proxied"] = dump((await client.list_tools()).tools)

    run_async(main, errlog)
    assert seen["proxied"] == seen["direct"]
    assert [t["name"] for t in seen["proxied"]] == [
        "lookup",
        "create_note",
        "delete_note",
        "send_email",
        "deploy",
        "unlabelled",
    ]
    assert seen["proxied"][2]["annotations"] == {"destructiveHint": True, "idempotentHint": True}
    assert seen["info"].server_info.name == "notes"
    assert seen["info"].instructions == "Keeps notes."
    assert notes.executions() == []  # listing ran nothing, and no run was created
    with Guard(store=sqlite_url) as guard:
        assert guard.runs() == []


def test_a_failure_compensates_halts_and_resume_does_not_rerun_done_calls(
    notes: Notes, sqlite_url: str, tmp_path: Path
) -> None:
    errlog = tmp_path / "proxy.log"
    params = proxy(
        sqlite_url, "--policy", str(notes.policies), "--agent", "notes-bot", upstream=notes.command
    )
    steps: list[tuple[str, dict[str, Any]]] = [
        ("lookup", {"key": "n1"}),
        ("create_note", {"text": "draft"}),
        ("send_email", {"to": "ann@example.com", "body": "deploying"}),
        ("create_note", {"text": "release notes"}),
        ("deploy", {"target": "prod"}),
    ]
    got: dict[str, Any] = {}

    async def call(client: ClientSession, tool: str, args: dict[str, Any]) -> Any:
        return await client.call_tool(tool, args, meta=cast(Any, {"traceparent": TRACEPARENT}))

    async def main() -> None:
        async with connect(params, errlog) as client:
            # refused before anything runs, and the run goes on: no policy, bad arguments,
            # a tool the server does not have
            refused = await call(client, "unlabelled", {"x": 1})
            assert refused.is_error and "has no policy" in text(refused), text(refused)
            typo = await call(client, "send_email", {"to": "ann@example.com", "bdy": "hi"})
            assert typo.is_error, text(typo)
            assert "'body' is a required property" in text(typo) and "nothing ran" in text(typo)
            unknown = await call(client, "rm_rf", {})
            assert unknown.is_error and "has no tool 'rm_rf'" in text(unknown)

            notes.break_deploys()
            results = [await call(client, tool, args) for tool, args in steps]
            assert [r.is_error for r in results] == [False] * 4 + [True]
            assert results[1].structured_content == {"id": "n1"}
            assert results[2].structured_content == {"result": "sent to ann@example.com"}
            got["halt"] = results[4]
            run_id = meta(results[4])["guardrail/run_id"]
            got["after_halt"] = notes.notes()

            # every call in the halted run is refused, without reaching the server
            executed = len(notes.executions())
            again = await call(client, "lookup", {"key": "n1"})
            assert again.is_error
            assert "awaits review" in text(again) and "did not run" in text(again)
            assert again.meta == {"guardrail/run_id": run_id, "guardrail/status": "pending_review"}
            assert len(notes.executions()) == executed

            # a person says the failed deploy did not happen, then resumes the run (the CLI,
            # from another process); the agent tries again
            with Guard(store=sqlite_url) as guard:
                [doubt] = [i for i in guard.log(run_id).review_items if i.reason == "in_doubt"]
            said = guardrail_cli(
                "resolve", doubt.id, "--as", "not_happened", "--yes", "--by", "ann",
                "--store", sqlite_url,
            )  # fmt: skip
            assert said.returncode == 0, said.stderr
            resumed = guardrail_cli("resume", run_id, "--yes", "--by", "ann", "--store", sqlite_url)
            assert resumed.returncode == 0, resumed.stderr
            notes.break_deploys(False)
            replay = [await call(client, tool, args) for tool, args in steps]
            assert [r.is_error for r in replay] == [False] * 5, [text(r) for r in replay]
            assert replay[0].structured_content == results[0].structured_content  # recorded
            assert replay[2].structured_content == results[2].structured_content  # recorded
            assert replay[4].structured_content == {"result": "deployed prod"}
            got["run_id"] = run_id

    run_async(main, errlog)
    run_id = got["run_id"]

    # the client saw a clear tool error naming the run and what to do
    halt = got["halt"]
    message = text(halt)
    # an error result leaves the deploy's outcome unknown: a person says whether it happened
    assert message.startswith(f"guardrail halted run {run_id}: deploy may or may not have")
    assert "deploy to prod failed: the build server is down" in message
    assert "Undone, newest first: create_note, create_note." in message
    assert "2 item(s) wait for a person (1 in_doubt, 1 irreversible)" in message
    assert f"`guardrail show {run_id}`" in message and "awaits review" in message
    assert halt.meta == {"guardrail/run_id": run_id, "guardrail/status": "pending_review"}
    assert got["after_halt"] == {}  # both notes deleted again by the undo tool, upstream

    # what really ran on the server: done calls were not executed twice
    counts = {t: notes.count(t) for t in ("lookup", "send_email", "create_note", "delete_note")}
    assert counts == {"lookup": 1, "send_email": 1, "create_note": 4, "delete_note": 2}
    assert notes.count("deploy") == 2 and notes.count("unlabelled") == 0
    assert notes.notes() == {"n1": "draft", "n2": "release notes"}
    # the client's W3C trace context reached the upstream server on every call, undos too
    assert {e["traceparent"].split("-")[1] for e in notes.executions()} == {TRACE_ID}

    with Guard(store=sqlite_url) as guard:
        log = guard.log(run_id)
        assert log.run.status == "completed"  # the session ended normally after the resume
        assert log.run.agent == "notes-bot"
        assert log.run.meta["mcp.server"] == "notes"
        assert [(a.tool, a.effect, a.state) for a in log.actions] == [
            ("lookup", "read_only", "succeeded"),  # readOnlyHint
            ("create_note", "reversible", "compensated"),  # the policy file beat the hint
            ("send_email", "irreversible", "succeeded"),  # destructiveHint=false
            ("create_note", "reversible", "compensated"),
            ("deploy", "irreversible", "failed"),
            ("create_note", "reversible", "succeeded"),  # after resume: compensated ones re-ran
            ("create_note", "reversible", "succeeded"),
            ("deploy", "irreversible", "succeeded"),
        ]
        assert [a.external_ids for a in log.actions if a.tool == "create_note"] == [
            {"note_id": "n1"},
            {"note_id": "n2"},
            {"note_id": "n1"},
            {"note_id": "n2"},
        ]
        assert {a.trace_id for a in log.actions} == {TRACE_ID}
        assert [c.undo for c in log.compensations] == ["delete_note", "delete_note"]
        items = {i.reason: i for i in log.review_items}
        assert (items["irreversible"].seq, items["irreversible"].kind) == (3, "mark")
        assert (items["in_doubt"].seq, items["in_doubt"].resolution) == (5, "not_happened")
        assert guard.verify(run_id).ok


def test_a_held_run_continues_in_a_new_session_after_resume(
    notes: Notes, sqlite_url: str, tmp_path: Path
) -> None:
    """--on-failure hold undoes nothing; the client reconnects with --run-id after a person
    resumed the run and replays its calls: only the failed one runs again."""
    errlog = tmp_path / "proxy.log"
    got: dict[str, Any] = {}
    steps: list[tuple[str, dict[str, Any]]] = [
        ("create_note", {"text": "draft"}),
        ("send_email", {"to": "ann@example.com", "body": "hello"}),
        ("deploy", {"target": "prod"}),
    ]

    def params(*options: str) -> StdioServerParameters:
        return proxy(
            sqlite_url, "--on-failure", "hold", "--policy", str(notes.policies), *options,
            upstream=notes.command,
        )  # fmt: skip

    async def first() -> None:
        async with connect(params(), errlog) as client:
            results = [await client.call_tool(tool, args) for tool, args in steps]
            assert [r.is_error for r in results] == [False, False, True]
            got["halt"] = text(results[2])
            got["run_id"] = meta(results[2])["guardrail/run_id"]

    async def second() -> None:
        async with connect(params("--run-id", got["run_id"]), errlog) as client:
            waiting = await client.call_tool(*steps[0])
            assert waiting.is_error and "resumes it" in text(waiting), text(waiting)
            assert meta(waiting)["guardrail/status"] == "pending_review"
            with Guard(store=sqlite_url) as guard:
                [doubt] = [
                    i for i in guard.log(got["run_id"]).review_items if i.reason == "in_doubt"
                ]
                guard.resolve(doubt.id, "not_happened", by="ann")
                guard.resume(got["run_id"], by="ann")
            replay = [await client.call_tool(tool, args) for tool, args in steps]
            assert [r.is_error for r in replay] == [False] * 3, [text(r) for r in replay]
            assert replay[0].structured_content == {"id": "n1"}  # the recorded result

    notes.break_deploys()
    run_async(first, errlog)
    assert "Nothing was undone: the run holds its failure for a person" in got["halt"]
    assert notes.notes() == {"n1": "draft"}  # held: nothing undone
    with Guard(store=sqlite_url) as guard:
        assert guard.require_run(got["run_id"]).status == "pending_review"
    notes.break_deploys(False)
    run_async(second, errlog)
    counts = {t: notes.count(t) for t in ("create_note", "send_email", "deploy", "delete_note")}
    assert counts == {"create_note": 1, "send_email": 1, "deploy": 2, "delete_note": 0}
    assert notes.notes() == {"n1": "draft"}
    with Guard(store=sqlite_url) as guard:
        log = guard.log(got["run_id"])
        assert log.run.status == "completed"
        assert [(a.tool, a.state) for a in log.actions] == [
            ("create_note", "succeeded"),
            ("send_email", "succeeded"),
            ("deploy", "failed"),
            ("deploy", "succeeded"),
        ]
        # the person's resume answered the held item: it is closed, not left open
        [held] = [i for i in log.review_items if i.reason == "held"]
        assert (held.reason, held.status, held.resolution, held.resolved_by) == (
            "held",
            "resolved",
            "resumed",
            "ann",
        )
        assert guard.verify(got["run_id"]).ok


def test_an_approval_gate_pauses_the_run_until_a_person_approves(
    notes: Notes, sqlite_url: str, tmp_path: Path
) -> None:
    errlog = tmp_path / "proxy.log"
    gated = notes.folder / "gated.yaml"
    gated.write_text(
        "tools:\n  send_email:\n    effect: irreversible\n"
        "    approval: {when: \"!args.to.endsWith('@example.com')\"}\n"
    )
    outside = {"to": "bob@elsewhere.org", "body": "our prices"}
    got: dict[str, Any] = {}

    async def main() -> None:
        params = proxy(sqlite_url, "--policy", str(gated), upstream=notes.command)
        async with connect(params, errlog) as client:
            assert not (
                await client.call_tool("send_email", {**outside, "to": "a@example.com"})
            ).is_error
            waiting = await client.call_tool("send_email", outside)
            assert waiting.is_error and meta(waiting)["guardrail/status"] == "awaiting_approval"
            assert "needs a person's approval" in text(waiting) and "guardrail approve" in text(
                waiting
            )
            run_id = meta(waiting)["guardrail/run_id"]
            assert notes.count("send_email") == 1  # the gated call did not run
            with Guard(store=sqlite_url) as guard:
                [item] = [i for i in guard.log(run_id).review_items if i.reason == "approval"]
            approved = guardrail_cli(
                "approve", item.id, "--resume", "--yes", "--by", "ann", "--store", sqlite_url
            )
            assert approved.returncode == 0, approved.stderr
            sent = await client.call_tool("send_email", outside)
            assert not sent.is_error, text(sent)
            # a client that sends its own tool-call id gets exactly-once per id
            inside = {"to": "a@example.com", "body": "see you"}
            for _ in range(2):
                once = await client.call_tool(
                    "send_email", inside, meta=cast(Any, {"guardrail/call_id": "toolu_01"})
                )
                assert not once.is_error, text(once)
            got["run_id"] = run_id

    run_async(main, errlog)
    assert notes.count("send_email") == 3
    with Guard(store=sqlite_url) as guard:
        log = guard.log(got["run_id"])
        assert [(a.tool, a.state, a.call_id) for a in log.actions] == [
            ("send_email", "succeeded", None),
            ("send_email", "succeeded", None),
            ("send_email", "succeeded", "toolu_01"),
        ]
        assert log.run.status == "completed"


def test_startup_errors_are_one_clear_line(notes: Notes, sqlite_url: str) -> None:
    bad = notes.folder / "bad.yaml"
    bad.write_text("tools:\n  deploy: {effect: sometimes}\n")
    done = guardrail_cli(
        "mcp-proxy", "--store", sqlite_url, "--policy", str(bad), "--", *notes.command
    )
    assert done.returncode == 2  # before the server starts
    assert "bad.yaml" in done.stderr and "deploy" in done.stderr and done.stdout == ""
    assert notes.executions() == []

    gone = guardrail_cli("mcp-proxy", "--store", sqlite_url, "--", sys.executable, "-c", "pass")
    assert gone.returncode == 1 and gone.stdout == ""
    assert "error: cannot serve" in gone.stderr
    assert "the MCP server failed initialize and tools/list" in gone.stderr
    assert "Traceback" not in gone.stderr


def test_the_halt_message_says_what_was_undone_what_failed_and_what_waits(
    store_url: str,
) -> None:
    """Undos that ran and failed are not "nothing needed undoing"; a later halt of the same
    run counts only its own undos."""
    from guardrail import Retry, RunHalted
    from guardrail.adapters.mcp import Proxy

    def refuse(args: dict[str, Any]) -> None:
        raise ConnectionError("the warehouse is offline")

    def broken() -> None:
        raise RuntimeError("deploy failed")

    with Guard(store=store_url) as guard:
        guard.policy("create_note", effect="reversible", undo=lambda args: None)
        guard.policy("reserve", effect="reversible", undo=refuse, undo_retry=Retry(attempts=1))
        guard.policy("send_email", effect="irreversible")
        guard.policy("deploy", effect="read_only", retry=Retry(attempts=1))  # failed: did nothing
        proxy = Proxy(guard, None, [])  # type: ignore[arg-type]  # the upstream is not used
        with pytest.raises(RunHalted) as first, guard.run(agent="notes") as run:
            run.call("create_note", {"text": "a"}, fn=lambda text: {"id": "n1"})
            run.call("reserve", {"sku": "x"}, fn=lambda sku: "ok")
            run.call("send_email", {"to": "ann"}, fn=lambda to: "sent")
            run.call("deploy", {}, fn=broken)
        message = text(proxy._halted(first.value))
        assert f"guardrail halted run {run.id}: deploy failed" in message
        assert "Undone, newest first: create_note." in message
        assert "Undo failed, newest first: reserve (still in effect" in message
        assert "2 item(s) wait for a person (1 compensation_failed, 1 irreversible)." in message
        assert "Nothing" not in message

        guard.resume(run.id, by="ann")
        with pytest.raises(RunHalted) as second, guard.run(run_id=run.id) as again:
            again.call("deploy", {"again": True}, fn=broken)
        message = text(proxy._halted(second.value))
        assert "Undone" not in message and "Undo failed" not in message  # the first halt's
        assert "Nothing was undone. 2 item(s) wait for a person" in message

        # every undo failed: the run did need undoing, and it was not undone
        with pytest.raises(RunHalted) as third, guard.run(agent="notes") as other:
            other.call("reserve", {"sku": "y"}, fn=lambda sku: "ok")
            other.call("send_email", {"to": "bob"}, fn=lambda to: "sent")
            other.call("deploy", {}, fn=broken)
        message = text(proxy._halted(third.value))
        assert "Nothing needed undoing" not in message and "Undone" not in message
        assert "Undo failed, newest first: reserve" in message
        assert "2 item(s) wait for a person (1 compensation_failed, 1 irreversible)." in message


def test_the_proxy_refuses_to_start_without_an_undo_it_could_need(
    notes: Notes, sqlite_url: str, store_url: str
) -> None:
    missing = notes.folder / "missing.yaml"
    missing.write_text(
        "tools:\n  create_note:\n    effect: reversible\n"
        "    undo: {tool: remove_note, args: {note_id: result.structuredContent.id}}\n"
    )
    args = ["mcp-proxy", "--store", sqlite_url, "--policy", str(missing), "--", *notes.command]
    done = guardrail_cli(*args)
    assert done.returncode == 2 and done.stdout == ""
    assert "the undo of create_note is the tool 'remove_note'" in done.stderr
    assert "--force" in done.stderr and "Traceback" not in done.stderr
    forced = subprocess.run(
        [sys.executable, "-m", "guardrail.cli", args[0], "--force", *args[1:]],
        stdin=subprocess.DEVNULL,  # the client leaves at once
        capture_output=True,
        text=True,
        check=False,
        timeout=TIMEOUT,
    )
    assert forced.returncode == 0, forced.stderr
    assert "serving without these undos (force)" in forced.stderr
    assert notes.executions() == []

    # continuing a run whose undo this guard lacks
    from guardrail.adapters.mcp import check_undos
    from guardrail.errors import PolicyError

    with Guard(store=store_url) as agent:
        agent.policy("charge", effect="reversible", undo=lambda args: None)
        with agent.run() as run:
            run.call("charge", {"amount": 5}, fn=lambda amount: "ok")
    with Guard(store=store_url) as other:
        with pytest.raises(PolicyError, match=rf"run {run.id}, action 1 \(charge\)"):
            check_undos(other, [], run.id, force=False)
        check_undos(other, [], run.id, force=True)  # logged, not raised


def test_the_proxy_serves_with_the_applications_guard(
    notes: Notes, sqlite_url: str, tmp_path: Path
) -> None:
    """--app: the application's guard serves, with its policies (an undo tool declared in
    code) and its own store; the run records the app's policy fingerprint."""
    (tmp_path / "notes_app.py").write_text(
        "from guardrail import Guard, UndoTool\n"
        f"guard = Guard(store={sqlite_url!r})\n"
        "guard.policy('create_note', effect='reversible',\n"
        "    undo=UndoTool(tool='delete_note', args={'note_id': 'result.structuredContent.id'}))\n"
    )
    errlog = tmp_path / "proxy.log"
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "guardrail.cli", "mcp-proxy", "--app", "notes_app:guard", "--", *notes.command],
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    got: dict[str, Any] = {}

    async def main() -> None:
        async with connect(params, errlog) as client:
            assert not (await client.call_tool("create_note", {"text": "draft"})).is_error
            failed = await client.call_tool("deploy", {"target": "prod"})
            assert failed.is_error
            got["run_id"] = meta(failed)["guardrail/run_id"]
            got["message"] = text(failed)

    notes.break_deploys()
    run_async(main, errlog)
    assert "Undone, newest first: create_note." in got["message"]
    assert notes.notes() == {}
    with Guard(store=sqlite_url) as guard:
        guard.policy(
            "create_note",
            effect="reversible",
            undo=UndoTool(tool="delete_note", args={"note_id": "result.structuredContent.id"}),
        )
        run = guard.require_run(got["run_id"])
        assert run.policy_fingerprint == guard.policy_fingerprint


# -- 2. the reference filesystem server from npm ----------------------------------------------


@pytest.fixture(scope="session")
def filesystem_server() -> list[str]:
    """The reference filesystem server, from the project-local npm cache that .ci/run fills
    (installed there on first use when npm can reach the registry)."""
    package = NPM_PREFIX / "node_modules" / FILESYSTEM_PACKAGE
    entry = package / "dist" / "index.js"

    def installed() -> bool:
        manifest = package / "package.json"
        return (
            entry.exists() and json.loads(manifest.read_text()).get("version") == FILESYSTEM_VERSION
        )

    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("the reference filesystem MCP server needs node and npm on PATH")
    if not installed():
        try:
            done = subprocess.run(
                [npm, "install", "--prefix", str(NPM_PREFIX), "--no-audit", "--no-fund",
                 "--loglevel=error", "--fetch-retries=1", "--fetch-timeout=20000",
                 f"{FILESYSTEM_PACKAGE}@{FILESYSTEM_VERSION}"],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            reason = " ".join(done.stderr.split())[:300] or f"exit code {done.returncode}"
        except subprocess.TimeoutExpired:
            reason = "npm install timed out"
        if not installed():
            pytest.skip(
                f"npm could not fetch {FILESYSTEM_PACKAGE}@{FILESYSTEM_VERSION} into "
                f"{NPM_PREFIX}: {reason}"
            )
    return [node, str(entry)]


def test_filesystem_server_under_the_pack_restores_the_tree_byte_for_byte(
    filesystem_server: list[str], sqlite_url: str, tmp_path: Path
) -> None:
    root = (tmp_path / "files").resolve()
    (root / "docs").mkdir(parents=True)
    (root / "notes.txt").write_text("first draft\n")
    (root / "docs" / "report.md").write_text("# Report\n\nstatus: draft\n")
    (root / "keep.txt").write_bytes(bytes(range(256)) * 8)
    os.chmod(root / "keep.txt", 0o600)
    before = tree_hash(root)
    errlog = tmp_path / "proxy.log"
    upstream = [*filesystem_server, str(root)]
    params = proxy(
        sqlite_url, "--pack", "mcp-filesystem", "--pack-option", f"root_dir={root}",
        "--agent", "files", upstream=upstream,
    )  # fmt: skip
    got: dict[str, Any] = {}

    async def main() -> None:
        direct = StdioServerParameters(command=upstream[0], args=upstream[1:])
        async with connect(direct, errlog) as server:
            got["direct"] = dump((await server.list_tools()).tools)
        async with connect(params, errlog) as client:
            got["proxied"] = dump((await client.list_tools()).tools)

            async def ok(tool: str, **args: Any) -> str:
                result = await client.call_tool(tool, args)
                assert not result.is_error, text(result)
                return text(result)

            await ok("create_directory", path=str(root / "new" / "deep"))
            await ok("write_file", path=str(root / "new" / "deep" / "a.txt"), content="alpha")
            await ok("write_file", path="notes.txt", content="second draft\n")  # relative
            await ok(
                "edit_file",
                path=str(root / "docs" / "report.md"),
                edits=[{"oldText": "status: draft", "newText": "status: final"}],
            )
            await ok("move_file", source=str(root / "keep.txt"), destination=str(root / "new/k"))
            typo = await client.call_tool("write_file", {"path": str(root / "x.txt")})
            assert typo.is_error and "'content' is a required property" in text(typo)
            assert "second draft" in await ok("read_text_file", path=str(root / "notes.txt"))
            assert "[DIR] new" in await ok("list_directory", path=str(root))
            got["changed"] = tree_hash(root)
            failed = await client.call_tool(
                "edit_file",
                {
                    "path": str(root / "docs" / "report.md"),
                    "edits": [{"oldText": "no such line", "newText": "x"}],
                },
            )
            got["failed"] = failed

    run_async(main, errlog)
    # what the real server exposes, served unchanged; the pack covers every tool
    assert got["proxied"] == got["direct"]
    names = {t["name"] for t in got["proxied"]}
    from guardrail.guard import load_pack

    assert names <= {p.name for p in load_pack("mcp-filesystem")}
    assert {"write_file", "edit_file", "move_file", "create_directory"} <= names

    failed = got["failed"]
    assert failed.is_error
    run_id = meta(failed)["guardrail/run_id"]
    # the pack's probe: restoring the snapshot is right whether or not the edit did anything
    assert f"guardrail halted run {run_id}: edit_file failed, and its probe says" in text(failed)
    assert got["changed"] != before
    assert tree_hash(root) == before  # byte-identical, modes and folders included

    with Guard(store=sqlite_url) as guard:
        log = guard.log(run_id)
        assert log.run.status == "pending_review"
        assert [(a.tool, a.state) for a in log.actions] == [
            ("create_directory", "compensated"),
            ("write_file", "compensated"),
            ("write_file", "compensated"),
            ("edit_file", "compensated"),
            ("move_file", "compensated"),
            ("read_text_file", "succeeded"),
            ("list_directory", "succeeded"),
            ("edit_file", "compensated"),
        ]
        # everything that changed was undone, the failed edit included: nothing is left for a
        # person to find out
        assert log.review_items == []
        assert guard.find(str(root / "new" / "k"))[0].tool == "move_file"
        assert guard.verify(run_id).ok
