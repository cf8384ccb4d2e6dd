"""An approval request answered in the console with other arguments, or with a reply instead of
the call: the forms, what the store records, what a refused answer says, two reviewers racing,
the decision history. Over HTTP (Starlette's TestClient) and in headless Chromium."""

# ruff: noqa: F811 (the fixtures shared with test_web.py are imported, then asked for by name)

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from html import unescape
from typing import Any

import pytest
from starlette.testclient import TestClient
from test_web import (  # noqa: F401 (fixtures)
    BEARER,
    Clock,
    Shop,
    Team,
    browser,
    browser_log_in,
    browser_only,
    clock,
    console,
    csrf_of,
    decide,
    make_shop,
    served,
    shop,
    shown_flash,
    team,
)

from guardrail import Approval, Guard, RunHalted
from guardrail.web.answers import arg_fields, changed, read_value

CARD = "4111 1111 1111 1111"


def pay_tool(guard: Guard) -> Any:
    """A payment that needs approval above 1000; the log keeps its card redacted."""

    @guard.tool(
        effect="irreversible",
        approval=Approval(when="args.amount > 1000"),
        redact=("args.card",),
    )
    def pay(amount: int, to: str, card: str, memo: str = "") -> dict[str, Any]:
        return {"paid": amount, "to": to}

    return pay


@pytest.fixture
def pay(shop: Shop) -> Any:
    return pay_tool(shop.guard)


@pytest.fixture
def payment(shop: Shop, pay: Any) -> tuple[str, str]:
    """A payment of 5000 to acme waiting for approval: (run id, item id)."""
    with pytest.raises(RunHalted) as halt, shop.guard.run(agent="billing") as run:
        pay(amount=5000, to="acme", card=CARD, memo="invoice 7")
    return run.id, halt.value.review_items[0]


@pytest.fixture
def client(shop: Shop, team: Team, clock: Clock) -> Iterator[TestClient]:
    with TestClient(console(shop, team, clock), base_url="http://127.0.0.1:8765") as c:
        yield c


def recorded(guard: Guard, run_id: str) -> dict[str, Any]:
    """What the store holds of the run: its actions, review items and journal length."""
    log = guard.log(run_id).model_dump()
    return {
        "actions": log["actions"],
        "items": log["review_items"],
        "run": guard.require_run(run_id).status,
        "history": [(d.what, d.by, d.answer) for d in guard.history(run_id)],
    }


def post(
    client: TestClient, run_id: str, who: dict[str, str], **fields: str
) -> Any:  # the response, redirects followed
    csrf = csrf_of(client.get(f"/runs/{run_id}", headers=who).text)
    return client.post("/decide", data={"csrf": csrf, **fields}, headers=who)


def field_value(html: str, name: str) -> str:
    found = re.search(rf'name="arg\.{name}" value="([^"]*)"', html)
    assert found, f"no field for argument {name}"
    return unescape(found.group(1))


def field_error(html: str, item: str, form: str = "edit") -> list[str]:
    """The messages shown in an item's edit or reply form."""
    section = html.split(f'id="form-{item}-{form}"', 1)[1].split("</form>", 1)[0]
    return [unescape(m) for m in re.findall(r'class="field-error"[^>]*>([^<]*)<', section)]


# -- the forms ------------------------------------------------------------------------------------


def test_the_request_shows_its_arguments_as_fields_and_redacted_ones_read_only(
    shop: Shop, payment: tuple[str, str], client: TestClient
) -> None:
    run_id, item = payment
    page = client.get(f"/runs/{run_id}", headers=BEARER).text
    assert f'id="form-{item}-edit"' in page and f'id="form-{item}-reply"' in page
    assert field_value(page, "amount") == "5000"
    assert field_value(page, "to") == '"acme"'
    assert field_value(page, "memo") == '"invoice 7"'
    assert 'name="arg.card"' not in page  # not posted: shown disabled, with why
    card = re.search(
        r'<input type="text" id="(arg-[^"]+)" value="([^"]*)" class="mono" disabled', page
    )
    assert card and unescape(card.group(2)) == '"[REDACTED]"'
    assert "redacted in the log: cannot be edited" in page
    assert CARD not in page
    # a decided request has no forms left
    shop.guard.reject(item, by="Bob", reason="no")
    page = client.get(f"/runs/{run_id}", headers=BEARER).text
    assert f'id="form-{item}-edit"' not in page and f'id="form-{item}-reply"' not in page


def test_arg_fields_and_values() -> None:
    fields = arg_fields({"amount": 5, "card": {"number": "[REDACTED]", "exp": "12/30"}, "x": "y"})
    assert [(f.name, f.text, f.editable) for f in fields] == [
        ("amount", "5", True),
        ("card", '{"exp": "12/30", "number": "[REDACTED]"}', False),
        ("x", '"y"', True),
    ]
    assert arg_fields({f"a{n}": n for n in range(61)}) == []  # too many to edit here
    assert not arg_fields({"blob": "x" * 30_000})[0].editable
    assert read_value(" 900 ") == 900 and read_value("acme") == "acme"
    assert read_value('"900"') == "900" and read_value("[1, 2]") == [1, 2]
    stored = {"amount": 5000, "to": "acme", "flag": True}
    assert changed(stored, [("amount", "5000"), ("to", '"acme"'), ("flag", "true")]) == {}
    assert changed(stored, [("amount", "5000.0"), ("to", "acme"), ("flag", "1")]) == {"flag": 1}
    assert changed(stored, [("amount", "900"), ("nope", "1")]) == {"amount": 900, "nope": 1}


# -- answers that land ---------------------------------------------------------------------------


def test_an_edit_lands_and_the_action_runs_with_it(
    shop: Shop, team: Team, client: TestClient
) -> None:
    guard = shop.guard
    run_id, item = shop.awaiting(amount=5000)
    kind, text = decide(
        client,
        run_id,
        team.bearer("Ann"),
        decision="approve_edit",
        item_id=item,
        **{"arg.amount": "900"},
        note="cap it at 900",
    )
    assert kind == "ok", text
    assert f"Approved item {item} with amount=900 (by Ann)" in text
    approval = guard.store.review_item(item)
    assert approval is not None
    assert (approval.resolution, approval.resolved_by, approval.note, approval.answer) == (
        "approved",
        "Ann",
        "cap it at 900",
        {"args": {"amount": 900}},
    )
    charge = next(a for a in guard.log(run_id).actions if a.tool == "charge")
    assert charge.args == {"amount": 900}
    # the page shows the answer in the decision history
    page = client.get(f"/runs/{run_id}", headers=BEARER).text
    history = page[page.index('id="history"') : page.index('id="chain-h"')]
    assert re.search(r'res-approved">approved</span></td>\s*<td[^>]*>with amount=900</td>', history)
    # resumed, the agent's call (as it first asked) runs once, with the approved amount
    guard.resume(run_id, by="Ann", note="go")
    with guard.run(run_id=run_id):
        shop.call("create_order", item="tv")
        assert shop.call("charge", amount=5000) == {"amount": 900}
    assert guard.require_run(run_id).status == "completed"


def test_an_edit_and_resume_in_one_step(
    shop: Shop, payment: tuple[str, str], team: Team, client: TestClient
) -> None:
    run_id, item = payment
    kind, text = decide(
        client,
        run_id,
        team.bearer("Dee"),
        decision="approve_edit_resume",
        item_id=item,
        **{"arg.amount": "900", "arg.to": "globex", "arg.memo": '"invoice 7"'},
        note="pay globex instead",
    )
    assert kind == "ok", text
    assert 'with amount=900, to="globex"' in text and f"resumed run {run_id} (by Dee)" in text
    run = shop.guard.require_run(run_id)
    assert (run.status, run.decided_by) == ("running", "Dee")
    approval = shop.guard.store.review_item(item)
    assert approval is not None and approval.answer == {"args": {"amount": 900, "to": "globex"}}
    pay = shop.guard.log(run_id).actions[0]
    assert pay.args == {"amount": 900, "to": "globex", "card": "[REDACTED]", "memo": "invoice 7"}


def test_a_reply_lands_instead_of_the_call(
    shop: Shop, pay: Any, payment: tuple[str, str], team: Team, client: TestClient
) -> None:
    run_id, item = payment
    kind, text = decide(
        client,
        run_id,
        team.bearer("Bob"),
        decision="reply",
        item_id=item,
        reply="  Pay acme through the EU entity <b>instead</b>  ",
        note="wrong entity",
    )
    assert kind == "ok" and f"Replied to item {item} (by Bob)" in text, text
    answer = "Pay acme through the EU entity <b>instead</b>"
    approval = shop.guard.store.review_item(item)
    assert approval is not None
    assert (approval.resolution, approval.resolved_by, approval.note, approval.answer) == (
        "replied",
        "Bob",
        "wrong entity",
        {"reply": answer},
    )
    action = shop.guard.log(run_id).actions[0]
    assert (action.state, action.result) == ("rejected", answer)
    page = client.get(f"/runs/{run_id}", headers=BEARER).text
    history = page[page.index('id="history"') : page.index('id="chain-h"')]
    assert "reply: Pay acme through the EU entity &lt;b&gt;instead&lt;/b&gt;" in history
    # after a resume the agent's call returns the reply; the tool never runs
    shop.guard.resume(run_id, by="Bob", note="go on")
    with shop.guard.run(run_id=run_id):
        assert pay(amount=5000, to="acme", card=CARD, memo="invoice 7") == answer


# -- answers refused ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "where", "says"),
    [
        ({"arg.currency": "EUR"}, "args", "has no argument currency to edit"),
        ({"arg.card": "4000 0000 0000 0002"}, "card", "card of pay are redacted"),
        ({"arg.memo": "Bearer sk_live_0123456789abcdef"}, "memo", "memo of pay are redacted"),
        ({"arg.amount": "5000", "arg.to": '"acme"'}, "args", "No argument was changed"),
    ],
)
def test_a_refused_edit_changes_nothing_and_says_why_next_to_the_field(
    shop: Shop,
    payment: tuple[str, str],
    team: Team,
    client: TestClient,
    fields: dict[str, str],
    where: str,
    says: str,
) -> None:
    run_id, item = payment
    before = recorded(shop.guard, run_id)
    fields = {"arg.amount": "900", **fields}
    answer = post(
        client,
        run_id,
        team.bearer("Ann"),
        decision="approve_edit",
        item_id=item,
        note="cap it",
        **fields,
    )
    assert answer.status_code == 422
    page = answer.text
    errors = field_error(page, item)
    assert len(errors) == 1 and says in errors[0] and "nothing was recorded" in errors[0], errors
    if where == "args":  # at the top of the form: no field of its own
        assert f'id="args-{item}-error"' in page
    else:  # next to the field concerned
        found = re.search(r'id="(arg-[^"]+)-error" role="alert">', page)
        assert found and f'<label for="{found.group(1)}" class="mono">{where}</label>' in page
    assert re.search(rf'<details class="answer-form" id="edit-{item}" open>', page)
    assert field_value(page, "amount") == fields["arg.amount"]  # as typed, to correct
    assert shown_flash(page) is None
    assert recorded(shop.guard, run_id) == before


def test_the_edit_and_reply_forms_keep_the_note_and_reply_rules(
    shop: Shop, payment: tuple[str, str], team: Team, client: TestClient
) -> None:
    run_id, item = payment
    before = recorded(shop.guard, run_id)
    ann = team.bearer("Ann")
    answer = post(
        client, run_id, ann, decision="approve_edit", item_id=item, note="  ", **{"arg.amount": "9"}
    )
    assert answer.status_code == 422
    assert re.search(rf'id="note-{item}-edit-error" role="alert">Write a note', answer.text)
    assert field_value(answer.text, "amount") == "9"
    for reply, says in (("   ", "it was only spaces"), ("x" * 10_001, "limited to 10000")):
        answer = post(client, run_id, ann, decision="reply", item_id=item, note="n", reply=reply)
        assert answer.status_code == 422
        errors = field_error(answer.text, item, "reply")
        assert len(errors) == 1 and says in errors[0]
        assert re.search(rf'<details class="answer-form" id="reply-{item}" open>', answer.text)
    # a reply the log could not keep (it looks like it holds a secret)
    answer = post(
        client,
        run_id,
        ann,
        decision="reply",
        item_id=item,
        note="n",
        reply="use password=hunter2hunter2",
    )
    assert answer.status_code == 422
    assert "looks like it holds a secret" in field_error(answer.text, item, "reply")[0]
    assert "use password=hunter2hunter2" in unescape(answer.text)  # kept, to correct
    assert recorded(shop.guard, run_id) == before


def test_an_answer_without_the_csrf_token_is_refused(
    shop: Shop, payment: tuple[str, str], team: Team, client: TestClient
) -> None:
    run_id, item = payment
    before = recorded(shop.guard, run_id)
    for fields in (
        {"decision": "approve_edit", "arg.amount": "1"},
        {"decision": "reply", "reply": "no"},
    ):
        answer = client.post(
            "/decide", data={"item_id": item, "note": "n", **fields}, headers=team.bearer("Ann")
        )
        assert answer.status_code == 403
    assert recorded(shop.guard, run_id) == before


# -- two reviewers --------------------------------------------------------------------------------


def test_the_second_answer_gets_who_decided_first(
    shop: Shop, payment: tuple[str, str], team: Team, client: TestClient
) -> None:
    run_id, item = payment
    ann, bob = team.bearer("Ann"), team.bearer("Bob")
    csrf = csrf_of(client.get(f"/runs/{run_id}", headers=ann).text)  # Ann's page, loaded before
    kind, _ = decide(
        client,
        run_id,
        bob,
        decision="approve_edit",
        item_id=item,
        note="b",
        **{"arg.amount": "900"},
    )
    assert kind == "ok"
    after = recorded(shop.guard, run_id)
    for fields in (
        {"decision": "approve_edit", "arg.amount": "800"},
        {"decision": "approve_edit_resume", "arg.amount": "800"},
        {"decision": "reply", "reply": "use the EU entity"},
        {"decision": "reject"},
    ):
        answer = client.post(
            "/decide", data={"csrf": csrf, "item_id": item, "note": "a", **fields}, headers=ann
        )
        assert answer.status_code == 200, fields
        kind, text = shown_flash(answer.text) or ("", "")
        assert kind == "error" and "already approved" in text and "by Bob" in text, (fields, text)
    # the same edit again, by Bob: a repeat, nothing changes
    kind, text = decide(
        client,
        run_id,
        bob,
        decision="approve_edit",
        item_id=item,
        note="b",
        **{"arg.amount": "900"},
    )
    assert kind == "warn" and "nothing changed" in text
    assert recorded(shop.guard, run_id) == after


@pytest.mark.parametrize(
    "other",
    [{"decision": "approve_edit", "arg.amount": "700"}, {"decision": "reply", "reply": "no"}],
)
def test_racing_answers_exactly_one_lands(
    store_url: str, team: Team, clock: Clock, other: dict[str, str]
) -> None:
    shop = make_shop(store_url)
    try:
        run_id, item = shop.awaiting(amount=5000)
        with TestClient(console(shop, team, clock), base_url="http://127.0.0.1:8765") as client:
            forms = {
                "Ann": {"decision": "approve_edit", "arg.amount": "900"},
                "Bob": other,
            }
            csrfs = {
                who: csrf_of(client.get(f"/runs/{run_id}", headers=team.bearer(who)).text)
                for who in forms
            }
            start = threading.Barrier(len(forms))
            outcomes: dict[str, tuple[str, str]] = {}

            def answer(who: str) -> None:
                data = {"csrf": csrfs[who], "item_id": item, "note": who, **forms[who]}
                start.wait()
                page = client.post("/decide", data=data, headers=team.bearer(who))
                outcomes[who] = shown_flash(page.text) or ("", page.text)

            threads = [threading.Thread(target=answer, args=(who,)) for who in forms]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        kinds = sorted(kind for kind, _ in outcomes.values())
        assert kinds == ["error", "ok"], outcomes
        winner = next(who for who, (kind, _) in outcomes.items() if kind == "ok")
        loser = next(who for who in forms if who != winner)
        assert f"by {winner}" in outcomes[loser][1]
        approval = shop.guard.store.review_item(item)
        assert approval is not None and approval.resolved_by == winner
        decided = [d for d in shop.guard.history(run_id) if d.item_id == item]
        assert [(d.by, d.note) for d in decided] == [(winner, winner)]
        charge = next(a for a in shop.guard.log(run_id).actions if a.tool == "charge")
        if winner == "Ann":
            assert charge.args == {"amount": 900} and approval.answer == {"args": {"amount": 900}}
        else:
            assert approval.answer == (
                {"args": {"amount": 700}}
                if other["decision"] == "approve_edit"
                else {"reply": "no"}
            )
    finally:
        shop.guard.close()


# -- in a real browser ----------------------------------------------------------------------------


@browser_only
def test_browser_edit_an_amount_and_approve(
    shop: Shop, team: Team, served: str, browser: Any
) -> None:
    run_id, item = shop.awaiting(amount=5000)
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{served}/runs/{run_id}")
        browser_log_in(page, team.tokens["Eve"])
        page.click(f"#edit-{item} summary")
        amount = page.locator(f"#form-{item}-edit input[name='arg.amount']")
        assert amount.input_value() == "5000"
        amount.fill("900")
        page.fill(f"#note-{item}-edit", "cap it at 900")
        page.click(f"#form-{item}-edit button:has-text('Approve with these arguments')")
        page.wait_for_selector("#flash")
        assert "with amount=900 (by Eve)" in (page.text_content("#flash") or "")
        assert page.url.endswith(f"#item-{item}")
        assert "with amount=900" in (page.text_content("#history") or "")
    finally:
        context.close()
    approval = shop.guard.store.review_item(item)
    assert approval is not None
    assert (approval.resolution, approval.resolved_by, approval.answer) == (
        "approved",
        "Eve",
        {"args": {"amount": 900}},
    )
    charge = next(a for a in shop.guard.log(run_id).actions if a.tool == "charge")
    assert charge.args == {"amount": 900}
    assert shop.guard.verify(run_id).ok
