"""`guardrail approve --set NAME=VALUE` approves edited arguments; `guardrail reply ITEM TEXT`
answers the agent instead of the call."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from guardrail import Guard, RunHalted
from guardrail.cli import app

runner = CliRunner(env={"COLUMNS": "80"})


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def request_(sqlite_url: str) -> tuple[str, str, str]:
    """A payment of 5000 waiting for approval: (store, run id, item id)."""
    with Guard(store=sqlite_url) as guard:
        guard.policy("pay", effect="irreversible", approval="args.amount > 1000")
        with pytest.raises(RunHalted) as halted, guard.run(agent="billing") as run:
            run.call("pay", {"amount": 5000, "to": "acme"}, fn=lambda amount, to: None)
    return sqlite_url, run.id, halted.value.review_items[0]


def _log(store: str, run_id: str) -> dict[str, Any]:
    with Guard(store=store) as guard:
        return guard.log(run_id).model_dump()


def test_approve_with_set_records_the_edit(request_: tuple[str, str, str]) -> None:
    store, run_id, item = request_
    code, out = cli("approve", item, "--store", store, "--set", "amount=900", "--yes", "--json")
    assert code == 0, out
    done = json.loads(out)
    assert done["edit"] == {"amount": 900} and done["landed"]
    log = _log(store, run_id)
    assert log["actions"][0]["args"] == {"amount": 900, "to": "acme"}
    assert log["review_items"][0]["answer"] == {"args": {"amount": 900}}


def test_reply_answers_instead_of_the_call(request_: tuple[str, str, str]) -> None:
    store, run_id, item = request_
    code, out = cli("reply", item, "Use the EU entity", "--store", store, "--yes")
    assert code == 0, out
    log = _log(store, run_id)
    assert log["review_items"][0]["resolution"] == "replied"
    assert log["actions"][0]["state"] == "rejected"
    assert log["actions"][0]["result"] == "Use the EU entity"


@pytest.mark.parametrize(
    "args",
    [
        ["approve", "--set", "amount"],
        ["approve", "--set", "=5"],
        ["approve", "--set", "currency=EUR", "--yes"],
        ["reply", "   ", "--yes"],
    ],
)
def test_bad_answers_are_usage_errors_and_change_nothing(
    request_: tuple[str, str, str], args: list[str]
) -> None:
    store, run_id, item = request_
    before = _log(store, run_id)
    code, out = cli(args[0], item, *args[1:], "--store", store)
    assert code == 2, out
    assert _log(store, run_id) == before
