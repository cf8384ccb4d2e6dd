"""Policy packs for file tools: the undo puts back the exact previous bytes.

Before each call that changes files, the pack's ``snapshot`` keeps the state of every path the
call may touch (its bytes, mode, or that it did not exist, and which parent folders it had to
create). The undo restores exactly that state, whatever the tool did: it is correct even when a
tool reports an error as a string instead of raising, and running it twice changes nothing more.

Two packs, for two real toolkits:

- ``langchain-file-management``: LangChain community's ``FileManagementToolkit`` (``write_file``,
  ``copy_file``, ``move_file``, ``file_delete``; ``read_file``, ``list_directory`` and
  ``file_search`` are read-only). Pass the toolkit's ``root_dir``.
- ``mcp-filesystem``: the tools of the MCP reference filesystem server
  (``@modelcontextprotocol/server-filesystem``). The undo runs in the guard's process, so the
  server must see the same files (it runs on the same host, as it does over stdio).

::

    guard.load_policies("langchain-file-management", root_dir="/srv/agent")

Snapshots are stored in the action log (base64), so files over ``max_snapshot_bytes`` are refused
before the call: the pack never lets a change through that it could not take back. Directories
are not snapshotted; moving or deleting a whole directory is refused the same way.
"""

from __future__ import annotations

import base64
import contextlib
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from guardrail.errors import CallRefused
from guardrail.policy import Policy, Review

DEFAULT_MAX_SNAPSHOT_BYTES = 10_000_000


class Files:
    """Snapshot and restore of file paths under an optional root."""

    def __init__(self, root_dir: str | os.PathLike[str] | None, max_bytes: int) -> None:
        self.root = Path(root_dir).resolve() if root_dir is not None else None
        self.max_bytes = max_bytes

    def path(self, name: str) -> Path:
        if self.root is None:
            return Path(name).resolve()
        full = (self.root / name).resolve()
        if full != self.root and self.root not in full.parents:
            raise CallRefused(f"{name!r} is outside the root directory {self.root}", field="args")
        return full

    def snapshot(self, *names: str) -> dict[str, Any]:
        """The state of each path: bytes and mode, or absent with the folders it would need."""
        state: dict[str, Any] = {}
        total = 0
        for name in names:
            path = self.path(name)
            if path.is_dir():
                raise CallRefused(
                    f"{name!r} is a directory; this pack restores files only, so it refuses "
                    "changes to whole directories",
                    field="args",
                )
            if path.exists():
                data = path.read_bytes()
                total += len(data)
                if total > self.max_bytes:
                    raise CallRefused(
                        f"{name!r} is {len(data):,} bytes; snapshots over {self.max_bytes:,} "
                        "bytes are refused (max_snapshot_bytes)",
                        field="args",
                    )
                state[str(path)] = {
                    "exists": True,
                    "mode": stat.S_IMODE(path.stat().st_mode),
                    "data": base64.b64encode(data).decode("ascii"),
                }
            else:
                missing = []
                parent = path.parent
                while not parent.exists():
                    missing.append(str(parent))
                    parent = parent.parent
                state[str(path)] = {"exists": False, "missing_dirs": missing}
        return state

    @staticmethod
    def restore(snapshot: Mapping[str, Any]) -> None:
        """Put every path back as it was; then remove the folders the call created, if empty."""
        folders: list[str] = []
        for name, was in snapshot.items():
            path = Path(name)
            if was["exists"]:
                path.parent.mkdir(parents=True, exist_ok=True)
                if path.is_dir():
                    raise RuntimeError(f"{name} is now a directory; restore it by hand")
                tmp = path.with_name(f".{path.name}.guardrail-restore")
                tmp.write_bytes(base64.b64decode(was["data"]))
                os.chmod(tmp, was["mode"])
                os.replace(tmp, path)
            else:
                if path.is_file() or path.is_symlink():
                    path.unlink()
                folders.extend(was.get("missing_dirs", []))
        for folder in sorted(set(folders), key=len, reverse=True):
            with contextlib.suppress(OSError):  # not empty (something new lives there) or gone
                Path(folder).rmdir()


def _pack(
    files: Files,
    changes: Mapping[str, Callable[[Mapping[str, Any]], tuple[str, ...]]],
    read_only: tuple[str, ...],
) -> list[Policy]:
    policies = [Policy(name=name, effect="read_only") for name in read_only]
    for name, touched in changes.items():

        def snapshot(args: dict[str, Any], touched: Any = touched) -> dict[str, Any]:
            return files.snapshot(*touched(args))

        def undo(snapshot: dict[str, Any]) -> None:
            files.restore(snapshot)

        undo.__name__ = f"restore_{name}"
        policies.append(
            Policy(
                name=name,
                effect="reversible",
                snapshot=snapshot,
                undo=undo,
                probe=restore_either_way,
                undo_idempotent=True,  # restoring a snapshot twice gives the same files
                review=Review(kind="correct", owner=None, instructions="compare the files"),
                external_ids={"path": _first_path(name)},
            )
        )
    return policies


def restore_either_way(snapshot: Any) -> bool:
    """The probe of a file call that failed without saying whether it changed anything:
    "done", because putting the snapshot back is right either way (it changes nothing if the
    call did nothing), so the files are restored at once instead of waiting for a person."""
    return True


def _first_path(tool: str) -> str:
    return {
        "write_file": "args.file_path",
        "file_delete": "args.file_path",
        "copy_file": "args.destination_path",
        "move_file": "args.destination_path",
    }.get(tool, "args.path")


def langchain_file_management(
    root_dir: str | os.PathLike[str] | None = None,
    *,
    max_snapshot_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES,
) -> list[Policy]:
    """Policies for ``langchain_community.agent_toolkits.FileManagementToolkit``."""
    files = Files(root_dir, max_snapshot_bytes)
    return _pack(
        files,
        {
            "write_file": lambda a: (a["file_path"],),
            "file_delete": lambda a: (a["file_path"],),
            "copy_file": lambda a: (a["destination_path"],),
            "move_file": lambda a: (a["source_path"], a["destination_path"]),
        },
        read_only=("read_file", "list_directory", "file_search"),
    )


def mcp_filesystem(
    root_dir: str | os.PathLike[str] | None = None,
    *,
    max_snapshot_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES,
) -> list[Policy]:
    """Policies for the MCP reference filesystem server's tools."""
    files = Files(root_dir, max_snapshot_bytes)
    policies = _pack(
        files,
        {
            "write_file": lambda a: (a["path"],),
            "edit_file": lambda a: () if a.get("dryRun") else (a["path"],),
            "move_file": lambda a: (a["source"], a["destination"]),
        },
        read_only=(
            "read_file",
            "read_text_file",
            "read_media_file",
            "read_multiple_files",
            "list_directory",
            "list_directory_with_sizes",
            "directory_tree",
            "search_files",
            "get_file_info",
            "list_allowed_directories",
        ),
    )
    policies = [
        p.model_copy(update={"external_ids": {"path": "args.destination"}})
        if p.name == "move_file"
        else p
        for p in policies
    ]

    def folders(args: dict[str, Any]) -> dict[str, Any]:
        path = files.path(args["path"])
        missing = []
        while not path.exists():
            missing.append(str(path))
            path = path.parent
        return {"missing_dirs": missing}

    def remove_folders(snapshot: dict[str, Any]) -> None:
        for folder in snapshot["missing_dirs"]:  # deepest first
            with contextlib.suppress(FileNotFoundError):
                Path(folder).rmdir()

    policies.append(
        Policy(
            name="create_directory",
            effect="reversible",
            snapshot=folders,
            undo=remove_folders,
            probe=restore_either_way,
            undo_idempotent=True,
            external_ids={"path": "args.path"},
        )
    )
    return policies
