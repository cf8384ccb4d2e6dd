"""The house rules, checked with the tests: lint, format, strict typing, and import boundaries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("langchain", "langgraph", "agents", "mcp", "openai")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_ruff_lint() -> None:
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "guardrail").rglob("*.py")), ids=str)
def test_core_imports_no_framework_adapter_or_pack(path: Path) -> None:
    if path.resolve().parent.name in ("adapters", "policies") or "adapters" in path.parts:
        pytest.skip("adapters and packs may import frameworks")
    if "policies" in path.relative_to(ROOT).parts:
        pytest.skip("policy packs are data")
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            assert top not in FRAMEWORKS, f"{path.name} imports the framework {name}"
            assert not name.startswith(("guardrail.adapters", "guardrail.policies")), (
                f"{path.name} imports {name}: the core must not depend on adapters or packs"
            )


def test_importing_guardrail_loads_no_framework() -> None:
    code = (
        "import sys, guardrail; "
        f"print([m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r}])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_adapters_and_policies_import_as_guardrail_subpackages() -> None:
    import guardrail.adapters
    import guardrail.policies

    assert guardrail.adapters.__doc__
    assert guardrail.policies.__doc__
