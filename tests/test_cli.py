"""The review CLI against a real store: tables, --json, decisions, exit codes."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from guardrail import Guard, RunHalted
from guardrail.cli import app, common

runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture
def halted(sqlite_url: str) -> tuple[str, str, str]:
    """A run halted after an order (reversible), an email (irreversible) and a failure."""
    with Guard(store=sqlite_url) as guard:

        @guard.tool(
            effect="reversible", undo=lambda args: None, external_ids={"order_id": "result.id"}
        )
        def create_order(item: str) -> dict[str, str]:
            return {"id": "ord_1"}

        @guard.tool(effect="irreversible", review={"kind": "correct", "owner": "support"})
        def send_email(to: str) -> str:
            return "sent"

        @guard.tool(effect="read_only")
        def fail() -> None:
            raise RuntimeError("boom")

        with pytest.raises(RunHalted) as halt, guard.run(agent="shop") as run:
            create_order(item="<script>alert(1)</script>")
            send_email(to="a@example.com")
            fail()
        return sqlite_url, run.id, halt.value.review_items[0]


@pytest.fixture
def at_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI asks as if stdin were a terminal (the test runner's stdin is not)."""
    monkeypatch.setattr(common, "interactive", lambda: True)


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_runs_and_show(halted: tuple[str, str, str]) -> None:
    store, run_id, _ = halted
    code, out = cli("runs", "--store", store, "--json")
    assert code == 0
    assert [r["status"] for r in json.loads(out)] == ["pending_review"]
    code, out = cli("runs", "--store", store, "--status", "completed", "--json")
    assert json.loads(out) == []
    code, out = cli("show", run_id, "--store", store)
    assert code == 0
    assert "create_order" in out and "compensated" in out and "hash chain: ok" in out
    code, out = cli("show", run_id, "--store", store, "--json")
    shown = json.loads(out)
    assert [a["state"] for a in shown["actions"]] == ["compensated", "succeeded", "failed"]
    assert shown["verification"]["ok"] is True
    assert [s["do"] for s in shown["plan_undo"]] == ["nothing", "review", "nothing"]


def test_decisions_and_exit_codes(halted: tuple[str, str, str]) -> None:
    store, run_id, item = halted
    assert cli("show", "nope", "--store", store)[0] == 1
    assert cli("runs", "--store", "sqlite:////nonexistent/x.db")[0] == 1
    code, out = cli("resolve", item, "--as", "done_manually", "--by", "ann", "--store", store, "-y")
    assert code == 0 and "done_manually" in out
    code, out = cli("resolve", item, "--as", "skipped", "--by", "bob", "--store", store, "-y")
    assert code == 3  # someone else decided first
    code, out = cli("resolve", item, "--as", "bogus", "--store", store, "-y")
    assert code == 2 and "'bogus' is not one of 'done_manually'" in out  # usage, as documented
    code, out = cli("abort", run_id, "--by", "ann", "--note", "why", "--store", store, "-y")
    assert code == 0 and "aborted" in out
    code, out = cli("abort", run_id, "--by", "ann", "--store", store, "-y", "--json")
    assert code == 0 and json.loads(out)["landed"] is False  # a repeat changes nothing
    assert cli("resume", run_id, "--by", "bob", "--store", store, "-y")[0] == 3
    with Guard(store=store) as guard:
        run = guard.require_run(run_id)
        assert (run.status, run.decided_by, run.decision_note) == ("aborted", "ann", "why")


def test_confirmation_is_asked(halted: tuple[str, str, str], at_a_terminal: None) -> None:
    store, run_id, _ = halted
    result = runner.invoke(app, ["resume", run_id, "--store", store, "--by", "ann"], input="n\n")
    assert result.exit_code == 2
    assert f"resume {run_id}?" in result.output and "cancelled; nothing changed" in result.stderr
    with Guard(store=store) as guard:
        assert guard.require_run(run_id).status == "pending_review"


def test_find_and_export(halted: tuple[str, str, str]) -> None:
    store, run_id, _ = halted
    code, out = cli("find", "--external-id", "order_id=ord_1", "--store", store)
    assert code == 0 and run_id in out
    assert cli("find", "--external-id", "order_id=missing", "--store", store)[0] == 1
    code, out = cli("export", run_id, "--store", store, "--format", "jsonl")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [x["type"] for x in lines] == [
        "run",
        "action",
        "action",
        "action",
        "compensation",
        "review_item",
        "witness",
    ]
    assert lines[1]["args"]["item"] == "<script>alert(1)</script>"
    assert cli("export", run_id, "--store", store, "--format", "xml")[0] == 2
    assert cli("recover", "--store", store, "--json")[0] == 0


def test_recover_watch_with_the_undos_from_a_policy_file(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`recover --watch` finishes a run whose owner died, running the undo named in --policy,
    and prints one JSON line per pass that recovered something."""
    undone = tmp_path / "undone.txt"
    (tmp_path / "cli_shop_undo.py").write_text(
        "def cancel(args):\n"
        f"    with open({str(undone)!r}, 'a') as f:\n"
        "        f.write(args['item'] + '\\n')\n"
    )
    (tmp_path / "policies.yaml").write_text(
        "tools:\n  create_order: {effect: reversible, undo: {call: cli_shop_undo.cancel}}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    # the file names app code: the operator allows its module (policy files are a trust boundary)
    monkeypatch.setenv("GUARDRAIL_POLICY_ALLOW", "cli_shop_undo")

    def doomed() -> None:  # an agent process that dies in the middle of its run
        guard = Guard(store=sqlite_url)
        guard.policy("create_order", effect="reversible", undo=lambda args: None)
        run = guard.run(agent="shop").start()
        run.call("create_order", {"item": "book"}, fn=lambda item: {"id": "ord_1"})
        (tmp_path / "run.txt").write_text(run.id)
        os._exit(0)

    child = multiprocessing.get_context("fork").Process(target=doomed)
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    run_id = (tmp_path / "run.txt").read_text().strip()
    policy = str(tmp_path / "policies.yaml")
    args = ["--interval", "0", "--iterations", "3", "--json", "--store", sqlite_url]
    result = runner.invoke(app, ["recover", "--watch", "--policy", policy, *args])
    assert result.exit_code == 0, result.output
    [line] = [json.loads(x) for x in result.stdout.splitlines()]
    # the agent declared its undo in code, the watcher loads it from a file: other policies
    assert "started under policies" in result.stderr
    assert line["recovered"] == [run_id]
    assert undone.read_text() == "book\n"
    assert cli("recover", "--watch", *args) == (0, "")  # nothing left to do
    assert cli("recover", "--watch", "--policy", str(tmp_path / "nope.yaml"), *args)[0] == 2
    with Guard(store=sqlite_url) as guard:
        log = guard.log(run_id)
        assert (log.run.status, log.action(1).state) == ("pending_review", "compensated")
        assert guard.verify(run_id).ok


@pytest.fixture
def held(sqlite_url: str) -> tuple[str, str]:
    """A run held on failure after an order whose undo lives in this test's code (so the CLI
    cannot run it): nothing was undone yet."""
    with Guard(store=sqlite_url) as guard:
        guard.policy("create_order", effect="reversible", undo=lambda args: None)
        guard.policy("ship", effect="read_only", retry={"attempts": 1})
        with pytest.raises(RunHalted), guard.run(agent="shop", on_failure="hold") as run:
            run.call("create_order", {"item": "book"}, fn=lambda item: {"id": "ord_1"})
            run.call("ship", {}, fn=lambda: (_ for _ in ()).throw(RuntimeError("carrier down")))
        return sqlite_url, run.id


def test_abort_refuses_before_asking_and_force_lists_the_undo(
    held: tuple[str, str], at_a_terminal: None
) -> None:
    store, run_id = held
    with Guard(store=store) as guard:
        before = guard.log(run_id).model_dump(exclude={"run": {"heartbeat_at"}})
        entries = len(guard.store.entries(run_id))
    result = runner.invoke(app, ["abort", run_id, "--store", store, "--by", "ann"], input="y\n")
    assert result.exit_code == 2
    assert "abort " + run_id + "?" not in result.output  # refused before the question
    assert "action 1 (create_order): no undo is registered" in result.stderr
    with Guard(store=store) as guard:
        assert guard.log(run_id).model_dump(exclude={"run": {"heartbeat_at"}}) == before
        assert len(guard.store.entries(run_id)) == entries

    code, out = cli("abort", run_id, "--store", store, "--force", "--by", "ann", "-y")
    assert code == 0 and "aborted" in out
    with Guard(store=store) as guard:
        log = guard.log(run_id)
        assert (log.run.status, log.action(1).state) == ("aborted", "succeeded")
        items = {i.reason: (i.status, i.resolution) for i in log.review_items}
        assert items == {"held": ("resolved", "aborted"), "no_undo": ("open", None)}
        assert guard.verify(run_id).ok


def test_resume_from_the_cli_closes_the_held_item(held: tuple[str, str]) -> None:
    store, run_id = held
    code, out = cli("show", run_id, "--store", store)
    assert code == 0 and "policies: " in out and "held (open)" in out
    code, out = cli("resume", run_id, "--store", store, "--by", "ann", "--note", "ok", "-y")
    assert code == 0, out
    code, out = cli("show", run_id, "--store", store, "--json")
    [item] = json.loads(out)["review_items"]
    assert (item["reason"], item["resolution"], item["resolved_by"]) == ("held", "resumed", "ann")
