"""What reached a provider is charged (switchpoint.engine.billing), through real gRPC and real HTTP:
streams cancelled mid-answer, Chats cancelled after their request went out, hedge losers; and
nothing for a call cancelled before it went out. The gate never keeps a reservation or a slot."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from switchpoint.tokens import TokenCounter
from switchpoint.v1 import admin_pb2, admin_pb2_grpc
from switchpoint.v1 import router_pb2 as pb
from tests.providers.anthropic_server import AnthropicServer
from tests.providers.fixtures import ANTHROPIC_TEST_KEY, OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import answer_tokens, echo_answer, hang
from tests.redis_server import RedisServer
from tests.sidecar_harness import RunningSidecar, running_sidecar, user
from tests.support.waiting import wait_until
from tests.test_shared_budget_rpc import _committed_usd

ADMIN_TOKEN = "admin-token-for-charging-tests"
ENV = {
    "T_OAI": OPENAI_TEST_KEY,
    "T_ANT": ANTHROPIC_TEST_KEY,
    "SWITCHPOINT_ADMIN_TOKEN": ADMIN_TOKEN,
}
AUTH = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
PER_TOKEN_USD = 0.001  # $1000 per million tokens, in and out: a token is a tenth of a cent
TOKENIZER = "o200k_base"  # counted exactly: a streamed chunk is several tokens, not one
MAX_TOKENS = 50
PROMPT = "tell me a long story about the sea"


def _config(
    openai: OpenAIServer, anthropic: AnthropicServer, *, budget_usd: float = 100.0
) -> dict[str, Any]:
    def model(name: str, provider: str, **extra: Any) -> dict[str, Any]:
        per_mtok = PER_TOKEN_USD * 1e6
        return {
            "name": name,
            "provider": provider,
            "price": {"input_per_mtok": per_mtok, "output_per_mtok": per_mtok},
            "context_window": 100000,
            "quality": 0.5,
            "tokenizer": TOKENIZER,
            # The stream hedge fires 100 ms into a call without latency samples.
            "latency_prior": {"ttft_ms": 100, "tpot_ms": 10},
            **extra,
        }

    return {
        "providers": {
            "oai": {"kind": "openai", "base_url": openai.base_url, "api_key_env": "T_OAI"},
            "ant": {"kind": "anthropic", "base_url": anthropic.base_url, "api_key_env": "T_ANT"},
        },
        "models": [model("gpt", "oai", max_concurrency=1), model("claude", "ant")],
        "limits": [{"name": "slots", "match": {"tenant": "*"}, "concurrency": 50}],
        "budgets": [
            {"name": "daily", "match": {"tenant": "*"}, "window": "day", "limit_usd": budget_usd}
        ],
    }


def _chat(*models: str, hedge: bool = False) -> pb.ChatRequest:
    return pb.ChatRequest(
        messages=user(PROMPT),
        routing=pb.RoutingOptions(models=list(models), tenant="acme", hedge=hedge),
        params=pb.GenerationParams(max_tokens=MAX_TOKENS),
    )


async def _prompt_tokens(sidecar: RunningSidecar) -> int:
    """The routing estimate of the test prompt, which a cut attempt is charged for its input."""
    request = _chat("gpt")
    route = pb.RouteRequest(messages=request.messages, routing=request.routing)
    return (await sidecar.stub.Route(route)).estimated_input_tokens


async def _spent(sidecar: RunningSidecar) -> tuple[float, float]:
    """(spent, reserved) of acme's budget, as Admin reports it."""
    admin = admin_pb2_grpc.AdminStub(sidecar.channel)
    state = await admin.GetBudgets(admin_pb2.GetBudgetsRequest(tenant="acme"), metadata=AUTH)
    [budget] = state.budgets
    return budget.spent_usd, budget.reserved_usd


async def _nothing_held(sidecar: RunningSidecar) -> None:
    """Wait until every reservation is settled or released and every slot is back."""
    gate = sidecar.sidecar.engine.gate
    await wait_until(lambda: gate.gate.outstanding() == 0)
    assert gate.gate.limit_state(0, gate.now()).in_flight == 0, "a concurrency slot leaked"
    queues = sidecar.sidecar.engine.scheduler.snapshot()
    await wait_until(lambda: all(q.in_flight == 0 for q in queues.values()))


async def test_a_stream_cancelled_after_its_first_token_is_charged_prompt_and_tokens(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    openai_server.script.push(hang(10.0, after_chunks=1))
    async with running_sidecar(_config(openai_server, anthropic_server), ENV) as sidecar:
        prompt = await _prompt_tokens(sidecar)
        call = sidecar.stub.ChatStream(_chat("gpt"))
        first = await call.read()
        assert isinstance(first, pb.ChatChunk)
        call.cancel()
        await _nothing_held(sidecar)
        spent, reserved = await _spent(sidecar)
        stats = (await sidecar.stub.GetStats(pb.StatsRequest(models=["gpt"]))).models[0]
    streamed = TokenCounter().count_text(first.delta, TOKENIZER)
    assert streamed > 1, "the chunk must be counted in tokens, not as one"
    assert (stats.input_tokens, stats.output_tokens) == (prompt, streamed)
    assert spent == pytest.approx((prompt + streamed) * PER_TOKEN_USD)
    assert stats.cost_usd == pytest.approx(spent)
    assert reserved == 0.0


async def test_cancelling_every_stream_after_one_token_runs_out_of_budget(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    openai_server.script.default = hang(10.0, after_chunks=1)
    first_token = answer_tokens(echo_answer("gpt", PROMPT))[0]
    async with running_sidecar(_config(openai_server, anthropic_server), ENV) as probe:
        prompt = await _prompt_tokens(probe)
    charge = (prompt + TokenCounter().count_text(first_token, TOKENIZER)) * PER_TOKEN_USD
    reservation = (prompt + MAX_TOKENS) * PER_TOKEN_USD
    # A call is admitted while spent + its reservation fits the budget: after `expected` calls
    # charged `charge` each, the next reservation no longer fits.
    expected = 6
    budget = reservation + (expected - 1) * charge + charge / 2
    config = _config(openai_server, anthropic_server, budget_usd=budget)
    async with running_sidecar(config, ENV) as sidecar:
        served = 0
        refusal: grpc.aio.AioRpcError | None = None
        for _ in range(expected + 5):
            call = sidecar.stub.ChatStream(_chat("gpt"))
            try:
                first = await call.read()
            except grpc.aio.AioRpcError as exc:
                refusal = exc
                break
            assert isinstance(first, pb.ChatChunk)
            assert first.delta == first_token
            served += 1
            call.cancel()
            await _nothing_held(sidecar)
        spent, reserved = await _spent(sidecar)
    assert served == expected
    assert refusal is not None
    assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "budget 'daily[tenant=acme]' is exhausted" in (refusal.details() or "")
    assert spent == pytest.approx(expected * charge)
    assert reserved == 0.0


async def test_a_chat_cancelled_after_its_request_went_out_is_charged_its_prompt(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    openai_server.script.push(hang(10.0))
    async with running_sidecar(_config(openai_server, anthropic_server), ENV) as sidecar:
        prompt = await _prompt_tokens(sidecar)
        call = sidecar.stub.Chat(_chat("gpt"))
        await wait_until(lambda: len(openai_server.requests) == 1)
        call.cancel()
        await _nothing_held(sidecar)
        spent, reserved = await _spent(sidecar)
        stats = (await sidecar.stub.GetStats(pb.StatsRequest(models=["gpt"]))).models[0]
    assert (stats.input_tokens, stats.output_tokens) == (prompt, 0)
    assert spent == pytest.approx(prompt * PER_TOKEN_USD)
    assert stats.cost_usd == pytest.approx(spent)
    assert reserved == 0.0


async def test_a_chat_cancelled_while_queued_is_charged_nothing(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    openai_server.script.push(hang(10.0))
    async with running_sidecar(_config(openai_server, anthropic_server), ENV) as sidecar:
        prompt = await _prompt_tokens(sidecar)
        holder = sidecar.stub.Chat(_chat("gpt"))  # takes gpt's one slot and stalls upstream
        await wait_until(lambda: len(openai_server.requests) == 1)
        queued = sidecar.stub.Chat(_chat("gpt"))
        queue = sidecar.sidecar.engine.scheduler.queue("gpt")
        await wait_until(lambda: queue.depth == 1)
        queued.cancel()
        await wait_until(lambda: queue.depth == 0)
        spent_while_held, reserved_while_held = await _spent(sidecar)
        holder.cancel()
        await _nothing_held(sidecar)
        spent, reserved = await _spent(sidecar)
    reservation = (prompt + MAX_TOKENS) * PER_TOKEN_USD
    # The queued call gave its reservation back at no cost; only the holder's is left.
    assert spent_while_held == 0.0
    assert reserved_while_held == pytest.approx(reservation)
    assert len(openai_server.requests) == 1, "the queued call must never have gone out"
    # Only the holder, whose request went out, is charged (its prompt).
    assert spent == pytest.approx(prompt * PER_TOKEN_USD)
    assert reserved == 0.0


async def test_a_hedge_loser_is_charged_its_prompt_and_listed(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    openai_server.script.push(hang(10.0))
    async with running_sidecar(_config(openai_server, anthropic_server), ENV) as sidecar:
        prompt = await _prompt_tokens(sidecar)
        reply = await sidecar.stub.Chat(_chat("gpt", "claude", hedge=True))
        await _nothing_held(sidecar)
        spent, reserved = await _spent(sidecar)
        stats = (await sidecar.stub.GetStats(pb.StatsRequest(models=["gpt"]))).models[0]
    assert reply.model == "claude"
    winner, loser = reply.attempts
    assert (winner.model, winner.error_class) == ("claude", "")
    assert (loser.model, loser.error_class) == ("gpt", "hedge_lost")
    assert (loser.usage.input_tokens, loser.usage.output_tokens) == (prompt, 0)
    assert loser.cost_usd == pytest.approx(prompt * PER_TOKEN_USD)
    assert stats.cost_usd == pytest.approx(loser.cost_usd)
    # The answer's usage and cost count both sides of the race, as the budget does.
    assert reply.cost_usd == pytest.approx(winner.cost_usd + loser.cost_usd)
    assert reply.usage.input_tokens == winner.usage.input_tokens + prompt
    assert spent == pytest.approx(reply.cost_usd)
    assert reserved == 0.0


async def test_a_stream_hedge_loser_is_charged_its_prompt_and_listed(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    openai_server.script.push(hang(10.0))
    async with running_sidecar(_config(openai_server, anthropic_server), ENV) as sidecar:
        prompt = await _prompt_tokens(sidecar)
        chunks = [c async for c in sidecar.stub.ChatStream(_chat("gpt", "claude", hedge=True))]
        await _nothing_held(sidecar)
        spent, reserved = await _spent(sidecar)
    final = chunks[-1]
    assert final.done
    assert final.model == "claude"
    loser, winner = final.attempts
    assert (loser.model, loser.error_class) == ("gpt", "hedge_lost")
    assert (loser.usage.input_tokens, loser.usage.output_tokens) == (prompt, 0)
    assert loser.cost_usd == pytest.approx(prompt * PER_TOKEN_USD)
    assert (winner.model, winner.error_class) == ("claude", "")
    assert final.cost_usd == pytest.approx(winner.cost_usd + loser.cost_usd)
    assert spent == pytest.approx(final.cost_usd)
    assert reserved == 0.0


async def test_a_cancelled_stream_is_charged_to_a_shared_budget_too(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer, redis_server: RedisServer
) -> None:
    openai_server.script.push(hang(10.0, after_chunks=1))
    config = _config(openai_server, anthropic_server)
    config["shared_state"] = {"redis_url": redis_server.url, "sync_interval_s": 0.1}
    async with running_sidecar(config, ENV) as sidecar:
        prompt = await _prompt_tokens(sidecar)
        call = sidecar.stub.ChatStream(_chat("gpt"))
        first = await call.read()
        assert isinstance(first, pb.ChatChunk)
        call.cancel()
        await _nothing_held(sidecar)
    # Stopped: the replica reported its spend to Redis and gave its unused lease back.
    streamed = TokenCounter().count_text(first.delta, TOKENIZER)
    charge = (prompt + streamed) * PER_TOKEN_USD
    assert await _committed_usd(redis_server) == pytest.approx(charge, abs=1e-6)
