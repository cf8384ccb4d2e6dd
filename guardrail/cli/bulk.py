"""Decisions on many runs at once: ``guardrail resume|abort|resolve --filter TEXT``.

The runs a filter selects (every page of the search, see `guardrail.cli.volume.parse_filter`)
are previewed first: what each run's decision would do, or why it is refused. After the
confirmation each run is decided in turn (`Guard.decide`: each run's decision is the ordinary
one, atomic on its own) and gets a result:

- ``landed``: the decision was made now;
- ``already``: the run was already so (aborted, or running after a resume), by this decision
  before or by someone else: nothing to do;
- ``refused``: the preview refused it (not halted, an approval or an in-doubt answer missing,
  undos missing here without ``--force``, no open item to resolve); it was not touched;
- ``lost``: the preview allowed it, but another reviewer decided it between the preview and
  the decision.

Exit codes: 0 when every selected run's decision landed or was already so, 3 when any was
refused or lost, 1 when the filter selected no run, 2 for usage (a bad filter, a question not
answered yes, no terminal to ask on).

Imports only typer and the standard library at module level (see `guardrail.cli`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from guardrail.cli.common import STATUS_COLOURS, confirm, dump_json
from guardrail.cli.loading import CONFLICT, LOAD_HINT, NOT_FOUND, USAGE, fail, warn

if TYPE_CHECKING:
    from rich.text import Text

    from guardrail.guard import Guard

# Without status= (or group=), resume and abort select the runs that wait for a decision; a
# resolve selects runs of any status (an aborted run may still have items to close).
DECIDABLE = ("pending_review", "awaiting_approval")
# the status a run has once the decision is made: a run found so is "already" decided
SETTLED = {"abort": ("aborting", "aborted"), "resume": ("running",)}
BULK_RESOLUTIONS = ("done_manually", "retried", "skipped", "happened", "not_happened")
GAP = "  "
INDENT = 6  # where a row's wrapped text goes when the terminal is too narrow for its column
WRAP_LINES = 4
MIN_TEXT = 24  # narrower than this, a row's text goes under the row instead of beside it
RESULT_COLOURS = {
    "decide": "",
    "landed": "green",
    "already": "dim",
    "refused": "red",
    "lost": "red",
}


@dataclass(frozen=True, slots=True)
class Row:
    """One run of the preview or of the results, as printed."""

    run_id: str
    result: str  # preview: decide, already, refused; results: landed, already, refused, lost
    status: str
    text: str  # what the decision would do, or why not; the error of a result

    def json(self, key: str, **more: Any) -> dict[str, Any]:
        return {"run_id": self.run_id, key: self.result, "status": self.status, **more}


def check(what: str, resolution: str | None, dry_run: bool, has_filter: bool) -> None:
    """Usage errors of a bulk decision, before anything is opened."""
    if dry_run and not has_filter:
        fail("--dry-run previews a --filter: give --filter TEXT instead of the argument", USAGE)
    if what == "resolve" and has_filter and resolution not in BULK_RESOLUTIONS:
        fail(
            f"resolve --filter --as {resolution}: a bulk resolve closes items as one of "
            f"{', '.join(BULK_RESOLUTIONS)}; approval requests are decided one at a time "
            "(guardrail approve ITEM / guardrail reject ITEM)",
            USAGE,
        )


def one_of(argument: str | None, filter_text: str | None, name: str) -> None:
    """Exactly one of the command's argument and --filter (exit 2 otherwise)."""
    if argument is not None and filter_text is not None:
        fail(f"give {name} or --filter, not both", USAGE)
    if argument is None and filter_text is None:
        fail(f"give {name}, or --filter TEXT to decide every run it selects", USAGE)


def select(guard: Guard, what: str, filters: dict[str, Any]) -> list[str]:
    """The ids of the runs the filter selects (newest first)."""
    from guardrail import bulk

    query = dict(filters)
    group = query.pop("group", None)
    if what in SETTLED and group is None:
        query.setdefault("status", DECIDABLE)
    return bulk.select(guard, group=group, **query)


def run(
    guard: Guard,
    what: str,
    filter_text: str,
    filters: dict[str, Any],
    *,
    by: str,
    note: str | None,
    resolution: str | None = None,
    force: bool = False,
    yes: bool = False,
    dry_run: bool = False,
    as_json: bool = False,
) -> int:
    """Select, preview, ask, decide and print; the exit code."""
    ids = select(guard, what, filters)
    if not ids:
        fail(f"--filter {filter_text!r} selected no run; nothing changed", NOT_FOUND)
    label = what if what != "resolve" else f"resolve as {resolution}"
    preview = _preview(guard, what, ids, resolution, force)
    to_decide = [r.run_id for r in preview if r.result == "decide"]
    document: dict[str, Any] = {
        "by": by,
        "decision": what,
        "dry_run": dry_run,
        "filter": filter_text,
        "note": note,
        "preview": [
            r.json(
                "plan",
                would=r.text if r.result == "decide" else None,
                refused=None if r.result == "decide" else r.text,
            )
            for r in preview
        ],
        "resolution": resolution,
        "results": None,
    }
    asking = bool(to_decide) and not yes and not dry_run
    if not as_json or asking:
        heading = (
            f"{label}: {len(ids)} run(s) selected by {filter_text!r}, {len(to_decide)} to "
            f"decide" + (" (dry run: nothing changes)" if dry_run else "")
        )
        _print(heading, ("run", "status", "plan", "what it would do, or why not"), preview, as_json)
        if what == "abort" and any(
            r.result == "refused" and "undos missing" in r.text for r in preview
        ):
            _say(f"to abort those: {LOAD_HINT}; or --force", as_json)
    if to_decide and not dry_run:
        _mismatches(guard, to_decide)
        if not yes:
            confirm(f"{label} {len(to_decide)} run(s)?", err=as_json)
        done = guard.decide(to_decide, what, by=by, note=note, resolution=resolution, force=force)
        outcomes = {o.run_id: o for o in done}
        results = [
            _result(guard, what, outcomes[r.run_id]) if r.run_id in outcomes else r for r in preview
        ]
    else:
        results = list(preview)
    code = 0 if all(r.result in ("landed", "already", "decide") for r in results) else CONFLICT
    if dry_run:
        if as_json:
            dump_json(document)
        return code
    document["results"] = [
        r.json("result", error=None if r.result in ("landed", "already") else r.text)
        for r in results
    ]
    if as_json:
        dump_json(document)
        return code
    counts = {k: sum(1 for r in results if r.result == k) for k in RESULT_COLOURS}
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n and k != "decide")
    if not to_decide:  # the preview said it all: one line, not the same table again
        _say(f"{label}: nothing to decide ({summary}); nothing changed", False)
    else:
        _print(f"{label}: {summary}", ("run", "status", "result", "error"), results, False)
    return code


def _preview(
    guard: Guard, what: str, ids: Sequence[str], resolution: str | None, force: bool
) -> list[Row]:
    from guardrail.decisions import missing_undos

    rows = []
    for p in guard.preview(ids, what, resolution=resolution, force=force):
        if p.refused is None:
            text = p.would
            if what == "abort" and force:
                missing = missing_undos(guard, guard.actions(p.run_id))
                if missing:
                    text += f"; --force: {len(missing)} undo(s) missing here, listed for a person"
            rows.append(Row(p.run_id, "decide", p.status, text))
        elif p.status in SETTLED.get(what, ()):
            rows.append(Row(p.run_id, "already", p.status, f"already {p.status}; nothing to do"))
        else:
            rows.append(Row(p.run_id, "refused", p.status, p.refused))
    return rows


def _result(guard: Guard, what: str, outcome: Any) -> Row:
    """A run's result from its `Outcome`: the preview allowed it, so a refusal now means another
    reviewer decided it meanwhile (unless it left the run as this decision would)."""
    if outcome.landed:
        return Row(outcome.run_id, "landed", outcome.status, "")
    if outcome.error is None or outcome.status in SETTLED.get(what, ()):
        return Row(outcome.run_id, "already", outcome.status, outcome.error or "already so")
    run = guard.run_record(outcome.run_id)
    by = f" (decided by {run.decided_by})" if run is not None and run.decided_by else ""
    return Row(outcome.run_id, "lost", outcome.status, f"{outcome.error}{by}")


def _mismatches(guard: Guard, ids: Sequence[str]) -> None:
    """One warning (not one per run) when runs started under other policies than these."""
    from guardrail.decisions import policy_mismatch

    found = []
    for run_id in ids:
        run = guard.run_record(run_id)
        problem = policy_mismatch(guard, run) if run is not None else None
        if problem is not None:
            found.append(problem)
    if found:
        warn(
            f"{len(found)} of {len(ids)} run(s) started under other policies than the ones "
            f"loaded here, e.g. {found[0]}. Load the runs' own: the application's --app "
            "MODULE:ATTRIBUTE (or GUARDRAIL_APP), or the --policy files and --pack packs they "
            "ran with"
        )


def _print(heading: str, columns: tuple[str, ...], rows: Sequence[Row], err: bool) -> None:
    """A table fitted to the terminal: the run id first and never cut, the status, then the
    text wrapped on words beside them (under them when the terminal is too narrow)."""
    from rich.console import Console
    from rich.text import Text

    console = Console(stderr=err)
    console.print(Text(heading, "bold"), soft_wrap=True)
    for line in _lines(columns, rows, max(console.width, 20)):
        console.print(line, soft_wrap=True)


def _say(text: str, err: bool) -> None:
    """A sentence wrapped on words to the terminal's width."""
    from rich.console import Console
    from rich.text import Text

    Console(stderr=err).print(Text(text))


def _lines(columns: tuple[str, ...], rows: Sequence[Row], width: int) -> list[Text]:
    from rich.text import Text

    from guardrail.cli.timeline import fit, prose

    id_w = max(len(columns[0]), *(len(r.run_id) for r in rows))
    status_w = max(len(columns[1]), *(len(r.status) for r in rows))
    result_w = max(len(columns[2]), *(len(r.result) for r in rows))
    text_at = id_w + status_w + result_w + 3 * len(GAP)
    beside = width - text_at >= MIN_TEXT
    # the run id is never cut: on a terminal narrower than it, the terminal wraps the line
    room = max(width, id_w)
    title = GAP.join(
        [f"{columns[0]:<{id_w}}", f"{columns[1]:<{status_w}}", f"{columns[2]:<{result_w}}"]
    )
    header = Text(f"{title}{GAP}{columns[3]}" if beside else title, "bold")
    header.rstrip()
    lines = [fit(header, room)]
    for r in rows:
        head = Text.assemble(
            (f"{r.run_id:<{id_w}}", "cyan"),
            GAP,
            (f"{r.status:<{status_w}}", STATUS_COLOURS.get(r.status, "")),
            GAP,
            (f"{r.result:<{result_w}}", RESULT_COLOURS.get(r.result, "")),
        )
        wrapped = prose(r.text, width, text_at if beside else INDENT, WRAP_LINES) if r.text else []
        if beside and wrapped:
            head.append(GAP + wrapped.pop(0).plain[text_at:])
        head.rstrip()
        lines += [fit(head, room), *wrapped]
    return lines
