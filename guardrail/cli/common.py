"""What the review commands share: their options, the valid values of the enumerated ones, the
confirmation prompt, and the output helpers (``--json`` documents, times, colours).

Imports only the standard library and typer at module level: every command module is
loaded to build ``guardrail``'s command table, so what is imported here is paid by every command,
including the read paths (``runs``, ``show``, ``find``, ``export``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

import typer

from guardrail.cli.loading import CONFLICT, NOT_FOUND, USAGE, Loads, fail, loaded, refusal

if TYPE_CHECKING:
    from guardrail.guard import Guard

# The values of the enumerated options, as Literal types: typer refuses any other value (exit 2,
# listing the valid ones). Spelled out here rather than imported from the core so that building
# the command table imports nothing heavy; tests/test_cli_options.py pins them to
# guardrail.transitions.RunStatus and guardrail.decisions.RESOLUTIONS.
RunStatusName = Literal[
    "running",
    "awaiting_approval",
    "compensating",
    "pending_review",
    "aborting",
    "aborted",
    "completed",
]
Resolution = Literal[
    "done_manually",
    "retried",
    "skipped",
    "approved",
    "rejected",
    "happened",
    "not_happened",
]
ExportFormat = Literal["json", "jsonl"]
OnFailure = Literal["hold", "compensate"]
RUN_STATUSES: tuple[str, ...] = get_args(RunStatusName)
RESOLUTIONS: tuple[str, ...] = get_args(Resolution)
DOUBT_WORDS = ("happened", "not_happened")

Store = Annotated[
    str,
    typer.Option(
        "--store", envvar="GUARDRAIL_STORE", help="Store URL (default sqlite:///guardrail.db)."
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
By = Annotated[
    str | None,
    typer.Option(help="Who decides (default: GUARDRAIL_REVIEWER, else the login name)."),
]
Note = Annotated[str | None, typer.Option(help="Why; stored with the decision.")]
Yes = Annotated[
    bool,
    typer.Option(
        "--yes", "-y", help="Do not ask for confirmation (needed without a terminal to ask on)."
    ),
]


@contextmanager
def opened(store: str | None, loads: Loads | None = None) -> Iterator[Guard]:
    """A non-strict guard on the store, or the app's guard, with the policies ``loads`` names;
    errors become exit codes with a one-line message."""
    from guardrail.decisions import UndosMissing
    from guardrail.errors import Conflict, GuardrailError, RunNotFound, RunStateError

    with loaded(store, loads or Loads()) as guard:
        try:
            yield guard
        except RunNotFound as exc:
            fail(str(exc), NOT_FOUND)
        except Conflict as exc:
            fail(str(exc), CONFLICT)
        except RunStateError as exc:
            fail(str(exc), CONFLICT)
        except UndosMissing as exc:  # the run changed between the check and the abort
            fail(refusal(exc.run_id or "?", exc.steps, "abort"), USAGE)
        except GuardrailError as exc:
            fail(str(exc), USAGE)


# -- asking ---------------------------------------------------------------------------------------


def interactive() -> bool:
    """Whether there is a person at a terminal to answer a question."""
    return sys.stdin.isatty()


def confirm(question: str, flag: str = "--yes", *, err: bool = False) -> None:
    """Ask ``question`` (on stderr with ``err``, which keeps stdout for a JSON document);
    anything but yes exits 2 with nothing changed. Without a terminal (a script, a pipe, a CI
    job) it does not ask: it exits 2 and says to pass ``flag``."""
    if not interactive():
        fail(
            f"{question.rstrip('?')} needs a confirmation, and there is no terminal to ask on "
            f"(stdin is not a TTY); pass {flag} to decide without asking",
            USAGE,
        )
    try:
        agreed = typer.confirm(question, default=False, err=err)
    except typer.Abort:  # end of input or Ctrl-C at the prompt
        typer.echo("", err=True)
        agreed = False
    if not agreed:
        fail("cancelled; nothing changed", USAGE)


def reviewer(by: str | None) -> str:
    if by:
        return by
    try:
        return os.environ.get("GUARDRAIL_REVIEWER") or getpass.getuser()
    except Exception:
        return "unknown"


# -- times ----------------------------------------------------------------------------------------

# The fields of the store's records that hold a time (seconds since the epoch); --json prints
# them as ISO 8601 UTC. Only the records' own fields: a tool's arguments stay as they were given.
TIMESTAMPS = frozenset(
    {"at", "created_at", "updated_at", "heartbeat_at", "started_at", "finished_at", "resolved_at"}
)


def iso(stamp: float) -> str:
    """``2026-12-01T15:56:31.123456Z``: always UTC, always microseconds."""
    return dt.datetime.fromtimestamp(stamp, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def when(stamp: float | None) -> str:
    """A time for people, in local time to the second."""
    if stamp is None:
        return ""
    return dt.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def since(text: str) -> float:
    """``30m``, ``2h``, ``1d`` ago, or an ISO date/time."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if found:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[found.group(2)]
        return time.time() - float(found.group(1)) * unit
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: expected a duration (30m, 2h, 1d) or an ISO date", param_hint="--since"
        ) from None


# -- JSON -----------------------------------------------------------------------------------------


def record(obj: Any) -> dict[str, Any]:
    """A stored record (or a result object) as a JSON object: its fields, times as ISO 8601."""
    if hasattr(obj, "model_dump"):
        fields: dict[str, Any] = obj.model_dump()
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    else:
        fields = {name: getattr(obj, name) for name in obj.__slots__}
    return {
        key: iso(value)
        if key in TIMESTAMPS and isinstance(value, int | float) and not isinstance(value, bool)
        else value
        for key, value in fields.items()
    }


def history_json(events: Sequence[Any]) -> list[dict[str, Any]]:
    """A run's decisions (`guardrail.history.DecisionEvent`) as ``show --json``, ``export`` and
    ``history --json`` print them: oldest first, times as ISO 8601."""
    return [
        {
            "answer": e.answer,
            "at": iso(e.at),
            "by": e.by,
            "item_id": e.item_id,
            "note": e.note,
            "what": e.what,
        }
        for e in events
    ]


def to_json(value: Any, *, indent: int | None = 2) -> str:
    """The one way the CLI writes JSON: keys sorted at every level, so two calls on the same
    data print the same bytes."""
    return json.dumps(value, indent=indent, sort_keys=True, default=str)


def dump_json(value: Any) -> None:
    typer.echo(to_json(value))


# -- colours --------------------------------------------------------------------------------------

STATUS_COLOURS = {
    "pending_review": "red",
    "awaiting_approval": "yellow",
    "completed": "green",
    "aborted": "dim",
}
STATE_COLOURS = {
    "failed": "red",
    "compensation_failed": "red",
    "in_doubt": "red",
    "awaiting_approval": "yellow",
    "compensated": "cyan",
    "succeeded": "green",
}


def status_text(status: str) -> str:
    colour = STATUS_COLOURS.get(status)
    return f"[{colour}]{status}[/{colour}]" if colour else status
