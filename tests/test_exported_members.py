"""The public API is what `guardrail` exports: pinned here, so adding or removing a name is a
deliberate change (this list, docs/api.md and the changelog), and every name is documented."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest

import guardrail

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = [
    "Action",
    "ActionLog",
    "Approval",
    "CallRefused",
    "CallRejected",
    "Compensation",
    "Conflict",
    "Decision",
    "ErrorResult",
    "Guard",
    "GuardrailError",
    "Injected",
    "OwnershipLost",
    "PlannedStep",
    "Policy",
    "PolicyError",
    "ResultNotReplayable",
    "ResultWarning",
    "Retry",
    "Review",
    "ReviewItem",
    "Run",
    "RunHalted",
    "RunNotFound",
    "RunRecord",
    "RunStateError",
    "StoreError",
    "UndoTool",
    "UnknownTool",
    "Verification",
    "Witness",
    "current_run",
]


def test_all_is_the_expected_list() -> None:
    assert sorted(guardrail.__all__) == EXPECTED
    assert len(set(guardrail.__all__)) == len(guardrail.__all__), "a name is listed twice"


def test_every_public_attribute_is_in_all() -> None:
    """Nothing public leaks out of `guardrail` without being listed (submodules aside)."""
    public = {
        name
        for name, value in vars(guardrail).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public == set(guardrail.__all__)


def _own_doc(obj: Any) -> str | None:
    """The object's own docstring: not one inherited from a base class (BaseModel, Exception)."""
    if inspect.isclass(obj):
        return obj.__dict__.get("__doc__")
    if inspect.isfunction(obj):
        return obj.__doc__
    return type(obj).__dict__.get("__doc__")  # a marker instance, such as Injected


@pytest.mark.parametrize("name", EXPECTED)
def test_every_name_is_importable_defined_here_and_documented(name: str) -> None:
    obj = getattr(importlib.import_module("guardrail"), name)
    module = getattr(obj, "__module__", None) or type(obj).__module__
    assert module.split(".")[0] == "guardrail", f"{name} comes from {module}: wrap it or drop it"
    doc = _own_doc(obj)
    assert doc and doc.strip(), f"guardrail.{name} has no docstring of its own"


@pytest.mark.parametrize("name", EXPECTED)
def test_every_name_is_in_the_api_reference(name: str) -> None:
    assert f"| `{name}` |" in (ROOT / "docs" / "api.md").read_text(), (
        f"docs/api.md has no row for {name}"
    )
