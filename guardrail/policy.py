"""Policies: what a tool does to the world and how to take it back.

A policy is declared per tool, in code::

    guard.policy("send_email", effect="irreversible", review=Review(kind="correct"))

    @guard.tool(effect="reversible", undo=cancel_order, external_ids={"order_id": "result.id"})
    def create_order(item: str) -> dict: ...
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from guardrail.errors import PolicyError

Effect = Literal["read_only", "reversible", "irreversible"]
ReviewKind = Literal["cancel", "mark", "correct", "isolate", "handoff"]
OnFailure = Literal["compensate", "hold"]


class Review(BaseModel):
    """What a person should do about an action that cannot be undone automatically."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ReviewKind = "handoff"
    owner: str | None = None
    instructions: str | None = None


class Retry(BaseModel):
    """How often to try a call (or an undo) and on which exceptions.

    ``attempts`` counts the first try: ``Retry(attempts=1)`` never retries. Waits grow
    exponentially from ``wait_initial`` to ``wait_max`` seconds.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    attempts: int = Field(default=3, ge=1, le=100)
    on: tuple[type[BaseException], ...] = (Exception,)
    wait_initial: float = Field(default=0.05, ge=0)
    wait_max: float = Field(default=2.0, ge=0)


NO_RETRY = Retry(attempts=1)
SAFE_RETRY = Retry(attempts=3)
UNDO_RETRY = Retry(attempts=3)


class Policy(BaseModel):
    """The declared behaviour of one tool.

    - ``effect``: ``read_only`` (changes nothing), ``reversible`` (has an ``undo``) or
      ``irreversible`` (has a ``review`` a person performs).
    - ``undo``: a callable that takes the action back. It receives, by parameter name, any of
      ``args`` (the recorded arguments), ``result`` (the recorded result), ``external_ids`` and
      ``action``; if it names none of these it is called with the original arguments as keywords.
    - ``retry``: when to retry the call. Default: read-only and ``idempotent`` tools are retried
      3 times; others are never retried unless a ``retry`` is declared.
    - ``external_ids``: name to path (``result.id``, ``args.path``, ``result.items.0.id``).
    - ``idempotency_key``: a path or a callable over the arguments; default is the framework's
      tool-call id, else the tool, the arguments' hash and how often they occurred in this run.
    - ``redact``: paths (``args.card``, ``result.token``) replaced by ``"[REDACTED]"`` before
      anything is stored or exported.
    - ``on_failure``: ``compensate`` (undo at once) or ``hold`` (undo nothing until a person
      decides).
    - ``probe``: for an action left ``in_doubt`` by a crash: returns the result if the call took
      effect, ``False`` if it did not, ``None`` if it still cannot tell.
    - ``undo_idempotent``: recovery may re-run an undo that a crash interrupted.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str
    effect: Effect
    undo: Callable[..., Any] | None = None
    undo_retry: Retry = UNDO_RETRY
    undo_idempotent: bool = False
    review: Review | None = None
    retry: Retry | None = None
    idempotent: bool = False
    external_ids: Mapping[str, str] = Field(default_factory=dict)
    idempotency_key: str | Callable[[Mapping[str, Any]], str] | None = None
    redact: tuple[str, ...] = ()
    on_failure: OnFailure = "compensate"
    probe: Callable[..., Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        where = f"policy for tool {self.name!r}"
        if self.effect == "reversible" and self.undo is None:
            raise PolicyError(
                f"{where}: effect 'reversible' needs an undo; declare undo=... or use "
                "effect='irreversible' with a review",
                tool=self.name,
                field="undo",
            )
        if self.effect != "reversible" and self.undo is not None:
            raise PolicyError(
                f"{where}: an undo is only used with effect 'reversible', not {self.effect!r}",
                tool=self.name,
                field="undo",
            )
        for name, path in self.external_ids.items():
            _check_path(path, self.name, f"external_ids.{name}", roots=("result", "args"))
        for path in self.redact:
            _check_path(path, self.name, "redact", roots=("args", "result"))
        if isinstance(self.idempotency_key, str):
            _check_path(self.idempotency_key, self.name, "idempotency_key", roots=("args",))
        return self

    @property
    def call_retry(self) -> Retry:
        """The retry that applies to the call itself."""
        if self.retry is not None:
            return self.retry
        if self.effect == "read_only" or self.idempotent:
            return SAFE_RETRY
        return NO_RETRY

    @property
    def review_or_default(self) -> Review:
        return self.review if self.review is not None else Review()


_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


def _check_path(path: str, tool: str, field: str, *, roots: tuple[str, ...]) -> None:
    if not isinstance(path, str) or not _PATH.match(path) or path.split(".")[0] not in roots:
        raise PolicyError(
            f"policy for tool {tool!r}: {field} = {path!r} is not a path; "
            "expected a dotted path starting with " + " or ".join(repr(r + ".") for r in roots),
            tool=tool,
            field=field,
        )


_MISSING = object()


def resolve_path(path: str, scope: Mapping[str, Any]) -> Any:
    """Follow ``result.items.0.id`` through dicts, lists and attributes; ``None`` if absent."""
    value: Any = scope
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part, _MISSING)
        elif isinstance(value, list | tuple) and part.isdigit():
            index = int(part)
            value = value[index] if index < len(value) else _MISSING
        else:
            value = getattr(value, part, _MISSING)
        if value is _MISSING:
            return None
    return value


def make_policy(name: str, **fields: Any) -> Policy:
    """Build a policy, turning pydantic's validation errors into a PolicyError naming the tool."""
    from pydantic import ValidationError

    if isinstance(fields.get("retry"), Mapping):
        fields["retry"] = Retry(**fields["retry"])
    if isinstance(fields.get("review"), Mapping):
        fields["review"] = Review(**fields["review"])
    if isinstance(fields.get("redact"), list):
        fields["redact"] = tuple(fields["redact"])
    try:
        return Policy(name=name, **fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "policy"
        raise PolicyError(
            f"policy for tool {name!r}: {field}: {first['msg']}", tool=name, field=field
        ) from None
