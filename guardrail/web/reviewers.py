"""Reviewers' own tokens for the console: a small JSON file of names and token hashes.

``guardrail reviewers add NAME`` makes a random token (``grv_`` and 32 random bytes), prints it
once and stores only its SHA-256. A fast hash is enough because the token is not a password a
person chose: 256 random bits cannot be found from the hash by trying, however fast each try is
(slow hashes such as scrypt exist to stretch guessable passwords). A fast hash also keeps every
bearer request and login cheap, so the public login form cannot be used to burn the server's
CPU.

The file (default ``~/.config/guardrail/reviewers.json``, or ``GUARDRAIL_REVIEWERS``)::

    {"version": 1, "reviewers": [{"name": "ann", "digest": "sha256:...", "created_at": ...}]}

is written atomically (a 0600 temporary file in the same folder, fsynced, then renamed over the
old one) under an advisory lock, so two ``reviewers`` commands cannot lose each other's change.
The console re-reads it whenever it changes (it checks the file's identity on each request), so
``reviewers remove`` takes effect at once in a running console: the reviewer's token and every
session opened with it stop working. A file the console cannot read, cannot parse, or that
others may write lets nobody in by it (fail closed).

The console keeps this outside the run store on purpose: reviewer credentials are the
console's concern, and a file needs no schema migration and no store write access.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("guardrail.web")

TOKEN_PREFIX = "grv_"
SHARED_IDENTITY = "shared-token"  # what decisions made with the shared console token record
RESERVED_NAMES = frozenset({SHARED_IDENTITY})
MAX_NAME = 100
VERSION = 1
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ReviewerFileError(ValueError):
    """The reviewers file cannot be used: unreadable, malformed, or writable by others."""


class ReviewerExists(ValueError):
    """``add`` for a name that already has a token (pass ``replace=True`` to issue a new one)."""


def default_path() -> Path:
    """``$GUARDRAIL_REVIEWERS``, else ``$XDG_CONFIG_HOME/guardrail/reviewers.json`` (default
    ``~/.config/guardrail/reviewers.json``): outside any project folder, so it is not committed."""
    explicit = os.environ.get("GUARDRAIL_REVIEWERS")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "guardrail" / "reviewers.json"


def check_name(name: str) -> str:
    """A reviewer's name as decisions record it: 1 to 100 printable characters, no surrounding
    space, not a reserved identity. Returns the name."""
    if not name or len(name) > MAX_NAME:
        raise ValueError(f"a reviewer's name has 1 to {MAX_NAME} characters")
    if name != name.strip() or _CONTROL.search(name):
        raise ValueError(f"{name!r}: no control characters or surrounding spaces in a name")
    if name in RESERVED_NAMES:
        raise ValueError(f"{name!r} is reserved (decisions made with the shared token)")
    return name


def digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Reviewer:
    name: str
    digest: str
    created_at: float


def _parse(text: str, path: Path) -> dict[str, Reviewer]:
    try:
        data: Any = json.loads(text)
    except ValueError as exc:
        raise ReviewerFileError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ReviewerFileError(f"{path} is not a version {VERSION} reviewers file")
    entries = data.get("reviewers")
    if not isinstance(entries, list):
        raise ReviewerFileError(f"{path}: 'reviewers' must be a list")
    found: dict[str, Reviewer] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise ReviewerFileError(f"{path}: every reviewer must be an object")
        name, hashed, created = entry.get("name"), entry.get("digest"), entry.get("created_at")
        try:
            check_name(name if isinstance(name, str) else "")
        except ValueError as exc:
            raise ReviewerFileError(f"{path}: {exc}") from None
        assert isinstance(name, str)
        if not isinstance(hashed, str) or not _DIGEST.fullmatch(hashed):
            raise ReviewerFileError(f"{path}: reviewer {name!r} has no sha256 digest")
        if not isinstance(created, int | float) or isinstance(created, bool):
            raise ReviewerFileError(f"{path}: reviewer {name!r} has no created_at")
        if name in found:
            raise ReviewerFileError(f"{path}: reviewer {name!r} is listed twice")
        found[name] = Reviewer(name, hashed, float(created))
    return found


def _signature(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


class ReviewerFile:
    """The reviewers file: ``find``/``current`` for the console, ``add``/``remove``/``reviewers``
    for the command line."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: tuple[int, ...] | None = None
        self._cached: dict[str, Reviewer] = {}

    # -- reading ----------------------------------------------------------------------------

    def _read(self) -> tuple[tuple[int, ...], dict[str, Reviewer]]:
        """Read and check the file; FileNotFoundError when there is none."""
        with open(self.path, encoding="utf-8") as f:
            st = os.fstat(f.fileno())
            if os.name == "posix" and st.st_mode & 0o022:
                raise ReviewerFileError(
                    f"{self.path} may be written by other users; chmod 600 it (it decides who "
                    "may decide)"
                )
            return _signature(st), _parse(f.read(), self.path)

    def load(self) -> list[Reviewer]:
        """The reviewers now in the file (none when there is no file); raises
        ReviewerFileError for a file that cannot be used."""
        try:
            return list(self._read()[1].values())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ReviewerFileError(f"cannot read {self.path}: {exc}") from None

    def _current(self) -> dict[str, Reviewer]:
        """The reviewers, re-read when the file changed; nobody when it cannot be used."""
        with self._lock:
            try:
                signature = _signature(os.stat(self.path))
            except OSError:
                signature = None
            if signature is not None and signature == self._seen:
                return self._cached
            try:
                self._seen, self._cached = self._read()
            except (OSError, ReviewerFileError) as exc:
                if signature != self._seen:
                    log.error("guardrail console: no reviewer can log in: %s", exc)
                self._seen, self._cached = signature, {}
            return self._cached

    def find(self, token: str) -> Reviewer | None:
        """The reviewer whose token this is, else None (every digest is compared)."""
        wanted = digest(token)
        match = None
        for reviewer in self._current().values():
            if hmac.compare_digest(wanted, reviewer.digest):
                match = reviewer
        return match

    def current(self, name: str, hashed: str) -> bool:
        """Is ``name`` still a reviewer with this token? False after a remove or a new token."""
        reviewer = self._current().get(name)
        return reviewer is not None and hmac.compare_digest(reviewer.digest, hashed)

    # -- writing ----------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Reviewer]]:
        """The reviewers, under an exclusive lock, to change and have written back."""
        folder = self.path.parent
        if not folder.exists():
            folder.mkdir(mode=0o700, parents=True)
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - not POSIX: no advisory lock
                pass
            try:
                reviewers = self._read()[1]
            except FileNotFoundError:
                reviewers = {}
            before = dict(reviewers)
            yield reviewers
            if reviewers != before:
                self._write(reviewers)
        finally:
            os.close(fd)

    def _write(self, reviewers: dict[str, Reviewer]) -> None:
        data = {
            "version": VERSION,
            "reviewers": [
                {"name": r.name, "digest": r.digest, "created_at": r.created_at}
                for r in reviewers.values()
            ],
        }
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".reviewers-", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, self.path)
        except BaseException:
            if os.path.exists(temp):
                os.unlink(temp)
            raise
        try:
            folder = os.open(self.path.parent, os.O_RDONLY)
        except OSError:  # pragma: no cover - a folder that cannot be opened
            return
        try:
            os.fsync(folder)
        except OSError:  # pragma: no cover - some file systems refuse to fsync a folder
            pass
        finally:
            os.close(folder)

    def add(self, name: str, *, replace: bool = False) -> str:
        """Give ``name`` a fresh token; return it (only its hash is kept). With ``replace``, an
        existing reviewer's old token, and the sessions opened with it, stop working."""
        check_name(name)
        token = new_token()
        with self._locked() as reviewers:
            if name in reviewers and not replace:
                raise ReviewerExists(f"{name!r} is already a reviewer")
            reviewers[name] = Reviewer(name, digest(token), time.time())
        return token

    def remove(self, name: str) -> bool:
        """Remove ``name``; False when there was no such reviewer (the file is then unchanged)."""
        with self._locked() as reviewers:
            return reviewers.pop(name, None) is not None
