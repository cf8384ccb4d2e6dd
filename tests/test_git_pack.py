"""The ``mcp-git`` pack against the real MCP reference git server (``mcp-server-git``).

End to end: a real MCP client session talks to ``guardrail mcp-proxy --pack mcp-git`` in a child
process, which serves the real server, on a real repository. After a failing call the repository
is as before: HEAD, every ref, the index file, the working tree byte for byte, ``git fsck``
clean. A person's resume lets the agent replay its calls; an abort undoes a held run; and a
change made to the repository behind the agent's back turns the undos it would overwrite into
review items instead of lost work. Edge cases of the undos (a first commit, a merge commit, a
detached HEAD, undoing twice) run in-process against the server's own functions.
"""

from __future__ import annotations

import hashlib
import importlib.util
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

from guardrail import CallRefused, Guard, RunHalted
from guardrail.guard import load_pack

if shutil.which("git") is None:
    pytest.skip("the mcp-git pack's tests need git on PATH", allow_module_level=True)
if importlib.util.find_spec("mcp_server_git") is None:
    pytest.skip(
        "the mcp-git pack's tests need mcp-server-git (pip install -e '.[dev]')",
        allow_module_level=True,
    )

TIMEOUT = 90
SERVER = [sys.executable, "-m", "mcp_server_git"]
QUIET = {"GIT_OPTIONAL_LOCKS": "0"}  # the test's own reads never rewrite the index
EFFECT = {p.name: p.effect for p in load_pack("mcp-git")}


# -- the repository ------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **QUIET},
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout


def write(repo: Path, name: str, text: str) -> None:
    path = repo / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """main with two commits; release adds docs/ and changes README.md and src/app.py; on main
    one change staged, one not, one file untracked. Every file's time lies in the past and the
    index is refreshed, so no git command needs to rewrite the index (no racily clean entries).
    """
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "config", "user.name", "Ann Agent")
    git(repo, "config", "user.email", "ann@example.com")
    write(repo, "README.md", "# Project\n")
    write(repo, "src/app.py", "print('v1')\n")
    (repo / "data.bin").write_bytes(bytes(range(256)) * 16)
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "-m", "first")
    write(repo, "src/util.py", "X = 1\n")
    (repo / "src" / "util.py").chmod(0o755)
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "-m", "second")
    git(repo, "switch", "--quiet", "-c", "release")
    write(repo, "docs/notes.md", "release notes\n")
    write(repo, "README.md", "# Project (release)\n")
    write(repo, "src/app.py", "print('v1.1')\n")
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "-m", "release")
    git(repo, "switch", "--quiet", "main")
    write(repo, "src/app.py", "print('v2')\n")
    git(repo, "add", "src/app.py")  # staged
    write(repo, "README.md", "# Project\n\nMore.\n")  # not staged
    write(repo, "scratch.txt", "scratch\n")  # untracked
    for path in repo.rglob("*"):
        if ".git" not in path.relative_to(repo).parts:
            os.utime(path, (946684800, 946684800), follow_symlinks=False)
    git(repo, "update-index", "-q", "--refresh")
    return repo


def files(repo: Path) -> dict[str, tuple[str, str]]:
    """Every file of the working tree (not .git): mode and content digest."""
    found = {}
    for folder, dirs, names in os.walk(repo):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in names:
            path = Path(folder, name)
            found[str(path.relative_to(repo))] = (
                oct(path.lstat().st_mode),
                hashlib.sha256(path.read_bytes()).hexdigest(),
            )
    return found


def state(repo: Path, *, index_file: bool = True) -> dict[str, Any]:
    """What an undo must put back, compared field by field (a failing test shows which)."""
    found = {
        "HEAD": (repo / ".git" / "HEAD").read_bytes(),
        "refs": git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        "index entries": git(repo, "ls-files", "--stage"),
        "merge": sorted(p.name for p in (repo / ".git").glob("MERGE_*")),
        "files": files(repo),
    }
    if index_file:
        found["index file"] = hashlib.sha256((repo / ".git" / "index").read_bytes()).hexdigest()
    return found


def fsck(repo: Path) -> None:
    done = subprocess.run(
        ["git", "-C", str(repo), "fsck", "--strict", "--no-dangling", "--no-progress"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **QUIET},
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


# -- the proxy and its client ------------------------------------------------------------------


def proxy(store_url: str, repo: Path, *options: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=[
            *("-m", "guardrail.cli", "mcp-proxy", "--store", store_url, "--pack", "mcp-git"),
            *options,
            *("--", *SERVER, "--repository", str(repo)),
        ],
        env={**os.environ, **QUIET},
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


def text(result: mcp_types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, mcp_types.TextContent))


def run_of(result: mcp_types.CallToolResult) -> str:
    """The run a proxied call went into, from the result's ``_meta``."""
    assert result.meta is not None, text(result)
    return str(result.meta["guardrail/run_id"])


def guardrail_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardrail.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=TIMEOUT,
    )


Step = tuple[str, dict[str, Any]]


def steps(repo: Path, *calls: tuple[str, dict[str, Any]]) -> list[Step]:
    return [(tool, {"repo_path": str(repo), **args}) for tool, args in calls]


async def play(client: ClientSession, calls: list[Step]) -> list[mcp_types.CallToolResult]:
    return [await client.call_tool(tool, args) for tool, args in calls]


# -- end to end through the proxy --------------------------------------------------------------


def test_a_failure_puts_the_repository_back_byte_for_byte_and_resume_replays(
    repo: Path, sqlite_url: str, tmp_path: Path
) -> None:
    errlog = tmp_path / "proxy.log"
    work = steps(
        repo,
        ("git_status", {}),
        ("git_add", {"files": ["README.md"]}),
        ("git_reset", {}),  # unstages the change staged before the run, too
        ("git_add", {"files": ["src/app.py", "README.md", "scratch.txt"]}),
        ("git_diff_staged", {}),
        ("git_commit", {"message": "Work in progress"}),
        ("git_create_branch", {"branch_name": "topic"}),
        ("git_checkout", {"branch_name": "topic"}),
        ("git_create_branch", {"branch_name": "hotfix", "base_branch": "release"}),
        ("git_checkout", {"branch_name": "release"}),  # another tree: files change
        ("git_log", {"max_count": 3}),
        ("git_show", {"revision": "HEAD"}),
        ("git_branch", {"branch_type": "local"}),
        ("git_diff", {"target": "main"}),
        ("git_checkout", {"branch_name": "staging"}),  # no such branch: fails
    )
    before = state(repo)
    got: dict[str, Any] = {}

    async def main() -> None:
        async with connect(proxy(sqlite_url, repo, "--agent", "coder"), errlog) as client:
            results = await play(client, work[:-1])
            assert [r.is_error for r in results] == [False] * len(results), [
                text(r) for r in results
            ]
            assert "Switched to branch 'release'" in text(results[9])
            got["changed"] = state(repo)
            [failed] = await play(client, work[-1:])
            got["failed"] = failed
            got["after_failure"] = state(repo)
            fsck(repo)

            # a person makes the missing branch and resumes the run; the agent replays its calls
            git(repo, "branch", "staging", "release")
            run_id = run_of(failed)
            resumed = guardrail_cli("resume", run_id, "--yes", "--by", "ann", "--store", sqlite_url)
            assert resumed.returncode == 0, resumed.stderr
            replay = await play(client, work)
            assert [r.is_error for r in replay] == [False] * len(work), [text(r) for r in replay]
            assert text(replay[0]) == text(results[0])  # read-only calls answer from the log

    run_async(main, errlog)
    failed = got["failed"]
    assert failed.is_error
    run_id = run_of(failed)
    assert text(failed).startswith(f"guardrail halted run {run_id}: git_checkout ")
    assert "Ref 'staging' did not resolve to an object" in text(failed)  # the server's words
    assert got["changed"] != before
    assert got["after_failure"] == before

    with Guard(store=sqlite_url) as guard:
        log = guard.log(run_id)
        first = log.actions[: len(work)]
        assert [(a.tool, a.state) for a in first] == [
            (tool, "succeeded" if EFFECT[tool] == "read_only" else "compensated")
            for tool, _ in work[:-1]
        ] + [("git_checkout", "failed")]
        undone = sorted(log.compensations, key=lambda c: c.started_at)
        assert [c.seq for c in undone] == [10, 9, 8, 7, 6, 4, 3, 2]  # newest first
        assert all(c.state == "succeeded" for c in undone)
        assert log.review_items == []
        assert log.run.status == "completed"  # after the resume and the replay
        assert [a.tool for a in log.actions[len(work) :]] == [
            tool for tool, _ in work if EFFECT[tool] != "read_only"
        ]  # only what had been undone, and the failed call, ran again
        assert {a.external_ids["repo"] for a in log.actions if a.state != "failed"} == {str(repo)}
        assert guard.verify(run_id).ok
    assert git(repo, "symbolic-ref", "HEAD").strip() == "refs/heads/staging"
    assert git(repo, "log", "-1", "--format=%s", "main").strip() == "Work in progress"
    assert git(repo, "branch", "--format=%(refname:short)").split() == [
        "hotfix", "main", "release", "staging", "topic",
    ]  # fmt: skip
    fsck(repo)


def test_a_held_failure_is_undone_by_abort(repo: Path, sqlite_url: str, tmp_path: Path) -> None:
    errlog = tmp_path / "proxy.log"
    work = steps(
        repo,
        ("git_add", {"files": ["."]}),
        ("git_commit", {"message": "Everything"}),
        ("git_create_branch", {"branch_name": "topic"}),
        ("git_checkout", {"branch_name": "topic"}),
        ("git_commit", {"message": "Nothing staged"}),  # fails
    )
    before = state(repo)
    got: dict[str, Any] = {}

    async def main() -> None:
        async with connect(proxy(sqlite_url, repo, "--on-failure", "hold"), errlog) as client:
            results = await play(client, work)
            assert [r.is_error for r in results] == [False] * 4 + [True]
            assert "No changes staged" in text(results[4])
            got["run_id"] = run_of(results[4])

    run_async(main, errlog)
    held = state(repo)
    assert held["HEAD"] == b"ref: refs/heads/topic\n"  # held: nothing undone yet
    with Guard(store=sqlite_url) as guard:
        guard.load_policies("mcp-git")
        guard.abort(got["run_id"], by="ann", reason="not this way")
        guard.abort(got["run_id"], by="ann")  # twice is once
        log = guard.log(got["run_id"])
        assert log.run.status == "aborted"
        assert [a.state for a in log.actions] == ["compensated"] * 4 + ["failed"]
        assert [i for i in log.review_items if i.status == "open"] == []
    assert state(repo) == before
    fsck(repo)


def test_work_done_behind_the_agents_back_becomes_review_items_not_lost_work(
    repo: Path, sqlite_url: str, tmp_path: Path
) -> None:
    """Someone commits on the agent's branch between its calls and its failure: every undo that
    would move HEAD or the index back refuses, and the commit stays."""
    errlog = tmp_path / "proxy.log"
    work = steps(
        repo,
        ("git_create_branch", {"branch_name": "topic"}),
        ("git_checkout", {"branch_name": "topic"}),
        ("git_add", {"files": ["README.md"]}),
        ("git_commit", {"message": "Agent's commit"}),
        ("git_checkout", {"branch_name": "no-such-branch"}),  # fails
    )
    got: dict[str, Any] = {}

    async def main() -> None:
        async with connect(proxy(sqlite_url, repo), errlog) as client:
            results = await play(client, work[:-1])
            assert [r.is_error for r in results] == [False] * 4, [text(r) for r in results]
            write(repo, "notes/by-hand.md", "written by a person\n")
            git(repo, "add", "notes/by-hand.md")
            git(repo, "commit", "--quiet", "-m", "A person's commit")
            got["theirs"] = git(repo, "rev-parse", "HEAD").strip()
            got["state"] = state(repo)
            [failed] = await play(client, work[-1:])
            got["failed"] = failed

    run_async(main, errlog)
    failed = got["failed"]
    run_id = run_of(failed)
    assert state(repo) == got["state"]  # nothing was overwritten
    assert git(repo, "rev-parse", "topic").strip() == got["theirs"]
    assert (repo / "notes" / "by-hand.md").read_text() == "written by a person\n"
    assert git(repo, "log", "--format=%s", "-2", "topic").splitlines() == [
        "A person's commit",
        "Agent's commit",
    ]
    fsck(repo)
    assert "Undo failed" in text(failed) or "4 item(s) wait" in text(failed), text(failed)
    with Guard(store=sqlite_url) as guard:
        log = guard.log(run_id)
        assert [(a.tool, a.state) for a in log.actions] == [
            ("git_create_branch", "compensation_failed"),
            ("git_checkout", "compensation_failed"),
            ("git_add", "compensation_failed"),
            ("git_commit", "compensation_failed"),
            ("git_checkout", "failed"),
        ]
        items = {i.seq: i for i in log.review_items}
        assert set(items) == {1, 2, 3, 4}
        assert {i.reason for i in items.values()} == {"compensation_failed"}
        commit, create = items[4].instructions or "", items[1].instructions or ""
        assert "RepositoryMovedOn" in commit and "changed nothing" in commit
        assert f"HEAD is on branch topic at {got['theirs'][:12]}" in commit
        assert "git reset --soft" in commit and "git reflog" in commit
        assert "branch topic moved from" in create and "git branch -d topic" in create


def test_a_change_behind_the_agents_back_blocks_only_the_undos_it_concerns(
    repo: Path, sqlite_url: str, tmp_path: Path
) -> None:
    """A person stages a file while the run holds its failure: the abort deletes the agent's
    branch (untouched since), but leaves the index, which is no longer as the agent left it."""
    errlog = tmp_path / "proxy.log"
    work = steps(
        repo,
        ("git_create_branch", {"branch_name": "topic"}),
        ("git_add", {"files": ["README.md"]}),
        ("git_checkout", {"branch_name": "no-such-branch"}),  # fails
    )
    got: dict[str, Any] = {}

    async def main() -> None:
        async with connect(proxy(sqlite_url, repo, "--on-failure", "hold"), errlog) as client:
            results = await play(client, work)
            assert [r.is_error for r in results] == [False, False, True]
            got["run_id"] = run_of(results[2])

    run_async(main, errlog)
    git(repo, "add", "scratch.txt")
    staged = git(repo, "ls-files", "--stage")
    with Guard(store=sqlite_url) as guard:
        guard.load_policies("mcp-git")
        guard.abort(got["run_id"], by="ann")
        log = guard.log(got["run_id"])
        assert [a.state for a in log.actions] == ["compensated", "compensation_failed", "failed"]
        [item] = [i for i in log.review_items if i.status == "open"]
        assert item.seq == 2
        assert "the index is not as git_add left it" in (item.instructions or "")
        assert "git restore --staged" in (item.instructions or "")
    assert "topic" not in git(repo, "branch", "--format=%(refname:short)").split()
    assert git(repo, "ls-files", "--stage") == staged  # both staged files still staged
    fsck(repo)


def test_calls_no_undo_could_take_back_are_refused_before_they_run(
    repo: Path, sqlite_url: str, tmp_path: Path
) -> None:
    errlog = tmp_path / "proxy.log"
    before = state(repo)
    got: dict[str, Any] = {}

    async def main() -> None:
        async with connect(proxy(sqlite_url, repo), errlog) as client:
            # README.md and src/app.py have uncommitted changes and differ on release
            carried = await client.call_tool(
                "git_checkout", {"repo_path": str(repo), "branch_name": "release"}
            )
            got["carried"] = text(carried)
            # an untracked file where release has one
            write(repo, "docs/notes.md", "mine\n")
            git(repo, "stash", "push", "--quiet", "--", "README.md", "src/app.py")
            blocked = await client.call_tool(
                "git_checkout", {"repo_path": str(repo), "branch_name": "release"}
            )
            got["blocked"] = text(blocked)
            git(repo, "stash", "pop", "--quiet", "--index")
            (repo / "docs" / "notes.md").unlink()
            (repo / "docs").rmdir()
            # the run goes on: a read-only call works
            status = await client.call_tool("git_status", {"repo_path": str(repo)})
            assert not status.is_error, text(status)

    run_async(main, errlog)
    assert "would carry uncommitted changes" in got["carried"]
    assert "README.md, src/app.py" in got["carried"] and "nothing ran" in got["carried"]
    assert "would overwrite files that are not tracked here (docs/notes.md)" in got["blocked"]
    assert state(repo)["files"] == before["files"]
    with Guard(store=sqlite_url) as guard:
        [run] = guard.runs()
        assert [(a.tool, a.state) for a in guard.log(run.id).actions] == [
            ("git_checkout", "refused"),  # kept in the log with why; it never ran
            ("git_checkout", "refused"),
            ("git_status", "succeeded"),
        ]


# -- the policy check against the real server, and a newer one ---------------------------------

NEWER_SERVER = """
from mcp_server_git.server import create_server

server = create_server(None)


@server.tool(name="git_push", description="Updates remote refs")
def push(repo_path: str) -> str:
    return ""


server.run()
"""


def test_policy_check_covers_every_tool_of_the_server_and_reports_new_ones(
    tmp_path: Path,
) -> None:
    clean = guardrail_cli("policy", "check", "mcp-git", "--", *SERVER)
    assert (clean.returncode, clean.stdout.strip()) == (0, "mcp-git: ok"), clean.stderr
    newer = tmp_path / "newer_git_server.py"
    newer.write_text(NEWER_SERVER)
    found = guardrail_cli("policy", "check", "mcp-git", "--json", "--", sys.executable, str(newer))
    assert found.returncode == 1, found.stderr
    report = json.loads(found.stdout)
    assert [(p["code"], p["tool"]) for p in report["problems"]] == [("no_policy", "git_push")]
    gone = guardrail_cli("policy", "check", "mcp-git", "--", sys.executable, "-c", "exit(3)")
    assert gone.returncode == 2 and "cannot list the tools of" in gone.stderr, gone.stderr


def test_the_pack_declares_exactly_the_servers_tools() -> None:
    from mcp_server_git.server import GitTools

    policies = {p.name: p for p in load_pack("mcp-git")}
    assert set(policies) == {t.value for t in GitTools}
    assert {n for n, p in policies.items() if p.effect == "reversible"} == {
        "git_add", "git_reset", "git_commit", "git_create_branch", "git_checkout",
    }  # fmt: skip
    assert all(p.effect == "read_only" or p.undo_idempotent for p in policies.values())


# -- the undos' edge cases, in-process against the server's own functions -----------------------


@pytest.fixture
def tools(guard: Guard) -> dict[str, Any]:
    """The server's tool functions, guarded under the pack (what the proxy serves, minus MCP)."""
    import git as gitpython
    from mcp_server_git import server

    guard.load_policies("mcp-git")

    def guarded(name: str) -> Any:
        def call(repo_path: str, **args: Any) -> str:
            with server.reported_to_model():
                return str(getattr(server, name)(gitpython.Repo(repo_path), **args))

        call.__name__ = name
        return guard.tool(call)

    return {name: guarded(name) for name in ("git_add", "git_commit", "git_checkout", "git_reset")}


def fail(guard: Guard) -> None:
    @guard.tool(effect="irreversible", review={"kind": "handoff"}, not_done=[RuntimeError])
    def deploy() -> None:
        raise RuntimeError("the deploy failed")

    deploy()


def test_a_first_commit_is_undone_to_a_branch_with_no_commit(
    guard: Guard, tools: dict[str, Any], tmp_path: Path
) -> None:
    repo = tmp_path / "fresh"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=trunk")
    git(repo, "config", "user.name", "Ann Agent")
    git(repo, "config", "user.email", "ann@example.com")
    write(repo, "a.txt", "a\n")
    assert not (repo / ".git" / "index").exists()
    before = {k: v for k, v in state(repo, index_file=False).items()}
    with pytest.raises(RunHalted), guard.run() as run:
        tools["git_add"](repo_path=str(repo), files=["a.txt"])
        assert "committed" in tools["git_commit"](repo_path=str(repo), message="first")
        fail(guard)
    assert [a.state for a in guard.log(run.id).actions] == ["compensated"] * 2 + ["failed"]
    assert state(repo, index_file=False) == before
    assert not (repo / ".git" / "index").exists()
    assert git(repo, "for-each-ref") == ""


def test_a_merge_commit_is_undone_with_its_merge_state(
    guard: Guard, tools: dict[str, Any], repo: Path
) -> None:
    git(repo, "stash", "--quiet", "--include-untracked")
    git(repo, "switch", "--quiet", "-c", "side", "HEAD~1")
    write(repo, "side.txt", "side\n")
    git(repo, "add", "side.txt")
    git(repo, "commit", "--quiet", "-m", "side")
    git(repo, "switch", "--quiet", "main")
    git(repo, "merge", "--no-commit", "--no-ff", "--quiet", "side")
    assert (repo / ".git" / "MERGE_HEAD").exists()
    before = state(repo)
    with pytest.raises(RunHalted), guard.run():
        tools["git_commit"](repo_path=str(repo), message="Merge side")
        assert not (repo / ".git" / "MERGE_HEAD").exists()
        assert len(git(repo, "rev-list", "--parents", "-n1", "HEAD").split()) == 3
        fail(guard)
    assert state(repo) == before
    fsck(repo)


def test_a_detached_checkout_is_undone_and_an_undo_runs_twice_safely(
    guard: Guard, tools: dict[str, Any], repo: Path
) -> None:
    from guardrail.policies.mcp_git import RepositoryMovedOn

    git(repo, "stash", "--quiet", "--include-untracked")  # a clean tree, to leave main
    before = state(repo)
    commit = git(repo, "rev-parse", "main~1").strip()
    with pytest.raises(RunHalted), guard.run() as run:
        assert "detached" in tools["git_checkout"](repo_path=str(repo), branch_name=commit)
        assert (repo / ".git" / "HEAD").read_text().strip() == commit
        tools["git_reset"](repo_path=str(repo))
        fail(guard)
    # The switch back rewrote the files that differ between the two commits, so git rewrote
    # their entries' file times in the index: its entries are as before, not its bytes.
    assert state(repo, index_file=False) == {k: v for k, v in before.items() if k != "index file"}
    before = state(repo)
    # The undos again, as recovery may run them after a crash: the checkout's finds the
    # repository as before its call and does nothing; the reset's finds HEAD moved on since its
    # call (the checkout was undone) and refuses, changing nothing.
    checkout, reset = guard.log(run.id).actions[:2]
    undo_checkout = guard.find_policy("git_checkout").undo  # type: ignore[union-attr]
    undo_reset = guard.find_policy("git_reset").undo  # type: ignore[union-attr]
    assert callable(undo_checkout) and callable(undo_reset)
    undo_checkout(snapshot=_snapshot(guard, checkout))
    with pytest.raises(RepositoryMovedOn, match="HEAD is on branch main"):
        undo_reset(snapshot=_snapshot(guard, reset))
    assert state(repo) == before


def _snapshot(guard: Guard, action: Any) -> Any:
    from guardrail.keys import unseal

    return unseal(guard.store.keys, action.snapshot)


def test_an_index_too_large_to_keep_is_refused(
    guard: Guard, tools: dict[str, Any], repo: Path
) -> None:
    guard.load_policies("mcp-git", max_snapshot_bytes="100")
    before = state(repo)
    with guard.run() as run, pytest.raises(CallRefused, match="max_snapshot_bytes"):
        tools["git_add"](repo_path=str(repo), files=["README.md"])
    assert state(repo) == before
    assert [a.state for a in guard.log(run.id).actions] == ["refused"]


def test_a_commit_whose_answer_was_lost_is_found_by_the_probe_and_undone(
    guard: Guard, repo: Path
) -> None:
    """The call committed, then its answer was lost (the connection dropped): the outcome is
    unknown, the probe finds the commit in the repository, and the undo takes it back."""
    import git as gitpython
    from mcp_server_git import server

    guard.load_policies("mcp-git")

    @guard.tool
    def git_commit(repo_path: str, message: str) -> str:
        server.git_commit(gitpython.Repo(repo_path), message)
        raise ConnectionError("the connection dropped before the answer came")

    before = state(repo)
    with pytest.raises(RunHalted), guard.run() as run:
        git_commit(repo_path=str(repo), message="lost answer")
    assert state(repo) == before
    [action] = guard.log(run.id).actions
    assert action.state == "compensated"
    assert "probe found it took effect" in (action.error or "")
    fsck(repo)
