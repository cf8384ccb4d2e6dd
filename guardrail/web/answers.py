"""An approval request answered in the console with other arguments, or with a reply.

The run's page shows each top-level argument of the request (as stored, so redacted) as a field
prefilled with its JSON value; a reviewer changes some and approves, and only the changed ones
are approved as other values (``guard.approve(..., args=)``): each value is read as JSON, else
as text, as ``guardrail approve --set`` reads it. Arguments the log keeps redacted are shown
read-only: an edit of them cannot be recorded. A reply is text the agent gets instead of the
call's result (``guard.reply``).

An edit the core refuses (an argument the call does not have, a redacted one, a value that looks
secret) is checked argument by argument first, so the page can say which field is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from guardrail import decisions
from guardrail.errors import PolicyError, RunNotFound, RunStateError
from guardrail.guard import Guard
from guardrail.redact import REDACTED
from guardrail.store import Action, ReviewItem

ARG = "arg."  # the form's field for argument NAME is "arg.NAME"
MAX_ARGS = 60  # a call with more top-level arguments is edited from the command line
MAX_EDIT_CHARS = 20_000  # a longer value is shown read-only
MAX_REPLY = 10_000


@dataclass(frozen=True, slots=True)
class ArgField:
    """One top-level argument on the edit form: its stored JSON value as text, and why it
    cannot be edited here, if it cannot."""

    name: str
    text: str
    locked: str = ""  # empty: editable

    @property
    def editable(self) -> bool:
        return not self.locked


def as_text(value: Any) -> str:
    """The JSON a field shows for ``value`` (one line)."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def redacted(value: Any) -> bool:
    """The stored value is, or holds, a redacted part."""
    if isinstance(value, str):
        return REDACTED in value
    if isinstance(value, Mapping):
        return any(redacted(v) for v in value.values())
    if isinstance(value, list):
        return any(redacted(v) for v in value)
    return False


def arg_fields(args: Mapping[str, Any]) -> list[ArgField]:
    """The edit form's fields for a call's stored arguments; empty when the call has none or
    too many to edit here."""
    if len(args) > MAX_ARGS:
        return []
    fields = []
    for name, value in args.items():
        text = as_text(value)
        if redacted(value):
            locked = "redacted in the log: cannot be edited"
        elif len(text) > MAX_EDIT_CHARS:
            locked = "too long to edit here (guardrail approve --set NAME=VALUE)"
        else:
            locked = ""
        fields.append(ArgField(name, text, locked))
    return fields


def read_value(text: str) -> Any:
    """A field's value: JSON, else the text itself (``900`` is a number, ``acme`` a string)."""
    try:
        return json.loads(text)
    except ValueError:
        return text.strip()


def same(a: Any, b: Any) -> bool:
    """Equal as JSON values: ``900`` and ``900.0`` are, ``1`` and ``true`` are not."""
    return as_text(_numbers(a)) == as_text(_numbers(b))


def _numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def changed(stored: Mapping[str, Any], typed: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The arguments whose typed value differs from the stored one, as JSON values."""
    edit: dict[str, Any] = {}
    for name, text in typed:
        value = read_value(text)
        if name not in stored or not same(value, stored[name]):
            edit[name] = value
    return edit


def request_action(guard: Guard, item_id: str) -> tuple[ReviewItem, Action]:
    """The approval request and the call it asks about."""
    item = guard.review_item(item_id)
    if item is None:
        raise RunNotFound(f"no review item {item_id!r} in this store")
    action = next((a for a in guard.actions(item.run_id) if a.seq == item.seq), None)
    if item.reason != "approval" or action is None:
        raise RunStateError(
            f"review item {item_id} ({item.reason}) is not an approval request of a recorded "
            "call: it has no arguments to edit",
            run_id=item.run_id,
        )
    return item, action


def refused_fields(
    guard: Guard, item: ReviewItem, action: Action, edit: Mapping[str, Any]
) -> dict[str, str]:
    """What the core says of each edited argument it would refuse, by form field (``args`` for
    an argument the form has no field for); empty when it would take every one."""
    core = guard.core
    refused: dict[str, str] = {}
    for name, value in edit.items():
        try:
            decisions.edited_args(core, item, {name: value})
        except PolicyError as exc:
            field = f"{ARG}{name}" if name in action.args else "args"
            refused[field] = f"{refused.get(field, '')} {exc}".strip()
    return refused


def answered(answer: Any) -> str:
    """An approval's answer in a line: the edited arguments, or the reply."""
    if not isinstance(answer, Mapping):
        return ""
    if isinstance(answer.get("args"), Mapping):
        return "with " + ", ".join(f"{k}={as_text(v)}" for k, v in answer["args"].items())
    if "reply" in answer:
        reply = answer["reply"]
        return "reply: " + (reply if isinstance(reply, str) else as_text(reply))
    return ""
