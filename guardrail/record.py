"""What records a call's success: its result as JSON (redacted, capped, checked to come back as
the tool's declared type) and the external ids it produced, with their searchable rows."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter

from guardrail import codec
from guardrail.clock import NOW
from guardrail.policy import Policy, resolve_path
from guardrail.redact import REDACTED, NotJSON, canonical, looks_secret, redact, redacted_path


class ResultWarning(UserWarning):
    """A tool returned something guardrail could not store faithfully."""


def finish_values(
    policy: Policy,
    run_id: str,
    args: dict[str, Any],
    value: Any,
    max_result_bytes: int | None,
    attempts: int = 1,
    captured: Mapping[str, Any] | None = None,
    returns: TypeAdapter[Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What records a success: the action's values (result as JSON, redacted, capped) and the
    external ids it produced (JSON values, their types kept), from the policy's paths and the
    ``captured`` ones."""
    ids: dict[str, Any] = {}
    if policy.external_ids:
        scope = {"result": value, "args": args}
        for name, path in policy.external_ids.items():
            found = resolve_path(path, scope)
            if found is not None:
                try:
                    found = codec.encode(found)
                except NotJSON:
                    found = str(found)
                secret = redacted_path(path, policy.redact)
                ids[name] = REDACTED if secret or _looks_secret(found) else found
    for name, found in (captured or {}).items():
        if found is not None:
            ids[name] = REDACTED if _looks_secret(found) else found
    note: str | None = None
    try:
        stored = codec.encode(value)
        if not codec.round_trips(returns, value, stored):
            raise NotJSON(f"its JSON does not come back as the {type(value).__name__} it was")
        result = redact(stored, policy.redact, "result")
    except NotJSON as exc:
        note = "not_json"
        result = redact(
            {"type": type(value).__qualname__, "repr": repr(value)[:1000]}, policy.redact, "result"
        )
        warnings.warn(
            f"run {run_id}: {policy.name} returned a {type(value).__qualname__}, which is not "
            f"JSON ({exc}); its repr was recorded instead",
            ResultWarning,
            stacklevel=2,
        )
    if note is None and max_result_bytes is not None and isinstance(result, dict | list | str):
        size = len(canonical(result))
        if size > max_result_bytes:
            note = "truncated"
            result = {"truncated": True, "bytes": size}
    values = {
        "attempts": attempts,
        "result": result,
        "result_note": note,
        "external_ids": ids,
        "finished_at": NOW,
    }
    return values, ids


def _looks_secret(value: Any) -> bool:
    if isinstance(value, str):
        return looks_secret(value)
    if isinstance(value, int | float | bool) or value is None:
        return False
    return looks_secret(canonical(value))


def id_rows(ids: Mapping[str, Any]) -> dict[str, str]:
    """External ids as searchable text rows: a scalar as its text, each item of a list of
    scalars under ``name.0``, ``name.1``...; anything else as its canonical JSON."""
    rows: dict[str, str] = {}
    for name, value in ids.items():
        if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
            rows.update({f"{name}.{i}": _text(v) for i, v in enumerate(value)})
        else:
            rows[name] = _text(value)
    return rows


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return canonical(value)
