"""The file-management policy packs against the real LangChain FileManagementToolkit: after a
failure the directory is byte-identical to before (hash of the whole tree)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest

from guardrail import CallRefused, Guard, RunHalted
from guardrail.adapters.langchain import wrap_tools
from guardrail.testing import tree_hash

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # langchain-community's sunset notice
    from langchain_community.agent_toolkits import FileManagementToolkit


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "work"
    (root / "docs").mkdir(parents=True)
    (root / "notes.txt").write_text("first draft\n")
    (root / "docs" / "report.bin").write_bytes(bytes(range(256)) * 40)
    (root / "docs" / "keep.txt").write_text("keep me")
    os.chmod(root / "docs" / "keep.txt", 0o600)
    return root


@pytest.fixture
def files(guard: Guard, workspace: Path) -> dict[str, Any]:
    guard.load_policies("langchain-file-management", root_dir=workspace)
    toolkit = FileManagementToolkit(root_dir=str(workspace))
    return {t.name: t for t in wrap_tools(guard, toolkit.get_tools())}


class HostDown(RuntimeError):
    """The web host refused the request: nothing was published (declared ``not_done``)."""


def publish(guard: Guard) -> Any:
    @guard.tool(
        effect="irreversible", review={"kind": "handoff", "owner": "web"}, not_done=[HostDown]
    )
    def publish_site() -> None:
        raise HostDown("the web host is down")

    return publish_site


def test_the_tree_is_byte_identical_after_a_failure(
    guard: Guard, files: dict[str, Any], workspace: Path
) -> None:
    before = tree_hash(workspace)
    fail = publish(guard)
    with pytest.raises(RunHalted), guard.run(agent="writer") as run:
        files["write_file"].invoke({"file_path": "drafts/2026/new.md", "text": "# new\n"})
        files["write_file"].invoke({"file_path": "notes.txt", "text": "second draft\n"})
        files["write_file"].invoke({"file_path": "notes.txt", "text": "more\n", "append": True})
        files["move_file"].invoke(
            {"source_path": "docs/report.bin", "destination_path": "archive/report.bin"}
        )
        files["copy_file"].invoke({"source_path": "notes.txt", "destination_path": "docs/keep.txt"})
        files["file_delete"].invoke({"file_path": "drafts/2026/new.md"})
        files["file_delete"].invoke({"file_path": "docs/keep.txt"})
        assert files["read_file"].invoke({"file_path": "notes.txt"}) == "second draft\nmore\n"
        files["list_directory"].invoke({"dir_path": "."})
        fail()
    assert tree_hash(workspace) == before
    log = guard.log(run.id)
    assert [a.state for a in log.actions] == ["compensated"] * 7 + ["succeeded"] * 2 + ["failed"]
    # newest first
    assert [c.seq for c in sorted(log.compensations, key=lambda c: c.started_at)] == [
        7,
        6,
        5,
        4,
        3,
        2,
        1,
    ]
    assert log.review_items == []
    assert guard.find("archive/report.bin")[0].tool == "move_file"
    assert guard.verify(run.id).ok


def test_a_tool_that_reports_its_error_as_text_is_still_undone_exactly(
    guard: Guard, files: dict[str, Any], workspace: Path
) -> None:
    before = tree_hash(workspace)
    with pytest.raises(RunHalted), guard.run():
        answer = files["move_file"].invoke(
            {"source_path": "missing.txt", "destination_path": "notes.txt"}
        )
        assert answer.startswith("Error")  # the toolkit returns errors instead of raising
        files["write_file"].invoke({"file_path": "notes.txt", "text": "x"})
        publish(guard)()
    assert tree_hash(workspace) == before


def test_abort_after_hold_restores_too(
    guard: Guard, files: dict[str, Any], workspace: Path
) -> None:
    before = tree_hash(workspace)

    @guard.tool(
        effect="irreversible", review={"kind": "handoff"}, on_failure="hold", not_done=[HostDown]
    )
    def deploy() -> None:
        raise HostDown("no")

    with pytest.raises(RunHalted), guard.run() as run:
        files["write_file"].invoke({"file_path": "notes.txt", "text": "changed"})
        deploy()
    assert (workspace / "notes.txt").read_text() == "changed"  # held: nothing undone yet
    assert [s.do for s in guard.plan_undo(run.id)] == ["nothing", "undo"]
    guard.abort(run.id, by="ann")
    guard.abort(run.id, by="ann")
    assert tree_hash(workspace) == before


def test_refusals_before_anything_changes(
    guard: Guard, files: dict[str, Any], workspace: Path, tmp_path: Path
) -> None:
    guard.load_policies("langchain-file-management", root_dir=workspace, max_snapshot_bytes=1_000)
    before = tree_hash(workspace)
    with guard.run() as run:
        with pytest.raises(CallRefused, match="snapshot") as big:
            files["file_delete"].invoke({"file_path": "docs/report.bin"})
        assert "10,240 bytes" in str(big.value)
        with pytest.raises(CallRefused, match="directory"):
            files["move_file"].invoke({"source_path": "docs", "destination_path": "old"})
        with pytest.raises(CallRefused, match="outside the root"):
            files["write_file"].invoke({"file_path": "../escape.txt", "text": "x"})
    assert tree_hash(workspace) == before
    assert not (tmp_path / "escape.txt").exists()
    # refused before they ran: kept in the log with the reason, never started
    refused = [(a.tool, a.state, a.attempts) for a in guard.log(run.id).actions]
    assert refused == [
        ("file_delete", "refused", 0),
        ("move_file", "refused", 0),
        ("write_file", "refused", 0),
    ]


def test_mcp_filesystem_pack(guard: Guard, tmp_path: Path) -> None:
    """The MCP server's tools, played by local functions with the same names and arguments
    (the adapters' tests run the real server)."""
    root = tmp_path / "mcp"
    root.mkdir()
    (root / "a.txt").write_text("alpha")
    before = tree_hash(root)
    guard.load_policies("mcp-filesystem")

    @guard.tool
    def write_file(path: str, content: str) -> str:
        Path(path).write_text(content)
        return "ok"

    @guard.tool
    def edit_file(path: str, edits: list[dict[str, str]], dryRun: bool = False) -> str:
        text = Path(path).read_text()
        for edit in edits:
            text = text.replace(edit["oldText"], edit["newText"])
        if not dryRun:
            Path(path).write_text(text)
        return "diff"

    @guard.tool
    def create_directory(path: str) -> str:
        Path(path).mkdir(parents=True, exist_ok=True)
        return "ok"

    @guard.tool
    def move_file(source: str, destination: str) -> str:
        Path(source).rename(destination)
        return "ok"

    @guard.tool
    def read_text_file(path: str) -> str:
        return Path(path).read_text()

    with pytest.raises(RunHalted), guard.run():
        create_directory(path=str(root / "x" / "y"))
        write_file(path=str(root / "x" / "y" / "b.txt"), content="beta")
        edit_file(path=str(root / "a.txt"), edits=[{"oldText": "alpha", "newText": "ALPHA"}])
        move_file(source=str(root / "a.txt"), destination=str(root / "x" / "a.txt"))
        assert read_text_file(path=str(root / "x" / "a.txt")) == "ALPHA"
        publish(guard)()
    assert tree_hash(root) == before
