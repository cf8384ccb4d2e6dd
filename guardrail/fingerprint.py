"""A policy set's fingerprint: a short, stable hash of which tools have policies and what each
says (effect, undo, review, retry, approval, paths...).

Every run records the fingerprint of the policies it started under (``RunRecord.
policy_fingerprint``), so whoever decides about the run later (an abort from the command line,
the console, a recovery worker) can tell whether it loaded the same ones. The hash is the same
in every process and on every machine: a function counts by its module and qualified name
(``myapp.payments:refund``), never by ``id()`` or a ``repr`` holding an address. So two
lambdas defined in the same function look alike, and editing a function's body does not change
the fingerprint; renaming or moving it does.

Example::

    fingerprint(policies)  # e.g. '3f2a9c0d41b7e865'
    guard.policy_fingerprint  # the same over the guard's declared policies (not tool hints)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from guardrail.policy import Policy

LENGTH = 16  # hex digits: 64 bits tell policy sets apart; short enough to read and compare


# Policies are immutable, and a guard starts many runs under the same ones: remember the last
# few sets (holding them, so that their ids cannot be reused by other objects meanwhile).
_recent: dict[tuple[int, ...], tuple[tuple[Policy, ...], str]] = {}
_RECENT = 64


def fingerprint(policies: Iterable[Policy]) -> str:
    """The fingerprint of a set of policies (order does not matter)."""
    given = tuple(policies)
    key = tuple(map(id, given))
    known = _recent.get(key)
    if known is not None and all(a is b for a, b in zip(known[0], given, strict=True)):
        return known[1]
    described = sorted((describe(p) for p in given), key=lambda d: str(d["name"]))
    text = json.dumps(described, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    found = hashlib.sha256(text.encode()).hexdigest()[:LENGTH]
    if len(_recent) >= _RECENT:
        _recent.clear()
    _recent[key] = (given, found)
    return found


def describe(policy: Policy) -> dict[str, Any]:
    """The policy as plain JSON data: its name and every field that differs from the default
    (so a field added to `Policy` later, with a default, leaves old fingerprints as they were)."""
    found: dict[str, Any] = {"name": policy.name}
    for name, field in type(policy).model_fields.items():
        value = getattr(policy, name)
        if name == "name" or value == field.get_default(call_default_factory=True):
            continue
        found[name] = _plain(value)
    return found


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, BaseModel):
        return {
            name: _plain(getattr(value, name))
            for name in type(value).model_fields
            if getattr(value, name)
            != type(value).model_fields[name].get_default(call_default_factory=True)
        }
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_plain(v) for v in value]
        return sorted(items, key=json.dumps) if isinstance(value, set | frozenset) else items
    if isinstance(value, type) or callable(value):
        return {"callable": reference(value)}
    return {"object": f"{type(value).__module__}:{type(value).__qualname__}"}


def reference(fn: Any) -> str:
    """``module:qualified.name`` of a function, class or callable object; stable across
    processes (a bound method by its function, a partial by what it wraps)."""
    fn = getattr(fn, "__guardrail_raw__", fn)
    func = getattr(fn, "__func__", None)  # a bound method
    if func is not None:
        fn = func
    wrapped = getattr(fn, "func", None)  # functools.partial
    if wrapped is not None and callable(wrapped) and not hasattr(fn, "__qualname__"):
        return f"partial({reference(wrapped)})"
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(name, str):
        kind = type(fn)
        module, name = kind.__module__, kind.__qualname__
    return f"{module}:{name}"


EMPTY = fingerprint(())  # a guard that declares no policies
