"""The quality predictor through the running sidecar: Feedback changes later decisions for similar
prompts and only for them, decisions say what was predicted, and Feedback refuses what it cannot
take with the right status."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from switchpoint.security.keys import key_digest
from switchpoint.v1 import router_pb2 as pb
from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import error
from tests.sidecar_harness import RunningSidecar, running_sidecar, user, write_config
from tests.support.waiting import wait_until

# Questions of one kind (capitals), on which feedback says the cheap model is right and the
# strong one wrong; the probe is another of them, never fed back itself.
CAPITALS = [
    "What is the capital of France?",
    "Which city is the capital of Germany?",
    "What's the capital city of Italy?",
    "Name the capital of Spain.",
]
PROBE = "What is the capital of Portugal?"
UNRELATED = "Write a recursive Fibonacci function in Rust and explain its complexity."


def predictor_config(base_url: str = "http://127.0.0.1:9/v1", **predictor: Any) -> dict[str, Any]:
    """Two models: `cheap` (quality 0.5) and `strong` (0.9, a hundred times the price). Under
    quality-first the prior prefers strong; predicted qualities can turn that around."""
    model = {
        "provider": "oai",
        "context_window": 100000,
        "latency_prior": {"ttft_ms": 100, "tpot_ms": 10},
    }
    return {
        "providers": {
            "oai": {
                "kind": "openai",
                "base_url": base_url,
                "api_key_env": "T_OAI",
                "retry": {"max_retries": 0},
            }
        },
        "models": [
            {
                **model,
                "name": "cheap",
                "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.1},
                "quality": 0.5,
            },
            {
                **model,
                "name": "strong",
                "price": {"input_per_mtok": 10.0, "output_per_mtok": 10.0},
                "quality": 0.9,
            },
        ],
        "routing": {
            "fallback_chain": ["strong", "cheap"],
            "predictor": {"enabled": True, "prior_weight": 1.0, **predictor},
        },
    }


KEYS = {"T_OAI": OPENAI_TEST_KEY}


def quality_first(text: str, **routing: Any) -> pb.RouteRequest:
    return pb.RouteRequest(
        messages=user(text), routing=pb.RoutingOptions(strategy="quality-first", **routing)
    )


@pytest_asyncio.fixture
async def sidecar() -> AsyncIterator[RunningSidecar]:
    async with running_sidecar(predictor_config(), KEYS) as running:
        yield running


async def teach_cheap_is_enough(stub: Any, tenant: str = "") -> None:
    for question in CAPITALS:
        decision = await stub.Route(quality_first(question, tenant=tenant))
        for model, score in (("cheap", 1.0), ("strong", 0.0)):
            await stub.Feedback(
                pb.FeedbackRequest(
                    request_id=decision.request_id, model=model, score=score, tenant=tenant
                )
            )


def candidate(decision: pb.RouteDecision, model: str) -> pb.Candidate:
    return next(c for c in decision.candidates if c.model == model)


async def test_feedback_changes_later_decisions_for_similar_prompts_only(
    sidecar: RunningSidecar,
) -> None:
    stub = sidecar.stub
    before = await stub.Route(quality_first(PROBE))
    assert before.model == "strong"
    assert candidate(before, "cheap").quality_source == pb.QUALITY_SOURCE_PRIOR
    await teach_cheap_is_enough(stub)
    after = await stub.Route(quality_first(PROBE))
    assert after.model == "cheap"
    cheap, strong = candidate(after, "cheap"), candidate(after, "strong")
    assert cheap.quality_source == strong.quality_source == pb.QUALITY_SOURCE_PREDICTED
    assert cheap.quality > 0.5 > strong.quality
    assert cheap.quality_similar == strong.quality_similar == len(CAPITALS)
    assert cheap.quality_evidence > 0
    assert f"cheap predicted {cheap.quality:.2f} from 4 similar prompts (4 ok)" in after.reasons
    assert f"strong predicted {strong.quality:.2f} from 4 similar prompts (0 ok)" in after.reasons
    # Nothing similar was scored: the prior decides, as before any feedback.
    unrelated = await stub.Route(quality_first(UNRELATED))
    assert unrelated.model == "strong"
    assert {c.quality_source for c in unrelated.candidates} == {pb.QUALITY_SOURCE_PRIOR}
    assert [c.quality for c in unrelated.candidates] == [0.9, 0.5]


async def test_route_decisions_name_their_request(sidecar: RunningSidecar) -> None:
    own = await sidecar.stub.Route(pb.RouteRequest(messages=user("hi"), request_id="mine-1"))
    assert own.request_id == "mine-1"
    first = await sidecar.stub.Route(pb.RouteRequest(messages=user("hi")))
    second = await sidecar.stub.Route(pb.RouteRequest(messages=user("hi")))
    assert len({first.request_id, second.request_id, ""}) == 3


async def test_feedback_refuses_what_it_cannot_take(sidecar: RunningSidecar) -> None:
    stub = sidecar.stub
    decision = await stub.Route(quality_first(PROBE, tenant="acme"))
    rid = decision.request_id

    async def refused(request: pb.FeedbackRequest) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Feedback(request)
        return caught.value.code(), caught.value.details() or ""

    code, details = await refused(pb.FeedbackRequest(request_id="nope", score=1, tenant="acme"))
    assert code == grpc.StatusCode.NOT_FOUND
    assert details.startswith("request_id:")
    # Another tenant's request is as unknown as one that never was.
    code, _ = await refused(pb.FeedbackRequest(request_id=rid, score=1, tenant="other"))
    assert code == grpc.StatusCode.NOT_FOUND
    for score in (1.5, -0.1, math.nan, math.inf):
        code, details = await refused(
            pb.FeedbackRequest(request_id=rid, score=score, tenant="acme")
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("score:")
    code, details = await refused(
        pb.FeedbackRequest(request_id=rid, model="gpt-9", score=1, tenant="acme")
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("model:")
    code, details = await refused(pb.FeedbackRequest(score=1, tenant="acme"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("request_id:")
    # Nothing refused was learnt; the first score of a model is, the second is refused.
    reply = await stub.Feedback(pb.FeedbackRequest(request_id=rid, score=0.5, tenant="acme"))
    assert (reply.model, reply.outcomes) == (decision.model, 1)
    code, _ = await refused(pb.FeedbackRequest(request_id=rid, score=1, tenant="acme"))
    assert code == grpc.StatusCode.ALREADY_EXISTS


async def test_feedback_needs_the_predictor() -> None:
    config = predictor_config()
    config["routing"]["predictor"] = {"enabled": False}
    async with running_sidecar(config, KEYS) as running:
        decision = await running.stub.Route(pb.RouteRequest(messages=user("hi")))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.stub.Feedback(pb.FeedbackRequest(request_id=decision.request_id, score=1))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "routing.predictor.enabled" in (caught.value.details() or "")


async def test_feedback_on_a_chat_scores_the_model_that_served_it(
    openai_server: OpenAIServer,
) -> None:
    async with running_sidecar(predictor_config(openai_server.base_url), KEYS) as running:
        # The chosen model fails and the fallback answers: the answer is the fallback's.
        openai_server.script.push(error(500))
        request = pb.ChatRequest(
            messages=user(PROBE), routing=pb.RoutingOptions(strategy="quality-first")
        )
        answer = await running.stub.Chat(request)
        assert answer.decision.model == "strong"
        assert answer.model == "cheap"
        assert answer.decision.request_id == answer.request_id
        reply = await running.stub.Feedback(
            pb.FeedbackRequest(request_id=answer.request_id, score=1.0)
        )
        assert reply.model == "cheap"


def write_outcomes(path: Path, lines: list[object]) -> Path:
    path.write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n",
        encoding="utf-8",
    )
    return path


def capitals_outcomes() -> list[object]:
    lines: list[object] = []
    for question in CAPITALS:
        lines.append({"prompt": question, "model": "cheap", "score": 1})
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": question},
        ]
        lines.append({"messages": messages, "model": "strong", "score": 0})
    return lines


async def test_outcome_files_feed_the_predictor_and_a_restart_keeps_feedback(
    tmp_path: Path,
) -> None:
    outcomes = write_outcomes(tmp_path / "outcomes.jsonl", capitals_outcomes())
    store = tmp_path / "state" / "outcomes.npz"
    config = predictor_config(outcomes=[str(outcomes)], store=str(store))
    async with running_sidecar(config, KEYS) as running:
        decision = await running.stub.Route(quality_first(PROBE))
        assert decision.model == "cheap"
        assert candidate(decision, "strong").quality_similar == len(CAPITALS)
        learnt = await running.stub.Route(quality_first(UNRELATED))
        await running.stub.Feedback(
            pb.FeedbackRequest(request_id=learnt.request_id, model="cheap", score=1.0)
        )
    assert store.exists()
    # Restarted without the file: the store alone keeps what feedback taught.
    config = predictor_config(store=str(store))
    async with running_sidecar(config, KEYS) as running:
        again = await running.stub.Route(quality_first(UNRELATED))
        assert candidate(again, "cheap").quality_similar == 1
        assert candidate(again, "strong").quality_source == pb.QUALITY_SOURCE_PRIOR
        # The file's outcomes went with the file.
        probe = await running.stub.Route(quality_first(PROBE))
        assert candidate(probe, "strong").quality_source == pb.QUALITY_SOURCE_PRIOR


async def test_a_restart_reads_an_unchanged_outcome_file_from_the_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="switchpoint.predictor")
    outcomes = write_outcomes(tmp_path / "outcomes.jsonl", capitals_outcomes())
    config = predictor_config(outcomes=[str(outcomes)], store=str(tmp_path / "o.npz"))
    async with running_sidecar(config, KEYS):
        pass
    embedded = [r for r in caplog.records if "outcomes of 4 prompts" in r.getMessage()]
    assert len(embedded) == 1
    caplog.clear()
    async with running_sidecar(config, KEYS) as running:
        decision = await running.stub.Route(quality_first(PROBE))
        assert candidate(decision, "cheap").quality_similar == len(CAPITALS)
    assert not [r for r in caplog.records if "outcomes of 4 prompts" in r.getMessage()]


async def test_malformed_outcome_lines_refuse_the_config_naming_each_line(
    tmp_path: Path,
) -> None:
    path = write_outcomes(
        tmp_path / "bad.jsonl",
        [
            {"prompt": "fine", "model": "cheap", "score": 1},
            "{not json",
            {"prompt": "fine", "model": "cheap", "score": 2},
            {"model": "cheap", "score": 1},
            "",
            {"prompt": "fine", "model": "", "score": 1},
        ],
    )
    with pytest.raises(Exception, match="outcomes") as caught:
        async with running_sidecar(predictor_config(outcomes=[str(path)]), KEYS):
            pass
    message = str(caught.value)
    for line, why in (
        (2, "not JSON"),
        (3, "'score'"),
        (4, "'messages' or 'prompt'"),
        (6, "'model'"),
    ):
        assert f"{path}:{line}: " in message
        assert why in message
    assert f"{path}:1:" not in message


async def test_outcomes_of_unconfigured_models_are_kept_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = [*capitals_outcomes(), {"prompt": CAPITALS[0], "model": "gpt-9", "score": 1}]
    path = write_outcomes(tmp_path / "o.jsonl", lines)
    async with running_sidecar(predictor_config(outcomes=[str(path)]), KEYS) as running:
        decision = await running.stub.Route(quality_first(PROBE))
        assert decision.model == "cheap"
    assert any(
        "gpt-9" in r.getMessage() and "not configured" in r.getMessage() for r in caplog.records
    )


async def test_a_reload_reads_the_outcome_files_again(tmp_path: Path) -> None:
    path = write_outcomes(tmp_path / "o.jsonl", capitals_outcomes())
    config_path = tmp_path / "switchpoint.yaml"
    config = predictor_config(outcomes=[str(path)])
    async with running_sidecar(config, KEYS, config_path=config_path) as running:
        assert (await running.stub.Route(quality_first(PROBE))).model == "cheap"
        config["routing"]["predictor"]["outcomes"] = []
        write_config(config_path, config)
        result = await running.sidecar.reload()
        assert result.ok
        decision = await running.stub.Route(quality_first(PROBE))
        assert decision.model == "strong"
        assert candidate(decision, "cheap").quality_source == pb.QUALITY_SOURCE_PRIOR
        # A bad file refuses the reload and leaves the running outcomes as they were.
        write_outcomes(path, ["{oops"])
        config["routing"]["predictor"]["outcomes"] = [str(path)]
        write_config(config_path, config)
        refused = await running.sidecar.reload()
        assert not refused.ok
        assert (await running.stub.Route(quality_first(PROBE))).model == "strong"


async def test_with_tenant_keys_a_key_scores_its_own_tenants_requests_only() -> None:
    acme, beta = "sp-acme-Hq2w8ZkV1", "sp-beta-Jt5c3RmX9"
    config = predictor_config()
    config["auth"] = {
        "keys": [
            {"sha256": key_digest(acme), "tenant": "acme"},
            {"sha256": key_digest(beta), "tenant": "beta", "models": ["cheap"]},
        ]
    }

    def bearer(key: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {key}"),)

    async with running_sidecar(config, KEYS) as running:
        stub = running.stub
        decision = await stub.Route(quality_first(PROBE), metadata=bearer(acme))
        feedback = pb.FeedbackRequest(request_id=decision.request_id, model="cheap", score=1)
        with pytest.raises(grpc.aio.AioRpcError) as unauthenticated:
            await stub.Feedback(feedback)
        assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Beta's key cannot reach acme's request, whatever tenant it names.
        for tenant in ("", "acme"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Feedback(
                    pb.FeedbackRequest(
                        request_id=decision.request_id, model="cheap", score=1, tenant=tenant
                    ),
                    metadata=bearer(beta),
                )
            expected = (
                grpc.StatusCode.NOT_FOUND if not tenant else grpc.StatusCode.PERMISSION_DENIED
            )
            assert refused.value.code() == expected
        # A key limited to some models scores only those.
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            await stub.Feedback(
                pb.FeedbackRequest(request_id="x", model="strong", score=1), metadata=bearer(beta)
            )
        assert limited.value.code() == grpc.StatusCode.PERMISSION_DENIED
        reply = await stub.Feedback(feedback, metadata=bearer(acme))
        assert (reply.model, reply.outcomes) == ("cheap", 1)


async def test_a_hooks_scores_teach_the_predictor(openai_server: OpenAIServer) -> None:
    """A hook's score of an answer is an outcome: later, similar prompts are predicted from it."""
    config = predictor_config(openai_server.base_url)
    config["evaluation"] = {
        "hooks": [
            {
                "path": "tests.support.evaluation_hooks:Scorer",
                "name": "scorer",
                "timeout_ms": 10_000,
                "options": {"score": 1.0, "final": 1.0},
            }
        ]
    }
    async with running_sidecar(config, KEYS) as running:
        stub = running.stub
        before = await stub.Route(quality_first(PROBE))
        assert {c.quality_source for c in before.candidates} == {pb.QUALITY_SOURCE_PRIOR}
        answer = await stub.Chat(pb.ChatRequest(messages=user(CAPITALS[0])))
        predictor = running.sidecar.engine.predictor
        assert predictor is not None
        await wait_until(lambda: predictor.outcomes >= 1)
        after = await stub.Route(quality_first(PROBE))
        scored = candidate(after, answer.model)
        assert scored.quality_source == pb.QUALITY_SOURCE_PREDICTED
        assert scored.quality_similar >= 1
