"""The HTTP front's refusals over raw HTTP (httpx): bad JSON and types, oversize bodies, unknown
models, paths and methods, unsupported fields, and tenant keys. Every refusal is OpenAI's error
body with the status an OpenAI client expects, never an HTML page or a traceback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from switchpoint.security.keys import key_digest
from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import hang
from tests.sidecar_harness import RunningSidecar, one_model_config, running_sidecar

ENV = {"T_OAI": OPENAI_TEST_KEY}
ACME_KEY = "sp-acme-Hq2w8ZkV1"
LIMITED_KEY = "sp-lim-Xc4v7BnM3"
BODY_LIMIT = 4096
HELLO = [{"role": "user", "content": "hello"}]


def _config(server: OpenAIServer, *, keys: bool = False) -> dict[str, Any]:
    config = one_model_config(server.base_url, api_key_env="T_OAI", per_mtok=1.0)
    config["models"].append({**config["models"][0], "name": "other"})
    config["routing"] = {"stages": {"chat": {"models": ["gpt"]}, "deep": {"models": ["other"]}}}
    config["server"] = {"limits": {"max_message_bytes": BODY_LIMIT, "messages": 8}}
    config["telemetry"] = {"request_log_flush_ms": 0}
    if keys:
        config["auth"] = {
            "keys": [
                {"sha256": key_digest(ACME_KEY), "tenant": "acme"},
                {
                    "sha256": key_digest(LIMITED_KEY),
                    "tenant": "beta",
                    "models": ["gpt"],
                    "stages": ["chat"],
                },
            ]
        }
    return config


@pytest_asyncio.fixture
async def running(openai_server: OpenAIServer) -> AsyncIterator[RunningSidecar]:
    async with running_sidecar(_config(openai_server), ENV, http=True) as running:
        yield running


@pytest.fixture
def running_port(running: RunningSidecar) -> int:
    assert running.sidecar.http_port is not None
    return running.sidecar.http_port


@pytest_asyncio.fixture
async def http(running: RunningSidecar) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=_base(running)) as client:
        yield client


@pytest_asyncio.fixture
async def keyed(openai_server: OpenAIServer) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        running_sidecar(_config(openai_server, keys=True), ENV, http=True) as running,
        httpx.AsyncClient(base_url=_base(running)) as client,
    ):
        yield client


def _base(running: RunningSidecar) -> str:
    return f"http://127.0.0.1:{running.sidecar.http_port}"


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in error["message"]
    return error


async def test_malformed_json_is_400(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/chat/completions", content=b'{"model": "gpt", ')
    assert "not valid JSON" in _error(response, 400)["message"]
    response = await http.post("/v1/chat/completions", json=[1, 2])
    assert "JSON object" in _error(response, 400)["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "gpt", "messages": "hello"}, "messages"),
        ({"model": "gpt", "messages": HELLO, "temperature": "hot"}, "temperature"),
        ({"model": 7, "messages": HELLO}, "model"),
        ({"model": "gpt", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        (
            {
                "model": "gpt",
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "user", "content": [{"type": "image_url", "image_url": {}}]},
                ],
            },
            "messages[1].content[0].type",
        ),
        ({"model": "gpt", "messages": HELLO, "stop": [1]}, "stop[0]"),
        ({"model": "gpt", "messages": HELLO, "stream": "yes"}, "stream"),
        ({"model": "gpt", "messages": HELLO, "n": 3}, "n"),
        ({"model": "gpt", "messages": HELLO, "logit_bias": {"1": 2}}, "logit_bias"),
        ({"model": "gpt", "messages": HELLO, "response_format": {"type": "json_object"}}, None),
        ({"model": "gpt", "messages": HELLO, "brand_new_field": 1}, "brand_new_field"),
    ],
)
async def test_wrong_types_and_unsupported_fields_name_the_field(
    http: httpx.AsyncClient, body: dict[str, Any], field: str | None
) -> None:
    error = _error(await http.post("/v1/chat/completions", json=body), 400)
    expected = field or "response_format"
    assert error["message"].startswith(f"{expected}:")
    assert error["param"] == expected


async def test_text_parts_are_joined_and_neutral_values_accepted(
    http: httpx.AsyncClient, openai_server: OpenAIServer
) -> None:
    parts = [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]
    body = {
        "model": "gpt",
        "messages": [{"role": "user", "content": parts}],
        "n": 1,
        "presence_penalty": 0,
        "response_format": {"type": "text"},
        "stop": "END",
    }
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    sent = openai_server.requests[-1].body
    assert isinstance(sent, dict)
    assert sent["messages"][-1]["content"] == "hello"
    assert sent["stop"] == ["END"]


async def test_a_body_over_the_limit_is_refused_unread(
    http: httpx.AsyncClient, running_port: int
) -> None:
    big = json.dumps({"model": "gpt", "messages": [{"role": "user", "content": "x" * 10000}]})
    error = _error(await http.post("/v1/chat/completions", content=big), 413)
    assert "server.limits.max_message_bytes" in error["message"]

    # The answer comes while the body is still unsent: a declared length over the limit is
    # refused from the headers alone, and a chunked body as soon as the bytes passed it.
    declared = b"content-length: 100000000\r\n\r\n" + b"{" * 100
    assert await _answer_to_unfinished_body(running_port, declared) == 413
    chunked = b"transfer-encoding: chunked\r\n\r\n" + b"400\r\n" + b" " * 1024 + b"\r\n"
    assert (
        await _answer_to_unfinished_body(running_port, chunked, repeat=BODY_LIMIT // 1024 + 2)
        == 413
    )


async def _answer_to_unfinished_body(port: int, rest: bytes, repeat: int = 1) -> int:
    """The status answered to a POST whose body is never finished."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head, _, chunk = rest.partition(b"\r\n\r\n")
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n" + head + b"\r\n\r\n")
        for _ in range(repeat):
            writer.write(chunk)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5.0)
        return int(status_line.split()[1])
    finally:
        writer.close()


async def test_too_many_messages_is_413(http: httpx.AsyncClient) -> None:
    body = {"model": "gpt", "messages": [{"role": "user", "content": ""}] * 9}
    error = _error(await http.post("/v1/chat/completions", json=body), 413)
    assert "server.limits.messages" in error["message"]


async def test_unknown_model_path_and_method(http: httpx.AsyncClient) -> None:
    body = {"model": "gpt-99", "messages": HELLO}
    error = _error(await http.post("/v1/chat/completions", json=body), 404)
    assert error["code"] == "model_not_found"
    _error(await http.get("/v1/nothing"), 404)
    _error(await http.get("/v1/chat/completions"), 405)
    _error(await http.post("/v1/models"), 405)


async def test_bad_control_headers_name_the_header(http: httpx.AsyncClient) -> None:
    body = {"model": "gpt", "messages": HELLO}
    for header, value in (("x-switchpoint-priority", "urgent"), ("x-switchpoint-cache", "off")):
        response = await http.post("/v1/chat/completions", json=body, headers={header: value})
        assert _error(response, 400)["message"].startswith(f"{header}:")


async def test_controls_and_decision_headers(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/chat/completions",
        json={"model": "switchpoint/auto", "messages": HELLO},
        headers={"x-switchpoint-stage": "deep", "x-switchpoint-request-id": "req-42"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["id"] == "req-42"
    assert response.headers["x-switchpoint-request-id"] == "req-42"
    assert response.headers["x-switchpoint-model"] == "other"
    assert response.headers["x-switchpoint-level"] == "stage"
    assert response.headers["x-switchpoint-provider"] == "oai"
    assert response.headers["x-switchpoint-cache"] == "miss"
    assert response.headers["x-switchpoint-attempts"] == "1 other:ok"
    assert float(response.headers["x-switchpoint-cost-usd"]) > 0


async def test_health(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "SERVING"})


async def test_keys_missing_wrong_and_limited(keyed: httpx.AsyncClient) -> None:
    body = {"model": "gpt", "messages": HELLO}
    _error(await keyed.post("/v1/chat/completions", json=body), 401)
    wrong = {"authorization": "Bearer sp-nobody"}
    _error(await keyed.post("/v1/chat/completions", json=body, headers=wrong), 403)
    limited = {"authorization": f"Bearer {LIMITED_KEY}"}
    other = {"model": "other", "messages": HELLO}
    _error(await keyed.post("/v1/chat/completions", json=other, headers=limited), 403)
    deep = {"model": "switchpoint/stage/deep", "messages": HELLO}
    _error(await keyed.post("/v1/chat/completions", json=deep, headers=limited), 403)
    _error(await keyed.get("/v1/models"), 401)
    listed = (await keyed.get("/v1/models", headers=limited)).json()["data"]
    names = [entry["id"] for entry in listed]
    assert "other" not in names
    assert "switchpoint/stage/deep" not in names
    assert "gpt" in names
    assert "switchpoint/stage/chat" in names


async def test_a_tenant_header_cannot_claim_another_tenant(keyed: httpx.AsyncClient) -> None:
    body = {"model": "gpt", "messages": HELLO}
    acme = {"authorization": f"Bearer {ACME_KEY}"}
    claim = {**acme, "x-switchpoint-tenant": "beta"}
    error = _error(await keyed.post("/v1/chat/completions", json=body, headers=claim), 403)
    assert "tenant" in error["message"]
    own = {**acme, "x-switchpoint-tenant": "acme"}
    assert (await keyed.post("/v1/chat/completions", json=body, headers=own)).status_code == 200


async def test_concurrent_calls_all_answer(http: httpx.AsyncClient) -> None:
    body = {"model": "gpt", "messages": HELLO}
    answers = await asyncio.gather(
        *(http.post("/v1/chat/completions", json=body) for _ in range(8))
    )
    assert [a.status_code for a in answers] == [200] * 8
    assert len({a.json()["id"] for a in answers}) == 8


async def test_calls_over_max_concurrent_rpcs_are_refused_at_once(
    openai_server: OpenAIServer,
) -> None:
    openai_server.script.push(hang(10.0))
    config = _config(openai_server)
    config["server"]["limits"]["max_concurrent_rpcs"] = 1
    body = {"model": "gpt", "messages": HELLO}
    async with (
        running_sidecar(config, ENV, http=True) as running,
        httpx.AsyncClient(base_url=_base(running)) as client,
    ):
        held = asyncio.create_task(client.post("/v1/chat/completions", json=body))
        for _ in range(500):
            if openai_server.requests:
                break
            await asyncio.sleep(0.01)
        error = _error(await client.post("/v1/chat/completions", json=body), 429)
        held.cancel()
    assert "server.limits.max_concurrent_rpcs (1)" in error["message"]
