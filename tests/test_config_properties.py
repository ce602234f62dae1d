"""The config loader under arbitrary input: whatever YAML-like structure it is given, `parse_config`
returns a `Config` or raises `ConfigError` listing problems as `path: message`, never anything
else; a config it accepts comes back the same through its own dump and through YAML."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from switchpoint.config import Config, default_config_path, load_config, parse_config
from switchpoint.errors import ConfigError
from tests.sidecar_harness import routing_config, with_changes
from tests.support.fuzzing import search

# What yaml.safe_load can hand over: scalars (dates too), lists, mappings with scalar keys.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.dates()
    | st.sampled_from([0, -1, 1, 2**32, "*", "", "balanced", "cheap", "openai", "day"])
)
_keys = st.text(max_size=12) | st.integers(-2, 2) | st.none() | st.booleans()
yaml_like = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=8,
)


def full_config() -> dict[str, Any]:
    """routing_config() with rules of every kind, dumped with every default spelled out: each key
    of every section is there for a mutation to reach."""
    rules = with_changes(
        routing_config(),
        limits=[{"name": "l", "match": {"tenant": "*"}, "rpm": 60, "concurrency": 2}],
        budgets=[
            {
                "name": "b",
                "match": {"model": "strong"},
                "window": "day",
                "limit_usd": 5,
                "pressure": {"at_share": 0.8, "strategy": "thrifty"},
            }
        ],
        cache={"enabled": True},
    )
    dumped: dict[str, Any] = parse_config(rules).model_dump(mode="json")
    return dumped


FULL = full_config()
DEFAULT = yaml.safe_load(default_config_path().read_text())


def _paths(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a nested structure that holds a value."""
    found = [at]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*at, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*at, index))
    return found


def _like(value: Any) -> st.SearchStrategy[Any]:
    """Values of `value`'s own type: a damage that mostly keeps the config valid."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers() | st.integers(-1, 10)
    if isinstance(value, float):
        return st.floats() | st.floats(0, 1)
    if isinstance(value, str):
        return st.text(max_size=12) | st.sampled_from(["*", "", "balanced", "cheap", "openai"])
    if isinstance(value, list):
        return st.permutations(value).flatmap(lambda items: st.sampled_from([items, items[1:]]))
    return yaml_like


@st.composite
def mutated_configs(draw: st.DrawFn) -> Any:
    """A valid config with one to three places changed (to a value of its type or to anything),
    removed, or given an extra key."""
    config = copy.deepcopy(draw(st.sampled_from([FULL, DEFAULT])))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(config)))
        if not path:
            config = draw(yaml_like)
            continue
        parent = config
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["retype", "retype", "replace", "remove", "add"]))
        if action == "retype":
            parent[path[-1]] = draw(_like(parent[path[-1]]))
        elif action == "replace":
            parent[path[-1]] = draw(yaml_like)
        elif action == "remove":
            del parent[path[-1]]
        elif isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(_keys)] = draw(yaml_like)
        if not isinstance(config, dict | list):
            break
    return config


def _judged(data: object) -> Config | None:
    """The config, or None after checking that the refusal lists its problems with paths."""
    try:
        config = parse_config(data)
    except ConfigError as refused:
        errors = refused.errors
    else:
        event("accepted")
        return config
    event("refused")
    assert errors
    for error in errors:
        path, separator, message = error.partition(": ")
        assert separator, error
        assert path.strip(), error
        assert message.strip(), error
    return None


def _round_trips(config: Config) -> None:
    dumped = config.model_dump(mode="json")
    assert parse_config(dumped) == config
    assert parse_config(yaml.safe_load(yaml.safe_dump(dumped))) == config


@search(200)
@given(data=yaml_like)
def test_any_yaml_structure_is_a_config_or_a_config_error(data: object) -> None:
    config = _judged(data)
    if config is not None:
        _round_trips(config)


@search(200)
@given(data=mutated_configs())
def test_a_damaged_config_is_refused_with_paths_or_accepted_and_round_trips(data: object) -> None:
    config = _judged(data)
    if config is not None:
        _round_trips(config)


@pytest.mark.parametrize("base", [FULL, DEFAULT], ids=["full", "default"])
def test_the_bases_of_the_damage_are_valid_and_round_trip(base: dict[str, Any]) -> None:
    _round_trips(parse_config(copy.deepcopy(base)))


@pytest.mark.parametrize("value", ["2026-01-01", ".nan", ".inf", "{1: 2}", "!!binary aGk="])
def test_extra_body_that_no_request_body_can_carry_is_refused_at_load(
    tmp_path: Path, value: str
) -> None:
    """YAML reads these as a date, NaN, infinity, an integer key and bytes: JSON has none of
    them, so every call to the model would fail; the load fails instead, naming the field."""
    data = copy.deepcopy(FULL)
    data["models"][0]["extra_body"] = {"seed": "SEED_VALUE"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data).replace("SEED_VALUE", value))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert refused.value.errors == [
        "models[0].extra_body: must be plain JSON (string keys; no NaN, infinity, dates or binary)"
    ]


def test_a_key_that_reads_as_nothing_is_quoted_in_its_path() -> None:
    data = copy.deepcopy(FULL)
    data[""] = 1
    data["server"]["\r"] = 1
    data["providers"]["openai"]["headers"] = {" x": 5}
    with pytest.raises(ConfigError) as refused:
        parse_config(data)
    assert sorted(refused.value.errors) == [
        "['']: unknown key",
        "providers.openai.headers[' x']: Input should be a valid string",
        "server['\\r']: unknown key",
    ]
