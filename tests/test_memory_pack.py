"""The ``mcp-memory`` pack against the real MCP reference memory server (npm).

End to end: a real MCP client session talks to ``guardrail mcp-proxy --pack mcp-memory`` in a
child process, which serves the real server (node) on a graph file in a temporary folder. After
a failing call the graph file is byte-identical to before, so ``read_graph`` returns the same
graph, order included. A person's resume lets the agent replay its calls; an abort undoes a held
run; an entity created again behind the agent's back is not overwritten.
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
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp import types as mcp_types

from guardrail import CallRefused, Guard
from guardrail.guard import load_pack

ROOT = Path(__file__).resolve().parents[1]
MEMORY_PACKAGE = "@modelcontextprotocol/server-memory"
MEMORY_VERSION = "2026.8.31"  # also installed by .ci/run
NPM_PREFIX = Path(os.environ.get("GUARDRAIL_TEST_NPM_PREFIX", ROOT / ".venv" / "npm"))
TIMEOUT = 90
EFFECT = {p.name: p.effect for p in load_pack("mcp-memory")}


@pytest.fixture(scope="session")
def memory_server() -> list[str]:
    """The reference memory server, from the project-local npm cache that .ci/run fills
    (installed there on first use when npm can reach the registry)."""
    package = NPM_PREFIX / "node_modules" / MEMORY_PACKAGE
    entry = package / "dist" / "index.js"

    def installed() -> bool:
        manifest = package / "package.json"
        return entry.exists() and json.loads(manifest.read_text()).get("version") == MEMORY_VERSION

    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("the reference memory MCP server needs node and npm on PATH")
    if not installed():
        try:
            done = subprocess.run(
                [npm, "install", "--prefix", str(NPM_PREFIX), "--no-audit", "--no-fund",
                 "--loglevel=error", "--fetch-retries=1", "--fetch-timeout=20000",
                 f"{MEMORY_PACKAGE}@{MEMORY_VERSION}"],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            reason = " ".join(done.stderr.split())[:300] or f"exit code {done.returncode}"
        except subprocess.TimeoutExpired:
            reason = "npm install timed out"
        if not installed():
            pytest.skip(
                f"npm could not fetch {MEMORY_PACKAGE}@{MEMORY_VERSION} into {NPM_PREFIX}: {reason}"
            )
    return [node, str(entry)]


# -- the graph, the proxy and the client -------------------------------------------------------


class Memory:
    """A graph file and the ways to reach the server that keeps it."""

    def __init__(self, server: list[str], folder: Path) -> None:
        self.server = server
        self.file = folder / "memory.jsonl"
        self.env = {**os.environ, "MEMORY_FILE_PATH": str(self.file)}
        self.errlog = folder / "server.log"

    def direct(self) -> StdioServerParameters:
        return StdioServerParameters(command=self.server[0], args=self.server[1:], env=self.env)

    def proxy(self, store_url: str, *options: str) -> StdioServerParameters:
        return StdioServerParameters(
            command=sys.executable,
            args=[
                *("-m", "guardrail.cli", "mcp-proxy", "--store", store_url),
                *("--pack", "mcp-memory", *options, "--", *self.server),
            ],
            env=self.env,
        )

    @asynccontextmanager
    async def connect(self, params: StdioServerParameters) -> AsyncIterator[ClientSession]:
        with self.errlog.open("a") as err:
            async with (
                stdio_client(params, errlog=err) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                yield session

    def run(self, main: Callable[[], Awaitable[None]]) -> None:
        async def bounded() -> None:
            with anyio.fail_after(TIMEOUT):
                await main()

        try:
            anyio.run(bounded)
        except BaseException:
            if self.errlog.exists():
                sys.stderr.write(f"--- stderr ---\n{self.errlog.read_text()[-5000:]}\n")
            raise

    async def aoutside(self, *calls: Step) -> None:
        """Calls made directly on the server, as someone else would (not through the guard)."""
        async with self.connect(self.direct()) as session:
            for tool, args in calls:
                done = await session.call_tool(tool, args)
                assert not done.is_error, text(done)

    def outside(self, *calls: Step) -> None:
        self.run(lambda: self.aoutside(*calls))

    def graph(self) -> dict[str, Any]:
        """What read_graph answers."""
        got: dict[str, Any] = {}

        async def main() -> None:
            async with self.connect(self.direct()) as session:
                got["graph"] = (await session.call_tool("read_graph", {})).structured_content

        self.run(main)
        return got["graph"]


Step = tuple[str, dict[str, Any]]


def entity(name: str, kind: str, *observations: str) -> dict[str, Any]:
    return {"name": name, "entityType": kind, "observations": list(observations)}


def relation(source: str, kind: str, target: str) -> dict[str, str]:
    return {"from": source, "to": target, "relationType": kind}


@pytest.fixture
def memory(memory_server: list[str], tmp_path: Path) -> Memory:
    """Alice, Bob and Acme, three relations between them, written by the server itself."""
    memory = Memory(memory_server, tmp_path)
    memory.outside(
        (
            "create_entities",
            {
                "entities": [
                    entity("Alice", "person", "likes tea", "works at Acme", "lives in Paris"),
                    entity("Bob", "person", "plays chess"),
                    entity("Acme", "company", "makes anvils"),
                ]
            },
        ),
        (
            "create_relations",
            {
                "relations": [
                    relation("Alice", "works_at", "Acme"),
                    relation("Bob", "knows", "Alice"),
                    relation("Bob", "visits", "Acme"),
                ]
            },
        ),
    )
    return memory


def text(result: mcp_types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, mcp_types.TextContent))


def run_of(result: mcp_types.CallToolResult) -> str:
    """The run a proxied call went into, from the result's ``_meta``."""
    assert result.meta is not None, text(result)
    return str(result.meta["guardrail/run_id"])


async def play(client: ClientSession, calls: list[Step]) -> list[mcp_types.CallToolResult]:
    return [await client.call_tool(tool, args) for tool, args in calls]


def guardrail_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardrail.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=TIMEOUT,
    )


def observations(name: str, *contents: str) -> dict[str, Any]:
    return {"entityName": name, "contents": list(contents)}


WORK: list[Step] = [
    ("read_graph", {}),
    # Alice exists already: the server adds only Carol, and the undo deletes only Carol
    ("create_entities", {"entities": [entity("Carol", "person", "new hire"), entity("Alice", "")]}),
    (
        "create_relations",
        {"relations": [relation("Carol", "knows", "Alice"), relation("Alice", "works_at", "Acme")]},
    ),
    (
        "add_observations",
        {
            "observations": [
                observations("Alice", "likes tea", "moved to Berlin"),
                observations("Carol", "speaks Dutch"),
            ]
        },
    ),
    ("search_nodes", {"query": "Berlin"}),
    # from the middle of Alice's observations: the undo puts it back in its place
    (
        "delete_observations",
        {"deletions": [{"entityName": "Alice", "observations": ["works at Acme"]}]},
    ),
    ("delete_relations", {"relations": [relation("Bob", "visits", "Acme")]}),
    ("delete_entities", {"entityNames": ["Bob"]}),  # and "Bob knows Alice" with him
    ("open_nodes", {"names": ["Alice", "Carol"]}),
]
FAILING: Step = ("add_observations", {"observations": [observations("Dave", "hi")]})


# -- end to end through the proxy --------------------------------------------------------------


def test_a_failure_leaves_the_graph_as_before_and_resume_replays(
    memory: Memory, sqlite_url: str
) -> None:
    before_file = memory.file.read_bytes()
    before = memory.graph()
    got: dict[str, Any] = {}

    async def main() -> None:
        async with memory.connect(memory.proxy(sqlite_url, "--agent", "notes")) as client:
            results = await play(client, WORK)
            assert [r.is_error for r in results] == [False] * len(WORK), [text(r) for r in results]
            assert results[1].structured_content == {
                "entities": [entity("Carol", "person", "new hire")]
            }
            got["changed"] = memory.file.read_bytes()
            [failed] = await play(client, [FAILING])
            got["failed"] = failed
            got["after_failure"] = memory.file.read_bytes()

            # a person creates Dave and resumes the run; the agent replays its calls
            run_id = run_of(failed)
            await memory.aoutside(("create_entities", {"entities": [entity("Dave", "person")]}))
            resumed = guardrail_cli("resume", run_id, "--yes", "--by", "ann", "--store", sqlite_url)
            assert resumed.returncode == 0, resumed.stderr
            replay = await play(client, [*WORK, FAILING])
            assert [r.is_error for r in replay] == [False] * (len(WORK) + 1), [
                text(r) for r in replay
            ]
            assert text(replay[0]) == text(results[0])  # read-only calls answer from the log

    memory.run(main)
    failed = got["failed"]
    assert failed.is_error
    run_id = run_of(failed)
    assert text(failed).startswith(f"guardrail halted run {run_id}: add_observations ")
    assert "Entity with name Dave not found" in text(failed)
    assert got["changed"] != before_file
    assert got["after_failure"] == before_file  # byte for byte: the same graph, in the same order

    with Guard(store=sqlite_url) as guard:
        log = guard.log(run_id)
        first = log.actions[: len(WORK) + 1]
        assert [(a.tool, a.state) for a in first] == [
            (tool, "succeeded" if EFFECT[tool] == "read_only" else "compensated")
            for tool, _ in WORK
        ] + [("add_observations", "failed")]
        undone = sorted(log.compensations, key=lambda c: c.started_at)
        assert [c.seq for c in undone] == [8, 7, 6, 4, 3, 2]  # newest first
        assert all(c.state == "succeeded" for c in undone)
        assert [c.undo for c in undone][3:] == [
            "delete_observations",
            "delete_relations",
            "delete_entities",
        ]  # the server's own tools
        assert log.review_items == []
        assert log.run.status == "completed"
        assert guard.verify(run_id).ok

    graph = memory.graph()
    people = {e["name"]: e for e in graph["entities"]}
    assert sorted(people) == ["Acme", "Alice", "Carol", "Dave"]
    assert people["Alice"]["observations"] == ["likes tea", "lives in Paris", "moved to Berlin"]
    assert people["Dave"]["observations"] == ["hi"]
    assert graph["relations"] == [
        relation("Alice", "works_at", "Acme"),
        relation("Carol", "knows", "Alice"),
    ]
    assert before != graph


def test_a_held_failure_is_undone_by_abort_where_the_servers_tools_are(
    memory: Memory, sqlite_url: str
) -> None:
    """The undos of the create tools are the server's delete tools, so the abort runs where
    they are: here, code that registers a session's tools with the guard (as the proxy does)."""
    before_file = memory.file.read_bytes()
    got: dict[str, Any] = {}

    async def first() -> None:
        async with memory.connect(memory.proxy(sqlite_url, "--on-failure", "hold")) as client:
            results = await play(client, [*WORK, FAILING])
            assert [r.is_error for r in results] == [False] * len(WORK) + [True]
            assert "Nothing was undone" in text(results[-1])
            got["run_id"] = run_of(results[-1])

    async def abort() -> None:
        async with memory.connect(memory.direct()) as session:
            with Guard(store=sqlite_url) as guard:
                guard.load_policies("mcp-memory")
                for tool in (await session.list_tools()).tools:
                    guard.register(upstream(session, tool.name), name=tool.name)
                await guard.aabort(got["run_id"], by="ann", reason="wrong notes")
                await guard.aabort(got["run_id"], by="ann")  # twice is once
                log = guard.log(got["run_id"])
                assert log.run.status == "aborted"
                assert [a.state for a in log.actions].count("compensated") == 6
                assert [i for i in log.review_items if i.status == "open"] == []

    memory.run(first)
    assert memory.file.read_bytes() != before_file  # held: nothing undone yet
    memory.run(abort)
    assert memory.file.read_bytes() == before_file


def upstream(session: ClientSession, name: str) -> Callable[..., Awaitable[Any]]:
    async def call(**arguments: Any) -> Any:
        result = await session.call_tool(name, arguments)
        if result.is_error:
            raise RuntimeError(text(result))
        return result.model_dump(by_alias=True, mode="json", exclude_none=True)

    return call


def test_an_entity_created_again_behind_the_agents_back_is_not_overwritten(
    memory: Memory, sqlite_url: str
) -> None:
    got: dict[str, Any] = {}

    async def main() -> None:
        async with memory.connect(memory.proxy(sqlite_url)) as client:
            results = await play(
                client,
                [
                    ("delete_entities", {"entityNames": ["Bob"]}),
                    ("add_observations", {"observations": [observations("Alice", "x")]}),
                ],
            )
            assert [r.is_error for r in results] == [False, False]
            await memory.aoutside(
                ("create_entities", {"entities": [entity("Bob", "robot", "new")]})
            )
            got["failed"] = (await play(client, [FAILING]))[0]

    memory.run(main)
    run_id = run_of(got["failed"])
    people = {e["name"]: e for e in memory.graph()["entities"]}
    assert people["Bob"] == entity("Bob", "robot", "new")  # the new Bob stays
    assert "x" not in people["Alice"]["observations"]  # the other undo ran
    with Guard(store=sqlite_url) as guard:
        log = guard.log(run_id)
        assert [a.state for a in log.actions] == ["compensation_failed", "compensated", "failed"]
        [item] = log.review_items
        assert item.seq == 1 and item.reason == "compensation_failed"
        assert "entity 'Bob' was created again since it was deleted" in (item.instructions or "")
        assert '"plays chess"' in (item.instructions or "")  # what was deleted, to merge by hand


def test_creating_an_entity_that_relations_already_name_is_refused(
    memory: Memory, sqlite_url: str
) -> None:
    memory.outside(("create_relations", {"relations": [relation("Zed", "likes", "Alice")]}))
    before_file = memory.file.read_bytes()
    got: dict[str, Any] = {}

    async def main() -> None:
        async with memory.connect(memory.proxy(sqlite_url)) as client:
            refused = await client.call_tool(
                "create_entities", {"entities": [entity("Zed", "person")]}
            )
            got["refused"] = text(refused)
            assert refused.is_error
            fine = await client.call_tool("read_graph", {})  # the run goes on
            assert not fine.is_error, text(fine)

    memory.run(main)
    assert "relations already name 'Zed' (Zed likes Alice)" in got["refused"]
    assert "nothing ran" in got["refused"]
    assert memory.file.read_bytes() == before_file


def test_changes_are_refused_when_the_graph_file_is_unknown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MEMORY_FILE_PATH", raising=False)
    policies = {p.name: p for p in load_pack("mcp-memory")}
    snapshot = policies["delete_entities"].snapshot
    assert snapshot is not None
    with pytest.raises(CallRefused, match="set MEMORY_FILE_PATH"):
        snapshot(args={"entityNames": ["Bob"]})
    monkeypatch.setenv("MEMORY_FILE_PATH", "memory.jsonl")
    with pytest.raises(CallRefused, match="relative"):
        snapshot(args={"entityNames": ["Bob"]})
    chosen = {p.name: p for p in load_pack("mcp-memory", memory_file=tmp_path / "m.jsonl")}
    taken = chosen["delete_entities"].snapshot(args={"entityNames": ["Bob"]})  # type: ignore[misc]
    assert taken == {
        "file": str(tmp_path / "m.jsonl"),
        "entities": [],
        "relations": [],
        "observations": {},
        "adds": [],
        "removes": [],
    }


# -- the policy check against the real server, and a newer one ---------------------------------

STUB_SERVER = """
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("memory-server")
for name in sys.argv[1:]:

    def stub() -> str:
        return ""

    server.tool(name=name)(stub)
server.run()
"""


def test_policy_check_covers_every_tool_of_the_server_and_reports_new_ones(
    memory_server: list[str], tmp_path: Path
) -> None:
    clean = guardrail_cli("policy", "check", "mcp-memory", "--", *memory_server)
    assert (clean.returncode, clean.stdout.strip()) == (0, "mcp-memory: ok"), clean.stderr
    stub = tmp_path / "newer_memory_server.py"
    stub.write_text(STUB_SERVER)
    newer = [*EFFECT, "merge_entities"]  # the server's tools and one more
    found = guardrail_cli(
        "policy", "check", "mcp-memory", "--json", "--", sys.executable, str(stub), *newer
    )
    assert found.returncode == 1, found.stderr
    report = json.loads(found.stdout)
    assert [(p["code"], p["tool"]) for p in report["problems"]] == [("no_policy", "merge_entities")]


def test_putting_deletions_back_is_exact_and_safe_to_repeat(tmp_path: Path) -> None:
    """The delete tools' undo on a graph file in the server's format (no server needed): what a
    deletion removed comes back in its places, duplicates included, and a second run of the
    undo changes nothing."""
    from guardrail.policies.mcp_memory import entity_line

    graph = tmp_path / "memory.jsonl"

    def relation_line(source: str, kind: str, target: str) -> str:
        line = {"type": "relation", **relation(source, kind, target)}
        return json.dumps(line, separators=(",", ":"))

    lines = [
        entity_line(entity("Alice", "person", "a", "b", "a", "c")),
        entity_line(entity("Bob", "person")),
        relation_line("Bob", "knows", "Alice"),
        relation_line("Alice", "knows", "Bob"),
    ]
    graph.write_bytes("\n".join(lines).encode())
    before = graph.read_bytes()
    policies = {p.name: p for p in load_pack("mcp-memory", memory_file=graph)}

    def delete_then_undo(tool: str, args: dict[str, Any], delete: Callable[[], None]) -> None:
        snapshot = policies[tool].snapshot
        undo = policies[tool].undo
        assert snapshot is not None and callable(undo)
        taken = snapshot(args=args)
        delete()  # what the server does
        assert graph.read_bytes() != before
        undo(snapshot=json.loads(json.dumps(taken)))  # as stored: JSON
        assert graph.read_bytes() == before
        undo(snapshot=json.loads(json.dumps(taken)))
        assert graph.read_bytes() == before

    def keep(*kept: str) -> Callable[[], None]:
        def delete() -> None:
            graph.write_bytes("\n".join(kept).encode())

        return delete

    alice = entity_line(entity("Alice", "person", "b", "c"))
    delete_then_undo(
        "delete_observations",
        {"deletions": [{"entityName": "Alice", "observations": ["a"]}]},
        keep(alice, *lines[1:]),
    )
    delete_then_undo("delete_entities", {"entityNames": ["Alice"]}, keep(lines[1]))
    delete_then_undo(
        "delete_relations",
        {"relations": [relation("Bob", "knows", "Alice")]},
        keep(*lines[:2], lines[3]),
    )


def test_the_probe_tells_from_the_graph_whether_a_call_took_effect(tmp_path: Path) -> None:
    from guardrail.policies.mcp_memory import entity_line, probe

    graph = tmp_path / "memory.jsonl"
    graph.write_bytes(entity_line(entity("Alice", "person", "a")).encode())
    policies = {p.name: p for p in load_pack("mcp-memory", memory_file=graph)}
    args = {"relations": [relation("Alice", "knows", "Bob"), relation("Bob", "knows", "Alice")]}
    taken = policies["create_relations"].snapshot(args=args)  # type: ignore[misc]
    assert probe(taken) is False  # nothing happened
    line = {"type": "relation", **relation("Alice", "knows", "Bob")}
    graph.write_bytes(graph.read_bytes() + b"\n" + json.dumps(line).encode())
    assert probe(taken) is None  # half of it: a person decides
    line = {"type": "relation", **relation("Bob", "knows", "Alice")}
    graph.write_bytes(graph.read_bytes() + b"\n" + json.dumps(line).encode())
    found = probe(taken)
    assert isinstance(found, dict)  # all of it, with what the undo needs
    assert found["structuredContent"]["relations"] == args["relations"]
