"""A git repository as the ``mcp-git`` pack sees it: git run with a timeout and without the
environment's redirections, the repository's state (HEAD, the branch, the index) and a scratch
copy of its index to predict what a command would do, and the errors an undo raises when the
repository moved on.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIT_TIMEOUT = 120  # seconds; a git command on a healthy local repository takes milliseconds

# Per-worktree files of a merge in progress that `git_commit` removes when it concludes one.
# Variables that would point git somewhere else than the repository the call names.
_REDIRECTS = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
)


class GitFailed(RuntimeError):
    """A git command the pack ran failed."""


class RepositoryMovedOn(RuntimeError):
    """The repository is no longer as the action left it; the undo changed nothing.

    Undoing now would overwrite what happened since (a commit, a branch switch, something
    staged), so a person decides: the message says what differs and how to undo by hand.
    """


class RepositoryBusy(RuntimeError):
    """Another git process holds the index lock; the undo is retried."""


# -- running git --------------------------------------------------------------------------------


def git(
    cwd: str, *args: str, env: Mapping[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    """Run ``git -C cwd ARGS`` with the repository named by ``cwd`` only, in the C locale."""
    full = {k: v for k, v in os.environ.items() if k not in _REDIRECTS}
    full.update(LC_ALL="C", GIT_OPTIONAL_LOCKS="0", GIT_TERMINAL_PROMPT="0")
    full.update(env or {})
    done = subprocess.run(
        ["git", "-C", cwd, *args],
        capture_output=True,
        env=full,
        check=False,
        timeout=GIT_TIMEOUT,
    )
    if check and done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip() or f"exit code {done.returncode}"
        raise GitFailed(f"git {' '.join(args)}: {message}")
    return done


def output(done: subprocess.CompletedProcess[bytes]) -> str:
    return done.stdout.decode(errors="surrogateescape").strip()


def _paths(done: subprocess.CompletedProcess[bytes]) -> list[str]:
    return [p.decode(errors="surrogateescape") for p in done.stdout.split(b"\0") if p]


@dataclass(frozen=True)
class Repo:
    """A repository's working tree and the paths of its git files."""

    root: str
    index: str
    objects: str

    @classmethod
    def open(cls, path: str) -> Repo:
        where = os.path.abspath(path)
        lines = output(
            git(
                where,
                "rev-parse",
                "--show-toplevel",
                "--git-path",
                "index",
                "--git-path",
                "objects",
            )
        ).splitlines()
        root, index, objects = lines
        return cls(
            root=root,
            index=os.path.join(where, index),
            objects=os.path.join(where, objects),
        )

    def git(
        self, *args: str, env: Mapping[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        return git(self.root, *args, env=env, check=check)

    def path(self, name: str) -> Path:
        """A per-worktree file of the repository (``MERGE_HEAD``)."""
        return Path(os.path.join(self.root, output(self.git("rev-parse", "--git-path", name))))

    def resolve(self, revision: str) -> str | None:
        done = self.git(
            "rev-parse", "--verify", "--quiet", "--end-of-options", revision, check=False
        )
        return (output(done) or None) if done.returncode == 0 else None

    def state(self, env: Mapping[str, str] | None = None) -> dict[str, Any]:
        """HEAD (the branch checked out, or None when detached), its commit (None on a branch with
        no commit yet), and a digest of every index entry (mode, object, stage, path)."""
        head = self.git("symbolic-ref", "--quiet", "HEAD", check=False)
        entries = self.git("ls-files", "--stage", "-z", env=env).stdout
        return {
            "head": (output(head) or None) if head.returncode == 0 else None,
            "sha": self.resolve("HEAD"),
            "index": hashlib.sha256(entries).hexdigest(),
        }

    @contextlib.contextmanager
    def scratch(self) -> Iterator[dict[str, str]]:
        """Environment for git on a copy of the index, writing new objects to a scratch folder:
        commands predict what a call will do without changing the repository."""
        with tempfile.TemporaryDirectory(prefix="guardrail-git-") as tmp:
            index = os.path.join(tmp, "index")
            with contextlib.suppress(FileNotFoundError):
                shutil.copyfile(self.index, index)
            objects = os.path.join(tmp, "objects")
            os.mkdir(objects)
            yield {
                "GIT_INDEX_FILE": index,
                "GIT_OBJECT_DIRECTORY": objects,
                "GIT_ALTERNATE_OBJECT_DIRECTORIES": self.objects,
            }

    def dirty(self) -> tuple[set[str], list[str]]:
        """Paths whose index entry differs from HEAD or whose file differs from the index, and
        the paths with unresolved conflicts (the stat cache is refreshed on a scratch copy)."""
        with self.scratch() as env:
            self.git("update-index", "-q", "--refresh", env=env, check=False)
            unmerged = _paths(
                self.git("diff-files", "--name-only", "--diff-filter=U", "-z", env=env)
            )
            paths = set(_paths(self.git("diff-files", "--name-only", "-z", env=env)))
            if self.resolve("HEAD") is not None:
                cached = self.git("diff-index", "--cached", "--name-only", "-z", "HEAD", env=env)
                paths.update(_paths(cached))
        return paths, unmerged

    def differences(self, old: str, new: str) -> dict[str, str]:
        """Path to status (A added, D deleted, M/T changed) from commit ``old`` to ``new``."""
        raw = self.git("diff-tree", "-r", "-z", "--no-renames", "--name-status", old, new).stdout
        parts = [p.decode(errors="surrogateescape") for p in raw.split(b"\0") if p]
        return {parts[i + 1]: parts[i][:1] for i in range(0, len(parts) - 1, 2)}

    @contextlib.contextmanager
    def index_lock(self) -> Iterator[Path]:
        """Git's own lock on the index (``index.lock``), so no git process writes it meanwhile."""
        lock = Path(self.index + ".lock")
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            raise RepositoryBusy(
                f"{lock} exists: another git process is using the repository (if none is, "
                "remove the file)"
            ) from None
        os.close(fd)
        try:
            yield lock
        finally:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()


def describe_head(state: Mapping[str, Any]) -> str:
    sha = state["sha"][:12] if state["sha"] else None
    if state["head"] is None:
        return f"detached at {sha}"
    branch = state["head"].removeprefix("refs/heads/")
    return f"branch {branch} at {sha}" if sha else f"branch {branch} with no commit yet"


def moved_on(tool: str, now: Mapping[str, Any], left: Mapping[str, Any]) -> str:
    """What differs between the state the action left (``left``) and ``now``."""
    found = []
    if (now["head"], now["sha"]) != (left["head"], left["sha"]):
        found.append(
            f"HEAD is on {describe_head(now)}, but {tool} left it on {describe_head(left)} "
            "(something was committed, reset or checked out since)"
        )
    if now["index"] != left["index"]:
        found.append(f"the index is not as {tool} left it (something was staged or unstaged since)")
    return "; ".join(found)


def refuse(repo: Repo, tool: str, why: str, by_hand: str) -> RepositoryMovedOn:
    return RepositoryMovedOn(
        f"{repo.root}: {why}. The undo of {tool} changed nothing, so that no newer work is lost. "
        f"To undo it by hand: {by_hand}"
    )
