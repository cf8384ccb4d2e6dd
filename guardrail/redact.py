"""Turning arguments and results into what may be stored: JSON, hashed, redacted, size-capped.

Redaction happens here, once, before anything is stored or exported: declared paths, keys named
like secrets and values that look like credentials or card numbers, in arguments, results,
snapshots, error messages, keys and external ids. Hashes are keyed (see `guardrail.keys`), so the
hash of the unredacted arguments still tells two secrets apart without revealing either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

REDACTED = "[REDACTED]"

# Keys whose values are secrets whatever they look like (dict keys, header names, form fields).
_SECRET_KEY = re.compile(
    r"(pass(word|wd|phrase)?|pwd|secret|token|api[_-]?key|apikey|auth|authorization"
    r"|(private|secret|access|signing|encryption|master|client)[_-]?key|credentials?|cookie"
    r"|session[_-]?id|(^|[_.-])(pin|cvv2?|cvc2?|csc|ssn)|dsn)$",
    re.IGNORECASE,
)
# Values that are credentials wherever they appear (a whole value or inside a message). The
# provider patterns follow detect-secrets' and gitleaks' rules; running detect-secrets itself
# costs about 440 us per value here and its entropy plugins flag ordinary words, so the patterns
# are compiled into one expression instead, run only on text that holds one of their markers.
_SECRET_VALUE = re.compile(
    "|".join(
        (
            r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b",  # AWS access key id
            r"(?i:aws_?secret_?access_?key)\s*[=:]\s*\S+",  # AWS secret in config text
            r"\bgh[pousr]_[A-Za-z0-9]{30,}",  # GitHub tokens
            r"\bgithub_pat_[A-Za-z0-9_]{22,}",
            r"\bglpat-[A-Za-z0-9_\-]{20,}",  # GitLab
            r"\bAIza[0-9A-Za-z_\-]{30,}",  # Google API key
            r"\b(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{16,}",  # Stripe
            r"\bwhsec_[0-9A-Za-z]{16,}",
            r"\bsk-[A-Za-z0-9_\-]{16,}",  # OpenAI, Anthropic and similar
            r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
            r"hooks\.slack\.com/services/[A-Za-z0-9/]+",
            r"\bSG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}",  # SendGrid
            r"\bnpm_[A-Za-z0-9]{36}",
            r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",  # JWT
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----(?:[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----)?",
            r"(?P<scheme>(?i:\b(?:basic|bearer|token|digest)\s+))[A-Za-z0-9._~+/\-]{8,}=*",
            r"(?P<url>\b[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]+:)[^/\s@]+@",  # URL/DSN password
            # key=value / key: value in text, for keys named like secrets
            r"(?P<key>(?i:\b(?:pass(?:word|wd|phrase)?|pwd|secret(?:_key)?|api[_-]?key"
            r"|access[_-]?token|refresh[_-]?token|client[_-]?secret|private[_-]?key|token"
            r"|cvv2?|cvc2?)\s*[=:]\s*))[\"']?[^\s\"',;&]{3,}",
        )
    )
)
# Every pattern above needs one of these (lowercased) in the text: a cheap test first, since
# one alternation of all the patterns costs tens of microseconds on a sentence.
_TRIGGERS = (
    *("akia", "asia", "abia", "acca", "aws", "ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
    *("github_pat_", "glpat-", "aiza", "_live_", "_test_", "whsec_", "sk-", "xox"),
    *("hooks.slack", "sg.", "npm_", "eyj", "-----begin", "basic", "bearer", "token"),
    *("digest", "://", "pass", "pwd", "secret", "api", "access", "refresh", "private"),
    *("cvv", "cvc"),
)
_DIGIT_RUN = re.compile(r"\d[\d -]{11,}\d")
# A run of 13-19 digits (spaces or dashes allowed): a card number if its issuer prefix is one
# and it passes the Luhn check.
_DIGITS = re.compile(r"(?<![\w.])\d(?:[ -]?\d){12,18}(?![\w.])")
_CARD_PREFIX = re.compile(r"^(?:4|5[1-5]|2[2-7]|3[47]|3[068]|35|6(?:011|5|4[4-9]|2))")


def _luhn(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = ord(c) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def is_card(text: str) -> bool:
    digits = text.replace(" ", "").replace("-", "")
    return (
        13 <= len(digits) <= 19
        and digits.isdigit()
        and _CARD_PREFIX.match(digits) is not None
        and _luhn(digits)
    )


def _card(match: re.Match[str]) -> str:
    return REDACTED if is_card(match.group()) else match.group()


def _secret(match: re.Match[str]) -> str:
    kept = match.group("scheme") or match.group("key")
    if kept:
        return kept + REDACTED  # "Bearer [REDACTED]", "password=[REDACTED]"
    url = match.group("url")
    return f"{url}{REDACTED}@" if url else REDACTED  # "postgresql://u:[REDACTED]@host/db"


def _triggered(text: str) -> bool:
    low = text.lower()
    for trigger in _TRIGGERS:  # noqa: SIM110 (a plain loop: any() over a generator is slower)
        if trigger in low:
            return True
    return False


def redact_text(text: str) -> str:
    """``text`` with every credential and card number in it replaced by ``[REDACTED]``."""
    out = _SECRET_VALUE.sub(_secret, text) if _triggered(text) else text
    if len(out) >= 13 and _DIGIT_RUN.search(out) is not None:
        out = _DIGITS.sub(_card, out)
    return out


def looks_secret(text: str) -> bool:
    return redact_text(text) != text


def describe(error: BaseException, limit: int = 2000) -> str:
    """``Type: message`` of an exception, redacted: what guardrail stores and shows of it."""
    return redact_text(f"{type(error).__name__}: {error}")[:limit]


class NotJSON(TypeError):
    """A value that has no JSON form."""


def to_jsonable(value: Any, leaf: Callable[[Any], Any] | None = None) -> Any:
    """Return ``value`` as plain JSON types: pydantic models, dataclasses, tuples and sets too.

    ``leaf`` turns other objects into JSON (see :mod:`guardrail.codec`); without it they are
    refused. Raises :class:`NotJSON` naming the first offending type.
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise NotJSON(f"{value!r} is not JSON; use None or a string")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, leaf) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v, leaf) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return to_jsonable(dump(mode="json"), leaf)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value), leaf)
    if isinstance(value, bytes):
        raise NotJSON("bytes are not JSON; return text or base64")
    if leaf is not None:
        return to_jsonable(leaf(value))
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


_KEYS: dict[str, bool] = {}  # key name -> named like a secret (tools use few names, over and over)


def secret_key(name: str) -> bool:
    found = _KEYS.get(name)
    if found is None:
        found = _SECRET_KEY.search(name) is not None
        if len(_KEYS) < 4096:
            _KEYS[name] = found
    return found


def _redact_secrets(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            k: (REDACTED if secret_key(k) and v not in (None, "") else _redact_secrets(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        if len(value) == 2 and isinstance(value[0], str) and secret_key(value[0]):
            return [value[0], REDACTED]  # a header or form pair: ["Authorization", "..."]
        return [_redact_secrets(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10**12:
        return REDACTED if is_card(str(value)) else value
    return value


def redacted_path(path: str, paths: Iterable[str]) -> bool:
    """True when ``path`` (``args.card.number``) is, or lies under, one of the redacted paths."""
    return any(path == p or path.startswith(p + ".") for p in paths)


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
