"""Structured logs: JSON lines, secrets never printed, prompts only when opted in."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from switchpoint.config import parse_config
from switchpoint.logs import (
    configure_logging,
    direct_json,
    switchpoint_handler,
    unconfigure_logging,
)
from switchpoint.request_log import MAX_PENDING, RequestLog
from switchpoint.security.secrets import config_secrets
from switchpoint.v1 import router_pb2 as pb
from tests.sidecar_harness import routing_config, running_sidecar, user
from tests.support.log_records import RecordedLogs, recorded
from tests.support.waiting import wait_until

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


def _request(logger: logging.Logger, *, log_prompts: bool = False, **overrides: Any) -> None:
    """One request line, outside an event loop: written at once."""
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
    RequestLog(logger, log_prompts=log_prompts).add(**fields)


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


@pytest.fixture
def request_records() -> Iterator[RecordedLogs]:
    with recorded("switchpoint.request") as handler:
        yield handler


async def test_request_lines_wait_for_the_flush_and_keep_their_end_time(
    request_records: RecordedLogs,
) -> None:
    log = RequestLog(logging.getLogger("switchpoint.request"), flush_after_s=60.0)
    logger = logging.getLogger("switchpoint.request")
    before = time.time()
    for i in range(3):
        log.add(
            request_id=f"r-{i}", rpc="Route", tenant="", stage="", model="m", outcome="ok",
            latency_ms=0.5, cost_usd=0.0, attempts=0, prompt=[("user", "hi")],
        )  # fmt: skip
    after = time.time()
    assert request_records.records == []
    await asyncio.sleep(0.05)
    assert request_records.records == []
    log.flush()
    assert [r.request_id for r in request_records.records] == ["r-0", "r-1", "r-2"]  # type: ignore[attr-defined]
    for record in request_records.records:
        assert before <= record.created <= after
        assert record.getMessage() == "Route ok m 0.5ms"
        assert record.prompt_chars == 2  # type: ignore[attr-defined]
        assert record.name == logger.name
    log.flush()
    assert len(request_records.records) == 3


async def test_request_lines_reach_the_handlers_by_themselves(
    request_records: RecordedLogs,
) -> None:
    log = RequestLog(logging.getLogger("switchpoint.request"), flush_after_s=0.01)
    log.add(
        request_id="r", rpc="Chat", tenant="t", stage="", model="m", outcome="ok",
        latency_ms=1.0, cost_usd=0.1, attempts=1,
    )  # fmt: skip
    await wait_until(lambda: len(request_records.records) == 1, timeout_s=5)
    for i in range(MAX_PENDING):
        log.add(
            request_id=f"b-{i}", rpc="Chat", tenant="t", stage="", model="m", outcome="ok",
            latency_ms=1.0, cost_usd=0.1, attempts=1,
        )  # fmt: skip
    # A full queue is written at once, without waiting for the timer.
    assert len(request_records.records) == 1 + MAX_PENDING


async def test_nothing_is_queued_when_info_is_off(request_records: RecordedLogs) -> None:
    logger = logging.getLogger("switchpoint.request")
    logger.setLevel(logging.WARNING)
    log = RequestLog(logger, flush_after_s=60.0)
    log.add(
        request_id="r", rpc="Chat", tenant="t", stage="", model="m", outcome="ok",
        latency_ms=1.0, cost_usd=0.1, attempts=1,
    )  # fmt: skip
    logger.setLevel(logging.INFO)
    log.flush()
    assert request_records.records == []


async def test_a_stopping_sidecar_writes_the_lines_still_waiting(
    request_records: RecordedLogs,
) -> None:
    config = routing_config()
    config["telemetry"] = {"request_log_flush_ms": 10_000}
    async with running_sidecar(config) as running:
        await running.stub.Route(pb.RouteRequest(messages=user("hello")))
        with pytest.raises(grpc.aio.AioRpcError):
            await running.stub.Route(pb.RouteRequest(messages=[]))  # refused: still logged
        assert request_records.records == []
    outcomes = [(r.rpc, r.outcome) for r in request_records.records]  # type: ignore[attr-defined]
    assert outcomes == [("Route", "ok"), ("Route", "invalid_argument")]


async def test_a_route_the_router_answers_alone_logs_like_any_other(
    request_records: RecordedLogs,
) -> None:
    config = routing_config()
    config["telemetry"] = {"request_log_flush_ms": 0}
    async with running_sidecar(config) as running:
        await running.stub.Route(
            pb.RouteRequest(messages=user("héllo"), routing=pb.RoutingOptions(tenant="acme"))
        )
    [record] = request_records.records
    fields = record.__dict__
    assert (fields["rpc"], fields["outcome"], fields["tenant"]) == ("Route", "ok", "acme")
    assert fields["model"] in {"cheap", "fast", "strong", "tiny"}
    assert fields["prompt_chars"] == 5
    assert "prompt" not in fields
    assert fields["latency_ms"] > 0
    assert len(fields["request_id"]) == 32


def _line_values(i: int, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "request_id": f"r-{i} Bearer tok-{i}",
        "rpc": "Chat",
        "tenant": SECRET if i % 2 else "acmé",
        "stage": "",
        "model": "fast" if i % 3 else "",
        "outcome": "ok",
        "latency_ms": 12.3456 + i,
        "cost_usd": 0.0012 * i,
        "attempts": i,
        "cache": "exact" if i == 2 else "",
        "prompt": [("system", "be brief"), ("user", f'plan "{i}" with {SECRET}\n日本')],
    }
    values.update(overrides)
    return values


@pytest.mark.parametrize("log_prompts", [False, True])
def test_direct_lines_are_the_lines_logging_would_write(
    log_prompts: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the sidecar's own JSON handler is the only one, request lines skip the logging
    machinery; what reaches the stream must be byte for byte what the records would give,
    redaction included."""
    monkeypatch.setattr(time, "time", lambda: 1_765_000_000.123456)
    written: dict[str, io.StringIO] = {}
    # Fresh loggers: pytest's capture attaches itself to those it saw before.
    names = {
        path: f"switchpoint.request.{path}-{uuid.uuid4().hex}" for path in ("direct", "records")
    }
    for path, name in names.items():
        logger = logging.getLogger(name)
        logger.propagate = False
        logger.setLevel(logging.INFO)
        written[path] = io.StringIO()
        handlers: list[logging.Handler] = [
            switchpoint_handler(secrets=[SECRET], stream=written[path])
        ]
        if path == "records":
            handlers.append(RecordedLogs())  # a second handler: lines go through logging
        for handler in handlers:
            logger.addHandler(handler)
        try:
            assert (direct_json(logger) is not None) == (path == "direct")
            log = RequestLog(logger, log_prompts=log_prompts)
            for i in range(6):
                log.add(**_line_values(i, prompt=7 if i == 5 else _line_values(i)["prompt"]))
        finally:
            for handler in handlers:
                logger.removeHandler(handler)
    direct = written["direct"].getvalue()
    records = written["records"].getvalue()
    assert direct.replace(names["direct"], "L") == records.replace(names["records"], "L")
    assert SECRET not in direct
    assert "tok-1" not in direct
    lines = _lines(written["direct"])
    assert [line["request_id"] for line in lines] == [f"r-{i} Bearer [redacted]" for i in range(6)]
    assert ("prompt" in lines[0]) == log_prompts


async def test_a_batch_of_direct_lines_is_one_write() -> None:
    class Counting(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            self.writes += 1
            return super().write(text)

    stream = Counting()
    logger = logging.getLogger(f"switchpoint.request.batch-{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = switchpoint_handler(stream=stream)
    logger.addHandler(handler)
    try:
        log = RequestLog(logger, flush_after_s=60.0)
        for i in range(5):
            log.add(**_line_values(i))
        assert stream.writes == 0  # queued, not written
        log.flush()
        assert stream.writes == 1
        assert [line["attempts"] for line in _lines(stream)] == [0, 1, 2, 3, 4]
    finally:
        logger.removeHandler(handler)
