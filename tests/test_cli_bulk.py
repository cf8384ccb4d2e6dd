"""Bulk decisions from the command line (``abort|resume|resolve --filter``) and the decision
history in ``show`` and ``export``, against a real store: twenty runs halted by the same carrier
timeout among others, with undos the CLI runs through the application's guard (``--app``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from guardrail import Guard, RunHalted
from guardrail.cli import app, common
from guardrail.testing import ScriptedTool

runner = CliRunner(env={"COLUMNS": "80"})
APP = "cli_bulk_shop:make"
SHOP = '''
import os
from guardrail import Guard


def make() -> Guard:
    """The shop's guard: an order undone by writing its id to a file, and a shipment."""
    guard = Guard(store=os.environ["CLI_BULK_STORE"])

    def cancel_order(external_ids):
        with open(os.environ["CLI_BULK_UNDONE"], "a") as out:
            out.write(external_ids["order_id"] + "\\n")

    guard.policy(
        "create_order",
        effect="reversible",
        undo=cancel_order,
        external_ids={"order_id": "result.id"},
    )
    guard.policy("ship", effect="read_only", retry={"attempts": 1})
    return guard
'''


@pytest.fixture(scope="module")
def shop_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("shop")
    (folder / "cli_bulk_shop.py").write_text(SHOP)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("cli_bulk_shop", None)


class Shop:
    """Twenty runs halted by a carrier timeout (one order each, not undone yet: held), three
    by a missing address, and a completed run that shipped the same kind of order."""

    def __init__(self, store: str, undone: Path) -> None:
        self.store = store
        self.undone = undone
        self.timeouts: list[str] = []
        self.addresses: list[str] = []
        import cli_bulk_shop  # type: ignore[import-not-found]

        with cli_bulk_shop.make() as guard:
            for i in range(23):
                order = f"ord_{50000 + i}"
                why = f"carrier timeout after {i}s" if i < 20 else f"address {i} not found"
                with (
                    pytest.raises(RunHalted),
                    guard.run(agent="shop", on_failure="hold") as run,
                ):
                    run.call("create_order", {"n": i}, fn=lambda n, o=order: {"id": o})
                    run.call(
                        "ship", {"o": order}, fn=ScriptedTool([RuntimeError(f"{why} {order}")])
                    )
                (self.timeouts if i < 20 else self.addresses).append(run.id)
            with guard.run(agent="shop") as run:
                run.call("create_order", {"n": 99}, fn=lambda n: {"id": "ord_59999"})
                run.call("ship", {"o": "ord_59999"}, fn=lambda o: "shipped")
            self.completed = run.id

    def group(self) -> str:
        code, out = cli("groups", "--store", self.store, "--json")
        assert code == 0, out
        (group,) = [g for g in json.loads(out) if len(g["runs"]) == 20]
        assert sorted(group["runs"]) == sorted(self.timeouts)
        return str(group["group"])

    def statuses(self) -> dict[str, str]:
        with Guard(store=self.store) as guard:
            return {r.id: r.status for r in guard.runs()}

    def dump(self) -> str:
        """Everything the store holds about every run (heartbeats aside)."""
        with Guard(store=self.store) as guard:
            logs = {
                r.id: guard.log(r.id).model_dump(exclude={"run": {"heartbeat_at"}})
                for r in guard.runs()
            }
            entries = {r.id: len(guard.store.entries(r.id)) for r in guard.runs()}
        return json.dumps([logs, entries], sort_keys=True, default=str)

    def undone_orders(self) -> list[str]:
        return self.undone.read_text().split() if self.undone.exists() else []


def opened_shop(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Shop:
    monkeypatch.setenv("CLI_BULK_STORE", url)
    monkeypatch.setenv("CLI_BULK_UNDONE", str(tmp_path / "undone.txt"))
    monkeypatch.delenv("GUARDRAIL_STORE", raising=False)
    return Shop(url, tmp_path / "undone.txt")


@pytest.fixture
def shop(
    store_url: str, tmp_path: Path, shop_module: Path, monkeypatch: pytest.MonkeyPatch
) -> Shop:
    """The shop on SQLite and on PostgreSQL."""
    return opened_shop(store_url, tmp_path, monkeypatch)


@pytest.fixture
def sqlite_shop(
    sqlite_url: str, tmp_path: Path, shop_module: Path, monkeypatch: pytest.MonkeyPatch
) -> Shop:
    return opened_shop(sqlite_url, tmp_path, monkeypatch)


def flat(text: str) -> str:
    """``text`` with every run of white space as one space (wrapped lines joined)."""
    return " ".join(text.split())


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def invoke(*args: str, input: str | None = None) -> Any:
    return runner.invoke(app, list(args), input=input)


@pytest.fixture
def at_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI asks as if stdin were a terminal (the test runner's stdin is not)."""
    monkeypatch.setattr(common, "interactive", lambda: True)


def test_abort_a_group_of_twenty(shop: Shop, at_a_terminal: None) -> None:
    """`guardrail groups`, then `guardrail abort --filter group=ID` and a yes: exactly the
    twenty runs of the group are aborted, each order undone once; the preview came first."""
    group = shop.group()
    before = shop.statuses()
    result = invoke("abort", "--filter", f"group={group}", "--app", APP, "--by", "ana", input="y\n")
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.index("20 to decide") < out.index("abort 20 run(s)?") < out.index("20 landed")
    for run_id in shop.timeouts:  # each run id whole on a line, in the preview and the result
        lines = [line for line in out.splitlines() if run_id in line]
        assert len(lines) == 2 and "abort: undo 1 action(s)" in lines[0] and "landed" in lines[1]
    assert max(len(line) for line in out.splitlines()) <= 80

    after = shop.statuses()
    assert {run_id: after[run_id] for run_id in shop.timeouts} == dict.fromkeys(
        shop.timeouts, "aborted"
    )
    assert {k: v for k, v in after.items() if k not in shop.timeouts} == {
        k: v for k, v in before.items() if k not in shop.timeouts
    }
    assert sorted(shop.undone_orders()) == [f"ord_{50000 + i}" for i in range(20)]
    with Guard(store=shop.store) as guard:
        for run_id in shop.timeouts:
            assert [(d.by, d.what) for d in guard.history(run_id)] == [("ana", "abort")]
            assert guard.verify(run_id).ok

    # again: every run is already aborted, nothing to decide, nothing undone twice
    code, out = cli("abort", "--filter", f"group={group} status=aborted", "--app", APP, "-y")
    assert code == 0, out
    assert "nothing to decide" in out and "20 already" in out
    assert len(shop.undone_orders()) == 20


def test_dry_run_changes_nothing(shop: Shop) -> None:
    group = shop.group()
    before = shop.dump()
    code, out = cli("abort", "--filter", f"group={group}", "--app", APP, "--dry-run")
    assert code == 0, out
    assert "dry run" in out and "20 to decide" in out and "landed" not in out
    code, out = cli("abort", "--filter", f"group={group}", "--app", APP, "--dry-run", "--json")
    assert code == 0
    document = json.loads(out)
    assert out == json.dumps(document, indent=2, sort_keys=True) + "\n"
    assert document["results"] is None and document["dry_run"] is True
    assert {p["run_id"] for p in document["preview"]} == set(shop.timeouts)
    assert {(p["plan"], p["refused"]) for p in document["preview"]} == {("decide", None)}
    assert shop.dump() == before
    assert shop.undone_orders() == []


def test_without_the_undos_every_run_is_refused_unless_force(shop: Shop) -> None:
    """Without --app the CLI lacks the undo: the preview refuses each run and nothing changes
    (exit 3); --force aborts them and lists the orders for a person."""
    group = shop.group()
    before = shop.dump()
    code, out = cli("abort", "--filter", f"group={group}", "--store", shop.store, "-y")
    assert code == 3, out
    assert "nothing to decide" in out and "20 refused" in out and "undos missing" in flat(out)
    assert shop.dump() == before

    code, out = cli("abort", "--filter", f"group={group}", "--store", shop.store, "-y", "--force")
    assert code == 0, out
    assert "20 landed" in out and "--force: 1 undo(s) missing here" in flat(out)
    with Guard(store=shop.store) as guard:
        for run_id in shop.timeouts:
            log = guard.log(run_id)
            assert log.run.status == "aborted"
            assert [i.reason for i in log.review_items if i.status == "open"] == ["no_undo"]
    assert shop.undone_orders() == []


def test_a_run_decided_by_someone_else_meanwhile(
    shop: Shop, at_a_terminal: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the preview and the decision bob resumes one run and aborts another: the first
    is lost (its error, who decided it, exit 3), the second was already so; the rest land."""
    group = shop.group()
    resumed, aborted = shop.timeouts[3], shop.timeouts[7]

    def bob_decides(question: str, default: bool, err: bool) -> bool:
        import cli_bulk_shop

        with cli_bulk_shop.make() as guard:
            guard.resume(resumed, by="bob", note="carrier back")
            guard.abort(aborted, by="bob")
        return True

    monkeypatch.setattr(typer, "confirm", bob_decides)
    code, out = cli("abort", "--filter", f"group={group}", "--app", APP, "--by", "ana")
    assert code == 3, out
    assert "18 landed, 1 already, 1 lost" in out
    (line,) = [x for x in out.split("18 landed")[1].splitlines() if resumed in x]
    assert "running" in line and "lost" in line
    assert "decided by bob" in flat(out.split(resumed)[-1])
    statuses = shop.statuses()
    assert statuses[resumed] == "running"
    assert {statuses[r] for r in shop.timeouts if r != resumed} == {"aborted"}
    assert sorted(shop.undone_orders()) == sorted(f"ord_{50000 + i}" for i in range(20) if i != 3)


def test_json_results(sqlite_shop: Shop) -> None:
    code, out = cli(
        "abort", "--filter", "carrier timeout", "--app", APP, "-y", "--json", "--note", "outage"
    )
    assert code == 0, out
    document = json.loads(out)
    assert out == json.dumps(document, indent=2, sort_keys=True) + "\n"
    assert {k: document[k] for k in ("decision", "filter", "note")} == {
        "decision": "abort",
        "filter": "carrier timeout",
        "note": "outage",
    }
    assert sorted(r["run_id"] for r in document["results"]) == sorted(sqlite_shop.timeouts)
    assert {(r["result"], r["status"], r["error"]) for r in document["results"]} == {
        ("landed", "aborted", None)
    }


def test_resume_and_resolve_by_filter(sqlite_shop: Shop) -> None:
    """`resume --filter` takes the address runs; `resolve --filter` closes the items a forced
    abort left open, on aborted runs."""
    code, out = cli("resume", "--filter", "address", "--app", APP, "-y", "--by", "ana")
    assert code == 0, out
    statuses = sqlite_shop.statuses()
    assert {statuses[r] for r in sqlite_shop.addresses} == {"running"}

    group = sqlite_shop.group()
    cli("abort", "--filter", f"group={group}", "--store", sqlite_shop.store, "-y", "--force")
    store = sqlite_shop.store
    resolve = ["resolve", "--filter", "status=aborted", "--as", "done_manually", "-y"]
    code, out = cli(*resolve, "--store", store, "--by", "cy", "--json")
    assert code == 0, out
    results = json.loads(out)["results"]
    assert sorted(r["run_id"] for r in results) == sorted(sqlite_shop.timeouts)
    with Guard(store=sqlite_shop.store) as guard:
        for run_id in sqlite_shop.timeouts:
            assert [i.status for i in guard.log(run_id).review_items] == ["resolved"] * 2
            assert [(d.by, d.what) for d in guard.history(run_id)][-1] == ("cy", "done_manually")
    # nothing left to resolve: each run is refused, exit 3
    code, out = cli("resolve", "--filter", "status=aborted", "--store", sqlite_shop.store, "-y")
    assert code == 3 and "no open review item" in flat(out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["abort", "RUN", "--filter", "status=pending_review"], "not both"),
        (["abort"], "give RUN, or --filter"),
        (["resume"], "give RUN, or --filter"),
        (["resolve"], "give ITEM, or --filter"),
        (["abort", "--filter", "colour=red"], "unknown key 'colour'"),
        (["abort", "--filter", "status=halted"], "not a run status"),
        (["abort", "--filter", ""], "--filter is empty"),
        (["abort", "RUN", "--dry-run"], "--dry-run previews a --filter"),
        (["resolve", "--filter", "ord", "--as", "approved"], "one at a time"),
    ],
)
def test_usage_errors_exit_2(sqlite_shop: Shop, args: list[str], message: str) -> None:
    before = sqlite_shop.dump()
    run_id = sqlite_shop.timeouts[0]
    result = invoke(
        *(run_id if a == "RUN" else a for a in args), "--store", sqlite_shop.store, "-y"
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert sqlite_shop.dump() == before


def test_a_filter_that_selects_no_run_exits_1(sqlite_shop: Shop) -> None:
    code, out = cli("abort", "--filter", "ord_77777", "--store", sqlite_shop.store, "-y")
    assert code == 1 and "selected no run" in out
    # the completed run's order: resume and abort select only runs waiting for a decision
    code, out = cli("abort", "--filter", "ord_59999", "--store", sqlite_shop.store, "-y")
    assert code == 1


def test_without_a_terminal_it_previews_then_refuses_to_ask(sqlite_shop: Shop) -> None:
    group = sqlite_shop.group()
    before = sqlite_shop.dump()
    code, out = cli("abort", "--filter", f"group={group}", "--app", APP)
    assert code == 2
    assert "20 to decide" in out and "pass --yes" in out
    assert sqlite_shop.dump() == before


def test_history_in_show_and_export(sqlite_shop: Shop) -> None:
    run_id = sqlite_shop.addresses[0]
    with Guard(store=sqlite_shop.store) as guard:
        guard.resume(run_id, by="ana", note="address fixed by the customer, shipping again")
    code, out = cli("show", run_id, "--store", sqlite_shop.store)
    assert code == 0, out
    section = out.split("decisions (1)")[1].splitlines()[1:3]
    assert "ana" in section[0] and "resume" in section[0]  # the note wrapped under them
    assert flat(" ".join(section)).endswith("address fixed by the customer, shipping again")
    assert max(len(line) for line in out.splitlines()) <= 80

    code, out = cli("show", run_id, "--store", sqlite_shop.store, "--json")
    (event,) = json.loads(out)["history"]
    assert event["by"] == "ana" and event["what"] == "resume" and event["item_id"] is None
    assert event["note"] == "address fixed by the customer, shipping again"
    assert event["at"].endswith("Z") and "T" in event["at"]
    assert '"history": [\n    {\n      "answer": null,\n      "at"' in out  # sorted keys

    code, out = cli("export", run_id, "--store", sqlite_shop.store)
    assert json.loads(out)["history"] == [event]
    code, out = cli("export", run_id, "--store", sqlite_shop.store, "--format", "jsonl")
    lines = [json.loads(x) for x in out.splitlines()]
    assert [x for x in lines if x["type"] == "decision"] == [{"type": "decision", **event}]
    assert lines[-1]["type"] == "witness"
