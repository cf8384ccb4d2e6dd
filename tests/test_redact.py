"""Secret detection: a corpus of credentials that must be caught and ordinary values that must
pass untouched; and redaction everywhere a value leaves a call (errors, reasons, spans, keys,
external ids), asserted on what is stored and shown."""

from __future__ import annotations

import hashlib
import random
import string
import uuid

import pytest

from guardrail import Guard, RunHalted
from guardrail.redact import REDACTED, is_card, looks_secret, redact, redact_text

RNG = random.Random(20261201)
ALNUM = string.ascii_letters + string.digits


def rand(n: int, alphabet: str = ALNUM) -> str:
    return "".join(RNG.choice(alphabet) for _ in range(n))


def luhn_complete(prefix: str, length: int) -> str:
    body = prefix + "".join(RNG.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        if is_card(body + check):
            return body + check
    raise AssertionError("no check digit")


def grouped(number: str) -> str:
    return " ".join(number[i : i + 4] for i in range(0, len(number), 4))


def secrets_corpus() -> list[str]:
    upper = string.ascii_uppercase + string.digits
    out: list[str] = []
    for _ in range(6):
        out += [
            "AKIA" + rand(16, upper),
            f"aws_secret_access_key = {rand(40)}",
            "ghp_" + rand(36),
            "gho_" + rand(36),
            "github_pat_" + rand(22) + "_" + rand(59),
            "AIza" + rand(35, ALNUM + "_-"),
            "sk_live_" + rand(24),
            "rk_test_" + rand(24),
            "xoxb-" + rand(12, string.digits) + "-" + rand(24),
            "eyJhbGciOiJIUzI1NiJ9." + rand(30) + "." + rand(43, ALNUM + "_-"),
            f"Authorization: Bearer {rand(32)}",
            f"Basic {rand(20)}==",
            f"postgresql://app:{rand(12)}@db.internal:5432/shop",
            f"redis://default:{rand(16)}@cache:6379/0",
            f"password={rand(10)}",
            f"the passphrase: {rand(14)}",
            "sk-proj-" + rand(40),
            luhn_complete("4", 16),
            luhn_complete("51", 16),
            grouped(luhn_complete("37", 15)),
        ]
    out += [
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "https://hooks.slack.com/services/T000/B000/" + rand(24),
        "SG." + rand(22) + "." + rand(43),
        "npm_" + rand(36),
        "glpat-" + rand(20),
        "whsec_" + rand(32),
        f"card 4111 1111 1111 1111 was declined (cvv: {rand(3, string.digits)})",
    ]
    return out


def ordinary_corpus() -> list[str]:
    out: list[str] = []
    for i in range(10):
        out += [
            f"ord_{1000 + i}",
            str(uuid.UUID(int=RNG.getrandbits(128))),
            hashlib.sha256(str(i).encode()).hexdigest(),
            hashlib.sha1(str(i).encode()).hexdigest(),  # a git commit
            f"/srv/agent/files/report-{i}.txt",
            f"https://example.com/orders/{i}?page=2",
            f"customer{i}@example.com",
            f"2026-12-{i + 1:02d}T10:00:00Z",
            f"The parcel for order {i} left the warehouse this morning.",
            f"+1 415 555 {2600 + i}",
            str(1_700_000_000_000 + i),  # a timestamp in ms (13 digits)
            f"Book: Dune, vol. {i}",
        ]
    out += ["book", "token_count", "password reset email sent", "Bearer", "sk", "AKIA", "secret"]
    return out


def test_the_corpus_is_big_enough() -> None:
    assert len(secrets_corpus()) >= 100 and len(ordinary_corpus()) >= 100


@pytest.mark.parametrize("secret", secrets_corpus())
def test_every_secret_is_caught(secret: str) -> None:
    assert looks_secret(secret), secret
    assert REDACTED in redact_text(secret)


@pytest.mark.parametrize("value", ordinary_corpus())
def test_ordinary_values_pass(value: str) -> None:
    assert redact_text(value) == value


def test_keys_named_like_secrets_and_header_lists() -> None:
    value = {
        "aws_secret_access_key": "abc",
        "secret_key": "abc",
        "passphrase": "abc",
        "pin": "1234",
        "cvv": "123",
        "api-key": "abc",
        "headers": [["Authorization", "Basic dXNlcjpwYXNz"], ["X-Api-Key", "k"], ["Accept", "*/*"]],
        "spin": "fast",  # a word that ends in a secret's name is not one
        "tokens_used": 12,
        "card": 4111111111111111,
    }
    out = redact(value, (), "args")
    for key in ("aws_secret_access_key", "secret_key", "passphrase", "pin", "cvv", "api-key"):
        assert out[key] == REDACTED, key
    assert out["headers"] == [
        ["Authorization", REDACTED],
        ["X-Api-Key", REDACTED],
        ["Accept", "*/*"],
    ]
    assert out["spin"] == "fast" and out["tokens_used"] == 12 and out["card"] == REDACTED


def test_redaction_keeps_context() -> None:
    assert redact_text("postgresql://u:pw@host/db") == f"postgresql://u:{REDACTED}@host/db"
    assert redact_text("password=hunter2 then") == f"password={REDACTED} then"
    assert redact_text("card 4111111111111111 declined") == f"card {REDACTED} declined"


# -- everywhere a value leaves the call ---------------------------------------------------------

CARD = "4111 1111 1111 1111"
KEY = "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"


def test_a_tool_error_is_redacted_everywhere(guard: Guard) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from guardrail import telemetry

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    old = telemetry._tracer
    telemetry._tracer = provider.get_tracer("test")
    try:

        @guard.tool(effect="reversible", undo=lambda: None)
        def charge(amount: int) -> None:
            raise ValueError(f"card {CARD} with cvv=123 refused; key {KEY}")

        with pytest.raises(RunHalted) as halted, guard.run() as run:
            charge(amount=5)
    finally:
        telemetry._tracer = old
    shown = [str(halted.value), guard.log(run.id).action(1).error or "", run.status]
    shown.append(guard.require_run(run.id).reason or "")
    shown += [s.status.description or "" for s in exporter.get_finished_spans()]
    assert halted.value.__cause__ is None and halted.value.__suppress_context__
    for text in shown:
        assert "4111" not in text and KEY not in text and "cvv=123" not in text, text
    assert REDACTED in (guard.log(run.id).action(1).error or "")


def test_declared_keys_and_external_ids_from_redacted_paths(guard: Guard) -> None:
    @guard.tool(
        effect="irreversible",
        idempotency_key="args.card_token",
        redact=["args.card_token"],
        external_ids={"token": "args.card_token", "charge": "result.id", "list": "result.ids"},
    )
    def pay(card_token: str, amount: int) -> dict[str, object]:
        return {"id": "ch_1", "ids": [1, 2]}

    with guard.run() as run:
        pay(card_token="tok_visa_9f8e7d", amount=5)
        pay(card_token="tok_visa_9f8e7d", amount=5)  # the keyed key still deduplicates
    action = guard.log(run.id).actions
    assert len(action) == 1
    assert "tok_visa" not in action[0].idempotency_key
    assert action[0].external_ids == {"token": REDACTED, "charge": "ch_1", "list": [1, 2]}
    assert guard.find("tok_visa_9f8e7d") == []


def test_the_args_hash_is_keyed(tmp_path) -> None:
    """The store alone cannot test guesses against the hash of a redacted value."""
    url = f"sqlite:///{tmp_path / 'g.db'}"
    hashes = []
    for key in ("k" * 32, "j" * 32):
        with Guard(store=url, hash_key=key) as guard:

            @guard.tool(effect="read_only", redact=["args.cvv"])
            def check(cvv: str) -> bool:
                return True

            with guard.run() as run:
                check(cvv="123")
            hashes.append(guard.log(run.id).action(1).args_hash)
            plain = hashlib.sha256(b'{"cvv":"123"}').hexdigest()
            assert hashes[-1] != plain
    assert hashes[0] != hashes[1]


def test_snapshots_are_sealed_and_undos_get_them_back(guard: Guard) -> None:
    files = {".env": "STRIPE_KEY=" + KEY + "\n"}

    def restore(snapshot: dict[str, str]) -> None:
        files.update(snapshot)

    @guard.tool(
        effect="reversible",
        undo=restore,
        snapshot=lambda args: {args["name"]: files[args["name"]]},
    )
    def write_file(name: str, text: str) -> None:
        files[name] = text

    @guard.tool(effect="read_only")
    def fail() -> None:
        raise OSError("disk gone")

    with pytest.raises(RunHalted), guard.run() as run:
        write_file(name=".env", text="EMPTY=1\n")
        fail()
    assert files[".env"] == "STRIPE_KEY=" + KEY + "\n"  # restored intact from the snapshot
    stored = guard.log(run.id).action(1).snapshot
    assert set(stored) == {"sealed", "key_id"} and KEY not in str(stored)
    assert "STRIPE_KEY" not in guard.log(run.id).model_dump_json()
