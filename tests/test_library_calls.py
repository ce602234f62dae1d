"""switchpoint.Router in-process against real loopback providers: chat, stream, fallback and a
budget refusal through the library, stats, and the RuntimeError a call outside the router's
`async with` block gets."""

from __future__ import annotations

from typing import Any

import pytest

import switchpoint
from switchpoint import QuotaExceededError, Router
from switchpoint.server.status import failure_for
from tests.providers.anthropic_server import AnthropicServer
from tests.providers.fixtures import ANTHROPIC_TEST_KEY, OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import echo_answer, error
from tests.sidecar_harness import one_model_config

ENV = {"T_OAI": OPENAI_TEST_KEY, "T_ANT": ANTHROPIC_TEST_KEY, "K": OPENAI_TEST_KEY}
HELLO = [{"role": "user", "content": "hello there"}]


def _two_providers(openai: OpenAIServer, anthropic: AnthropicServer) -> dict[str, Any]:
    common = {"context_window": 100000, "latency_prior": {"ttft_ms": 100, "tpot_ms": 10}}
    price = {"input_per_mtok": 1.0, "output_per_mtok": 2.0}
    dearer = {"input_per_mtok": 3.0, "output_per_mtok": 15.0}
    return {
        "providers": {
            "oai": {
                "kind": "openai",
                "base_url": openai.base_url,
                "api_key_env": "T_OAI",
                "retry": {"max_retries": 0},
            },
            "ant": {
                "kind": "anthropic",
                "base_url": anthropic.base_url,
                "api_key_env": "T_ANT",
                "retry": {"max_retries": 0},
            },
        },
        "models": [
            {
                **common,
                "name": "gpt-small",
                "provider": "oai",
                "price": price,
                "quality": 0.6,
                "upstream_model": "gpt-4o-mini",
            },
            {
                **common,
                "name": "claude-small",
                "provider": "ant",
                "price": dearer,
                "quality": 0.7,
                "upstream_model": "claude-3-5-haiku-latest",
            },
        ],
        "routing": {"fallback_chain": ["gpt-small", "claude-small"], "stream_continuation": False},
    }


async def test_chat_answers_with_the_provider_reply_usage_cost_and_decision(
    openai_server: OpenAIServer,
) -> None:
    config = one_model_config(openai_server.base_url, api_key_env="K")
    async with Router.from_config(config, environ=ENV) as router:
        result = await router.chat(
            [switchpoint.Message("user", "what is routing")], max_tokens=20, tenant="acme"
        )
        stats = router.stats(models=["gpt"])
    assert result.content == echo_answer("gpt", "what is routing")
    assert (result.model, result.provider) == ("gpt", "oai")
    assert result.usage.input_tokens > 0
    assert result.usage.output_tokens > 0
    assert result.cost_usd == pytest.approx(
        (result.usage.input_tokens + result.usage.output_tokens) * 1000.0 / 1e6
    )
    assert [(a.model, a.outcome) for a in result.attempts] == [("gpt", "ok")]
    assert result.decision.model == "gpt"
    assert result.decision.request_id == result.request_id
    assert result.cache is None
    assert [(m.model, m.requests) for m in stats.models] == [("gpt", 1)]
    assert len(openai_server.requests) == 1


async def test_stream_yields_the_decision_first_and_the_whole_result_last(
    openai_server: OpenAIServer,
) -> None:
    config = one_model_config(openai_server.base_url, api_key_env="K")
    async with Router.from_config(config, environ=ENV) as router:
        chunks = [c async for c in router.stream(HELLO, model="gpt")]
    assert chunks[0].decision is not None
    assert chunks[0].decision.model == "gpt"
    assert all(c.decision is None for c in chunks[1:])
    last = chunks[-1]
    assert last.done
    assert last.result is not None
    assert not any(c.done for c in chunks[:-1])
    text = "".join(c.delta for c in chunks)
    assert text == echo_answer("gpt", "hello there") == last.result.content
    assert last.result.usage.output_tokens > 0


async def test_chat_falls_back_when_the_first_provider_fails(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    openai_server.script.push(error(500))
    async with Router.from_config(
        _two_providers(openai_server, anthropic_server), environ=ENV
    ) as router:
        result = await router.chat(
            HELLO, models=["gpt-small", "claude-small"], weights=(1.0, 0.0, 0.0)
        )
    assert result.model == "claude-small"
    assert [(a.model, a.outcome, a.error_class) for a in result.attempts] == [
        ("gpt-small", "error", "server_error"),
        ("claude-small", "ok", ""),
    ]
    assert result.content == echo_answer("claude-3-5-haiku-latest", "hello there")


async def test_a_spent_budget_refuses_with_quota_exceeded_and_calls_no_provider(
    openai_server: OpenAIServer,
) -> None:
    config = {
        **one_model_config(openai_server.base_url, api_key_env="K"),
        "budgets": [{"name": "daily", "window": "day", "limit_usd": 0.05}],
    }
    async with Router.from_config(config, environ=ENV) as router:
        served = await router.chat(HELLO, max_tokens=10)
        attempts_served, refusal = await _spend_until_refused(router)
        calls = len(openai_server.requests)
        budgets = router.stats().budgets
    assert served.cost_usd > 0
    assert refusal.kind == "budget"
    assert refusal.name == "daily"
    assert refusal.retry_after_s > 0
    # The same refusal the gRPC front answers with: one mapping for both.
    assert failure_for(refusal).code.name == "RESOURCE_EXHAUSTED"
    assert [b.name for b in budgets] == ["daily"]
    # Refused because the next call's estimate no longer fits; what was spent is what was served.
    assert budgets[0].remaining_usd < served.decision.estimated_cost_usd
    assert budgets[0].limit_usd - budgets[0].remaining_usd == pytest.approx(
        (1 + attempts_served) * served.cost_usd
    )
    # The refused call reached no provider: every provider call is a served one.
    assert calls == 1 + attempts_served


async def _spend_until_refused(router: Router) -> tuple[int, QuotaExceededError]:
    """How many more calls were served before the first refusal, and the refusal."""
    for served in range(50):  # bounded: each call spends, the budget ends well before
        try:
            await router.chat(HELLO, max_tokens=10)
        except QuotaExceededError as refusal:
            return served, refusal
    raise AssertionError("the budget never refused a call")


async def test_calls_outside_the_async_with_block_raise_runtime_error_naming_the_fix(
    openai_server: OpenAIServer,
) -> None:
    router = Router.from_config(
        one_model_config(openai_server.base_url, api_key_env="K"), environ=ENV
    )
    with pytest.raises(RuntimeError, match=r"not started: use it inside `async with"):
        await router.chat(HELLO)
    with pytest.raises(RuntimeError, match="not started"):
        router.stats()
    async with router:
        await router.route(HELLO)
    with pytest.raises(RuntimeError, match=r"closed: make calls inside its `async with` block"):
        await router.route(HELLO)
    with pytest.raises(RuntimeError, match="closed"):
        async for _ in router.stream(HELLO):
            pass
    with pytest.raises(RuntimeError, match="starts once"):
        await router.start()
    assert openai_server.requests == []
