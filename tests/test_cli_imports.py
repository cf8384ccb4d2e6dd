"""The CLI's cold start: what a read command (``guardrail runs --json``, ``show --json``) imports
in a new process.

Three checks, by who owns the imports:

- the CLI's own modules (guardrail/cli/**) import no heavy module at module level or on the read
  paths: every import statement they run is recorded, also of modules the core loaded first
  (which ``python -X importtime`` would attribute to the core);
- the modules neither the CLI nor the core's read path need (the web console and its server,
  Alembic, CEL, Jinja, the MCP SDK, rich for --json) are not imported at all;
- SQLAlchemy and SQLModel are not imported at all: that needs the store's read path without them,
  so the check runs only once ``import guardrail.store`` no longer loads them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from guardrail import Guard

ROOT = Path(__file__).resolve().parent.parent

# imported by neither the CLI nor the core on a read path
NEVER = (
    "alembic",
    "cel",
    "celpy",
    "guardrail.web",
    "jinja2",
    "mcp",
    "prompt_toolkit",
    "rich",  # --json prints no tables
    "starlette",
    "uvicorn",
)
# loaded by the store (SQLModel tables) today; out once its read path is plain SQL
STORE = ("sqlalchemy", "sqlmodel")
# heavy modules the CLI's own modules must not import, whoever else does
HEAVY = (*NEVER, *STORE, "yaml", "anyio", "httpx", "pydantic")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    url = f"sqlite:///{tmp_path_factory.mktemp('cold') / 'guardrail.db'}"
    with Guard(store=url) as guard:
        guard.policy("create_order", effect="reversible", undo=lambda args: None)
        with guard.run(agent="shop") as run:
            run.call("create_order", {"item": "book"}, fn=lambda item: {"id": "ord_1"})
    return url, run.id


def imported(*args: str) -> set[str]:
    """The modules ``guardrail ARGS`` imports in a new process (from ``-X importtime``)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "guardrail.cli", *args],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "80"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [x for x in result.stderr.splitlines() if x.startswith("import time:")]
    names = {x.rsplit("|", 1)[1].strip() for x in lines[1:]}  # the first line is the header
    assert "guardrail.cli.runs" in names
    return names


# Run a command with every import statement of a guardrail.cli module recorded, the modules
# already loaded by someone else included (``-X importtime`` shows only the first import).
RECORDING = """
import builtins, json, os, runpy, sys
seen = []
real = builtins.__import__
def recording(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__") or ""
    if level == 0 and importer.startswith("guardrail.cli"):
        seen.extend([importer, n] for n in [name, *(name + "." + f for f in fromlist or ())])
    return real(name, globals, locals, fromlist, level)
builtins.__import__ = recording
sys.argv = ["guardrail", *sys.argv[1:]]
try:
    runpy.run_module("guardrail.cli", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    assert not exc.code, exc.code
finally:
    builtins.__import__ = real
    with open(os.environ["GUARDRAIL_TEST_IMPORTS"], "w") as out:
        json.dump(seen, out)
"""


def cli_imports(tmp_path: Path, *args: str) -> list[tuple[str, str]]:
    """(importer, module) for every import a guardrail.cli module made in ``guardrail ARGS``."""
    record = tmp_path / "imports.json"
    result = subprocess.run(
        [sys.executable, "-c", RECORDING, *args],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "80", "GUARDRAIL_TEST_IMPORTS": str(record)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return [(importer, name) for importer, name in json.loads(record.read_text())]


def heavy(name: str, modules: tuple[str, ...]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


@pytest.mark.parametrize("command", [["runs", "--json"], ["show", "RUN", "--json"]])
def test_the_cli_modules_import_nothing_heavy(
    store: tuple[str, str], command: list[str], tmp_path: Path
) -> None:
    url, run_id = store
    seen = cli_imports(tmp_path, *(run_id if a == "RUN" else a for a in command), "--store", url)
    assert ("guardrail.cli", "guardrail.cli.runs") in seen  # the recording works
    assert sorted({f"{by} imports {name}" for by, name in seen if heavy(name, HEAVY)}) == []


def test_the_recording_sees_a_heavy_import_already_loaded(tmp_path: Path) -> None:
    """`db current` imports SQLAlchemy (it needs it), which the store loaded first today."""
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    seen = cli_imports(tmp_path, "db", "upgrade", "--store", url)
    assert ("guardrail.cli.db", "sqlalchemy") in seen


@pytest.mark.parametrize("command", [["runs", "--json"], ["show", "RUN", "--json"]])
def test_a_read_command_loads_no_console_alembic_or_cel(
    store: tuple[str, str], command: list[str]
) -> None:
    url, run_id = store
    names = imported(*(run_id if a == "RUN" else a for a in command), "--store", url)
    assert sorted(n for n in names if heavy(n, NEVER)) == []


def _store_loads_sqlalchemy() -> bool:
    code = "import sys, guardrail.store; print('sqlalchemy' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return result.stdout.strip() == "True"


@pytest.mark.skipif(
    _store_loads_sqlalchemy(),
    reason="the store still loads SQLAlchemy on import; runs once its read path is plain SQL",
)
def test_a_read_command_loads_no_sqlalchemy(store: tuple[str, str]) -> None:
    url, run_id = store
    for command in (["runs", "--json"], ["show", run_id, "--json"]):
        names = imported(*command, "--store", url)
        assert sorted(n for n in names if heavy(n, STORE)) == []
