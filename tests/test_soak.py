"""The soak of benchmarks/soak.py, small enough for every test run.

Random agent runs are killed with SIGKILL at random moments (crash points, inside tools and
undos, raw kills from the driver), recovered in new processes, sometimes aborted (and killed
again); then the stored log is held against the side effects the tools really made. The driver
runs as its own process (it forks its children, which a test process with threads should not).

The fault soak (``--faults``) adds agents paused with SIGSTOP past their lease while a recovery
watcher takes their run over, store writes that fail, and (PostgreSQL) terminated backends.

``GUARDRAIL_SOAK_KILLS=1000 pytest -m slow tests/test_soak.py`` runs the full size.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

POSTGRES_URL = os.environ.get("GUARDRAIL_TEST_POSTGRES_URL")
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


def run_fault_soak(store: str, faults: int, seed: int, max_seconds: float) -> tuple[int, str]:
    """(exit code, output) of the soak driver with ``--faults``, as a process of its own."""
    done = subprocess.run(
        [
            sys.executable,
            str(SOAK),
            "--faults",
            str(faults),
            "--store",
            store,
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
    return done.returncode, done.stdout + done.stderr


def figure(pattern: str, output: str) -> int:
    found = re.search(pattern, output)
    assert found, f"no {pattern!r} in:\n{output}"
    return int(found.group(1))


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_fault_soak_small(store: str) -> None:
    """About 30 faults (pauses past the lease with a takeover by a recovery watcher, failing
    store writes, terminated backends on PostgreSQL, SIGKILLs): nothing lost, nothing done
    twice, no effect by a process after it lost its run, every woken agent told so, every run
    settled and verified after a final recovery."""
    if store == "postgres" and not POSTGRES_URL:
        pytest.skip(
            "the PostgreSQL fault soak needs GUARDRAIL_TEST_POSTGRES_URL, e.g. "
            "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        )
    code, output = run_fault_soak(store, faults=30, seed=7, max_seconds=45)
    assert code == 0, output
    assert "other problems: 0" in output, output
    assert figure(r"faults injected: (\d+)", output) >= 15, output
    assert figure(r"paused agents whose run was taken over: (\d+)", output) >= 1, output
    assert "OwnershipLost" in output.split("woken agents after a takeover ended with:")[1], output


PROBE_AFTER_TAKEOVER = """
import sys, tempfile
from pathlib import Path
import soak
from guardrail import Guard

folder = Path(tempfile.mkdtemp(prefix="guardrail-soak-"))
url = f"sqlite:///{folder / 'soak.db'}"
Guard(store=url).close()
driver = soak.Soak(url, folder, seed=1, faults=True, heartbeat=0.05)
driver.play(
    soak.Plan(
        run_id="probe",
        calls=[("create_order", {"key": "probe.0"})],
        hold=False,
        agent_raises=False,
        kill="none",
        fault="pause",
        pause="after_start:1",
        wake="settled",
        watcher=True,
    )
)
print(soak.summary(driver.stats, faults=True))
sys.exit(1 if driver.stats.problems else 0)
"""


def test_probe_after_takeover() -> None:
    """An agent paused after its intent, before its tool's effect; the watcher takes the run
    over and settles it while it sleeps (the probe says "not done"); then it wakes, and its tool
    runs. The effect must be visible (in doubt, or undone), not recorded as failed."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE_AFTER_TAKEOVER],
        cwd=ROOT / "benchmarks",
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert "paused agents whose run was taken over: 1" in output, output
    assert done.returncode == 0, output


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


def test_checks_catch_effects_after_the_run_was_lost(tmp_path: Path) -> None:
    """The ledger says who did what when, the journal who owned the run when: an effect by a
    process that never owned the run, or more than the one call it was in the middle of after
    it lost it, is reported."""
    soak = load_soak()
    driver = soak.Soak(f"sqlite:///{tmp_path / 's.db'}", tmp_path, seed=3, faults=True)
    run_id = "late"
    calls = [("create_order", {"key": f"{run_id}.0"}), ("charge", {"key": f"{run_id}.1"})]
    plan = soak.Plan(run_id=run_id, calls=calls, hold=False, agent_raises=False, kill="none")
    guard = soak.build(driver.store, driver.world, driver.tools)
    soak.agent(guard, plan)  # completes: the agent owned the run from start to completion
    owner = guard.owner
    guard.close()
    driver.check(plan)
    assert driver.stats.problems == []
    ledger = driver.world.folder / f"{run_id}.who"
    original = ledger.read_text()
    assert [line.split("\t")[1:] for line in original.splitlines()] == [
        [owner, f"do create_order {run_id}.0"],
        [owner, f"do charge {run_id}.1"],
    ]

    def problems_with(extra: str) -> list[str]:
        ledger.write_text(original + extra)
        driver.stats.problems.clear()
        driver.check(plan)
        return list(driver.stats.problems)

    stranger = "|".join(part if i != 1 else "1" for i, part in enumerate(owner.split("|")))
    later = time.time() + 1
    assert any(
        "never owned the run" in p
        for p in problems_with(f"{later}\t{stranger}\tundo charge {run_id}.1\n")
    )
    twice = f"{later}\t{owner}\tundo charge {run_id}.1\n{later + 1}\t{owner}\tdo x {run_id}.9\n"
    assert any("went on after it lost the run" in p for p in problems_with(twice))
