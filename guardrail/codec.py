"""Typed values through the store: results and snapshots are stored as JSON and come back as the
type the code declared (a pydantic model, a datetime, an enum, a set), through pydantic.

- :func:`encode` turns a value into JSON types (pydantic's JSON mode: models, dataclasses,
  datetimes, enums, sets, UUIDs, decimals); anything else raises :class:`NotJSON`.
- :func:`returns` is the declared return type of a tool or hook, as a ``TypeAdapter``; a replayed
  result is validated back into it. A value that would not come back equal is caught when it is
  recorded (:func:`round_trips`), not when a replay needs it.
- :func:`parameter` is the declared type of a hook's parameter (``result: Order``), so an undo
  gets the recorded result and snapshot as the types it asks for.

Tools and hooks without annotations (or annotated ``Any``, ``dict``...) get plain JSON back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import enum
import inspect
import pathlib
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter
from pydantic_core import PydanticSerializationError

from guardrail.redact import NotJSON, to_jsonable

_ANY: TypeAdapter[Any] = TypeAdapter(Any)
_PLAIN = frozenset({str, int, float, bool, type(None), dict, list})


def encode(value: Any) -> Any:
    """``value`` as JSON types; raises NotJSON naming what cannot be stored."""
    return to_jsonable(value, _leaf)


_LEAVES = (
    dt.date,
    dt.time,
    dt.timedelta,
    enum.Enum,
    uuid.UUID,
    decimal.Decimal,
    pathlib.PurePath,
)


def _leaf(value: Any) -> Any:
    """A value with a JSON form pydantic knows how to give back (dates, enums, UUIDs...)."""
    if not isinstance(value, _LEAVES):
        raise NotJSON(f"{type(value).__name__} is not JSON-serialisable")
    try:
        return _ANY.dump_python(value, mode="json")
    except (PydanticSerializationError, ValueError, TypeError) as exc:
        raise NotJSON(f"{type(value).__name__} is not JSON-serialisable ({exc})") from None


def returns(fn: Callable[..., Any]) -> TypeAdapter[Any] | None:
    """The declared return type of ``fn`` when it is more than plain JSON, else None."""
    return _declared(fn, "return")


def parameter(fn: Callable[..., Any], name: str) -> TypeAdapter[Any] | None:
    """The declared type of ``fn``'s parameter ``name`` when it is more than plain JSON."""
    return _declared(fn, name)


# by code object, not function: adapters make a new closure per call, and a cache keyed by
# function would keep each one (and what it holds) alive
_DECLARED: dict[tuple[Any, str], TypeAdapter[Any] | None] = {}


def _declared(fn: Callable[..., Any], name: str) -> TypeAdapter[Any] | None:
    target = inspect.unwrap(getattr(fn, "__guardrail_raw__", fn))
    target = getattr(target, "__func__", target)  # a bound method: its function
    annotations = getattr(target, "__annotations__", None)
    if not annotations or name not in annotations:
        return None
    key = (getattr(target, "__code__", target), name)
    try:
        return _DECLARED[key]
    except (KeyError, TypeError):
        pass
    adapter = _adapter(_hints(target).get(name))
    if len(_DECLARED) > 4096:
        _DECLARED.clear()
    with contextlib.suppress(TypeError):  # an unhashable callable: not cached
        _DECLARED[key] = adapter
    return adapter


def decode(adapter: TypeAdapter[Any] | None, value: Any) -> Any:
    """A stored JSON value as the declared type (unchanged without one)."""
    if adapter is None or value is None:
        return value
    return adapter.validate_python(value)


def round_trips(adapter: TypeAdapter[Any] | None, value: Any, stored: Any) -> bool:
    """Whether ``stored`` (the JSON of ``value``) comes back equal to ``value``."""
    if adapter is None:
        return True
    try:
        return bool(adapter.validate_python(stored) == value)
    except Exception:
        return False


def _hints(target: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: treat as undeclared
        return {}


def _adapter(hint: Any) -> TypeAdapter[Any] | None:
    if hint is None or hint is Any or hint is object or hint in _PLAIN:
        return None
    origin = typing.get_origin(hint)
    if origin in (dict, list) and not _rich(hint):
        return None
    if origin in (typing.Union, types.UnionType) and not _rich(hint):
        return None
    try:
        return TypeAdapter(hint)
    except Exception:  # not a type pydantic understands: undeclared
        return None


def _rich(hint: Any) -> bool:
    """Whether a type has anything in it that JSON does not give back by itself."""
    if hint in _PLAIN or hint is Any:
        return False
    origin = typing.get_origin(hint)
    if origin is None:
        return True  # a class: a model, a datetime, an enum...
    if origin is typing.Literal:
        return False
    if origin in (dict, list, typing.Union, types.UnionType):
        return any(_rich(arg) for arg in typing.get_args(hint))
    return True  # sets, tuples, frozensets, Annotated...
