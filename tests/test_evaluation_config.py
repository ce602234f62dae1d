"""The evaluation section refuses what cannot work, naming the field: a hook path that is not
`package.module:attribute`, does not import, names nothing, refuses its options or makes an object
with no hook point; duplicate hook names. A reload that brings such a hook is refused too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from switchpoint.config import parse_config
from switchpoint.engine.building import build_engine
from switchpoint.errors import ConfigError
from tests.sidecar_harness import running_sidecar, write_config
from tests.support.evaluation_hooks import PATH
from tests.test_cascade_rpc import KEYS, cascade_config

BASE_URL = "http://127.0.0.1:9/v1"


def _with_hooks(*hooks: dict[str, Any]) -> dict[str, Any]:
    return cascade_config(BASE_URL, hooks=list(hooks))


def _build_errors(config: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        build_engine(parse_config(config), environ=KEYS)
    return raised.value.errors


def _parse_errors(config: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_config(config)
    return raised.value.errors


@pytest.mark.parametrize(
    ("path", "field", "message"),
    [
        ("no_such_module_here:Hook", "path", "cannot import module 'no_such_module_here'"),
        (f"{PATH}:Missing", "path", f"module '{PATH}' has no attribute 'Missing'"),
        (f"{PATH}:PATH", "path", f"'{PATH}:PATH' is not a class or factory"),
        (f"{PATH}:refuses_options", "options", "refused its options: unknown options: ['x']"),
        (f"{PATH}:NoPoints", "path", "made an object with none of after_routing"),
    ],
)
def test_a_hook_that_does_not_load_names_its_field(path: str, field: str, message: str) -> None:
    errors = _build_errors(
        _with_hooks({"path": f"{PATH}:Scorer"}, {"path": path, "options": {"x": 1}})
    )
    assert len(errors) == 1
    assert errors[0].startswith(f"evaluation.hooks[1].{field}: ")
    assert message in errors[0]


def test_a_hook_path_must_name_module_and_attribute() -> None:
    errors = _parse_errors(_with_hooks({"path": "tests.support.evaluation_hooks.Scorer"}))
    assert len(errors) == 1
    assert errors[0].startswith("evaluation.hooks[0].path: String should match pattern")


def test_hook_names_must_differ_and_budgets_are_bounded() -> None:
    errors = _parse_errors(
        _with_hooks(
            {"path": f"{PATH}:Scorer"},
            {"path": f"{PATH}:Veto", "name": f"{PATH}:Scorer"},
            {"path": f"{PATH}:Veto", "timeout_ms": 0, "typo": 1},
        )
    )
    assert errors == [
        "evaluation.hooks[2].timeout_ms: must be >= 1",
        "evaluation.hooks[2].typo: unknown key",
    ]
    errors = _parse_errors(
        _with_hooks({"path": f"{PATH}:Scorer"}, {"path": f"{PATH}:Veto", "name": f"{PATH}:Scorer"})
    )
    assert errors == [f"evaluation.hooks[1].name: duplicate hook name '{PATH}:Scorer'"]


def test_a_check_must_be_a_known_one() -> None:
    errors = _parse_errors(cascade_config(BASE_URL, cascade={"checks": ["empty", "rude"]}))
    assert len(errors) == 1
    assert errors[0].startswith("evaluation.cascade.checks[1]: ")


async def test_a_reload_with_a_hook_that_does_not_load_is_refused(tmp_path: Path) -> None:
    config_path = tmp_path / "switchpoint.yaml"
    good = _with_hooks({"path": f"{PATH}:Scorer"})
    async with running_sidecar(good, KEYS, config_path=config_path) as sidecar:
        write_config(config_path, _with_hooks({"path": "no_such_module_here:Hook"}))
        result = await sidecar.sidecar.reload()
        runner = sidecar.sidecar.engine.evaluation.runner
    assert not result.ok
    assert any(
        e.startswith("evaluation.hooks[0].path: cannot import module") for e in result.errors
    )
    assert runner.runs("after_attempt")
