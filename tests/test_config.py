"""Config loading: the embedded default is valid, and a bad file lists every error with its path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from switchpoint.cli import main
from switchpoint.config import default_config_path, load_config, parse_config
from switchpoint.errors import ConfigError
from tests.sidecar_harness import routing_config

REPO = Path(__file__).resolve().parent.parent


def _errors(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value.errors


def test_embedded_default_is_the_one_make_run_serves_and_valid() -> None:
    # One copy: the packaged file is the repo's, and `make run` serves it.
    assert default_config_path() == REPO / "python" / "switchpoint" / "default.yaml"
    assert "CONFIG ?= python/switchpoint/default.yaml" in (REPO / "Makefile").read_text()
    config = load_config(default_config_path())
    assert {"openai", "anthropic", "local"} <= set(config.providers)
    assert config.providers["local"].managed is not None
    assert config.routing.fallback_chain[-1] == "smollm2-135m"


def test_negative_price_is_reported_with_its_path() -> None:
    data = routing_config()
    data["models"][2]["price"]["input_per_mtok"] = -1
    assert _errors(data) == ["models[2].price.input_per_mtok: must be >= 0"]


def test_an_output_estimate_the_decision_cannot_carry_is_refused() -> None:
    data = routing_config()
    data["routing"] = {"default_output_tokens": 2**32}
    assert _errors(data) == ["routing.default_output_tokens: must be <= 4294967295"]


def test_every_error_is_listed_not_just_the_first() -> None:
    data = routing_config()
    data["models"][0]["quality"] = 1.5
    data["models"][1]["context_window"] = 0
    data["models"][3]["colour"] = "blue"
    del data["models"][2]["latency_prior"]
    errors = _errors(data)
    assert "models[0].quality: must be <= 1" in errors
    assert "models[1].context_window: must be >= 1" in errors
    assert "models[3].colour: unknown key" in errors
    assert "models[2].latency_prior: required" in errors
    assert len(errors) == 4


def test_unknown_top_level_section_is_an_error() -> None:
    data = routing_config()
    data["routnig"] = {}
    assert _errors(data) == ["routnig: unknown key"]


def test_cross_references_are_checked() -> None:
    data = routing_config()
    data["models"][1]["provider"] = "nope"
    data["models"][3]["name"] = "cheap"
    data["routing"]["stages"]["ui"] = {"models": ["fast", "ghost"], "strategy": "warp-speed"}
    data["routing"]["fallback_chain"] = ["phantom"]
    data["routing"]["default_strategy"] = "nonsense"
    errors = _errors(data)
    assert "models[1].provider: unknown provider 'nope'" in errors
    assert "models[3].name: duplicate model name 'cheap'" in errors
    assert "routing.stages.ui.models[1]: unknown model 'ghost'" in errors
    assert "routing.stages.ui.strategy: unknown strategy 'warp-speed'" in errors
    assert "routing.fallback_chain[0]: unknown model 'phantom'" in errors
    assert "routing.default_strategy: unknown strategy 'nonsense'" in errors


def test_custom_strategy_weights_must_not_all_be_zero() -> None:
    data = routing_config()
    data["routing"]["strategies"]["nothing"] = {"cost": 0, "latency": 0, "quality": 0}
    assert _errors(data) == ["routing.strategies.nothing: weights must not all be zero"]


def test_provider_needs_a_base_url_unless_managed() -> None:
    data = routing_config()
    del data["providers"]["openai"]["base_url"]
    assert _errors(data) == [
        "providers.openai.base_url: required (or set providers.openai.managed)"
    ]


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=r"\(root\): must be a mapping"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [unclosed\n")
    with pytest.raises(ConfigError, match=r"\(yaml\)"):
        load_config(broken)


def test_config_check_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(routing_config()))
    assert main(["config", "check", str(good)]) == 0
    assert "ok (1 providers, 4 models, 1 stages)" in capsys.readouterr().out

    data = routing_config()
    data["models"][2]["price"]["input_per_mtok"] = -1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main(["config", "check", str(bad)]) == 1
    assert "models[2].price.input_per_mtok: must be >= 0" in capsys.readouterr().err
