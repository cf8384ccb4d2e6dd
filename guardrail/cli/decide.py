"""Decisions: ``resume``, ``abort``, ``resolve``, ``approve``, ``reject``.

Decisions record ``--by`` (default: ``GUARDRAIL_REVIEWER``, else the login name) and ``--note``,
ask for confirmation unless ``--yes`` (and, without a terminal to ask on, refuse unless
``--yes``), and are safe to repeat. They load the application's guard (``--app``) or policy
files and packs (``--policy``, ``--pack``), see :mod:`guardrail.cli.loading`; ``abort`` refuses
to compensate without the undos it needs unless ``--force``. What is decided is checked before
the question: an unknown run or item exits 1, a resolution that does not fit the item exits 2,
so that a yes is never followed by a usage error.
Exit codes: 0 ok, 1 not found, 2 usage (or not confirmed), 3 conflict.

``resume``, ``abort`` and ``resolve`` take ``--filter TEXT`` instead of their argument (exactly
one of the two): every run the filter selects is previewed, then decided after one confirmation
(``--dry-run``: the preview only), see :mod:`guardrail.cli.bulk`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from guardrail.cli import bulk
from guardrail.cli.common import (
    DOUBT_WORDS,
    AsJson,
    By,
    Note,
    Resolution,
    Yes,
    confirm,
    dump_json,
    opened,
    reviewer,
    to_json,
)
from guardrail.cli.loading import (
    NOT_FOUND,
    USAGE,
    App,
    AppStore,
    Force,
    Loads,
    PackOptions,
    Packs,
    Policies,
    fail,
    forced,
    refusal,
    warn_mismatch,
)

Filter = Annotated[
    str | None,
    typer.Option(
        "--filter",
        help="Decide every run this selects instead of one: words to search for and KEY=VALUE "
        "terms (status, agent, tool, owner, since, until, group), e.g. group=ID from "
        "guardrail groups. Shows a preview, asks, then decides each run in turn.",
    ),
]
DryRun = Annotated[
    bool,
    typer.Option("--dry-run", help="With --filter: print the preview only; change nothing."),
]

if TYPE_CHECKING:
    from guardrail.decisions import Decision
    from guardrail.guard import Guard
    from guardrail.store import ReviewItem


def _decide(
    what: str,
    target: str,
    yes: bool,
    as_json: bool,
    act: Callable[[], Decision],
    shown: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Ask (unless ``yes``) and decide; print the outcome for people, and return it as a JSON
    document (``shown`` first), which the caller prints once, after any further decision."""
    if not yes:
        confirm(f"{what} {target}?", err=as_json)
    decision = act()
    done = {
        **(shown or {}),
        "run_id": decision.run_id,
        "status": decision.status,
        "landed": decision.landed,
        "by": decision.by,
    }
    if as_json:
        return done
    if decision.landed:
        typer.echo(f"{what}: {target} is now {decision.status} (by {decision.by})")
    else:
        typer.echo(f"{what}: already done; {target} is {decision.status} (nothing changed)")
    return done


def _item(guard: Guard, item_id: str) -> ReviewItem:
    item = guard.review_item(item_id)
    if item is None:
        fail(f"no review item {item_id!r} in {guard.store.url}", NOT_FOUND)
    return item


def resume(
    run_id: Annotated[str | None, typer.Argument(help="The run (or --filter).")] = None,
    filter_: Filter = None,
    dry_run: DryRun = False,
    store: AppStore = None,
    app: App = None,
    policy: Policies = None,
    pack: Packs = None,
    pack_option: PackOptions = None,
    by: By = None,
    note: Note = None,
    yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Let a halted run continue (restart the agent on the same run afterwards).

    With --app, --policy or --pack, warns when the run started under other policies.
    With --filter, every run it selects that waits for a decision (see guardrail groups).
    """
    bulk.one_of(run_id, filter_, "RUN")
    bulk.check("resume", None, dry_run, filter_ is not None)
    if filter_ is not None:
        _many(
            "resume",
            filter_,
            store,
            Loads.of(app, policy, pack, pack_option),
            by,
            note,
            yes=yes,
            dry_run=dry_run,
            as_json=as_json,
        )
    assert run_id is not None
    with opened(store, Loads.of(app, policy, pack, pack_option)) as guard:
        warn_mismatch(guard, guard.require_run(run_id))
        who = reviewer(by)
        done = _decide(
            "resume", run_id, yes, as_json, lambda: guard.resume(run_id, by=who, note=note)
        )
    if as_json:
        dump_json(done)


def abort(
    run_id: Annotated[str | None, typer.Argument(help="The run (or --filter).")] = None,
    filter_: Filter = None,
    dry_run: DryRun = False,
    store: AppStore = None,
    app: App = None,
    policy: Policies = None,
    pack: Packs = None,
    pack_option: PackOptions = None,
    force: Force = False,
    by: By = None,
    note: Note = None,
    yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Undo whatever is still undoable and end the run as aborted.

    Undos run in this process, so it needs the application's guard (--app MODULE:ATTRIBUTE or
    GUARDRAIL_APP) or the policies that name the undos (--policy, --pack). Without an undo it
    needs, it refuses and changes nothing (exit 2); --force aborts anyway and lists those
    actions for a person. Warns when the run started under other policies than the ones loaded.
    With --filter, every run it selects that waits for a decision; a run whose undos are missing
    here is refused (and the others aborted) unless --force.
    """
    bulk.one_of(run_id, filter_, "RUN")
    bulk.check("abort", None, dry_run, filter_ is not None)
    if filter_ is not None:
        _many(
            "abort",
            filter_,
            store,
            Loads.of(app, policy, pack, pack_option),
            by,
            note,
            force=force,
            yes=yes,
            dry_run=dry_run,
            as_json=as_json,
        )
    assert run_id is not None
    from guardrail import decisions
    from guardrail.transitions import DECIDABLE

    with opened(store, Loads.of(app, policy, pack, pack_option)) as guard:
        run = guard.require_run(run_id)
        warn_mismatch(guard, run)
        if run.status in DECIDABLE:
            missing = decisions.missing_undos(guard, guard.actions(run_id))
            if missing and not force:
                fail(refusal(run_id, missing, "abort"), USAGE)
            if missing:
                forced(run_id, missing)
        who = reviewer(by)
        done = _decide(
            "abort",
            run_id,
            yes,
            as_json,
            lambda: guard.abort(run_id, by=who, reason=note, require_undos=not force),
        )
    if as_json:
        dump_json(done)


def resolve(
    item_id: Annotated[str | None, typer.Argument(help="The review item (or --filter).")] = None,
    filter_: Filter = None,
    dry_run: DryRun = False,
    as_: Annotated[
        Resolution,
        typer.Option(
            "--as",
            help="done_manually, retried or skipped; for a call whose outcome is unknown "
            "(in_doubt): happened or not_happened.",
        ),
    ] = "done_manually",
    store: AppStore = None,
    app: App = None,
    policy: Policies = None,
    pack: Packs = None,
    pack_option: PackOptions = None,
    by: By = None,
    note: Note = None,
    yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Record a person's decision on a review item. With --filter, resolve the open review
    items of every run it selects (of any status), each as --as (not approved or rejected)."""
    bulk.one_of(item_id, filter_, "ITEM")
    bulk.check("resolve", as_, dry_run, filter_ is not None)
    if filter_ is not None:
        _many(
            "resolve",
            filter_,
            store,
            Loads.of(app, policy, pack, pack_option),
            by,
            note,
            resolution=as_,
            yes=yes,
            dry_run=dry_run,
            as_json=as_json,
        )
    assert item_id is not None
    with opened(store, Loads.of(app, policy, pack, pack_option)) as guard:
        item = _item(guard, item_id)
        if item.reason == "approval" and as_ not in ("approved", "rejected"):
            fail(
                f"review item {item_id} is an approval request: guardrail approve {item_id} "
                f"or guardrail reject {item_id} (or --as approved|rejected), not --as {as_}",
                USAGE,
            )
        if as_ in DOUBT_WORDS and (item.reason != "in_doubt" or item.seq is None):
            fail(
                f"review item {item_id} is {item.reason}, not a call whose outcome is unknown: "
                f"--as {as_} answers only in_doubt items; use done_manually, retried or skipped",
                USAGE,
            )
        who = reviewer(by)
        done = _decide(
            f"resolve as {as_}",
            item_id,
            yes,
            as_json,
            lambda: guard.resolve(item_id, as_, by=who, note=note),
        )
    if as_json:
        dump_json(done)


def _many(
    what: str,
    filter_text: str,
    store: str | None,
    loads: Loads,
    by: str | None,
    note: str | None,
    **options: Any,
) -> NoReturn:
    """A decision on every run ``filter_text`` selects (see :mod:`guardrail.cli.bulk`)."""
    from guardrail.cli.volume import parse_filter

    filters = parse_filter(filter_text)
    with opened(store, loads) as guard:
        code = bulk.run(guard, what, filter_text, filters, by=reviewer(by), note=note, **options)
    raise typer.Exit(code)


def _request(guard: Guard, item_id: str, what: str) -> dict[str, Any]:
    """The approval request ``item_id``: its run, tool and the call's arguments as stored
    (redacted), shown before the question; exits 2 when the item is not an approval request."""
    item = _item(guard, item_id)
    if item.reason != "approval":
        fail(
            f"review item {item_id} ({item.reason}) is not an approval request; close it with "
            f"guardrail resolve {item_id} --as done_manually|retried|skipped, not {what}",
            USAGE,
        )
    action = next((a for a in guard.actions(item.run_id) if a.seq == item.seq), None)
    return {
        "item_id": item_id,
        "run_id": item.run_id,
        "seq": item.seq,
        "tool": action.tool if action is not None else None,
        "args": action.args if action is not None else None,
    }


def _edits(pairs: list[str]) -> dict[str, Any] | None:
    """``--set NAME=VALUE`` as an edit of the arguments (VALUE read as JSON, else as text)."""
    if not pairs:
        return None
    edit: dict[str, Any] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name.strip():
            fail(f"--set {pair!r}: expected NAME=VALUE, e.g. --set amount=900", USAGE)
        try:
            edit[name.strip()] = json.loads(value)
        except ValueError:
            edit[name.strip()] = value
    return edit


def _show_request(request: dict[str, Any], as_json: bool, yes: bool) -> None:
    """What a person approves or rejects: for people on stdout, with --json on stderr before a
    question (the JSON document at the end has it too)."""
    if as_json and yes:
        return
    lines = [
        f"approval request {request['item_id']}: run {request['run_id']}, action "
        f"{request['seq']}, tool {request['tool']}",
        "arguments (as stored, redacted):",
        *("  " + line for line in to_json(request["args"]).splitlines()),
    ]
    if request.get("edit") is not None:
        lines += ["approved instead:", *("  " + x for x in to_json(request["edit"]).splitlines())]
    typer.echo("\n".join(lines), err=as_json)


def approve(
    item_id: Annotated[str, typer.Argument()],
    store: AppStore = None,
    app: App = None,
    policy: Policies = None,
    pack: Packs = None,
    pack_option: PackOptions = None,
    by: By = None,
    note: Note = None,
    resume_run: Annotated[bool, typer.Option("--resume", help="Also resume the run.")] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Approve another value of an argument instead: NAME=VALUE (VALUE as JSON, "
            "else as text); repeatable.",
        ),
    ] = None,
    yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Approve an approval request (these exact arguments, shown before the question, or with
    the values given by --set)."""
    edit = _edits(set_ or [])
    with opened(store, Loads.of(app, policy, pack, pack_option)) as guard:
        request = _request(guard, item_id, "approve")
        if edit is not None:
            request["edit"] = edit
        _show_request(request, as_json, yes)
        who = reviewer(by)
        done = _decide(
            "approve" if edit is None else "approve with edits",
            item_id,
            yes,
            as_json,
            lambda: guard.approve(item_id, by=who, note=note, args=edit),
            request,
        )
        if resume_run:
            run_id = request["run_id"]
            warn_mismatch(guard, guard.require_run(run_id))
            done["resume"] = _decide(
                "resume", run_id, True, as_json, lambda: guard.resume(run_id, by=who, note=note)
            )
    if as_json:
        dump_json(done)


def reject(
    item_id: Annotated[str, typer.Argument()],
    store: AppStore = None,
    app: App = None,
    policy: Policies = None,
    pack: Packs = None,
    pack_option: PackOptions = None,
    by: By = None,
    note: Note = None,
    yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Reject an approval request; the agent gets CallRejected for that call."""
    with opened(store, Loads.of(app, policy, pack, pack_option)) as guard:
        request = _request(guard, item_id, "reject")
        _show_request(request, as_json, yes)
        who = reviewer(by)
        done = _decide(
            "reject",
            item_id,
            yes,
            as_json,
            lambda: guard.reject(item_id, by=who, reason=note),
            request,
        )
    if as_json:
        dump_json(done)


def reply(
    item_id: Annotated[str, typer.Argument()],
    answer: Annotated[str, typer.Argument(help="What the agent gets instead (JSON, else text).")],
    store: AppStore = None,
    app: App = None,
    policy: Policies = None,
    pack: Packs = None,
    pack_option: PackOptions = None,
    by: By = None,
    note: Note = None,
    yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Answer an approval request instead of letting the call run: after resume the call
    returns ANSWER to the agent; the tool never runs."""
    if not answer.strip():
        fail("the reply is empty: give the text the agent should get", USAGE)
    try:
        value: Any = json.loads(answer)
    except ValueError:
        value = answer
    with opened(store, Loads.of(app, policy, pack, pack_option)) as guard:
        request = _request(guard, item_id, "reply to")
        request["reply"] = value
        _show_request(request, as_json, yes)
        who = reviewer(by)
        done = _decide(
            "reply to",
            item_id,
            yes,
            as_json,
            lambda: guard.reply(item_id, value, by=who, note=note),
            request,
        )
    if as_json:
        dump_json(done)
