"""The response cache through real gRPC: exact and semantic hits, the guard, scoping by tenant and
parameters, streamed hits, hits served at no cost even past a budget, deletion and restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from switchpoint.v1 import admin_pb2, admin_pb2_grpc
from switchpoint.v1 import router_pb2 as pb
from tests.providers.anthropic_server import AnthropicServer
from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.sidecar_harness import RunningSidecar, one_model_config, running_sidecar, user

ENV = {"T_OAI": OPENAI_TEST_KEY, "SWITCHPOINT_ADMIN_TOKEN": "tok"}
QUESTION = "What is the capital of France?"


def _config(openai: OpenAIServer, directory: Path | None = None, **extra: Any) -> dict[str, Any]:
    return {
        **one_model_config(openai.base_url, api_key_env="T_OAI", quality=0.7),
        "cache": {"enabled": True, "directory": str(directory) if directory else None},
        **extra,
    }


def _chat(text: str = QUESTION, tenant: str = "acme", **cache: Any) -> pb.ChatRequest:
    return pb.ChatRequest(
        messages=user(text),
        routing=pb.RoutingOptions(tenant=tenant),
        cache=pb.CacheControl(**cache),
    )


async def _served_by_provider(
    sidecar: RunningSidecar, openai: OpenAIServer, request: pb.ChatRequest
) -> bool:
    before = len(openai.requests)
    reply = await sidecar.stub.Chat(request)
    return len(openai.requests) > before and not reply.cache.hit


async def test_exact_hit_costs_nothing_and_skips_the_provider(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    async with running_sidecar(_config(openai_server), ENV) as sidecar:
        first = await sidecar.stub.Chat(_chat())
        second = await sidecar.stub.Chat(_chat())
        stats = await sidecar.stub.GetStats(pb.StatsRequest())
    assert not first.cache.hit
    assert first.cost_usd > 0
    assert second.cache.hit
    assert (second.cache.kind, second.cache.similarity) == ("exact", 1.0)
    assert second.content == first.content
    assert (second.cost_usd, second.usage.output_tokens, len(second.attempts)) == (0.0, 0, 0)
    assert second.cache.saved_cost_usd == pytest.approx(first.cost_usd)
    assert len(openai_server.requests) == 1
    assert (stats.cache.hits, stats.cache.misses, stats.cache.entries) == (1, 1, 1)


async def test_semantic_hit_and_the_guard(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    async with running_sidecar(_config(openai_server), ENV) as sidecar:
        await sidecar.stub.Chat(_chat())
        paraphrase = await sidecar.stub.Chat(
            _chat("what's the capital city of France?", threshold=0.7)
        )
        # Close in embedding space, but another country: the guard refuses the hit.
        germany = await sidecar.stub.Chat(_chat("What is the capital of Germany?", threshold=0.5))
        strict = await sidecar.stub.Chat(
            _chat("which city is the capital of France?", no_semantic=True)
        )
        stats = await sidecar.stub.GetStats(pb.StatsRequest())
    assert paraphrase.cache.hit
    assert paraphrase.cache.kind == "semantic"
    assert 0.7 <= paraphrase.cache.similarity < 1.0
    assert not germany.cache.hit
    assert "Germany" in germany.content
    assert not strict.cache.hit
    assert stats.cache.guard_rejections >= 1


async def test_scoping_by_tenant_and_parameters(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    async with running_sidecar(_config(openai_server), ENV) as sidecar:
        await sidecar.stub.Chat(_chat())
        assert await _served_by_provider(sidecar, openai_server, _chat(tenant="globex"))
        hot = _chat()
        hot.params.temperature = 1.2  # above cache.max_temperature: wants a fresh answer
        assert await _served_by_provider(sidecar, openai_server, hot)
        shorter = _chat()
        shorter.params.max_tokens = 5  # another answer-changing parameter: another partition
        assert await _served_by_provider(sidecar, openai_server, shorter)
        assert await _served_by_provider(sidecar, openai_server, _chat(bypass=True))
        assert not await _served_by_provider(sidecar, openai_server, _chat())


async def test_a_streamed_hit_arrives_in_pieces(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    async with running_sidecar(_config(openai_server), ENV) as sidecar:
        first = await sidecar.stub.Chat(_chat())
        chunks = [c async for c in sidecar.stub.ChatStream(_chat())]
    deltas = [c.delta for c in chunks if not c.done]
    assert len(deltas) > 1
    assert "".join(deltas) == first.content
    assert chunks[-1].done
    assert chunks[-1].cache.hit
    assert chunks[-1].cost_usd == 0.0
    assert len(openai_server.requests) == 1


async def test_hits_are_served_past_an_exhausted_budget(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    # A call reserves ~$0.024 (24 estimated tokens at $0.001) and spends ~$0.013: after one call
    # the budget cannot hold another reservation.
    budgets = [{"name": "tiny", "match": {"tenant": "*"}, "window": "day", "limit_usd": 0.03}]

    def short(text: str = QUESTION) -> pb.ChatRequest:
        request = _chat(text)
        request.params.max_tokens = 10
        return request

    async with running_sidecar(_config(openai_server, budgets=budgets), ENV) as sidecar:
        await sidecar.stub.Chat(short())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await sidecar.stub.Chat(short("Something else entirely"))
        cached = await sidecar.stub.Chat(short())
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert cached.cache.hit


async def test_admin_deletes_a_tenants_entries(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    async with running_sidecar(_config(openai_server), ENV) as sidecar:
        await sidecar.stub.Chat(_chat())
        await sidecar.stub.Chat(_chat(tenant="globex"))
        admin = admin_pb2_grpc.AdminStub(sidecar.channel)
        deleted = await admin.DeleteCacheEntries(
            admin_pb2.DeleteCacheEntriesRequest(tenant="acme"),
            metadata=(("authorization", "Bearer tok"),),
        )
        assert deleted.deleted == 1
        assert await _served_by_provider(sidecar, openai_server, _chat())
        assert not await _served_by_provider(sidecar, openai_server, _chat(tenant="globex"))


async def test_entries_survive_a_restart(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer, tmp_path: Path
) -> None:
    async with running_sidecar(_config(openai_server, tmp_path), ENV) as sidecar:
        first = await sidecar.stub.Chat(_chat())
    async with running_sidecar(_config(openai_server, tmp_path), ENV) as restarted:
        again = await restarted.stub.Chat(_chat())
    assert again.cache.hit
    assert again.content == first.content
    assert len(openai_server.requests) == 1


async def test_the_default_rule_serves_a_paraphrase_and_not_a_question_between_two(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    async with running_sidecar(_config(openai_server), ENV) as sidecar:
        cancel = await sidecar.stub.Chat(_chat("How do I cancel my subscription?"))
        # A floor of its own, so it misses and is stored: with the cancel entry alone in the
        # cache, the default floor would let this near miss be served that entry (docs/cache.md).
        await sidecar.stub.Chat(_chat("How do I pause my subscription?", threshold=0.99))
        between = await sidecar.stub.Chat(
            _chat("I want to stop my subscription for a couple of months, how?")
        )
        paraphrase = await sidecar.stub.Chat(_chat("What are the steps to cancel my subscription?"))
        stats = await sidecar.stub.GetStats(pb.StatsRequest())
    assert not between.cache.hit
    assert stats.cache.ambiguous_rejections == 1
    assert paraphrase.cache.hit
    assert paraphrase.cache.kind == "semantic"
    assert paraphrase.content == cancel.content
