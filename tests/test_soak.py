"""The soak of benchmarks/soak.py, small enough for every test run.

Random agent runs are killed with SIGKILL at random moments (crash points, inside tools and
undos, raw kills from the driver), recovered in new processes, sometimes aborted (and killed
again); then the stored log is held against the side effects the tools really made. The driver
runs as its own process (it forks its children, which a test process with threads should not).

``GUARDRAIL_SOAK_KILLS=1000 pytest -m slow tests/test_soak.py`` runs the full size.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOAK = ROOT / "benchmarks" / "soak.py"


def run_soak(kills: int, seed: int, max_seconds: float) -> tuple[int, int, str]:
    """(exit code, kills done, output) of the soak driver as a process of its own."""
    done = subprocess.run(
        [
            sys.executable,
            str(SOAK),
            "--kills",
            str(kills),
            "--seed",
            str(seed),
            "--max-seconds",
            str(max_seconds),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=max_seconds + 120,
    )
    found = re.search(r"processes killed with SIGKILL: (\d+)", done.stdout)
    return done.returncode, int(found.group(1)) if found else 0, done.stdout + done.stderr


def test_soak_small() -> None:
    """30 kills (bounded to about a minute on a loaded machine): nothing lost, nothing twice."""
    code, kills, output = run_soak(kills=30, seed=7, max_seconds=60)
    assert code == 0, output
    assert "other problems: 0" in output, output
    assert kills >= 10, f"too few kills to mean anything:\n{output}"
    assert "hash chains valid" in output


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("GUARDRAIL_SOAK_KILLS"), reason="set GUARDRAIL_SOAK_KILLS=N for a big soak"
)
def test_soak_big() -> None:
    kills = int(os.environ["GUARDRAIL_SOAK_KILLS"])
    code, done, output = run_soak(kills=kills, seed=11, max_seconds=kills * 2.0)
    assert code == 0, output
    assert done >= kills, output


# -- the checks themselves find what they are meant to find ---------------------------------


def load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("guardrail_soak", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["guardrail_soak"] = module
    spec.loader.exec_module(module)
    return module


def test_checks_catch_lost_records_and_double_undos(tmp_path: Path) -> None:
    """A run without kills passes; doctored worlds (a side effect nobody recorded, an undo done
    twice, an undo missing) are each reported."""
    soak = load_soak()
    driver = soak.Soak(f"sqlite:///{tmp_path / 's.db'}", tmp_path, seed=3)
    run_id = "doctored"
    calls = [
        ("create_order", {"key": f"{run_id}.0"}),
        ("charge", {"key": f"{run_id}.1"}),
        ("send_email", {"key": f"{run_id}.2"}),
    ]
    plan = soak.Plan(run_id=run_id, calls=calls, hold=False, agent_raises=True, kill="none")
    guard = soak.build(driver.store, driver.world, driver.tools)
    soak.agent(guard, plan)  # in this process: the agent raises, the run halts and compensates
    guard.close()
    driver.check(plan)
    assert driver.stats.problems == []
    world = driver.world.folder / f"{run_id}.log"
    assert Counter(world.read_text().splitlines()) == Counter(
        [
            f"do create_order {run_id}.0",
            f"do charge {run_id}.1",
            f"do send_email {run_id}.2",
            f"undo charge {run_id}.1",
            f"undo create_order {run_id}.0",
        ]
    )
    original = world.read_text()

    def problems_with(text: str) -> list[str]:
        world.write_text(text)
        driver.stats.problems.clear()
        driver.check(plan)
        return list(driver.stats.problems)

    assert any("lost records" in p for p in problems_with(original + f"do charge {run_id}.9\n"))
    assert any(
        "happened 2 times" in p for p in problems_with(original + f"undo charge {run_id}.1\n")
    )
    missing_undo = original.replace(f"undo charge {run_id}.1\n", "")
    assert any("compensated but not undone" in p for p in problems_with(missing_undo))
