"""The review CLI for a person on call and for scripts: `show` and `runs` at 60, 80 and 200
columns, stable `--json` with ISO 8601 UTC times, enumerated options and exit codes, the prompt
without a terminal, and what `approve` shows before asking."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from guardrail import Guard, RunHalted
from guardrail.cli import app, common
from guardrail.decisions import RESOLUTIONS
from guardrail.transitions import RunStatus

ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
LONG_ID = "ship-" + "x" * 90  # an external id wider than any column


def invoke(*args: str, columns: int = 80, **kwargs: Any) -> Result:
    return CliRunner(env={"COLUMNS": str(columns)}).invoke(app, list(args), **kwargs)


@pytest.fixture
def saga(sqlite_url: str) -> tuple[str, str, str]:
    """The demo's saga, five actions: three compensated, an email for review, a failure with a
    long error, and a long external id."""
    with Guard(store=sqlite_url) as guard:
        for name in ("create_order", "charge_payment", "reserve_stock"):
            guard.policy(
                name,
                effect="reversible",
                undo=lambda args: None,
                external_ids={f"{name}_id": "result.id"},
            )
        guard.policy(
            "send_confirmation",
            effect="irreversible",
            review={
                "kind": "correct",
                "owner": "support",
                "instructions": "send_confirmation cannot be undone. Send the customer a "
                "correction: the order was cancelled and refunded. " * 3,
            },
        )
        guard.policy("create_shipment", effect="read_only", retry={"attempts": 1})

        def carrier_down() -> None:
            raise ConnectionError("carrier API returned 503 Service Unavailable; " * 8)

        with pytest.raises(RunHalted) as halt, guard.run(agent="checkout") as run:
            run.call("create_order", {"item": "book"}, fn=lambda item: {"id": LONG_ID})
            run.call("charge_payment", {"amount": 12}, fn=lambda amount: {"id": "pay_1002"})
            run.call("reserve_stock", {"sku": "book"}, fn=lambda sku: {"id": "res_1003"})
            run.call("send_confirmation", {"to": "ann@example.com"}, fn=lambda to: "sent")
            run.call("create_shipment", {}, fn=carrier_down)
        return sqlite_url, run.id, halt.value.review_items[0]


@pytest.mark.parametrize("columns", [60, 80, 200])
def test_show_reads_at_any_width(saga: tuple[str, str, str], columns: int) -> None:
    store, run_id, _ = saga
    done = invoke("show", run_id, "--store", store, columns=columns)
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert all(len(line) <= columns for line in lines), [x for x in lines if len(x) > columns]
    # never a word cut into letters: no line holds a lone fragment of one or two characters
    assert [x for x in lines if 0 < len(x.strip()) <= 2] == []
    assert len(lines) <= 45, done.stdout  # five actions, one review item, the abort plan
    for tool in ("create_order", "charge_payment", "reserve_stock", "send_confirmation"):
        assert tool in done.stdout
    assert "irreversible (open)" in done.stdout and "hash chain: ok" in done.stdout
    # the long external id: whole when it fits, else cut with an ellipsis (never folded)
    assert (LONG_ID in done.stdout) == (columns == 200)
    assert f"create_order_id={LONG_ID[: columns - 30]}" in done.stdout
    assert run_id in lines[0]


def test_show_puts_details_on_the_action_line_when_there_is_room(
    saga: tuple[str, str, str],
) -> None:
    store, run_id, _ = saga
    wide = invoke("show", run_id, "--store", store, columns=200).stdout.splitlines()
    narrow = invoke("show", run_id, "--store", store, columns=60).stdout.splitlines()
    [line] = [x for x in wide if "charge_payment " in x and "reversible" in x]
    assert "charge_payment_id=pay_1002" in line
    assert len(narrow) > len(wide)


def test_runs_never_cuts_a_run_id(saga: tuple[str, str, str]) -> None:
    store, run_id, _ = saga
    done = invoke("runs", "--store", store, columns=80)
    assert done.exit_code == 0
    lines = done.stdout.splitlines()
    [row] = [x for x in lines if run_id in x]  # whole, on one line
    assert row.startswith(run_id) and "pending_review" in row
    assert len(row) <= 80 and row.endswith("…")  # the long reason gives way
    assert len(lines) == 3  # title, header, one run
    narrow = invoke("runs", "--store", store, columns=20).stdout
    assert run_id in narrow


def test_json_is_stable_with_iso_utc_times(saga: tuple[str, str, str]) -> None:
    store, run_id, _ = saga
    for command in (
        ["runs"],
        ["show", run_id],
        ["find", "--external-id", "charge_payment_id=pay_1002"],
        ["export", run_id],
        ["verify", run_id],
    ):
        args = [*command, "--store", store, *(["--json"] if command[0] != "export" else [])]
        first, second = invoke(*args), invoke(*args)
        assert first.exit_code == 0, first.output
        assert first.stdout == second.stdout, command
        keys_in_order(json.loads(first.stdout))
    shown = json.loads(invoke("show", run_id, "--store", store, "--json").stdout)
    stamps = [
        shown["run"]["created_at"],
        shown["run"]["updated_at"],
        *(a["started_at"] for a in shown["actions"]),
        *(a["finished_at"] for a in shown["actions"]),
        *(c["started_at"] for c in shown["compensations"]),
        *(i["created_at"] for i in shown["review_items"]),
    ]
    assert len(stamps) == 2 + 5 + 5 + 3 + 1
    assert all(ISO.match(s) for s in stamps), stamps
    [listed] = json.loads(invoke("runs", "--store", store, "--json").stdout)
    assert ISO.match(listed["updated_at"]) and listed["id"] == run_id
    lines = invoke("export", run_id, "--store", store, "--format", "jsonl").stdout.splitlines()
    assert all(ISO.match(json.loads(x)["started_at"]) for x in lines if '"action"' in x)


def keys_in_order(value: Any) -> None:
    """Every object's keys sorted, at every level."""
    if isinstance(value, dict):
        assert list(value) == sorted(value)
        for inner in value.values():
            keys_in_order(inner)
    elif isinstance(value, list):
        for inner in value:
            keys_in_order(inner)


def test_the_cli_values_are_the_cores() -> None:
    assert set(common.RUN_STATUSES) == {s.value for s in RunStatus}
    assert common.RESOLUTIONS == RESOLUTIONS


@pytest.mark.parametrize(
    ("args", "valid"),
    [
        (["runs", "--status", "pending"], "'pending_review'"),
        (["resolve", "ITEM", "--as", "done", "-y"], "'done_manually'"),
        (["export", "RUN", "--format", "xml"], "'jsonl'"),
        (["mcp-proxy", "--on-failure", "later", "--", "true"], "'hold'"),
    ],
)
def test_an_unknown_value_is_a_usage_error_listing_the_valid_ones(
    saga: tuple[str, str, str], args: list[str], valid: str
) -> None:
    store, run_id, item = saga
    args = [{"ITEM": item, "RUN": run_id}.get(a, a) for a in args]
    done = invoke(*args[:1], "--store", store, *args[1:], columns=200)
    assert done.exit_code == 2, done.output
    assert "is not one of" in done.output and valid in done.output
    with Guard(store=store) as guard:
        assert guard.store.review_item(item).status == "open"  # type: ignore[union-attr]


def test_resolve_checks_the_item_before_asking(
    saga: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _, item = saga
    monkeypatch.setattr(common, "interactive", lambda: True)
    done = invoke("resolve", "nope", "--store", store, input="y\n")
    assert done.exit_code == 1 and "?" not in done.stdout and "no review item" in done.stderr
    done = invoke("resolve", item, "--as", "happened", "--store", store, input="y\n")
    assert done.exit_code == 2 and "answers only in_doubt items" in done.stderr
    assert "?" not in done.stdout
    done = invoke("approve", item, "--store", store, input="y\n")
    assert done.exit_code == 2 and "not an approval request" in done.stderr
    done = invoke("resolve", item, "--as", "done_manually", "--store", store, input="y\n")
    assert done.exit_code == 0 and f"resolve as done_manually {item}?" in done.stdout


def test_without_a_terminal_a_decision_needs_yes(saga: tuple[str, str, str]) -> None:
    store, run_id, item = saga
    for args in (["resume", run_id], ["abort", run_id], ["resolve", item]):
        done = invoke(*args, "--store", store, "--by", "ann")
        assert done.exit_code == 2, done.output
        assert "no terminal to ask on" in done.stderr and "--yes" in done.stderr
    with Guard(store=store) as guard:
        assert guard.require_run(run_id).status == "pending_review"


def test_end_of_input_at_the_prompt_declines(
    saga: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, run_id, _ = saga
    monkeypatch.setattr(common, "interactive", lambda: True)
    done = invoke("resume", run_id, "--store", store, input="")
    assert done.exit_code == 2 and "cancelled; nothing changed" in done.stderr


@pytest.fixture
def approval(sqlite_url: str) -> tuple[str, str, str]:
    with Guard(store=sqlite_url) as guard:
        guard.policy("wire", effect="irreversible", approval="args.amount > 1000")
        with pytest.raises(RunHalted) as halt, guard.run(agent="bank") as run:
            run.call(
                "wire",
                {"amount": 5000, "to": "DE89 3704", "api_key": "sk-live-abcdef123456"},
                fn=lambda **args: "sent",
            )
        return sqlite_url, run.id, halt.value.review_items[0]


def test_approve_shows_the_call_before_asking(
    approval: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, run_id, item = approval
    monkeypatch.setattr(common, "interactive", lambda: True)
    done = invoke("approve", item, "--store", store, "--by", "ann", input="n\n")
    assert done.exit_code == 2
    shown, _ = done.stdout.split(f"approve {item}?")
    assert f"run {run_id}" in shown and "tool wire" in shown and '"amount": 5000' in shown
    assert "sk-live-abcdef123456" not in done.output and "REDACTED" in shown
    done = invoke("approve", item, "--store", store, "--by", "ann", "--json", "-y")
    assert done.exit_code == 0, done.output
    decided = json.loads(done.stdout)
    assert (decided["tool"], decided["run_id"], decided["status"]) == ("wire", run_id, "approved")
    assert decided["args"]["amount"] == 5000 and "sk-live" not in json.dumps(decided)
    with Guard(store=store) as guard:
        [stored] = [a.args for a in guard.log(run_id).actions]
    assert decided["args"] == stored  # as stored
    again = json.loads(invoke("approve", item, "--store", store, "--json", "-y").stdout)
    assert again["landed"] is False


def test_approve_and_resume_print_one_json_document(approval: tuple[str, str, str]) -> None:
    store, run_id, item = approval
    done = invoke("approve", item, "--resume", "--store", store, "--by", "ann", "--json", "-y")
    assert done.exit_code == 0, done.output
    decided = json.loads(done.stdout)
    assert decided["status"] == "approved" and decided["resume"]["run_id"] == run_id


def test_with_json_the_question_and_the_request_go_to_stderr(
    approval: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, run_id, item = approval
    monkeypatch.setattr(common, "interactive", lambda: True)
    done = invoke("reject", item, "--store", store, "--by", "ann", "--json", input="y\n")
    assert done.exit_code == 0, done.output
    # the test runner echoes the typed answer to stdout (a terminal echoes it on the tty)
    assert done.stdout.startswith(" y\n")
    assert json.loads(done.stdout.removeprefix(" y\n"))["status"] == "rejected"
    assert f"reject {item}?" in done.stderr and f"run {run_id}" in done.stderr
    assert "tool wire" in done.stderr
