"""Every surface loads the application's guard (``--app MODULE:ATTRIBUTE``, ``GUARDRAIL_APP``),
so an abort from the command line runs the undos the application wrote in Python; a surface
without the undos it needs refuses before it changes anything; ``--force`` keeps the old
behaviour; runs record the fingerprint of their policies and a surface with other policies says
so. Asserted on the stored log, on the journal and on what the undos did."""

from __future__ import annotations

import json
import multiprocessing
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from guardrail import Guard, Retry, Review, RunHalted, UndoTool
from guardrail.cli import app
from guardrail.fingerprint import EMPTY, fingerprint
from guardrail.policy import make_policy

runner = CliRunner(env={"COLUMNS": "200", "GUARDRAIL_APP": None, "GUARDRAIL_STORE": None})

APP = '''
"""A shop: its guard, with an undo that lives in Python code (not in a policy file)."""
from pathlib import Path

from guardrail import Guard

STORE = {store!r}
UNDONE = Path({undone!r})


def cancel_order(external_ids):
    with UNDONE.open("a") as f:
        f.write(external_ids["order_id"] + "\\n")


def declare(guard):
    guard.policy(
        "create_order",
        effect="reversible",
        undo=cancel_order,
        external_ids={{"order_id": "result.id"}},
    )
    guard.policy("send_email", effect="irreversible", review={{"kind": "correct"}})
    guard.policy("ship", effect="read_only", retry={{"attempts": 1}})  # its failure did nothing
    return guard


guard = declare(Guard(store=STORE))


def make_guard():
    return declare(Guard(store=STORE))


NOT_A_GUARD = "a string"


def not_a_factory():
    return 42


def broken_factory():
    raise RuntimeError("no database configured")
'''


@dataclass
class Shop:
    """The application module in tmp_path, its guard, and what its undo did."""

    module: ModuleType
    name: str
    store: str
    undone: Path

    @property
    def guard(self) -> Guard:
        guard: Guard = self.module.guard
        return guard

    def spec(self, attribute: str = "guard") -> str:
        return f"{self.name}:{attribute}"

    def held(self) -> str:
        """A run that created an order, sent an email and failed, held for a person: nothing
        undone yet, so an abort has the order to undo."""

        def ship() -> None:
            raise RuntimeError("carrier is down")

        with pytest.raises(RunHalted), self.guard.run(agent="shop", on_failure="hold") as run:
            run.call("create_order", {"item": "book"}, fn=lambda item: {"id": "ord_1"})
            run.call("send_email", {"to": "ann@example.com"}, fn=lambda to: "sent")
            run.call("ship", {}, fn=ship)
        return run.id

    def undos(self) -> list[str]:
        return self.undone.read_text().split() if self.undone.exists() else []


@pytest.fixture
def shop(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shop]:
    name = f"shop_app_{uuid.uuid4().hex[:8]}"
    undone = tmp_path / "undone.txt"
    (tmp_path / f"{name}.py").write_text(APP.format(store=store_url, undone=str(undone)))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__(name)
    yield Shop(module, name, store_url, undone)
    module.guard.close()
    sys.modules.pop(name, None)


def cli(*args: str, **env: str) -> Result:
    return runner.invoke(app, list(args), env=env or None)


def stored(guard: Guard, run_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Everything stored about a run: its log and its journal (liveness aside)."""
    log = guard.log(run_id).model_dump()
    log["run"].pop("heartbeat_at")
    return log, [e.model_dump() for e in guard.store.entries(run_id)]


# -- abort with the application's guard ------------------------------------------------------


def test_abort_with_app_runs_the_python_undo(shop: Shop) -> None:
    run_id = shop.held()
    done = cli("abort", run_id, "--app", shop.spec(), "--by", "ann", "--note", "stop", "-y")
    assert done.exit_code == 0, done.output
    assert "aborted" in done.stdout
    assert shop.undos() == ["ord_1"]  # the undo written in Python ran, in the CLI
    log = shop.guard.log(run_id)
    assert (log.run.status, log.run.decided_by, log.run.decision_note) == ("aborted", "ann", "stop")
    assert [(a.tool, a.state) for a in log.actions] == [
        ("create_order", "compensated"),
        ("send_email", "succeeded"),
        ("ship", "failed"),
    ]
    assert [(c.seq, c.undo, c.state) for c in log.compensations] == [
        (1, "cancel_order", "succeeded")
    ]
    items = {i.reason: i for i in log.review_items}
    assert (items["held"].status, items["held"].resolution, items["held"].resolved_by) == (
        "resolved",
        "aborted",
        "ann",
    )
    assert items["irreversible"].status == "open"  # the email still needs a person
    assert shop.guard.verify(run_id).ok
    # the app's guard belongs to its module: the command left it open
    assert shop.guard.require_run(run_id).status == "aborted"


def test_a_factory_and_the_environment_variable_name_the_app(shop: Shop) -> None:
    run_id = shop.held()
    done = cli("abort", run_id, "--by", "bob", "-y", GUARDRAIL_APP=shop.spec("make_guard"))
    assert done.exit_code == 0, done.output
    assert shop.undos() == ["ord_1"]
    assert shop.guard.log(run_id).action(1).state == "compensated"


def test_abort_without_the_undos_refuses_and_changes_nothing(shop: Shop) -> None:
    run_id = shop.held()
    before = stored(shop.guard, run_id)
    done = cli("abort", run_id, "--store", shop.store, "--by", "ann", "-y")
    assert done.exit_code == 2, done.output
    message = done.stderr
    assert f"run {run_id}" in message and "action 1 (create_order)" in message
    assert "no undo is registered for create_order" in message
    assert "--app MODULE:ATTRIBUTE" in message and "GUARDRAIL_APP" in message
    assert "--pack NAME" in message and "--force" in message
    assert "Nothing was changed" in message
    assert stored(shop.guard, run_id) == before  # not a row, not a journal entry
    assert shop.undos() == []
    # --json scripts see the same refusal and exit code
    assert cli("abort", run_id, "--store", shop.store, "-y", "--json").exit_code == 2
    assert stored(shop.guard, run_id) == before


def test_force_keeps_the_old_behaviour(shop: Shop) -> None:
    run_id = shop.held()
    done = cli("abort", run_id, "--store", shop.store, "--force", "--by", "ann", "-y")
    assert done.exit_code == 0, done.output
    assert "--force" in done.stderr and "action 1 (create_order)" in done.stderr
    assert shop.undos() == []
    log = shop.guard.log(run_id)
    assert log.run.status == "aborted"
    assert log.action(1).state == "succeeded"  # not undone: listed for a person instead
    open_items = sorted(i.reason for i in log.review_items if i.status == "open")
    assert open_items == ["irreversible", "no_undo"]
    assert shop.guard.verify(run_id).ok


def test_a_repeated_abort_is_not_refused(shop: Shop) -> None:
    run_id = shop.held()
    assert cli("abort", run_id, "--app", shop.spec(), "--by", "ann", "-y").exit_code == 0
    again = cli("abort", run_id, "--store", shop.store, "--by", "ann", "-y", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["landed"] is False
    assert shop.undos() == ["ord_1"]


def test_a_policy_file_with_the_undo_is_enough(shop: Shop, tmp_path: Path) -> None:
    run_id = shop.held()
    policies = tmp_path / "shop.yaml"
    policies.write_text(
        "tools:\n"
        "  create_order:\n"
        "    effect: reversible\n"
        f"    undo: {{call: {shop.name}.cancel_order}}\n"
        "    external_ids: {order_id: result.id}\n"
    )
    done = cli(
        "abort",
        run_id,
        "--store",
        shop.store,
        "--policy",
        str(policies),
        "-y",
        GUARDRAIL_POLICY_ALLOW=shop.name,
    )
    assert done.exit_code == 0, done.output
    assert shop.undos() == ["ord_1"]
    # a file is another policy set than the one the run started under: the command says so
    assert "started under policies" in done.stderr
    recorded = shop.guard.require_run(run_id).policy_fingerprint
    assert recorded is not None and recorded in done.stderr


# -- resume -------------------------------------------------------------------------------------


def test_resume_with_app_closes_the_held_item_and_warns_only_on_other_policies(
    shop: Shop, tmp_path: Path
) -> None:
    run_id = shop.held()
    done = cli("resume", run_id, "--app", shop.spec(), "--by", "ann", "--note", "back", "-y")
    assert done.exit_code == 0, done.output
    assert "warning" not in done.stderr  # the app's own policies: the same fingerprint
    log = shop.guard.log(run_id)
    assert log.run.status == "running"
    [held] = [i for i in log.review_items if i.reason == "held"]
    assert (held.status, held.resolution, held.resolved_by, held.note) == (
        "resolved",
        "resumed",
        "ann",
        "back",
    )
    assert shop.undos() == []

    other = shop.held()
    policies = tmp_path / "other.yaml"
    policies.write_text("tools:\n  create_order: {effect: irreversible}\n")
    done = cli("resume", other, "--store", shop.store, "--policy", str(policies), "-y")
    assert done.exit_code == 0, done.output
    theirs = shop.guard.require_run(other).policy_fingerprint
    assert theirs == shop.guard.policy_fingerprint
    assert f"started under policies {theirs}" in done.stderr
    with Guard(store=shop.store) as mine:
        mine.load_policies(policies)
        assert f"fingerprint {mine.policy_fingerprint}" in done.stderr


# -- bad --app ----------------------------------------------------------------------------------

COMMANDS = [
    ["abort", "RUN", "-y"],
    ["resume", "RUN", "-y"],
    ["resolve", "ITEM", "-y"],
    ["approve", "ITEM", "-y"],
    ["reject", "ITEM", "-y"],
    ["show", "RUN"],
    ["recover"],
    ["recover", "--watch", "--iterations", "1"],
    ["serve", "--token", "t" * 32],
    ["mcp-proxy", "--", sys.executable, "-c", "pass"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize(
    ("attribute", "expected"),
    [
        ("", "expected MODULE:ATTRIBUTE"),
        ("nope", "has no attribute 'nope'"),
        ("NOT_A_GUARD", "NOT_A_GUARD is of type str, not a Guard (or a function returning one)"),
        ("not_a_factory", "not_a_factory() returned an object of type int, not a Guard"),
        ("broken_factory", "calling broken_factory() failed: RuntimeError: no database"),
    ],
)
def test_a_bad_app_is_a_usage_error_on_every_surface(
    shop: Shop, command: list[str], attribute: str, expected: str
) -> None:
    run_id = shop.held()
    before = stored(shop.guard, run_id)
    spec = shop.spec(attribute) if attribute else shop.name
    args = [run_id if a in ("RUN", "ITEM") else a for a in command]
    done = cli(*args[:1], "--app", spec, *args[1:])
    assert done.exit_code == 2, done.output
    assert f"--app {spec!r}" in done.stderr and expected in done.stderr, done.stderr
    assert "Traceback" not in done.output
    assert stored(shop.guard, run_id) == before


def test_a_module_that_is_not_there_or_fails_to_import(
    shop: Shop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = shop.held()
    done = cli("abort", run_id, "--app", "no_such_module_here:guard", "-y")
    assert done.exit_code == 2
    assert "there is no module 'no_such_module_here'" in done.stderr
    assert "PYTHONPATH" in done.stderr
    name = f"broken_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import no_such_dependency_here\n")
    done = cli("abort", run_id, "--app", f"{name}:guard", "-y")
    assert done.exit_code == 2
    assert f"importing {name} failed: ModuleNotFoundError" in done.stderr
    assert "no_such_dependency_here" in done.stderr
    (tmp_path / f"{name}_exits.py").write_text("raise SystemExit(3)\n")
    done = cli("abort", run_id, "--app", f"{name}_exits:guard", "-y")
    assert done.exit_code == 2 and "importing" in done.stderr
    assert shop.guard.require_run(run_id).status == "pending_review"


def test_store_and_app_must_agree(shop: Shop, tmp_path: Path) -> None:
    run_id = shop.held()
    other = f"sqlite:///{tmp_path / 'other.db'}"
    done = cli("abort", run_id, "--app", shop.spec(), "--store", other, "-y")
    assert done.exit_code == 2
    assert f"--store {other} is not the store of the guard of --app" in done.stderr
    done = cli("abort", run_id, "-y", GUARDRAIL_APP=shop.spec(), GUARDRAIL_STORE=other)
    assert done.exit_code == 2 and "GUARDRAIL_STORE" in done.stderr
    assert shop.guard.require_run(run_id).status == "pending_review"
    # the same store, however it is spelled, is fine
    done = cli("abort", run_id, "--app", shop.spec(), "--store", shop.store, "-y")
    assert done.exit_code == 0, done.output
    assert shop.undos() == ["ord_1"]


def test_policy_and_pack_options_are_checked_on_every_decision(shop: Shop) -> None:
    run_id = shop.held()
    for command in ("abort", "resume", "resolve", "approve", "reject"):
        done = cli(command, run_id, "--store", shop.store, "--pack", "no-such-pack", "-y")
        assert done.exit_code == 2, (command, done.output)
        assert "no-such-pack" in done.stderr
        done = cli(command, run_id, "--store", shop.store, "--pack-option", "novalue", "-y")
        assert done.exit_code == 2 and "KEY=VALUE" in done.output
    assert shop.guard.require_run(run_id).status == "pending_review"


# -- recover ------------------------------------------------------------------------------------


def dead_run(shop: Shop) -> str:
    """A running run whose owner stopped renewing its lease after creating an order."""
    run = shop.guard.run(agent="shop").start()
    run.call("create_order", {"item": "book"}, fn=lambda item: {"id": "ord_1"})
    shop.guard.drop_lease(run.id)
    return run.id


def test_recover_refuses_without_the_undos_and_runs_them_with_the_app(shop: Shop) -> None:
    run_id = dead_run(shop)
    before = stored(shop.guard, run_id)
    args = ("--stale-after", "0", "--json")
    done = cli("recover", "--store", shop.store, *args)
    assert done.exit_code == 2, done.output
    assert f"run {run_id}" in done.stderr and "--app" in done.stderr
    assert stored(shop.guard, run_id) == before
    # a watcher says so and waits (recovers nothing) instead of exiting
    done = cli(
        "recover", "--watch", "--iterations", "2", "--interval", "0", "--store", shop.store, *args
    )
    assert done.exit_code == 0 and done.stdout == ""
    assert done.stderr.count(f"error: run {run_id}") == 1  # said once, not every pass
    assert stored(shop.guard, run_id) == before

    done = cli("recover", "--app", shop.spec(), *args)
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {"recovered": [run_id]}
    assert shop.undos() == ["ord_1"]
    log = shop.guard.log(run_id)
    assert (log.run.status, log.action(1).state) == ("pending_review", "compensated")


def test_a_watcher_recovers_the_runs_it_can_and_leaves_the_others(shop: Shop) -> None:
    blocked = dead_run(shop)
    run = shop.guard.run(agent="shop").start()  # a dead run that needs no undo: a review only
    run.call("send_email", {"to": "ann@example.com"}, fn=lambda to: "sent")
    shop.guard.drop_lease(run.id)
    before = stored(shop.guard, blocked)
    done = cli(
        "recover", "--watch", "--iterations", "1", "--store", shop.store, "--stale-after", "0"
    )
    assert done.exit_code == 0, done.output
    assert f"recovered 1 run(s): {run.id}" in done.stdout
    assert f"error: run {blocked}" in done.stderr
    assert stored(shop.guard, blocked) == before  # left for a watcher with its undos
    assert shop.guard.require_run(run.id).status == "pending_review"


def test_recover_with_force_lists_the_undos_for_review(shop: Shop) -> None:
    run_id = dead_run(shop)
    done = cli("recover", "--store", shop.store, "--stale-after", "0", "--force", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {"recovered": [run_id]}
    log = shop.guard.log(run_id)
    assert (log.run.status, log.action(1).state) == ("pending_review", "succeeded")
    assert [i.reason for i in log.review_items] == ["no_undo"]
    assert shop.undos() == []


# -- show -----------------------------------------------------------------------------------


def test_show_tells_what_an_abort_here_would_lack(shop: Shop) -> None:
    run_id = shop.held()
    done = cli("show", run_id, "--store", shop.store)
    assert done.exit_code == 0, done.output
    assert f"policies: {shop.guard.policy_fingerprint}" in done.stdout
    assert "1 undo(s) it needs are not loaded here" in done.stdout
    shown = json.loads(cli("show", run_id, "--store", shop.store, "--json").stdout)
    assert [s["seq"] for s in shown["missing_undos"]] == [1]
    assert shown["run"]["policy_fingerprint"] == shop.guard.policy_fingerprint
    done = cli("show", run_id, "--app", shop.spec())
    assert "not loaded here" not in done.stdout
    assert "undo action 1 (create_order): undo with cancel_order" in done.stdout
    assert (
        json.loads(cli("show", run_id, "--app", shop.spec(), "--json").stdout)["missing_undos"]
        == []
    )


# -- serve ----------------------------------------------------------------------------------


def test_serve_uses_the_apps_guard(
    shop: Shop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn
    from starlette.testclient import TestClient

    served: list[Guard] = []

    def fake_run(console: Any, **options: Any) -> None:
        with TestClient(console):
            served.append(console.state.guard)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no reviewers file
    done = cli("serve", "--app", shop.spec(), "--token", "t" * 32)
    assert done.exit_code == 0, done.output
    assert served == [shop.guard]


# -- the fingerprint ------------------------------------------------------------------------


def refund(args: dict[str, Any]) -> None:
    pass


def policies() -> list[Any]:
    return [
        make_policy(
            "charge",
            effect="reversible",
            undo=refund,
            undo_retry=Retry(attempts=2, on=(TimeoutError,)),
            approval="args.amount > 1000",
            redact=["args.card"],
        ),
        make_policy("create_note", effect="reversible", undo=UndoTool(tool="delete_note")),
        make_policy("mail", effect="irreversible", review=Review(kind="correct", owner="x")),
        make_policy("lookup", effect="read_only", idempotency_key=lambda args: "k"),
    ]


def fingerprint_in_child(results: Any) -> None:
    results.put(fingerprint(policies()))


def test_the_fingerprint_is_stable_and_tells_policy_sets_apart() -> None:
    first = fingerprint(policies())
    assert first == fingerprint(reversed(policies()))  # order does not matter
    assert len(first) == 16 and int(first, 16) >= 0
    ctx = multiprocessing.get_context("spawn")  # another interpreter: other addresses
    results = ctx.Queue()
    child = ctx.Process(target=fingerprint_in_child, args=(results,))
    child.start()
    assert results.get(timeout=60) == first
    child.join(timeout=60)
    changed = [
        [*policies()[:2], make_policy("mail", effect="irreversible", review=Review(kind="mark"))],
        [*policies()[1:], make_policy("charge", effect="reversible", undo=print)],
        [*policies()[:1], make_policy("create_note", effect="reversible", undo={"tool": "rm"})],
        policies()[:3],
    ]
    assert len({first, *(fingerprint(p) for p in changed)}) == 1 + len(changed)
    assert fingerprint([]) == EMPTY != first


def test_runs_record_the_fingerprint_of_their_guard(store_url: str) -> None:
    with Guard(store=store_url) as guard:
        with guard.run() as bare:
            pass
        guard.policy("mail", effect="irreversible")
        guard.hint("lookup", read_only=True)  # tool hints are defaults, not the policy set
        with guard.run() as declared:
            pass
        assert guard.require_run(bare.id).policy_fingerprint == EMPTY
        assert guard.require_run(declared.id).policy_fingerprint == guard.policy_fingerprint
        assert guard.policy_fingerprint == fingerprint([make_policy("mail", effect="irreversible")])
        assert guard.verify(declared.id).ok
