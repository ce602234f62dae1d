"""A client that hangs up on an HTTP stream stops the call at once: the upstream request is
closed (the loopback provider sees the disconnect) and the attempt is charged as docs/quota.md
says for a stream cancelled after its first token: prompt + the tokens streamed."""

from __future__ import annotations

import json

import httpx
import pytest

from switchpoint.tokens import TokenCounter
from tests.providers.anthropic_server import AnthropicServer
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import hang
from tests.sidecar_harness import running_sidecar
from tests.support.log_records import recorded
from tests.support.waiting import wait_until
from tests.test_charging_rpc import (
    ENV,
    MAX_TOKENS,
    PER_TOKEN_USD,
    PROMPT,
    TOKENIZER,
    _config,
    _nothing_held,
    _prompt_tokens,
    _spent,
)


async def test_hanging_up_a_stream_cancels_upstream_and_charges_prompt_and_tokens(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    openai_server.script.push(hang(10.0, after_chunks=1))
    config = {**_config(openai_server, anthropic_server), "telemetry": {"request_log_flush_ms": 0}}
    with recorded("switchpoint.request") as lines:
        async with running_sidecar(config, ENV, http=True) as sidecar:
            prompt = await _prompt_tokens(sidecar)
            text = await _first_token_then_hang_up(sidecar.sidecar.http_port)
            await wait_until(lambda: openai_server.disconnects == 1)
            await _nothing_held(sidecar)
            spent, reserved = await _spent(sidecar)
    streamed = TokenCounter().count_text(text, TOKENIZER)
    assert streamed > 1
    assert spent == pytest.approx((prompt + streamed) * PER_TOKEN_USD)
    assert reserved == 0.0
    outcomes = [(vars(r)["rpc"], vars(r)["outcome"]) for r in lines.records]
    assert ("http.chat", "cancelled") in outcomes


async def _first_token_then_hang_up(port: int | None) -> str:
    """The first streamed delta; the connection is closed right after it, mid-stream."""
    body = {
        "model": "gpt",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
        "stream": True,
    }
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    async with (
        httpx.AsyncClient() as client,
        client.stream("POST", url, json=body, headers={"x-switchpoint-tenant": "acme"}) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                return str(event["choices"][0]["delta"]["content"])
    raise AssertionError("the stream ended before its first token")
