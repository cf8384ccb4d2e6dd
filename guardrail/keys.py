"""The hashing key: arguments hashes and the journal chain are HMAC-SHA256 under a key that is
not in the store.

So a reader of the database cannot test guesses against a hash (a redacted 3-digit CVV would
otherwise come back in a thousand tries), and a writer without the key cannot rewrite the chain
unnoticed. Each run records the id of the key it was written with, so keys can be rotated: the
first key is used for new runs, the others still verify (and continue) older ones.

Where the key comes from, first found wins:

1. ``Guard(hash_key=...)`` (a string, bytes, or a list of them: current first);
2. the ``GUARDRAIL_HASH_KEY`` environment variable (comma-separated for several);
3. a key file: ``GUARDRAIL_HASH_KEY_FILE``, else beside a SQLite store (``guardrail.db.key``),
   else ``~/.config/guardrail/hash.key``; created on first use with a random key, mode 0600.
   One key per line, current first.

Workers on several hosts sharing a PostgreSQL store must share the key (the variable or the file).

Snapshots (what an undo needs to restore, e.g. a file's previous bytes, possibly a ``.env``) are
sealed with AES-GCM under a key derived from the same key: the store holds only ciphertext, and
the undo gets the snapshot back intact (redacting it instead would restore ``[REDACTED]``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from guardrail.errors import StoreError

KeySource = str | bytes | Sequence[str | bytes]


def key_id(key: bytes) -> str:
    """A short public name of a key (an HMAC of a constant: it does not reveal the key)."""
    return hmac.new(key, b"guardrail key id", hashlib.sha256).hexdigest()[:12]


class Keys:
    """The hashing keys known to this process; the first is used for new runs."""

    def __init__(self, keys: Sequence[bytes], *, source: str = "") -> None:
        if not keys or any(len(k) < 16 for k in keys):
            raise StoreError(
                f"hash keys from {source or 'the configuration'} must be at least 16 bytes each",
                field="hash_key",
            )
        self._keys = {key_id(k): k for k in keys}
        self.current = key_id(keys[0])
        self.source = source

    def has(self, kid: str | None) -> bool:
        return kid is None or kid in self._keys

    def key(self, kid: str) -> bytes:
        key = self._keys.get(kid)
        if key is None:
            raise StoreError(
                f"the hash key {kid} is not available (keys from {self.source}); add it to "
                "GUARDRAIL_HASH_KEY or the key file (after the current key) to read or continue "
                "runs written with it",
                field="hash_key",
            )
        return key

    def mac(self, text: str, kid: str | None) -> str:
        """HMAC-SHA256 of ``text`` under key ``kid`` (``None``: a run written before keys, plain
        SHA-256)."""
        if kid is None:
            return hashlib.sha256(text.encode()).hexdigest()
        return hmac.digest(self.key(kid), text.encode(), "sha256").hex()


def _parse(values: Sequence[str | bytes]) -> list[bytes]:
    out = []
    for v in values:
        if isinstance(v, bytes):
            out.append(v)
            continue
        v = v.strip()
        if not v:
            continue
        try:
            out.append(bytes.fromhex(v) if len(v) >= 32 and len(v) % 2 == 0 else v.encode())
        except ValueError:
            out.append(v.encode())
    return out


def default_file(store_path: str | None) -> Path:
    named = os.environ.get("GUARDRAIL_HASH_KEY_FILE")
    if named:
        return Path(named)
    if store_path:
        return Path(store_path + ".key")
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return Path(base) / "guardrail" / "hash.key"


def _create(path: Path) -> None:
    """Write a fresh key file, complete or not at all: several processes may start at once,
    and none may read a half-written key (the first link wins, the others read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process won the race: use theirs
            os.link(temp, path)
    finally:
        os.unlink(temp)


def load(explicit: KeySource | None = None, *, store_path: str | None = None) -> Keys:
    """The keys for a guard: ``explicit``, else the environment, else the key file (created with
    a fresh random key on first use). ``store_path`` is a SQLite store's file."""
    if explicit is not None:
        values = [explicit] if isinstance(explicit, str | bytes) else list(explicit)
        return Keys(_parse(values), source="Guard(hash_key=...)")
    env = os.environ.get("GUARDRAIL_HASH_KEY")
    if env:
        return Keys(_parse(env.split(",")), source="GUARDRAIL_HASH_KEY")
    path = default_file(store_path)
    try:
        if not path.exists():
            _create(path)
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise StoreError(
            f"cannot read or create the hash key file {path}: {exc}; set GUARDRAIL_HASH_KEY or "
            "GUARDRAIL_HASH_KEY_FILE",
            field="hash_key",
        ) from exc
    return Keys(_parse(lines), source=str(path))


def _sealing_key(key: bytes) -> bytes:
    return hmac.digest(key, b"guardrail snapshot key", "sha256")


def seal(keys: Keys, text: str, kid: str | None) -> dict[str, str]:
    """Encrypt ``text`` (a snapshot's JSON) under the run's key: the store keeps only this."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    kid = kid if kid is not None else keys.current
    nonce = secrets.token_bytes(12)
    box = AESGCM(_sealing_key(keys.key(kid))).encrypt(nonce, text.encode(), kid.encode())
    return {"sealed": base64.b64encode(nonce + box).decode(), "key_id": kid}


def unseal(keys: Keys, value: Any) -> Any:
    """The JSON text a `seal` made, parsed; any other value is returned as it is."""
    if not (isinstance(value, dict) and set(value) == {"sealed", "key_id"}):
        return value
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    raw = base64.b64decode(value["sealed"])
    kid = str(value["key_id"])
    try:
        text = AESGCM(_sealing_key(keys.key(kid))).decrypt(raw[:12], raw[12:], kid.encode())
    except Exception as exc:
        raise StoreError(
            f"a snapshot sealed with key {kid} cannot be opened (edited, or another key): {exc}",
            field="snapshot",
        ) from exc
    return json.loads(text)
