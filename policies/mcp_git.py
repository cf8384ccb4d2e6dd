"""Policy pack ``mcp-git``: the MCP reference git server (``mcp-server-git``) with exact undos.

Every tool of the server, declared from what it does:

- ``git_status``, ``git_diff_unstaged``, ``git_diff_staged``, ``git_diff``, ``git_log``,
  ``git_show`` and ``git_branch`` read; they are read-only.
- ``git_add`` stages paths and ``git_reset`` unstages everything (the server's reset touches
  only the index, never the working tree). Both change only the index: the undo puts back the
  index file exactly as it was, byte for byte.
- ``git_commit`` moves the checked-out branch (or a detached HEAD) to a new commit; the index
  and the files stay as they are. The undo moves the branch back (an atomic compare-and-swap of
  the ref); the commit stays in the object store and in the reflog. A commit that concludes a
  merge gets its merge state (``MERGE_HEAD``, ``MERGE_MSG``...) back too.
- ``git_create_branch`` adds a branch; the undo deletes it if it still points where it was made.
- ``git_checkout`` switches HEAD; the undo switches back.

**An undo never destroys work made after its action.** Before each call the snapshot records
the repository's state (HEAD, the branch checked out, the index) and *predicts* the state the
call will leave, by running the same git command on a scratch copy of the index with a scratch
object directory, so that predicting writes nothing to the repository. The undo first checks
that the repository is still in the predicted state; if anything moved on since (a commit, a
branch switch, something staged), it changes nothing and raises :class:`RepositoryMovedOn`,
which the guard turns into a review item saying what changed and how to undo by hand. An undo
that finds the repository already as it was before the call does nothing, so running it twice
(e.g. after a crash) is safe.

When a call raises (the server's error answer, a lost connection, a crash of the proxy), its
outcome is unknown until the pack's probe compares the repository with the two states: as
before, the call did not happen; as the call leaves it, it did (and its undo applies); anything
else is left to a person.

Calls whose effect no undo could take back exactly are refused before they run (``CallRefused``,
nothing happens): a checkout that would carry uncommitted changes to paths that differ between
the two commits (git either refuses or silently merges them into the other commit's version), or
would overwrite untracked or ignored files; a checkout from a branch with no commit yet; a commit
that would re-apply a merge's autostash; an index larger than ``max_snapshot_bytes``.

The undo runs in the guard's process, so the server must see the same repository (it does over
stdio on the same host)::

    guardrail mcp-proxy --pack mcp-git -- uvx mcp-server-git
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from guardrail.errors import CallRefused
from guardrail.policies.git_repo import (
    GitFailed,
    Repo,
    RepositoryBusy,
    describe_head,
    moved_on,
    output,
    refuse,
)
from guardrail.policies.git_repo import RepositoryMovedOn as RepositoryMovedOn  # (raised by undos)
from guardrail.policy import Policy, Retry, Review

DEFAULT_MAX_SNAPSHOT_BYTES = 10_000_000
READ_ONLY = (
    "git_status",
    "git_diff_unstaged",
    "git_diff_staged",
    "git_diff",
    "git_log",
    "git_show",
    "git_branch",
)
MERGE_FILES = ("MERGE_HEAD", "MERGE_MSG", "MERGE_MODE", "AUTO_MERGE")
_COMMIT_HASH = re.compile(r"\bwith hash ([0-9a-f]{40}(?:[0-9a-f]{24})?)\b")
_PREVIOUS_BRANCH = re.compile(r"^@\{-[0-9]+\}$")


# -- the index: git_add and git_reset ----------------------------------------------------------


def _index_snapshot(repo: Repo, max_bytes: int, tool: str) -> dict[str, Any]:
    try:
        data: bytes | None = Path(repo.index).read_bytes()
    except FileNotFoundError:
        data = None
    if data is not None and len(data) > max_bytes:
        raise CallRefused(
            f"{repo.root}: the index is {len(data):,} bytes; {tool} is refused because snapshots "
            f"over {max_bytes:,} bytes are (max_snapshot_bytes)",
            tool=tool,
            field="args",
        )
    return {
        "repo": repo.root,
        "before": repo.state(),
        "index_file": base64.b64encode(data).decode("ascii") if data is not None else None,
    }


def _predicted_index(repo: Repo, *command: str) -> str | None:
    """The index digest after ``git COMMAND`` on a scratch copy; None if git refuses."""
    with repo.scratch() as env:
        if repo.git(*command, env=env, check=False).returncode != 0:
            return None
        return str(repo.state(env)["index"])


def add_snapshot(args: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    repo = Repo.open(args["repo_path"])
    taken = _index_snapshot(repo, max_bytes, "git_add")
    files = [str(f) for f in args["files"]]
    # The server stages exactly so: `git add .`, else `git add -- FILES`, in the working tree.
    command = ("add", ".") if files == ["."] else ("add", "--", *files)
    index = _predicted_index(repo, *command)
    taken["after"] = {**taken["before"], "index": index} if index is not None else None
    return taken


def reset_snapshot(args: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    repo = Repo.open(args["repo_path"])
    taken = _index_snapshot(repo, max_bytes, "git_reset")
    # The server's reset is GitPython's `index.reset()`: the index becomes HEAD's tree.
    index = _predicted_index(repo, "read-tree", "HEAD") if taken["before"]["sha"] else None
    taken["after"] = {**taken["before"], "index": index} if index is not None else None
    # The staged tree, written to the object store, names the staged state for a person.
    with repo.scratch() as env:
        env.pop("GIT_OBJECT_DIRECTORY")
        env.pop("GIT_ALTERNATE_OBJECT_DIRECTORIES")
        tree = repo.git("write-tree", env=env, check=False)
    taken["tree"] = output(tree) if tree.returncode == 0 else None
    return taken


def restore_index(snapshot: dict[str, Any], tool: str) -> None:
    """Write back the index file as it was, if the repository is as the call left it."""
    repo = Repo.open(snapshot["repo"])
    before, after = snapshot["before"], snapshot["after"]
    if tool == "git_reset" and snapshot.get("tree"):
        by_hand = f"`git read-tree {snapshot['tree']}` puts back the index the reset emptied"
    else:
        by_hand = "`git restore --staged -- PATHS` unstages what it staged"
    with repo.index_lock() as lock:
        now = repo.state()
        if now == before:
            return  # undone already (or never needed)
        if after is None:
            raise refuse(repo, tool, f"could not predict what {tool} would stage", by_hand)
        if now != after:
            raise refuse(repo, tool, moved_on(tool, now, after), by_hand)
        if snapshot["index_file"] is None:
            Path(repo.index).unlink()
        else:
            with lock.open("wb") as out:
                out.write(base64.b64decode(snapshot["index_file"]))
                out.flush()
                os.fsync(out.fileno())
            os.replace(lock, repo.index)
    _restored(repo, tool, before)


def _restored(repo: Repo, tool: str, before: Mapping[str, Any]) -> None:
    now = repo.state()
    if now != before:
        raise GitFailed(
            f"{repo.root}: after the undo of {tool} the repository is not as it was before the "
            f"call: {moved_on('the call', now, before)}; check it by hand"
        )


# -- git_commit --------------------------------------------------------------------------------


def commit_snapshot(args: dict[str, Any]) -> dict[str, Any]:
    repo = Repo.open(args["repo_path"])
    if repo.path("MERGE_AUTOSTASH").exists():
        raise CallRefused(
            f"{repo.root}: this commit would conclude a merge and re-apply its autostash to the "
            "working tree, which no undo can take back exactly; conclude the merge by hand",
            tool="git_commit",
            field="args",
        )
    merge = {}
    for name in MERGE_FILES:
        with contextlib.suppress(FileNotFoundError):
            merge[name] = base64.b64encode(repo.path(name).read_bytes()).decode("ascii")
    return {"repo": repo.root, "before": repo.state(), "merge": merge}


def committed(result: Any) -> str | None:
    """The new commit's hash, from the server's answer ("... with hash <sha>"): the MCP result
    (its text content) or the text itself."""
    if isinstance(result, Mapping):
        texts = [str(p.get("text", "")) for p in result.get("content") or [] if isinstance(p, dict)]
    else:
        texts = [str(result)]
    for text in texts:
        found = _COMMIT_HASH.search(text)
        if found:
            return found.group(1)
    return None


def undo_commit(snapshot: dict[str, Any], result: Any) -> None:
    repo = Repo.open(snapshot["repo"])
    before = snapshot["before"]
    sha = committed(result)
    now = repo.state()
    if now == before:
        _restore_merge(repo, snapshot["merge"])
        return  # undone already
    by_hand = (
        f"the commit {sha or '(hash unknown)'} is still there: `git reset --soft "
        f"{before['sha'] or 'HEAD~'}` moves {describe_head(before).split(' at ')[0]} back while "
        "keeping its changes staged, if nothing committed since should stay; `git revert` records "
        "its reversal instead; `git reflog` lists every position HEAD had"
    )
    if sha is None:
        raise refuse(repo, "git_commit", "its answer names no commit hash", by_hand)
    left = {**before, "sha": sha}
    if now != left:
        raise refuse(repo, "git_commit", moved_on("git_commit", now, left), by_hand)
    parents = output(repo.git("rev-list", "--parents", "-n", "1", sha)).split()[1:]
    if (parents[0] if parents else None) != before["sha"]:
        raise refuse(repo, "git_commit", f"{sha} is not a child of {before['sha']}", by_hand)
    message = f"guardrail: undo git_commit {sha[:12]}"
    if before["head"] is None:
        repo.git("update-ref", "--no-deref", "-m", message, "HEAD", before["sha"], sha)
    elif before["sha"] is None:
        repo.git("update-ref", "-m", message, "-d", before["head"], sha)
    else:
        repo.git("update-ref", "-m", message, before["head"], before["sha"], sha)
    _restore_merge(repo, snapshot["merge"])
    _restored(repo, "git_commit", before)


def _restore_merge(repo: Repo, merge: Mapping[str, str]) -> None:
    if not merge or repo.path("MERGE_HEAD").exists():
        return
    for name, data in merge.items():
        repo.path(name).write_bytes(base64.b64decode(data))


# -- git_create_branch -------------------------------------------------------------------------


def create_branch_snapshot(args: dict[str, Any]) -> dict[str, Any]:
    repo = Repo.open(args["repo_path"])
    name, base = str(args["branch_name"]), args.get("base_branch")
    before = repo.state()
    if base:
        # The server looks the base up among references by short name: branches, then remote
        # branches, then tags.
        sha = next(
            (
                found
                for prefix in ("refs/heads/", "refs/remotes/", "refs/tags/")
                if (found := repo.resolve(prefix + str(base))) is not None
            ),
            None,
        )
    else:
        sha = before["sha"] if before["head"] is not None else None
    ref = f"refs/heads/{name}"
    return {"repo": repo.root, "ref": ref, "sha": sha, "existed": repo.resolve(ref)}


def undo_create_branch(snapshot: dict[str, Any]) -> None:
    repo = Repo.open(snapshot["repo"])
    ref, sha = snapshot["ref"], snapshot["sha"]
    branch = ref.removeprefix("refs/heads/")
    now = repo.resolve(ref)
    if now is None or snapshot.get("existed"):
        return  # gone already; or it was there before the call, which did not make it
    by_hand = f"`git branch -d {branch}` deletes it once nothing needs it"
    if sha is None:
        raise refuse(repo, "git_create_branch", f"it is unknown where {branch} was made", by_hand)
    if now != sha:
        raise refuse(
            repo,
            "git_create_branch",
            f"branch {branch} moved from {sha[:12]} to {now[:12]} since it was made (`git log "
            f"{sha[:12]}..{branch}` shows what was added)",
            by_hand,
        )
    worktrees = output(repo.git("worktree", "list", "--porcelain"))
    if f"branch {ref}" in worktrees.splitlines():
        raise refuse(repo, "git_create_branch", f"branch {branch} is checked out", by_hand)
    repo.git("update-ref", "-m", "guardrail: undo git_create_branch", "-d", ref, sha)


# -- git_checkout ------------------------------------------------------------------------------


def checkout_snapshot(args: dict[str, Any]) -> dict[str, Any]:
    repo = Repo.open(args["repo_path"])
    name = str(args["branch_name"])
    before = repo.state()
    taken: dict[str, Any] = {"repo": repo.root, "before": before, "after": None}
    if name.startswith("-"):
        return taken  # the server refuses it
    target = repo.resolve(f"{name}^{{commit}}")
    if target is None:
        return taken  # not a commit: the call fails
    if before["sha"] is None:
        raise CallRefused(
            f"{repo.root}: {describe_head(before)}; switching away from a branch with no commit "
            "cannot be undone exactly; commit first",
            tool="git_checkout",
            field="args",
        )
    if name in ("HEAD", "@"):
        head = before["head"]
    elif repo.resolve(f"refs/heads/{name}") is not None:
        head = f"refs/heads/{name}"
    elif _PREVIOUS_BRANCH.match(name):
        full = output(repo.git("rev-parse", "--symbolic-full-name", name, check=False))
        head = full if full.startswith("refs/heads/") else None
    else:
        head = None  # a tag, a remote branch or a commit: git detaches HEAD
    _check_switch(repo, before["sha"], target, "git_checkout", name)
    with repo.scratch() as env:
        merged = repo.git("read-tree", "-m", before["sha"], target, env=env, check=False)
        index = repo.state(env)["index"] if merged.returncode == 0 else None
    if index is not None:
        taken["after"] = {"head": head, "sha": target, "index": index}
    return taken


def _check_switch(repo: Repo, old: str, new: str, tool: str, name: str) -> None:
    """Refuse a switch from commit ``old`` to ``new`` that no switch back could take back."""
    changes = repo.differences(old, new)
    dirty, unmerged = repo.dirty()
    if unmerged:
        raise CallRefused(
            f"{repo.root}: {tool} {name!r}: the index has unresolved conflicts "
            f"({_listed(unmerged)}); resolve them first",
            tool=tool,
            field="args",
        )
    carried = sorted(dirty & set(changes))
    if carried:
        raise CallRefused(
            f"{repo.root}: {tool} {name!r} would carry uncommitted changes to paths that differ "
            f"between the two commits ({_listed(carried)}); git either refuses or merges them "
            "into the other commit's version, which no undo can tell apart. Commit them first",
            tool=tool,
            field="args",
        )
    blocked = _in_the_way(repo, changes)
    if blocked:
        raise CallRefused(
            f"{repo.root}: {tool} {name!r} would overwrite files that are not tracked here "
            f"({_listed(blocked)}); move them away first",
            tool=tool,
            field="args",
        )


def _in_the_way(repo: Repo, changes: Mapping[str, str]) -> list[str]:
    """Paths a switch would add that exist on disk already, untracked or ignored: git refuses
    to overwrite the first and silently overwrites the second. (A folder is git's to judge: it
    removes one whose files it tracks.)"""
    found = []
    for name, status in changes.items():
        path = Path(repo.root, name)
        if status == "A" and (path.is_symlink() or (path.exists() and not path.is_dir())):
            found.append(name)
    return found


def _listed(paths: list[str]) -> str:
    shown = ", ".join(sorted(paths)[:10])
    return shown + (f" and {len(paths) - 10} more" if len(paths) > 10 else "")


def undo_checkout(snapshot: dict[str, Any]) -> None:
    repo = Repo.open(snapshot["repo"])
    before, after = snapshot["before"], snapshot["after"]
    now = repo.state()
    if now == before:
        return  # undone already
    back = before["head"].removeprefix("refs/heads/") if before["head"] else None
    by_hand = (
        f"`git switch {back}`" if back else f"`git switch --detach {before['sha']}`"
    ) + " once the work done since is committed or stashed"
    if after is None:
        raise refuse(repo, "git_checkout", "the state it left could not be predicted", by_hand)
    if now != after:
        raise refuse(repo, "git_checkout", moved_on("git_checkout", now, after), by_hand)
    if before["head"] is not None and repo.resolve(before["head"]) != before["sha"]:
        raise refuse(
            repo, "git_checkout", f"branch {back} moved since it was left", f"`git switch {back}`"
        )
    changes = repo.differences(after["sha"], before["sha"])
    dirty, _ = repo.dirty()
    edited = sorted(dirty & set(changes))
    if edited:
        raise refuse(repo, "git_checkout", f"files were changed since: {_listed(edited)}", by_hand)
    blocked = _in_the_way(repo, changes)
    if blocked:
        raise refuse(repo, "git_checkout", f"files were created since: {_listed(blocked)}", by_hand)
    if back is not None:
        repo.git("switch", "--quiet", "--no-guess", back)
    else:
        repo.git("switch", "--quiet", "--detach", before["sha"])
    _restored(repo, "git_checkout", before)


# -- probes: did a call whose outcome is unknown take effect? -----------------------------------
#
# A call that raised (the server's error answer, a lost connection, a crash of the proxy) may or
# may not have changed the repository. The snapshot says what the repository was before and what
# the call leaves, so the repository itself answers: as before (False: it did not happen), as the
# call leaves it (a result in the server's words: it happened, and its undo applies), or neither
# (None: a person decides).


def _answer(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": f"{text} (found by guardrail's probe)"}]}


def _probe_state(snapshot: dict[str, Any], done: str) -> dict[str, Any] | bool | None:
    now = Repo.open(snapshot["repo"]).state()
    if now == snapshot["before"]:
        return False
    if snapshot["after"] is not None and now == snapshot["after"]:
        return _answer(done)
    return None


def probe_add(snapshot: dict[str, Any]) -> dict[str, Any] | bool | None:
    return _probe_state(snapshot, "Files staged successfully")


def probe_reset(snapshot: dict[str, Any]) -> dict[str, Any] | bool | None:
    return _probe_state(snapshot, "All staged changes reset")


def probe_checkout(snapshot: dict[str, Any]) -> dict[str, Any] | bool | None:
    after = snapshot["after"] or {}
    if after.get("head"):
        done = f"Switched to branch '{after['head'].removeprefix('refs/heads/')}'"
    else:
        done = f"HEAD is now detached at {str(after.get('sha'))[:7]}"
    return _probe_state(snapshot, done)


def probe_commit(snapshot: dict[str, Any]) -> dict[str, Any] | bool | None:
    repo = Repo.open(snapshot["repo"])
    before, now = snapshot["before"], repo.state()
    if now == before:
        return False
    if (now["head"], now["index"]) != (before["head"], before["index"]) or now["sha"] is None:
        return None
    parents = output(repo.git("rev-list", "--parents", "-n", "1", now["sha"])).split()[1:]
    if (parents[0] if parents else None) != before["sha"]:
        return None
    return _answer(f"Changes committed successfully with hash {now['sha']}")


def probe_create_branch(snapshot: dict[str, Any]) -> dict[str, Any] | bool | None:
    now = Repo.open(snapshot["repo"]).resolve(snapshot["ref"])
    if now is None or snapshot.get("existed"):
        return False
    if now == snapshot["sha"]:
        return _answer(f"Created branch '{snapshot['ref'].removeprefix('refs/heads/')}'")
    return None


# -- the pack ----------------------------------------------------------------------------------

UNDO_RETRY = Retry(attempts=3, on=(RepositoryBusy,))
REVIEW = Review(
    kind="correct",
    instructions="Compare the repository with what this call did (`git status`, `git log`; "
    "`git reflog` lists every position HEAD and the branches had) and undo it by hand where the "
    "reason says how, once the newer work is safe",
)


def mcp_git(*, max_snapshot_bytes: int | str = DEFAULT_MAX_SNAPSHOT_BYTES) -> list[Policy]:
    """Policies for every tool of the MCP reference git server (``mcp-server-git``).

    ``max_snapshot_bytes`` caps the index file kept for the undo of ``git_add`` and
    ``git_reset`` (default 10 MB); a larger index makes those calls refused.

    Example::

        guard.load_policies("mcp-git")
    """
    limit = int(max_snapshot_bytes)

    def add(args: dict[str, Any]) -> dict[str, Any]:
        return add_snapshot(args, limit)

    def reset(args: dict[str, Any]) -> dict[str, Any]:
        return reset_snapshot(args, limit)

    def unstage(snapshot: dict[str, Any]) -> None:
        restore_index(snapshot, "git_add")

    def restage(snapshot: dict[str, Any]) -> None:
        restore_index(snapshot, "git_reset")

    repo_id = {"repo": "args.repo_path"}
    branch_id = {**repo_id, "branch": "args.branch_name"}
    changes: list[tuple[str, Any, Any, Any, Mapping[str, str]]] = [
        ("git_add", add, unstage, probe_add, repo_id),
        ("git_reset", reset, restage, probe_reset, repo_id),
        ("git_commit", commit_snapshot, undo_commit, probe_commit, repo_id),
        (
            "git_create_branch",
            create_branch_snapshot,
            undo_create_branch,
            probe_create_branch,
            branch_id,
        ),
        ("git_checkout", checkout_snapshot, undo_checkout, probe_checkout, branch_id),
    ]
    policies = [Policy(name=name, effect="read_only", external_ids=repo_id) for name in READ_ONLY]
    for name, snapshot, undo, probe, ids in changes:
        policies.append(
            Policy(
                name=name,
                effect="reversible",
                snapshot=snapshot,
                undo=undo,
                probe=probe,
                undo_retry=UNDO_RETRY,
                undo_idempotent=True,  # an undo that finds the state from before does nothing
                review=REVIEW,
                external_ids=ids,
            )
        )
    return policies
