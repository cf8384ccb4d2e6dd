"""Policy files, approval gates, undo tools, precedence, hints and plan_undo, on the stored log."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from guardrail import (
    CallRejected,
    Conflict,
    Guard,
    PolicyError,
    RunHalted,
    RunStateError,
    policy_file,
    policy_trust,
)
from guardrail.cli import app
from guardrail.conditions import Condition, ConditionError
from guardrail.testing import ManualClock

POLICY = """
tools:
  create_order:
    effect: reversible
    undo: {tool: cancel_order, args: {order_id: result.order_id, why: args.note}}
    external_ids: {order_id: result.order_id}
  charge:
    effect: reversible
    undo: {call: tests.test_policies.refund}
    approval: {when: "args.amount > 1000", ttl: 1h}
    retry: {attempts: 3, on: [TimeoutError], wait_initial: 0}
  update_bundle:
    effect: irreversible
    review: {kind: correct, owner: catalog}
    approval: {when: "size(args.remove) * 2 > size(args.items)"}
  send_email:
    effect: irreversible
    review: {kind: correct, owner: support, instructions: "Send a correction if needed"}
    redact: [args.body]
"""

REFUNDS: list[str] = []


class CarrierDown(RuntimeError):
    """The carrier refused the shipment: nothing was shipped (declared ``not_done``)."""


def refund(result: dict[str, Any]) -> None:
    REFUNDS.append(result["charge_id"])


def registered_snapshot(amount: int) -> dict[str, int]:
    return {"amount": amount}


def refunds() -> list[str]:
    """The policy file imports this module by its dotted path, which pytest may import as
    another module object: read the list the undo really appended to."""
    return importlib.import_module("tests.test_policies").REFUNDS  # type: ignore[no-any-return]


class Shop:
    def __init__(self, guard: Guard) -> None:
        self.cancelled: list[tuple[str, str]] = []
        self.charged: list[int] = []
        self.bundles: list[list[str]] = []
        self.emails = 0
        refunds().clear()

        def cancel_order(order_id: str, why: str) -> None:
            self.cancelled.append((order_id, why))

        guard.register(cancel_order)

        @guard.tool
        def create_order(item: str, note: str = "") -> dict[str, str]:
            return {"order_id": f"o-{item}"}

        @guard.tool
        def charge(amount: int) -> dict[str, str]:
            self.charged.append(amount)
            return {"charge_id": f"c-{len(self.charged)}"}

        @guard.tool
        def update_bundle(items: list[str], remove: list[str]) -> str:
            self.bundles.append(remove)
            return "ok"

        @guard.tool
        def send_email(to: str, body: str) -> str:
            self.emails += 1
            return "sent"

        @guard.tool(effect="reversible", undo=lambda: None, not_done=[CarrierDown])
        def ship(fail: bool = False) -> str:
            if fail:
                raise CarrierDown("carrier down")
            return "shipped"

        self.create_order, self.charge, self.update_bundle = create_order, charge, update_bundle
        self.send_email, self.ship = send_email, ship


@pytest.fixture
def loaded(guard: Guard, tmp_path: Path) -> tuple[Guard, Shop]:
    return load(guard, tmp_path)


def load(guard: Guard, tmp_path: Path) -> tuple[Guard, Shop]:
    path = tmp_path / "policies.yaml"
    path.write_text(POLICY)
    guard.load_policies(path, allow=["tests.test_policies"])  # for undo: {call: ...refund}
    return guard, Shop(guard)


def test_undo_tool_and_dotted_undo_from_a_policy_file(loaded: tuple[Guard, Shop]) -> None:
    guard, shop = loaded
    with pytest.raises(RunHalted) as halted, guard.run(agent="shop") as run:
        shop.create_order(item="book", note="gift")
        shop.charge(amount=20)
        shop.send_email(to="a@example.com", body="secret body")
        shop.ship(fail=True)
    assert halted.value.status == "pending_review"
    assert shop.cancelled == [("o-book", "gift")]  # mapped from result.* and args.*
    assert refunds() == ["c-1"]
    log = guard.log(run.id)
    states = {a.tool: a.state for a in log.actions}
    assert states == {
        "create_order": "compensated",
        "charge": "compensated",
        "send_email": "succeeded",
        "ship": "failed",
    }
    assert {c.seq: c.undo for c in log.compensations} == {1: "cancel_order", 2: "refund"}
    assert [i.reason for i in log.review_items] == ["irreversible"]
    assert log.review_items[0].owner == "support"
    assert log.action(3).args["body"] == "[REDACTED]"
    assert guard.find("o-book")[0].tool == "create_order"


def test_a_missing_undo_tool_becomes_a_review_item(guard: Guard, tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        '[tools.create_order]\neffect = "reversible"\n'
        '[tools.create_order.undo]\ntool = "cancel_order"\n'
        '[tools.fail]\neffect = "read_only"\n'
    )
    guard.load_policies(path)
    guard.policy("create_order", effect="read_only")  # code: the file still wins

    @guard.tool
    def create_order(item: str) -> str:
        return "o-1"

    @guard.tool
    def fail() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RunHalted), guard.run() as run:
        create_order(item="x")
        fail()
    log = guard.log(run.id)
    assert log.action(1).state == "compensation_failed"
    assert "cancel_order" in (log.compensations[0].error or "")
    assert "not registered" in (log.compensations[0].error or "")
    assert [i.reason for i in log.review_items] == ["compensation_failed"]


def test_approval_not_needed_runs(loaded: tuple[Guard, Shop]) -> None:
    guard, shop = loaded
    with guard.run() as run:
        assert shop.charge(amount=999) == {"charge_id": "c-1"}
    assert guard.require_run(run.id).status == "completed"
    assert guard.log(run.id).review_items == []


def test_approve_then_resume_runs_the_call_once(loaded: tuple[Guard, Shop]) -> None:
    guard, shop = loaded

    def agent() -> None:
        shop.create_order(item="tv")
        shop.charge(amount=5000)
        shop.send_email(to="a@example.com", body="thanks")

    with pytest.raises(RunHalted) as halted, guard.run() as run:
        agent()
    assert halted.value.status == "awaiting_approval"
    assert shop.charged == [] and shop.emails == 0
    log = guard.log(run.id)
    assert log.run.status == "awaiting_approval"
    assert [(a.tool, a.state) for a in log.actions] == [
        ("create_order", "succeeded"),
        ("charge", "awaiting_approval"),
    ]
    (item,) = log.review_items
    assert (item.reason, item.kind, item.seq) == ("approval", "approve", 2)
    assert halted.value.review_items == (item.id,)

    with pytest.raises(RunStateError, match="approve or reject"):
        guard.resume(run.id, by="ann")
    decision = guard.approve(item.id, by="ann", note="known customer")
    assert decision.landed and decision.status == "approved"
    assert not guard.approve(item.id, by="ann").landed  # a repeat
    with pytest.raises(Conflict):
        guard.reject(item.id, by="bob")
    guard.resume(run.id, by="ann")
    with guard.run(run_id=run.id):
        agent()
    assert shop.charged == [5000] and shop.emails == 1
    log = guard.log(run.id)
    assert [(a.seq, a.tool, a.state) for a in log.actions] == [
        (1, "create_order", "succeeded"),
        (2, "charge", "succeeded"),
        (3, "send_email", "succeeded"),
    ]
    assert log.run.status == "completed"
    assert log.review_items[0].resolved_by == "ann"
    assert guard.verify(run.id).ok


def test_reject_is_seen_by_the_agent(loaded: tuple[Guard, Shop]) -> None:
    guard, shop = loaded
    with pytest.raises(RunHalted) as halted, guard.run() as run:
        shop.charge(amount=5000)
    guard.reject(halted.value.review_items[0], by="bob", reason="too expensive")
    guard.resume(run.id, by="bob")
    seen: list[str] = []
    with guard.run(run_id=run.id):
        try:
            shop.charge(amount=5000)
        except CallRejected as exc:  # an ordinary exception: the agent can change course
            seen.append(str(exc))
        shop.charge(amount=10)
    assert "rejected by bob: too expensive" in seen[0]
    assert shop.charged == [10]
    log = guard.log(run.id)
    assert [(a.tool, a.state) for a in log.actions] == [
        ("charge", "rejected"),
        ("charge", "succeeded"),
    ]
    assert log.review_items[0].resolution == "rejected"


def test_changed_arguments_need_a_new_approval(loaded: tuple[Guard, Shop]) -> None:
    guard, shop = loaded
    with pytest.raises(RunHalted) as first, guard.run() as run:
        shop.charge(amount=5000)
    guard.approve(first.value.review_items[0], by="ann")
    guard.resume(run.id, by="ann")
    with pytest.raises(RunHalted) as second, guard.run(run_id=run.id):
        shop.charge(amount=9000)  # the agent changed its mind: not what was approved
    assert second.value.status == "awaiting_approval"
    assert shop.charged == []
    new = second.value.review_items
    assert len(new) == 1 and new[0] != first.value.review_items[0]
    assert [a.state for a in guard.log(run.id).actions] == ["approved", "awaiting_approval"]


def test_the_same_call_id_with_edited_arguments_needs_a_new_approval(
    loaded: tuple[Guard, Shop],
) -> None:
    guard, _ = loaded
    charged: list[int] = []

    def charge(amount: int) -> str:
        charged.append(amount)
        return "ok"

    with pytest.raises(RunHalted) as first, guard.run() as run:
        run.call("charge", {"amount": 5000}, fn=charge, call_id="call-1")
    guard.approve(first.value.review_items[0], by="ann")
    guard.resume(run.id, by="ann")
    with pytest.raises(RunHalted), guard.run(run_id=run.id) as again:
        again.call("charge", {"amount": 7000}, fn=charge, call_id="call-1")
    assert charged == []


def test_an_approval_expires(store_url: str, tmp_path: Path) -> None:
    clock = ManualClock()  # the guard's time, moved by hand
    with Guard(store=store_url, clock=clock) as guard:
        guard, shop = load(guard, tmp_path)
        with pytest.raises(RunHalted) as first, guard.run() as run:
            shop.charge(amount=5000)
        guard.approve(first.value.review_items[0], by="ann")
        guard.resume(run.id, by="ann")
        approval = guard.store.review_item(first.value.review_items[0])
        assert approval is not None and approval.resolved_at == clock.now  # stamped by the clock
        clock.advance(3601)  # the policy's ttl is 1h
        with pytest.raises(RunHalted) as second, guard.run(run_id=run.id):
            shop.charge(amount=5000)
        assert shop.charged == []
        assert second.value.review_items != first.value.review_items
        assert [a.state for a in guard.log(run.id).actions] == ["expired", "awaiting_approval"]


def test_bundle_change_needs_approval_when_more_than_half_is_removed(
    loaded: tuple[Guard, Shop],
) -> None:
    guard, shop = loaded
    items = ["a", "b", "c", "d"]
    with guard.run():
        shop.update_bundle(items=items, remove=["a", "b"])  # half: fine
    with pytest.raises(RunHalted) as halted, guard.run():
        shop.update_bundle(items=items, remove=["a", "b", "c"])
    assert halted.value.status == "awaiting_approval"
    assert shop.bundles == [["a", "b"]]


def test_abort_while_awaiting_approval_rejects_the_request(loaded: tuple[Guard, Shop]) -> None:
    guard, shop = loaded
    with pytest.raises(RunHalted) as halted, guard.run() as run:
        shop.create_order(item="tv", note="")
        shop.charge(amount=5000)
    guard.abort(run.id, by="ann", reason="customer left")
    log = guard.log(run.id)
    assert log.run.status == "aborted"
    assert shop.charged == [] and shop.cancelled == [("o-tv", "")]
    assert [a.state for a in log.actions] == ["compensated", "rejected"]
    item = next(i for i in log.review_items if i.id == halted.value.review_items[0])
    assert (item.resolution, item.resolved_by, item.note) == ("rejected", "ann", "run aborted")


def test_a_condition_that_fails_at_run_time_asks_for_approval(guard: Guard) -> None:
    guard.policy("pay", effect="irreversible", approval="args.amount > 1000")
    ran: list[Any] = []

    @guard.tool
    def pay(amount: Any) -> None:
        ran.append(amount)

    with pytest.raises(RunHalted) as halted, guard.run() as run:
        pay(amount="a lot")  # a string: CEL cannot compare it with 1000
    assert ran == []
    assert "could not be evaluated" in (guard.log(run.id).review_items[0].instructions or "")
    assert "amount" in str(halted.value)


def test_plan_undo_changes_nothing(loaded: tuple[Guard, Shop]) -> None:
    guard, shop = loaded
    guard.policy("hold_me", effect="irreversible", on_failure="hold", not_done=[CarrierDown])

    @guard.tool
    def hold_me() -> None:
        raise CarrierDown("no")

    with pytest.raises(RunHalted), guard.run() as run:
        shop.create_order(item="a", note="")
        shop.send_email(to="x", body="y")
        hold_me()
    before = guard.log(run.id)
    plan = guard.plan_undo(run.id)
    assert [(s.seq, s.do, s.reason) for s in plan] == [
        (3, "nothing", None),
        (2, "review", "irreversible"),
        (1, "undo", None),
    ]
    assert "cancel_order" in plan[2].detail
    after = guard.log(run.id)
    assert [a.state for a in after.actions] == [a.state for a in before.actions]
    assert after.compensations == [] and shop.cancelled == []
    guard.abort(run.id, by="ann")
    assert [(s.seq, s.do) for s in guard.plan_undo(run.id)] == [
        (3, "nothing"),
        (2, "review"),  # still listed for a person: an irreversible action stays on the list
        (1, "nothing"),
    ]


def test_precedence_file_over_code_over_hints(guard: Guard, tmp_path: Path) -> None:
    guard.hint("a", read_only=True)
    guard.hint("b", destructive=True)
    guard.policy("b", effect="read_only")
    path = tmp_path / "p.yaml"
    path.write_text("tools:\n  c: {effect: irreversible, review: {kind: mark}}\n")
    guard.policy("c", effect="read_only")
    guard.load_policies(path)
    assert guard.find_policy("a").effect == "read_only"  # type: ignore[union-attr]
    assert guard.find_policy("b").effect == "read_only"  # type: ignore[union-attr]
    assert guard.find_policy("c").effect == "irreversible"  # type: ignore[union-attr]
    hinted = guard.hint("d", destructive=False, idempotent=True)
    assert (hinted.effect, hinted.idempotent, hinted.review.kind) == (  # type: ignore[union-attr]
        "irreversible",
        True,
        "mark",
    )
    assert guard.hint("e").review.kind == "isolate"  # type: ignore[union-attr]


def test_unknown_pack_and_options_on_files(guard: Guard, tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="neither a policy file"):
        guard.load_policies("no-such-pack")
    path = tmp_path / "p.yaml"
    path.write_text("tools: {}\n")
    with pytest.raises(PolicyError, match="options"):
        guard.load_policies(path, root_dir="/")
    with pytest.raises(PolicyError, match=r"options|unexpected"):
        guard.load_policies("langchain-file-management", nope=1)


def test_policies_from_a_mapping(guard: Guard) -> None:
    (policy,) = guard.load_policies({"tools": {"x": {"effect": "read_only"}}})
    assert policy.name == "x" and guard.find_policy("x") is policy
    with pytest.raises(PolicyError) as err:
        guard.load_policies({"tools": {"x": {"effect": "sometimes"}}})
    assert (err.value.tool, err.value.field) == ("x", "effect")


# -- policy files are data: what their dotted paths may name ----------------------------------

APP = {
    "gr_trust_app/__init__.py": """
import os
import subprocess
from os import system
from subprocess import run as run_command

evil = eval
""",
    "gr_trust_app/payments.py": """
import functools
import os
from os import system

CALLS = []


def refund(result):
    CALLS.append(("refund", result["charge_id"]))


def snapshot(args):
    return {"balance": 100}


def probe(args):
    return None


class PaymentError(Exception):
    pass


class Refunder:
    def __call__(self, result):
        CALLS.append(("refunder", result["charge_id"]))


refunder = Refunder()
shell = functools.partial(os.system)
""",
    "gr_trust_app_evil/__init__.py": """
def refund(result):
    raise AssertionError("a module outside the allowed prefix was used")
""",
    "gr_trust_side_effect/__init__.py": """
import os
import pathlib

pathlib.Path(os.environ["GR_TRUST_MARK"]).write_text("imported")


class Error(Exception):
    pass


def undo(result):
    pass
""",
}


@pytest.fixture
def app_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Importable modules of an application: ``gr_trust_app`` (with ``payments``), a look-alike
    ``gr_trust_app_evil``, and ``gr_trust_side_effect``, which writes a file when imported."""
    root = tmp_path / "app"
    for name, text in APP.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    mark = tmp_path / "imported.txt"
    monkeypatch.setenv("GR_TRUST_MARK", str(mark))
    monkeypatch.delenv(policy_trust.ENV_ALLOW, raising=False)
    monkeypatch.syspath_prepend(str(root))
    yield mark
    for module in [m for m in sys.modules if m.startswith("gr_trust_")]:
        del sys.modules[module]


def hooks_file(tmp_path: Path, **hooks: str) -> Path:
    """A policy file with one reversible tool ``charge`` and the given dotted paths."""
    undo = hooks.pop("undo", "gr_trust_app.payments.refund")
    lines = ["tools:", "  charge:", "    effect: reversible", f"    undo: {{call: {undo}}}"]
    for field, value in hooks.items():
        if field == "retry_on":
            lines.append(f"    retry: {{on: [{value}]}}")
        else:
            lines.append(f"    {field}: {value}")
    path = tmp_path / "hooks.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_an_allowed_module_may_be_named_in_every_dotted_field(
    guard: Guard, tmp_path: Path, app_modules: Path
) -> None:
    path = hooks_file(
        tmp_path,
        snapshot="gr_trust_app.payments.snapshot",
        probe="gr_trust_app.payments.probe",
        retry_on="gr_trust_app.payments.PaymentError",
    )
    with pytest.raises(PolicyError):
        guard.load_policies(path)  # nothing is allowed by default
    (policy,) = guard.load_policies(path, allow=["gr_trust_app.payments"])
    payments = importlib.import_module("gr_trust_app.payments")
    assert policy.undo is payments.refund
    assert policy.snapshot is payments.snapshot
    assert policy.probe is payments.probe
    assert policy.retry is not None and policy.retry.on == (payments.PaymentError,)

    # a parent prefix allows its submodules; a callable instance of a class defined there too
    allowed = Guard(store=f"sqlite:///{tmp_path / 'g.db'}", allow=["gr_trust_app"])
    try:
        (policy,) = allowed.load_policies(
            hooks_file(tmp_path, undo="gr_trust_app.payments.refunder")
        )
        assert policy.undo is payments.refunder

        @allowed.tool
        def charge(amount: int) -> dict[str, str]:
            return {"charge_id": f"c-{amount}"}

        @allowed.tool(effect="reversible", undo=lambda: None, not_done=[CarrierDown])
        def ship() -> None:
            raise CarrierDown("carrier down")

        with pytest.raises(RunHalted), allowed.run() as run:
            charge(amount=5)
            ship()
        assert payments.CALLS == [("refunder", "c-5")]
        assert allowed.log(run.id).actions[0].state == "compensated"
    finally:
        allowed.close()


REFUSED = [
    pytest.param("os.system", "'os.system' is not allowed", id="os.system"),
    pytest.param("subprocess.Popen", "'subprocess.Popen' is not allowed", id="subprocess.Popen"),
    pytest.param("builtins.eval", "'builtins.eval' is not allowed", id="builtins.eval"),
    pytest.param("builtins.exec", "'builtins.exec' is not allowed", id="builtins.exec"),
    pytest.param("gr_trust_app_evil.refund", "allowed: gr_trust_app", id="module-boundary"),
    pytest.param("gr_trust_app.system", "defined in module 'posix'", id="from-os-import-system"),
    pytest.param(
        "gr_trust_app.run_command", "defined in module 'subprocess'", id="imported-under-a-new-name"
    ),
    pytest.param("gr_trust_app.evil", "defined in module 'builtins'", id="eval-assigned"),
    pytest.param(
        "gr_trust_app.payments.system", "defined in module 'posix'", id="imported-in-a-submodule"
    ),
    pytest.param("gr_trust_app.payments.shell", "module 'functools'", id="functools.partial"),
    pytest.param("gr_trust_app.os.system", "cannot import 'gr_trust_app.os'", id="attribute-chain"),
    pytest.param(
        "gr_trust_app.payments.os.system",
        "cannot import 'gr_trust_app.payments.os'",
        id="attribute-chain-in-a-submodule",
    ),
    pytest.param("gr_trust_app.subprocess", "not a callable", id="an-imported-module"),
]


@pytest.mark.skipif(sys.platform == "win32", reason="os.system is defined in nt there")
@pytest.mark.parametrize("field", ["undo", "snapshot", "probe"])
@pytest.mark.parametrize(("target", "words"), REFUSED)
def test_a_callable_outside_the_allowed_modules_is_refused_at_load(
    guard: Guard, tmp_path: Path, app_modules: Path, field: str, target: str, words: str
) -> None:
    path = hooks_file(tmp_path, **{field: target})
    line = 4 if field == "undo" else 5
    with pytest.raises(PolicyError) as refused:
        guard.load_policies(path, allow=["gr_trust_app"])
    error = refused.value
    expected_field = "undo.call" if field == "undo" else field
    assert (error.file, error.line, error.tool, error.field) == (
        str(path),
        line,
        "charge",
        expected_field,
    )
    message = str(error)
    assert message.startswith(f"{path}:{line}: tool 'charge': {expected_field}: "), message
    assert words in message, message
    assert "gr_trust_app_evil" not in sys.modules  # refused before it was imported
    assert guard.find_policy("charge") is None


def test_a_module_that_is_not_allowed_is_never_imported(
    guard: Guard, tmp_path: Path, app_modules: Path
) -> None:
    for path in (
        hooks_file(tmp_path, undo="gr_trust_side_effect.undo"),
        hooks_file(tmp_path, retry_on="gr_trust_side_effect.Error"),
    ):
        with pytest.raises(PolicyError, match="is not allowed") as refused:
            guard.load_policies(path, allow=["gr_trust_app"])
        assert "GUARDRAIL_POLICY_ALLOW=gr_trust_side_effect" in str(refused.value)
    assert not app_modules.exists()
    assert "gr_trust_side_effect" not in sys.modules


def test_a_function_registered_with_the_guard_needs_no_allow(guard: Guard, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "tools:\n  charge:\n    effect: reversible\n"
        f"    undo: {{call: {refund.__module__}.refund}}\n"
        f"    snapshot: {refund.__module__}.registered_snapshot\n"
    )
    with pytest.raises(PolicyError, match="is not allowed"):
        guard.load_policies(path)  # registered after the load is too late
    guard.register(refund)
    guard.tool(effect="read_only")(registered_snapshot)  # a guarded tool: its raw function
    (policy,) = guard.load_policies(path)
    assert policy.undo is refund  # the registered function itself: no import
    assert policy.snapshot is registered_snapshot


def test_allow_prefixes_are_checked(
    tmp_path: Path, app_modules: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'g.db'}"
    for bad in (["my app"], [""], ["gr_trust_app."], ["*"], ["gr_trust_app/payments"]):
        with pytest.raises(PolicyError, match="not a module prefix") as refused:
            Guard(store=url, allow=bad)
        assert refused.value.field == "allow"
    path = hooks_file(tmp_path)
    with Guard(store=url, allow="gr_trust_app.payments") as guard:  # one string is one prefix
        assert guard.allow == ("gr_trust_app.payments",)
        assert len(guard.load_policies(path)) == 1
        with pytest.raises(PolicyError, match="a policy pack is code"):
            guard.load_policies("mcp-filesystem", allow=["gr_trust_app"])
        with pytest.raises(PolicyError, match="not a module prefix"):
            guard.load_policies(path, allow=["gr trust"])
    # the environment variable: for the command line (abort, recover, serve, mcp-proxy)
    monkeypatch.setenv(policy_trust.ENV_ALLOW, "other.module, gr_trust_app.payments")
    assert len(policy_file.load(path)) == 1
    monkeypatch.setenv(policy_trust.ENV_ALLOW, "gr_trust_app.paymentsx")
    with pytest.raises(PolicyError, match="not allowed"):
        policy_file.load(path)
    monkeypatch.setenv(policy_trust.ENV_ALLOW, "gr_trust_app;rm")
    with pytest.raises(PolicyError, match="GUARDRAIL_POLICY_ALLOW"):
        policy_file.load(path)


def test_a_mapping_from_a_config_system_is_held_to_the_same_rules(
    guard: Guard, app_modules: Path
) -> None:
    data: dict[str, Any] = {"tools": {"x": {"effect": "reversible", "undo": {"call": "os.system"}}}}
    with pytest.raises(PolicyError, match=r"'os\.system' is not allowed") as refused:
        guard.load_policies(data)
    assert (refused.value.tool, refused.value.field) == ("x", "undo.call")
    data["tools"]["x"]["undo"]["call"] = "gr_trust_app.payments.refund"
    (policy,) = guard.load_policies(data, allow=["gr_trust_app"])
    assert policy.undo is importlib.import_module("gr_trust_app.payments").refund


runner = CliRunner()


def test_policy_check_reports_a_callable_that_is_not_allowed(
    tmp_path: Path, app_modules: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = hooks_file(tmp_path, snapshot="os.system")
    result = runner.invoke(app, ["policy", "check", str(path), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["ok"] is False
    found = [(p["code"], p["tool"], p["field"], p["line"]) for p in report["problems"]]
    assert ("not_allowed", "charge", "undo.call", 4) in found

    result = runner.invoke(
        app, ["policy", "check", str(path), "--allow", "gr_trust_app.payments", "--json"]
    )
    assert result.exit_code == 1, result.output  # the undo is allowed now; the snapshot is not
    (problem,) = json.loads(result.output)["problems"]
    assert (problem["code"], problem["field"], problem["line"]) == ("not_allowed", "snapshot", 5)
    assert "'os.system' is not allowed" in problem["message"]

    result = runner.invoke(app, ["policy", "check", str(path)])  # the table
    assert result.exit_code == 1
    assert "not_allowed" in result.output and "Traceback" not in result.output

    clean = hooks_file(tmp_path, snapshot="gr_trust_app.payments.snapshot")
    result = runner.invoke(app, ["policy", "check", str(clean), "--allow", "gr_trust_app"])
    assert result.exit_code == 0, result.output
    monkeypatch.setenv(policy_trust.ENV_ALLOW, "gr_trust_app.payments")
    assert runner.invoke(app, ["policy", "check", str(clean)]).exit_code == 0
    result = runner.invoke(app, ["policy", "check", str(clean), "--allow", "not a module"])
    assert result.exit_code == 2, result.output
    assert not app_modules.exists()


# -- numbers too large for Python to print ------------------------------------------------------


def test_a_huge_integer_is_a_policy_error_naming_file_line_and_field(
    guard: Guard, tmp_path: Path
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "tools:\n  a:\n    effect: irreversible\n    review: {kind: mark}\n"
        f"    retry:\n      attempts: {'9' * 5000}\n"
    )
    with pytest.raises(PolicyError) as refused:
        guard.load_policies(path)
    error = refused.value
    assert (error.file, error.line, error.tool, error.field) == (
        str(path),
        6,
        "a",
        "retry.attempts",
    )
    assert "more than 100 digits" in str(error)
    assert len(str(error)) < 500

    path.write_text(  # the other problems of the file are still listed, each once
        f"tools:\n  a:\n    effect: sometimes\n    retry: {{attempts: {'9' * 5000}}}\n"
        f"  b: {{effect: read_only, retry: {{wait_max: 0x{'f' * 300}, attempts: 0}}}}\n"
    )
    _, found = policy_file.problems(path)
    assert [(p.code, p.tool, p.field, p.line) for p in found] == [
        ("too_large", "a", "retry.attempts", 4),
        ("too_large", "b", "retry.wait_max", 5),
        ("invalid", "a", "effect", 3),
        ("invalid", "b", "retry.attempts", 5),
    ]

    data = {
        "tools": {"a": {"effect": "irreversible", "review": {"kind": "mark", "owner": 10**5000}}}
    }
    with pytest.raises(PolicyError, match="more than 100 digits") as refused:
        guard.load_policies(data)
    assert (refused.value.tool, refused.value.field) == ("a", "review.owner")


# -- CEL macros ---------------------------------------------------------------------------------

MACROS = [
    ("args.items.all(i, i.qty < 10)", {"items": [{"qty": 1}, {"qty": 9}]}, True),
    ("args.items.all(i, i.qty < 10)", {"items": [{"qty": 1}, {"qty": 10}]}, False),
    ("args.items.all(i, i.qty < 10)", {"items": []}, True),
    ('args.tags.exists(t, t == "vip")', {"tags": ["new", "vip"]}, True),
    ('args.tags.exists(t, t == "vip")', {"tags": ["new"]}, False),
    ('args.tags.exists_one(t, t == "vip")', {"tags": ["vip", "new"]}, True),
    ('args.tags.exists_one(t, t == "vip")', {"tags": ["vip", "vip"]}, False),
    ("args.items.map(i, i.qty).exists(q, q > 100)", {"items": [{"qty": 1}, {"qty": 101}]}, True),
    ("args.items.map(i, i.qty).exists(q, q > 100)", {"items": [{"qty": 1}, {"qty": 100}]}, False),
    ("args.items.map(i, i.qty > 1, i.qty) == [5]", {"items": [{"qty": 1}, {"qty": 5}]}, True),
    ("size(args.items.filter(i, i.qty > 5)) * 2 > size(args.items)", {"items": [{"qty": 9}]}, True),
    ("args.items.filter(i, i.qty > 5).size() == 0", {"items": [{"qty": 9}]}, False),
    (
        "args.items.all(i, args.limits.exists(l, l == i.qty))",
        {"items": [{"qty": 2}], "limits": [2]},
        True,
    ),
    (
        "args.items.all(i, args.limits.exists(l, l == i.qty))",
        {"items": [{"qty": 3}], "limits": [2]},
        False,
    ),
    ('args.m.all(k, args.m[k] > 0) && tool == "pay"', {"m": {"a": 1, "b": 2}}, True),
    ("args.m.exists(k, k == run.metadata.env)", {"m": {"prod": 1}}, True),
    ("args.a.all(i, i > 0) && args.b.all(i, i < 0)", {"a": [1], "b": [-1]}, True),
    ("args.a.all(i, i > 0) && args.b.all(i, i < 0)", {"a": [1], "b": [1]}, False),
    ('"i" != "" && args.a.exists(i, i == "i") // i', {"a": ["i"]}, True),
]


@pytest.mark.parametrize(("expression", "args", "expected"), MACROS)
def test_cel_macros_compile_and_evaluate(
    expression: str, args: dict[str, Any], expected: bool
) -> None:
    scope = {"args": args, "tool": "pay", "run": {"id": "r", "metadata": {"env": "prod"}}}
    assert Condition(expression).holds(scope) is expected


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ("amount > 1000", "amount"),
        ("args.items.all(i, i.qty < limit)", "limit"),
        ("args.items.all(i, i > 0) && i > 0", "i"),  # a macro's variable outside the macro
        ("i > 0 && args.items.all(i, i > 0)", "i"),
        ("args.a.all(i, args.b.exists(j, j == i)) && j > 0", "j"),
        ("args.items.all(i, .i > 0)", ".i"),  # root-scoped: not the macro's variable
        ("args.m.all(k, v, v > 0)", "v"),  # two-variable forms are not supported
        ("[1, 2].all(x, x > 0) && x.y", "x"),
        ("{'a': z}.all(k, k == 'a')", "z"),
        ("args.items.size(i, i > 0) > 0 && i > 0", "i"),  # size is not a macro
    ],
)
def test_unknown_names_are_still_refused(expression: str, names: str) -> None:
    with pytest.raises(ConditionError) as refused:
        Condition(expression)
    message = str(refused.value)
    assert f"unknown name(s) {names} in" in message, message
    assert "args, tool and run" in message


def test_a_macro_in_a_policy_file_gates_the_call(guard: Guard, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "tools:\n  order:\n    effect: irreversible\n    review: {kind: mark}\n"
        '    approval: {when: "args.items.exists(i, i.qty > 100)"}\n'
    )
    guard.load_policies(path)
    placed: list[Any] = []

    @guard.tool
    def order(items: list[dict[str, int]]) -> str:
        placed.append(items)
        return "ok"

    with guard.run():
        order(items=[{"qty": 1}, {"qty": 100}])
    with pytest.raises(RunHalted) as halted, guard.run():
        order(items=[{"qty": 1}, {"qty": 101}])
    assert halted.value.status == "awaiting_approval"
    assert placed == [[{"qty": 1}, {"qty": 100}]]
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "tools:\n  order:\n    effect: irreversible\n    review: {kind: mark}\n"
        '    approval: {when: "args.items.exists(i, i.qty > 100) || i.qty > 5"}\n'
    )
    with pytest.raises(PolicyError, match=r"unknown name\(s\) i") as refused:
        guard.load_policies(bad)
    assert (refused.value.line, refused.value.field) == (5, "approval.when")
