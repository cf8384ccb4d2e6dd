"""Turning arguments and results into what may be stored: JSON, hashed, redacted, size-capped.

Redaction happens here, before anything is stored or exported; hashes are taken over the
unredacted canonical JSON so deduplication still tells two different secrets apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "[REDACTED]"

# Keys whose values are secrets whatever they look like.
_SECRET_KEY = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key|authorization|private[_-]?key|credential|cookie)$",
    re.IGNORECASE,
)
# Values that look like credentials: provider key prefixes, bearer tokens, JWTs, PEM keys.
_SECRET_VALUE = re.compile(
    r"(sk-[A-Za-z0-9_\-]{16,}|sk_(live|test)_[A-Za-z0-9]{16,}|AKIA[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}|xox[abposr]-[A-Za-z0-9-]{10,}|Bearer\s+[A-Za-z0-9._\-]{16,}"
    r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----)"
)


class NotJSON(TypeError):
    """A value that has no JSON form."""


def to_jsonable(value: Any) -> Any:
    """Return ``value`` as plain JSON types: pydantic models, dataclasses, tuples and sets too.

    Raises :class:`NotJSON` naming the first offending type.
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise NotJSON(f"{value!r} is not JSON; use None or a string")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return to_jsonable(dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, bytes):
        raise NotJSON("bytes are not JSON; return text or base64")
    raise NotJSON(f"{type(value).__name__} is not JSON-serialisable")


_ENCODE = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def canonical(value: Any) -> str:
    """Canonical JSON text of an already JSON-able value (sorted keys, no spaces)."""
    if value is None:
        return "null"
    if not value and isinstance(value, dict):
        return "{}"
    return _ENCODE(value)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def redact(value: Any, paths: Iterable[str], root: str) -> Any:
    """Copy of ``value`` with the declared ``paths`` under ``root`` and secret-looking values
    redacted."""
    out = _redact_secrets(value)
    for path in paths:
        parts = path.split(".")
        if parts[0] != root:
            continue
        out = _redact_path(out, parts[1:])
    return out


def _redact_secrets(value: Any) -> Any:
    if isinstance(value, str):
        return REDACTED if _SECRET_VALUE.search(value) else value
    if isinstance(value, dict):
        return {
            k: (REDACTED if _SECRET_KEY.search(k) and v not in (None, "") else _redact_secrets(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact_secrets(v) for v in value]
    return value


def _redact_path(value: Any, parts: list[str]) -> Any:
    if not parts:
        return REDACTED
    head, rest = parts[0], parts[1:]
    if isinstance(value, dict) and head in value:
        return {**value, head: _redact_path(value[head], rest)}
    if isinstance(value, list) and head.isdigit() and int(head) < len(value):
        copy = list(value)
        copy[int(head)] = _redact_path(copy[int(head)], rest)
        return copy
    return value
