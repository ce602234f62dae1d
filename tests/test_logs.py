"""Structured logs: JSON lines, secrets never printed, prompts only when opted in."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from switchpoint.cli import config_secrets
from switchpoint.config import parse_config
from switchpoint.logs import configure_logging, request_log, unconfigure_logging
from tests.sidecar_harness import routing_config

SECRET = "sk-test-0123456789abcdef"
ADMIN = "admin-token-xyz"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    root = logging.getLogger()
    level = root.level
    yield out
    unconfigure_logging()
    root.setLevel(level)


def _raise(exc: Exception) -> None:
    raise exc


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _request(logger: logging.Logger, **overrides: Any) -> None:
    fields: dict[str, Any] = {
        "request_id": "r-1",
        "rpc": "Chat",
        "tenant": "acme",
        "stage": "",
        "model": "fast",
        "outcome": "ok",
        "latency_ms": 12.3456,
        "cost_usd": 0.0012,
        "attempts": 1,
        "prompt": [("system", "be brief"), ("user", "my secret plan")],
    }
    fields.update(overrides)
    request_log(logger, **fields)


def test_lines_are_json_with_the_fixed_fields_and_extras(stream: io.StringIO) -> None:
    configure_logging("INFO", stream=stream)
    logger = logging.getLogger("switchpoint.test")
    logger.info("hello %s", "world", extra={"replica": "a", "n": 3})
    logger.debug("not at info")
    try:
        _raise(ValueError("boom"))
    except ValueError:
        logger.exception("failed")
    first, second = _lines(stream)
    assert first["msg"] == "hello world"
    assert first["level"] == "INFO"
    assert first["logger"] == "switchpoint.test"
    assert first["ts"].endswith("Z")
    assert "T" in first["ts"]
    assert first["replica"] == "a"
    assert first["n"] == 3
    assert second["level"] == "ERROR"
    assert "ValueError: boom" in second["exc"]


def test_configuring_twice_replaces_the_handler(stream: io.StringIO) -> None:
    configure_logging("INFO", stream=io.StringIO())
    configure_logging("INFO", stream=stream)
    configure_logging("INFO", stream=stream)
    logging.getLogger("switchpoint.test").info("once")
    assert [line["msg"] for line in _lines(stream)] == ["once"]


def test_secrets_never_appear_in_msg_args_extra_or_exceptions(stream: io.StringIO) -> None:
    configure_logging("INFO", secrets=[SECRET, ADMIN, ""], stream=stream)
    logger = logging.getLogger("switchpoint.test")
    logger.info(f"key is {SECRET}")
    logger.info("header %s and %r", f"Bearer {SECRET}", {"authorization": ADMIN})
    logger.info("extra", extra={"headers": {"x-api-key": SECRET}, "tokens": [ADMIN, 1]})
    try:
        _raise(RuntimeError(f"401 for key {SECRET}"))
    except RuntimeError:
        logger.exception("call failed")
    _request(logger, prompt=[("user", f"use {SECRET}")], log_prompts=True)
    text = stream.getvalue()
    assert SECRET not in text
    assert ADMIN not in text
    lines = _lines(stream)
    assert lines[0]["msg"] == "key is [redacted]"
    assert lines[1]["msg"] == "header Bearer [redacted] and {'authorization': '[redacted]'}"
    assert lines[2]["headers"] == {"x-api-key": "[redacted]"}
    assert lines[2]["tokens"] == ["[redacted]", 1]
    assert "401 for key [redacted]" in lines[3]["exc"]
    assert lines[4]["prompt"] == [{"role": "user", "content": "use [redacted]"}]


def test_request_log_is_one_line_without_prompt_text(stream: io.StringIO) -> None:
    configure_logging("INFO", stream=stream)
    logger = logging.getLogger("switchpoint.requests")
    _request(logger)
    _request(logger, request_id="r-2", outcome="error", cache="exact", prompt=None)
    assert "secret plan" not in stream.getvalue()
    first, second = _lines(stream)
    assert first["level"] == "INFO"
    assert {k: first[k] for k in ("request_id", "rpc", "tenant", "model", "outcome")} == {
        "request_id": "r-1",
        "rpc": "Chat",
        "tenant": "acme",
        "model": "fast",
        "outcome": "ok",
    }
    assert first["latency_ms"] == 12.346
    assert first["cost_usd"] == 0.0012
    assert first["attempts"] == 1
    assert first["prompt_chars"] == len("be brief") + len("my secret plan")
    assert "prompt" not in first
    assert second["request_id"] == "r-2"
    assert second["cache"] == "exact"
    assert "prompt_chars" not in second


def test_request_log_includes_prompt_only_when_opted_in(stream: io.StringIO) -> None:
    configure_logging("INFO", stream=stream)
    _request(logging.getLogger("switchpoint.requests"), log_prompts=True)
    (line,) = _lines(stream)
    assert line["prompt"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "my secret plan"},
    ]


def test_text_format_keeps_the_fields(stream: io.StringIO) -> None:
    configure_logging("INFO", json=False, secrets=[SECRET], stream=stream)
    _request(logging.getLogger("switchpoint.requests"), tenant=SECRET)
    (line,) = stream.getvalue().splitlines()
    assert " INFO switchpoint.requests: Chat ok fast 12.3ms " in line
    assert 'request_id="r-1"' in line
    assert 'tenant="[redacted]"' in line
    assert SECRET not in line


def test_secrets_come_from_the_configured_variables() -> None:
    data = routing_config()
    data["providers"]["openai"]["api_key_env"] = "OPENAI_KEY"
    data["providers"]["other"] = {
        "kind": "anthropic",
        "base_url": "http://127.0.0.1:9",
        "api_key_env": "UNSET_KEY",
    }
    data["admin"] = {"token_env": "ADMIN_TOKEN"}
    config = parse_config(data)
    environ = {"OPENAI_KEY": SECRET, "ADMIN_TOKEN": ADMIN, "UNSET_KEY": "", "OTHER": "x"}
    assert sorted(config_secrets(config, environ)) == sorted([SECRET, ADMIN])
