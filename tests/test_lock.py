"""requirements.lock against pyproject.toml: the check `make lint` runs finds real drift."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _check_lock() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_lock", REPO / "scripts" / "check_lock.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _project() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return project


def test_the_committed_lock_satisfies_pyproject() -> None:
    lock = (REPO / "requirements.lock").read_text()
    assert _check_lock().problems(_project(), lock) == []


def test_a_tightened_or_new_requirement_is_reported() -> None:
    check = _check_lock()
    lock = (REPO / "requirements.lock").read_text()
    project = _project()
    project["dependencies"] = [*project["dependencies"], "grpcio>=999", "left-pad>=1"]
    found = check.problems(project, lock)
    assert any(line.startswith("grpcio>=999: requirements.lock pins ") for line in found)
    assert "left-pad>=1: not in requirements.lock" in found
    assert len(found) == 2
