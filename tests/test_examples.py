"""The examples run, and the policy checker agrees with the shop's policy file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_policy_file_example() -> None:
    done = run("examples/policy_file.py")
    assert done.returncode == 0, done.stderr
    assert "awaiting_approval" in done.stdout
    assert "refund_payment -> succeeded" in done.stdout
    # the carrier refused the connection, declared not_done in the file: a plain failure
    assert "create_shipment    reversible   failed" in done.stdout


def test_check_the_shop_policies_against_its_toolkit() -> None:
    cli = ("-c", "from guardrail.cli import main; main()", "policy", "check")
    ok = run(*cli, "examples/shop_policies.yaml", "--tools", "examples.policy_file:TOOLKIT")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    missing = run(
        *cli, "examples/shop_policies.yaml", "--tools", "examples.policy_file:TOOLS", "--json"
    )
    assert missing.returncode == 1
    assert missing.stdout.count('"missing_undo_tool"') == 3


def test_langchain_agent_example() -> None:
    done = run("examples/langchain_agent.py")
    assert done.returncode == 0, done.stderr
    assert "ann resumed; the agent says: Report written and published." in done.stdout
    assert "files restored byte for byte: True" in done.stdout
