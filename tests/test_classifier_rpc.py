"""Rules first, a model when unsure: the classifier model asked over real gRPC, played by an OpenAI
loopback server whose requests are counted."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from switchpoint.config import parse_config
from switchpoint.errors import ConfigError
from switchpoint.v1 import router_pb2 as pb
from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import garbage, hang, ok
from tests.sidecar_harness import RunningSidecar, routing_config, running_sidecar, user

KEYS = {"T_OAI": OPENAI_TEST_KEY}
# The rules read no marker here (chat by default, confidence 0.40); it is hard code work.
UNSURE = "My service drops writes when two workers update the same row at once. What do I change?"
# A code marker, far from both thresholds: the rules are sure (confidence 0.80).
SURE = "please refactor this python function"
HARD_CODE = json.dumps({"task_class": "code", "difficulty": 0.9})


def _config(server: OpenAIServer, **classifier: Any) -> dict[str, Any]:
    config = routing_config(server.base_url)
    # One attempt per call: the counts below are the classifier's questions.
    config["providers"]["openai"].update(api_key_env="T_OAI", retry={"max_retries": 0})
    config["routing"]["auto"] = {"classifier_model": {"model": "tiny", **classifier}}
    return config


@pytest.fixture
async def sidecar(openai_server: OpenAIServer) -> AsyncIterator[RunningSidecar]:
    async with running_sidecar(_config(openai_server), KEYS) as running:
        yield running


def _route(text: str, tenant: str = "acme", **routing: Any) -> pb.RouteRequest:
    return pb.RouteRequest(messages=user(text), routing=pb.RoutingOptions(tenant=tenant, **routing))


def _rules_only(server: OpenAIServer) -> dict[str, Any]:
    config = routing_config(server.base_url)
    config["providers"]["openai"].update(api_key_env="T_OAI", retry={"max_retries": 0})
    return config


async def _rules_decision(server: OpenAIServer, text: str) -> pb.RouteDecision:
    async with running_sidecar(_rules_only(server), KEYS) as rules:
        return await rules.stub.Route(_route(text))


async def test_the_model_changes_an_unsure_decision(
    sidecar: RunningSidecar, openai_server: OpenAIServer
) -> None:
    rules = await _rules_decision(openai_server, UNSURE)
    assert rules.task_class == "chat"
    openai_server.script.push(ok(HARD_CODE))
    decision = await sidecar.stub.Route(_route(UNSURE))
    assert decision.task_class == "code"
    assert decision.complexity == pytest.approx(0.9)
    # Hard code: quality-first among the code-capable models, where the rules chose otherwise.
    assert decision.strategy == "quality-first"
    assert decision.model == "strong" != rules.model
    assert "classified by model 'tiny' (rules unsure: 0.40)" in decision.reasons
    [asked] = openai_server.requests
    body = asked.body
    assert isinstance(body, dict)
    assert body["messages"][-1]["content"] == UNSURE
    assert "task_class" in body["messages"][0]["content"]


async def test_a_second_identical_request_is_answered_from_the_cache(
    sidecar: RunningSidecar, openai_server: OpenAIServer
) -> None:
    openai_server.script.push(ok(HARD_CODE), ok(HARD_CODE))
    first = await sidecar.stub.Route(_route(UNSURE))
    second = await sidecar.stub.Route(_route(UNSURE))
    assert len(openai_server.requests) == 1
    assert first.model == second.model == "strong"
    assert "classified by model 'tiny' (cached answer; rules unsure: 0.40)" in second.reasons
    # Cached per tenant: another tenant's request asks (and pays) for itself.
    await sidecar.stub.Route(_route(UNSURE, tenant="globex"))
    assert len(openai_server.requests) == 2


async def test_confident_rules_and_other_levels_never_ask(
    sidecar: RunningSidecar, openai_server: OpenAIServer
) -> None:
    sure = await sidecar.stub.Route(_route(SURE))
    assert sure.task_class == "code"
    named = await sidecar.stub.Route(_route(UNSURE, models=["cheap", "fast"]))
    staged = await sidecar.stub.Route(_route(UNSURE, stage="architecture"))
    assert (named.level, staged.level) == (pb.DECISION_LEVEL_OVERRIDE, pb.DECISION_LEVEL_STAGE)
    assert openai_server.requests == []
    for decision in (sure, named, staged):
        assert not any("classif" in reason for reason in decision.reasons)


async def test_a_timeout_falls_back_to_the_rules_and_the_call_still_answers(
    openai_server: OpenAIServer,
) -> None:
    rules = await _rules_decision(openai_server, UNSURE)
    async with running_sidecar(_config(openai_server, timeout_ms=200), KEYS) as sidecar:
        # The classifier hangs; the answer itself comes at once.
        openai_server.script.push(hang(10.0), ok("use a transaction"))
        reply = await sidecar.stub.Chat(
            pb.ChatRequest(messages=user(UNSURE), routing=pb.RoutingOptions(tenant="acme")),
            timeout=5.0,
        )
        assert reply.content == "use a transaction"
        assert reply.model == rules.model
        decision = reply.decision
        assert decision.task_class == "chat"
        assert "classifier model timed out after 200 ms; rules used" in decision.reasons
        # The classifier's question was sent and abandoned; the answer's call is the second.
        assert len(openai_server.requests) == 2
        # Nothing is remembered from a timeout: the next request asks again.
        openai_server.script.push(ok(HARD_CODE))
        again = await sidecar.stub.Route(_route(UNSURE))
        assert again.model == "strong"


async def test_the_wait_is_at_most_half_of_what_the_callers_deadline_leaves(
    openai_server: OpenAIServer,
) -> None:
    async with running_sidecar(_config(openai_server, timeout_ms=60_000), KEYS) as sidecar:
        openai_server.script.push(hang(10.0))
        decision = await sidecar.stub.Route(_route(UNSURE), timeout=2.0)
    [reason] = [r for r in decision.reasons if r.startswith("classifier model timed out")]
    waited = re.fullmatch(r"classifier model timed out after (\d+) ms; rules used", reason)
    assert waited is not None
    # Half of the 2 s the caller gave, less what routing took; the answer kept the other half.
    assert 0 < int(waited[1]) <= 1000
    assert decision.task_class == "chat"


async def test_a_classifier_that_keeps_timing_out_is_skipped_by_its_breaker(
    openai_server: OpenAIServer,
) -> None:
    config = _config(openai_server, timeout_ms=100)
    config["providers"]["openai"]["breaker"] = {"consecutive_failures": 2}
    async with running_sidecar(config, KEYS) as sidecar:
        openai_server.script.default = hang(10.0)
        reasons = [(await sidecar.stub.Route(_route(f"{UNSURE} ({i})"))).reasons for i in range(3)]
    assert "classifier model timed out after 100 ms; rules used" in reasons[0]
    assert "classifier model timed out after 100 ms; rules used" in reasons[1]
    # Two timeouts opened the breaker: the third request did not wait for the model.
    assert any(r.startswith("classifier model not called: circuit breaker") for r in reasons[2])
    assert len(openai_server.requests) == 2


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("It is a coding question, fairly hard.", "not JSON"),
        (json.dumps({"task_class": "poetry", "difficulty": 0.5}), "'poetry' is not a known"),
        (json.dumps({"task_class": "code", "difficulty": 2}), "outside 0..1"),
        (json.dumps({"task_class": "code"}), "expected task_class and difficulty"),
        (json.dumps({"task_class": "code", "difficulty": True}), "not a number"),
    ],
)
async def test_a_malformed_answer_falls_back_to_the_rules(
    sidecar: RunningSidecar, openai_server: OpenAIServer, answer: str, why: str
) -> None:
    openai_server.script.push(ok(answer))
    decision = await sidecar.stub.Route(_route(UNSURE))
    assert decision.task_class == "chat"
    [reason] = [r for r in decision.reasons if r.startswith("classifier model answered")]
    assert why in reason
    assert reason.endswith("; rules used")
    # A malformed answer is not cached.
    openai_server.script.push(ok(HARD_CODE))
    assert (await sidecar.stub.Route(_route(UNSURE))).model == "strong"


async def test_a_provider_failure_falls_back_and_is_charged_like_an_attempt(
    sidecar: RunningSidecar, openai_server: OpenAIServer
) -> None:
    openai_server.script.push(garbage(), ok(HARD_CODE))
    failed = await sidecar.stub.Route(_route(UNSURE))
    assert failed.task_class == "chat"
    assert any(r.startswith("classifier model failed: ") for r in failed.reasons)
    await sidecar.stub.Route(_route(UNSURE))
    stats = await sidecar.stub.GetStats(pb.StatsRequest(models=["tiny"], tenant="acme"))
    [tiny] = stats.models
    # Both questions are the tenant's requests of the classifier model; the first one failed.
    assert (tiny.requests, tiny.errors) == (2, 1)
    assert tiny.input_tokens > 0


async def test_a_limit_on_the_classifier_model_turns_it_away_and_the_rules_decide(
    openai_server: OpenAIServer,
) -> None:
    config = _config(openai_server)
    config["limits"] = [{"name": "tiny-rpm", "match": {"model": "tiny", "tenant": "*"}, "rpm": 1}]
    async with running_sidecar(config, KEYS) as sidecar:
        openai_server.script.push(ok(HARD_CODE))
        asked = await sidecar.stub.Route(_route(UNSURE))
        assert asked.task_class == "code"
        refused = await sidecar.stub.Route(_route(UNSURE + " Please help."))
        assert refused.task_class == "chat"
        [reason] = [r for r in refused.reasons if r.startswith("classifier model not called: ")]
        assert "tiny-rpm" in reason
        assert len(openai_server.requests) == 1


async def test_the_classifier_model_must_be_a_configured_model(
    openai_server: OpenAIServer,
) -> None:
    config = _config(openai_server)
    config["routing"]["auto"]["classifier_model"]["model"] = "oracle"
    config["routing"]["auto"]["classifier_model"]["timeout_ms"] = 0
    with pytest.raises(ConfigError) as caught:
        parse_config(config)
    assert "routing.auto.classifier_model.timeout_ms: must be >= 1" in str(caught.value)
    config["routing"]["auto"]["classifier_model"]["timeout_ms"] = 300
    with pytest.raises(ConfigError) as caught:
        parse_config(config)
    assert "routing.auto.classifier_model.model: unknown model 'oracle'" in str(caught.value)


async def test_a_bad_route_request_is_still_refused_by_its_field(sidecar: RunningSidecar) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sidecar.stub.Route(_route(UNSURE, strategy="nope"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "routing.strategy" in (caught.value.details() or "")
