"""Cascades through a real gRPC server to a loopback OpenAI server: the cheapest candidate first,
escalating when a built-in check (empty, refusal, truncated) rejects its answer, every tier listed
in the attempts with why it was rejected, and each rejected answer still charged."""

from __future__ import annotations

from typing import Any

import pytest

from switchpoint.config import parse_config
from switchpoint.errors import ConfigError
from switchpoint.v1 import router_pb2 as pb
from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import error, ok
from tests.sidecar_harness import running_sidecar, user

# Dearest first in the stage's own list: a cascade must not take the list's order for the price's.
TIERS = ("large", "medium", "small")
PRICES = {"small": 1.0, "medium": 10.0, "large": 100.0}
KEYS = {"T_OAI": OPENAI_TEST_KEY}
QUALITY = {"small": 0.3, "medium": 0.6, "large": 0.95}


def cascade_config(base_url: str, **evaluation: Any) -> dict[str, Any]:
    """Three models of one loopback provider (small < medium < large in price and quality); the
    stage `tiers` cascades, the stage `ranked` does not."""
    models = [
        {
            "name": name,
            "provider": "oai",
            "price": {"input_per_mtok": PRICES[name], "output_per_mtok": PRICES[name]},
            "context_window": 100000,
            "quality": QUALITY[name],
            "latency_prior": {"ttft_ms": 100, "tpot_ms": 10},
        }
        for name in TIERS
    ]
    return {
        "providers": {
            "oai": {
                "kind": "openai",
                "base_url": base_url,
                "api_key_env": "T_OAI",
                "retry": {"max_retries": 0},
            }
        },
        "models": models,
        "routing": {
            "stages": {
                "tiers": {"models": list(TIERS), "strategy": "quality-first", "cascade": True},
                "ranked": {"models": list(TIERS), "strategy": "quality-first"},
            },
        },
        "evaluation": evaluation,
    }


def _chat(text: str, stage: str = "tiers", **params: Any) -> pb.ChatRequest:
    return pb.ChatRequest(
        messages=user(text),
        routing=pb.RoutingOptions(stage=stage),
        params=pb.GenerationParams(**params),
    )


def _tiers(reply: pb.ChatResponse) -> list[tuple[str, str, str]]:
    return [(a.model, a.outcome, a.error_class) for a in reply.attempts]


def _upstream_models(server: OpenAIServer) -> list[object]:
    return [r.body.get("model") for r in server.requests if isinstance(r.body, dict)]


async def test_a_cascade_escalates_twice_and_lists_why(openai_server: OpenAIServer) -> None:
    openai_server.script.push(ok(""), ok("I'm sorry, but I can't help with that."), ok("It is 42."))
    async with running_sidecar(cascade_config(openai_server.base_url), KEYS) as sidecar:
        reply = await sidecar.stub.Chat(_chat("what is six times seven?"))
        stats = await sidecar.stub.GetStats(pb.StatsRequest(models=["small", "medium"]))
    assert (reply.model, reply.content) == ("large", "It is 42.")
    assert _upstream_models(openai_server) == ["small", "medium", "large"]
    assert _tiers(reply) == [
        ("small", "error", "rejected"),
        ("medium", "error", "rejected"),
        ("large", "ok", ""),
    ]
    small, medium, _ = reply.attempts
    assert small.error_message == "empty answer"
    assert medium.error_message.startswith("refusal: \"I'm sorry, but I can't")
    # The rejected answers were paid for: charged, and added into the call's usage and cost.
    assert small.usage.input_tokens > 0
    assert medium.usage.output_tokens > 0
    assert reply.cost_usd == pytest.approx(sum(a.cost_usd for a in reply.attempts))
    assert reply.usage.output_tokens == sum(a.usage.output_tokens for a in reply.attempts)
    by_model = {m.model: m for m in stats.models}
    assert by_model["medium"].cost_usd == pytest.approx(medium.cost_usd)
    assert by_model["small"].input_tokens == small.usage.input_tokens


async def test_a_truncated_answer_escalates(openai_server: OpenAIServer) -> None:
    # The loopback cuts an answer at max_tokens and says so (finish_reason "length").
    openai_server.script.push(ok("one two three four five six"), ok("short"))
    async with running_sidecar(cascade_config(openai_server.base_url), KEYS) as sidecar:
        reply = await sidecar.stub.Chat(_chat("count", max_tokens=3))
    assert (reply.model, reply.content, reply.finish_reason) == ("medium", "short", "stop")
    assert reply.attempts[0].error_message.startswith("truncated")


async def test_the_first_adequate_answer_is_kept(openai_server: OpenAIServer) -> None:
    openai_server.script.push(ok("Paris."))
    async with running_sidecar(cascade_config(openai_server.base_url), KEYS) as sidecar:
        reply = await sidecar.stub.Chat(_chat("capital of France?"))
    assert _tiers(reply) == [("small", "ok", "")]
    assert _upstream_models(openai_server) == ["small"]


async def test_with_every_tier_rejected_the_last_answer_is_served(
    openai_server: OpenAIServer,
) -> None:
    openai_server.script.push(ok(""), ok("  "), ok("I cannot help with that."))
    async with running_sidecar(cascade_config(openai_server.base_url), KEYS) as sidecar:
        reply = await sidecar.stub.Chat(_chat("anything"))
    assert (reply.model, reply.content) == ("large", "I cannot help with that.")
    assert [a.error_class for a in reply.attempts] == ["rejected"] * 3
    assert reply.cost_usd == pytest.approx(sum(a.cost_usd for a in reply.attempts))


async def test_an_escalation_that_fails_the_call_serves_the_rejected_answer(
    openai_server: OpenAIServer,
) -> None:
    # An invalid request ends a call rather than moving on; the answer already paid for is kept.
    openai_server.script.push(ok(""), error(400))
    async with running_sidecar(cascade_config(openai_server.base_url), KEYS) as sidecar:
        reply = await sidecar.stub.Chat(_chat("anything"))
    assert (reply.model, reply.content) == ("small", "")
    assert [(a.model, a.error_class) for a in reply.attempts] == [
        ("small", "rejected"),
        ("medium", "invalid_request"),
    ]
    assert reply.cost_usd == pytest.approx(reply.attempts[0].cost_usd)


async def test_a_stage_without_cascade_keeps_its_ranking_and_its_answer(
    openai_server: OpenAIServer,
) -> None:
    openai_server.script.push(ok(""))
    async with running_sidecar(cascade_config(openai_server.base_url), KEYS) as sidecar:
        reply = await sidecar.stub.Chat(_chat("anything", stage="ranked"))
    assert (reply.model, reply.content) == ("large", "")
    assert _tiers(reply) == [("large", "ok", "")]


async def test_a_strategy_can_cascade_with_chosen_checks(openai_server: OpenAIServer) -> None:
    config = cascade_config(
        openai_server.base_url, cascade={"strategies": ["quality-first"], "checks": ["empty"]}
    )
    # "ranked" cascades through its strategy; only emptiness is checked, so the refusal stays.
    openai_server.script.push(ok(""), ok("I can't help with that."))
    async with running_sidecar(config, KEYS) as sidecar:
        reply = await sidecar.stub.Chat(_chat("anything", stage="ranked"))
    assert (reply.model, reply.content) == ("medium", "I can't help with that.")
    assert _tiers(reply) == [("small", "error", "rejected"), ("medium", "ok", "")]


async def test_a_stream_does_not_cascade(openai_server: OpenAIServer) -> None:
    """A stream's client has each token as it comes: there is no answer left to hold back, so a
    cascading stage streams from its ranked choice, unchecked."""
    openai_server.script.push(ok(""))
    async with running_sidecar(cascade_config(openai_server.base_url), KEYS) as sidecar:
        chunks = [chunk async for chunk in sidecar.stub.ChatStream(_chat("anything"))]
    final = chunks[-1]
    assert final.done
    assert (final.model, [a.model for a in final.attempts]) == ("large", ["large"])


def test_an_unknown_cascade_strategy_is_named() -> None:
    config = cascade_config("http://127.0.0.1:9/v1", cascade={"strategies": ["nope"]})
    with pytest.raises(ConfigError) as raised:
        parse_config(config)
    assert raised.value.errors == ["evaluation.cascade.strategies[0]: unknown strategy 'nope'"]
