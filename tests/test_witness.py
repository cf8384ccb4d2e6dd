"""What the keyed chain and an outside witness detect: a rewrite by a database writer without
the key; truncation, a deleted run and a rewrite even with the key, against a witness; the key
file itself."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from guardrail import Guard, RunHalted
from guardrail.cli import app
from guardrail.keys import Keys, key_id
from guardrail.store.journal import entry_hash


def shop_run(guard: Guard) -> str:
    @guard.tool(effect="reversible", undo=lambda: None)
    def charge(amount: int) -> dict[str, int]:
        return {"amount": amount}

    @guard.tool(effect="irreversible")
    def ship(item: str) -> None:
        raise TimeoutError("carrier down")

    with pytest.raises(RunHalted), guard.run(agent="shop") as run:
        charge(amount=5)
        charge(amount=7)
        ship(item="book")
    return run.id


@pytest.fixture
def db(tmp_path: Path) -> tuple[str, str]:
    path = tmp_path / "g.db"
    url = f"sqlite:///{path}"
    with Guard(store=url) as guard:
        run_id = shop_run(guard)
    return url, run_id


def sql(url: str, statement: str, *params: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        rows = conn.execute(statement, params).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def rechain(url: str, run_id: str, key_file: Path | None) -> None:
    """What a database writer can do: rewrite an argument and re-hash the rest of the chain,
    under the run's key if it has it (``key_file``), else with plain SHA-256."""
    keys = Keys([bytes.fromhex(key_file.read_text().split()[0]) if key_file else b"x" * 32])
    kid = keys.current if key_file else None
    rows = sql(url, "SELECT n, kind, body FROM journal WHERE run_id = ? ORDER BY n", run_id)
    prev, touched = "", {}
    for n, kind, body in rows:
        body = str(body).replace('{\\"amount\\":5}', '{\\"amount\\":500}')
        h = entry_hash(keys, kid, prev, str(kind), body)
        sql(
            url,
            "UPDATE journal SET body = ?, prev_hash = ?, hash = ? WHERE run_id = ? AND n = ?",
            body,
            prev,
            h,
            run_id,
            n,
        )
        for table, key, _values, _insert in json.loads(body):
            if table == "actions":
                touched[key["seq"]] = (prev, h)
        prev = h
    for seq, (p, h) in touched.items():
        sql(
            url,
            "UPDATE actions SET prev_hash = ?, hash = ? WHERE run_id = ? AND seq = ?",
            p,
            h,
            run_id,
            seq,
        )
    sql(
        url,
        "UPDATE actions SET args = '{\"amount\":500}', result = '{\"amount\":500}' "
        "WHERE run_id = ? AND seq = 1",
        run_id,
    )


def test_the_key_file_is_private_and_outside_the_store(db: tuple[str, str]) -> None:
    url, run_id = db
    key_file = Path(url.removeprefix("sqlite:///") + ".key")
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    key = bytes.fromhex(key_file.read_text().split()[0])
    stored = sql(url, "SELECT key_id FROM runs WHERE id = ?", run_id)[0][0]
    assert stored == key_id(key)
    dump = "\n".join(
        str(r) for t in ("runs", "actions", "journal") for r in sql(url, f"SELECT * FROM {t}")
    )
    assert key.hex() not in dump


def test_a_writer_without_the_key_cannot_rechain(db: tuple[str, str]) -> None:
    url, run_id = db
    with Guard(store=url) as guard:
        assert guard.verify(run_id).ok
    rechain(url, run_id, key_file=None)
    with Guard(store=url) as guard:
        verdict = guard.verify(run_id)
    assert not verdict.ok and any("was edited" in p for p in verdict.problems)


def test_without_the_key_nothing_is_claimed(db: tuple[str, str], tmp_path: Path) -> None:
    url, run_id = db
    with Guard(store=url, hash_key="another key, 32 bytes or longer!") as guard:
        verdict = guard.verify(run_id)
    assert not verdict.ok and "not available" in verdict.problems[0]


@pytest.mark.parametrize("attack", ["truncate", "delete", "rewrite-with-key"])
def test_a_witness_detects_what_the_chain_cannot(
    db: tuple[str, str], tmp_path: Path, attack: str
) -> None:
    url, run_id = db
    runner = CliRunner()
    exported = runner.invoke(app, ["export", run_id, "--store", url])
    assert exported.exit_code == 0, exported.output
    export = tmp_path / "run.json"
    export.write_text(exported.output)
    seen = json.loads(exported.output)["witness"]
    assert seen["run_id"] == run_id and seen["entries"] >= 5
    ok = runner.invoke(app, ["verify", "--against", str(export), "--store", url])
    assert ok.exit_code == 0, ok.output

    if attack == "truncate":  # cut the newest entries and what they wrote, with the key
        last = seen["entries"]
        sql(url, "DELETE FROM journal WHERE run_id = ? AND n > ?", run_id, last - 2)
        with Guard(store=url) as guard:
            guard.store.forget(run_id)
    elif attack == "delete":
        for table, column in (
            ("journal", "run_id"),
            ("actions", "run_id"),
            ("runs", "id"),
            ("review_items", "run_id"),
            ("compensations", "run_id"),
            ("external_ids", "run_id"),
        ):
            sql(url, f"DELETE FROM {table} WHERE {column} = ?", run_id)
    else:  # the writer has the key: rewrite an argument and re-hash the chain under it
        rechain(url, run_id, key_file=Path(url.removeprefix("sqlite:///") + ".key"))
        with Guard(store=url) as guard:
            assert guard.verify(run_id).ok  # the chain alone cannot tell

    result = runner.invoke(app, ["verify", "--against", str(export), "--store", url, "--json"])
    assert result.exit_code == 1, result.output
    problems = json.loads(result.output)["problems"][run_id]
    expected = {"truncate": "cut off", "delete": "gone", "rewrite-with-key": "rewritten"}[attack]
    assert any(expected in p for p in problems), problems


def test_the_witness_goes_out_with_the_runs_end(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from guardrail import telemetry, webhook

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    posted: list[dict[str, Any]] = []

    def post(url: str, body: bytes, headers: dict[str, str]) -> None:
        posted.append(json.loads(body))

    old_tracer, old_post = telemetry._tracer, webhook.post
    telemetry._tracer = provider.get_tracer("test")
    webhook.post = post
    try:
        with Guard(store=f"sqlite:///{tmp_path / 'g.db'}", webhook_url="http://127.0.0.1:9/") as g:
            run_id = shop_run(g)
            head = g.witness(run_id)

            @g.tool(effect="read_only")
            def look(item: str) -> str:
                return item

            with g.run() as done:
                look(item="a")
            done_head = g.witness(done.id)
    finally:
        telemetry._tracer, webhook.post = old_tracer, old_post
    assert posted[-1]["journal"] == {"entries": head.entries, "head": head.head}
    ends = {
        s.attributes["guardrail.run.id"]: s.attributes
        for s in exporter.get_finished_spans()
        if s.attributes is not None
        and s.name in ("guardrail pending_review", "guardrail completed")
    }
    assert ends[run_id]["guardrail.journal.head"] == head.head
    assert ends[done.id]["guardrail.journal.entries"] == done_head.entries


def test_processes_starting_at_once_share_one_key_file(tmp_path: Path) -> None:
    import multiprocessing

    from guardrail import keys

    path = tmp_path / "hash.key"

    def load(results: object) -> None:
        results.put(keys.load(store_path=None).current)  # type: ignore[attr-defined]

    os.environ["GUARDRAIL_HASH_KEY_FILE"] = str(path)
    try:
        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()
        procs = [ctx.Process(target=load, args=(results,)) for _ in range(8)]
        for p in procs:
            p.start()
        ids = {results.get(timeout=60) for _ in procs}
        for p in procs:
            p.join(timeout=60)
    finally:
        del os.environ["GUARDRAIL_HASH_KEY_FILE"]
    assert len(ids) == 1 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name != "hash.key"]  # no temp files left
