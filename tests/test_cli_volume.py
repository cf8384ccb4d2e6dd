"""The command line at volume: search by an order id, groups of like halts, decision history,
webhook delivery, and the --filter language."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from guardrail import Guard, RunHalted
from guardrail.cli import app
from guardrail.testing import ScriptedTool

runner = CliRunner(env={"COLUMNS": "80"})


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def store(sqlite_url: str) -> str:
    """Five runs halted by a carrier timeout and one by a bad address, each after an order."""
    with Guard(store=sqlite_url) as guard:
        guard.policy(
            "create_order",
            effect="reversible",
            undo=lambda action: None,
            external_ids={"order_id": "result.id"},
        )
        guard.policy("ship", effect="read_only", retry={"attempts": 1})
        for i, why in enumerate([*(f"carrier timeout after {i}s" for i in range(5)), "no address"]):
            order = f"ord_{40045 + i}"
            with pytest.raises(RunHalted), guard.run(agent="shop") as run:
                run.call("create_order", {"n": i}, fn=lambda n, order=order: {"id": order})
                run.call("ship", {"o": order}, fn=ScriptedTool([RuntimeError(f"{why} {order}")]))
    return sqlite_url


def test_search_finds_the_run_of_an_order_id_with_its_status(store: str) -> None:
    code, out = cli("search", "ORD_40049", "--store", store, "--json")
    assert code == 0
    (found,) = json.loads(out)["runs"]
    assert found["status"] == "pending_review"
    assert found["matches"][0] == {"field": "external id order_id", "value": "ord_40049"}
    code, out = cli("search", "ord_4004", "--store", store)
    assert code == 0 and "ord_40049" in out
    run_id = found["run_id"]
    assert any(run_id in line for line in out.splitlines())  # the id is whole on one line


def test_a_bad_status_is_refused_with_the_valid_ones(store: str) -> None:
    code, out = cli("search", "ord", "--store", store, "--status", "pending")
    assert code == 2 and "pending_review" in out


def test_groups_then_history(store: str) -> None:
    code, out = cli("groups", "--store", store, "--json")
    assert code == 0
    groups = json.loads(out)
    assert [len(g["runs"]) for g in groups] == [5, 1]
    code, out = cli("groups", "--store", store)
    assert groups[0]["group"] in out

    run_id = groups[1]["runs"][0]
    with Guard(store=store) as guard:
        guard.resume(run_id, by="ana", note="address fixed")
    code, out = cli("history", run_id, "--store", store, "--json")
    assert code == 0
    assert [(e["by"], e["what"], e["note"]) for e in json.loads(out)] == [
        ("ana", "resume", "address fixed")
    ]


def test_deliver_without_a_webhook_is_a_usage_error(store: str) -> None:
    code, out = cli("deliver", "--store", store)
    assert code == 2 and "webhook" in out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("status=pending_review tool=ship", {"status": ("pending_review",), "tool": "ship"}),
        (
            "status=pending_review,awaiting_approval",
            {"status": ("pending_review", "awaiting_approval")},
        ),
        ('carrier "time out" agent=shop', {"text": "carrier time out", "agent": "shop"}),
        ("group=1a2b3c4d", {"group": "1a2b3c4d"}),
    ],
)
def test_the_filter_language(text: str, expected: dict[str, object]) -> None:
    from guardrail.cli.volume import parse_filter

    assert parse_filter(text) == expected


@pytest.mark.parametrize("text", ["colour=red", "status=", "", '"unclosed'])
def test_bad_filters_are_usage_errors(text: str) -> None:
    import typer

    from guardrail.cli.volume import parse_filter

    with pytest.raises(typer.Exit) as refused:
        parse_filter(text)
    assert refused.value.exit_code == 2
