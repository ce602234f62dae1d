"""A/B splits through a real sidecar: Route (decided from decoded bytes when splits exist), Chat and
ChatStream carry the arm in their reasons; the arm sticks across requests, a reload and a
restart; GetStats, the Prometheus metrics and the request log count each arm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from switchpoint.config import TelemetryConfig
from switchpoint.security.keys import key_digest
from switchpoint.splits.assign import arm_point
from switchpoint.telemetry import Telemetry
from switchpoint.v1 import router_pb2 as pb
from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.sidecar_harness import RunningSidecar, routing_config, running_sidecar, user
from tests.support.log_records import recorded

ENV = {"T_OAI": OPENAI_TEST_KEY}
USERS = [f"user-{i}" for i in range(24)]


def _config(openai_url: str = "http://127.0.0.1:9/v1") -> dict[str, Any]:
    config = routing_config(openai_url)
    config["providers"]["openai"]["api_key_env"] = "T_OAI"
    config["routing"]["splits"] = {
        "pricing": {
            "sticky": "user",
            "arms": [
                {"name": "a", "weight": 70, "strategy": "cost-first"},
                {"name": "b", "weight": 30, "models": ["strong"]},
            ],
        }
    }
    # A tenant the config names keeps its own label in the usage figures.
    config["limits"] = [{"name": "acme", "match": {"tenant": "acme"}, "rpm": 100000}]
    return config


def _arm(decision: pb.RouteDecision) -> str:
    """The arm the decision's reasons name; "" when no reason names one."""
    for reason in decision.reasons:
        if reason.startswith("split 'pricing' arm "):
            return reason.split()[3]
    return ""


def _check_arm(decision: pb.RouteDecision) -> str:
    arm = _arm(decision)
    if arm == "a":
        assert decision.strategy == "cost-first"
        assert "split 'pricing' arm a (70%)" in decision.reasons
    else:
        assert arm == "b", list(decision.reasons)
        assert (decision.model, decision.level) == ("strong", pb.DECISION_LEVEL_OVERRIDE)
    return arm


async def _routed_arms(sidecar: RunningSidecar) -> dict[str, str]:
    arms = {}
    for name in USERS:
        request = pb.RouteRequest(messages=user("hello"), routing=pb.RoutingOptions(user=name))
        arms[name] = _check_arm(await sidecar.stub.Route(request))
    return arms


async def test_route_keeps_each_user_in_its_arm_across_requests_a_reload_and_a_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "switchpoint.yaml"
    async with running_sidecar(_config(), ENV, config_path=path) as sidecar:
        first = await _routed_arms(sidecar)
        assert await _routed_arms(sidecar) == first
        reloaded = await sidecar.sidecar.reload()
        assert (reloaded.ok, reloaded.version) == (True, 2)
        assert await _routed_arms(sidecar) == first
        # A request naming its strategy keeps it, and says the split did not apply.
        named = await sidecar.stub.Route(
            pb.RouteRequest(
                messages=user("hello"),
                routing=pb.RoutingOptions(user=USERS[0], strategy="quality-first"),
            )
        )
    assert set(first.values()) == {"a", "b"}
    assert named.strategy == "quality-first"
    assert "split 'pricing' did not apply: the request names its strategy" in named.reasons
    assert _arm(named) == ""
    async with running_sidecar(_config(), ENV, config_path=path) as restarted:
        assert await _routed_arms(restarted) == first


async def test_route_counts_arms_and_refusals_the_same_with_spans_recorded() -> None:
    """Route is answered from its bytes when nothing but sizes is observed, and decoded in Python
    when spans are recorded: both place a user alike, and count and log it alike."""
    counted: list[list[tuple[str, int, int]]] = []
    placed: list[dict[str, str]] = []
    logged: list[list[str]] = []
    for spans in (None, InMemorySpanExporter()):
        telemetry = Telemetry(TelemetryConfig(), span_exporter=spans, environ={})
        with recorded("switchpoint.request") as lines:
            async with running_sidecar(_config(), ENV, telemetry=telemetry) as sidecar:
                placed.append(await _routed_arms(sidecar))
                refused = pb.RouteRequest(
                    messages=user("hello"),
                    routing=pb.RoutingOptions(user=USERS[0], capabilities=["teleport"]),
                )
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await sidecar.stub.Route(refused)
                assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                stats = await sidecar.stub.GetStats(pb.StatsRequest())
        counted.append([(r.arm, r.requests, r.errors) for r in stats.splits])
        logged.append(sorted(vars(r).get("split", "") for r in lines.records))
    assert placed[0] == placed[1]
    assert counted[0] == counted[1]
    arms = list(placed[0].values())
    refused_arm = placed[0][USERS[0]]
    assert counted[0] == [
        (arm, arms.count(arm) + (arm == refused_arm), int(arm == refused_arm)) for arm in "ab"
    ]
    assert logged[0] == logged[1] == sorted([f"pricing/{a}" for a in [*arms, refused_arm]])


async def test_chat_arms_are_counted_in_getstats_metrics_and_the_request_log(
    openai_server: OpenAIServer,
) -> None:
    telemetry = Telemetry(TelemetryConfig(metrics_address="127.0.0.1:0"), environ={})
    replies: dict[str, list[pb.ChatResponse]] = {"a": [], "b": []}
    with recorded("switchpoint.request") as lines:
        async with running_sidecar(
            _config(openai_server.base_url), ENV, telemetry=telemetry
        ) as sidecar:
            for name in USERS:
                reply = await sidecar.stub.Chat(
                    pb.ChatRequest(
                        messages=user("hello"),
                        routing=pb.RoutingOptions(user=name, tenant="acme"),
                    )
                )
                replies[_check_arm(reply.decision)].append(reply)
            # Outside the split: counted in no arm.
            await sidecar.stub.Chat(
                pb.ChatRequest(messages=user("hello"), routing=pb.RoutingOptions(tenant="acme"))
            )
            stats = await sidecar.stub.GetStats(pb.StatsRequest())
            acme = await sidecar.stub.GetStats(pb.StatsRequest(tenant="acme"))
            others = await sidecar.stub.GetStats(pb.StatsRequest(tenant="beta"))
            port = sidecar.sidecar.metrics_port
            assert port is not None
            async with httpx.AsyncClient() as client:
                scraped = (await client.get(f"http://127.0.0.1:{port}/metrics")).text

    rows = {row.arm: row for row in stats.splits}
    assert [(r.split, r.arm, round(r.share, 6)) for r in stats.splits] == [
        ("pricing", "a", 0.7),
        ("pricing", "b", 0.3),
    ]
    for arm, served in replies.items():
        row = rows[arm]
        assert row.requests == len(served) > 0
        assert row.errors == 0
        assert row.output_tokens == sum(r.usage.output_tokens for r in served)
        assert abs(row.cost_usd - sum(r.cost_usd for r in served)) < 1e-12
    assert [r.requests for r in acme.splits] == [len(replies["a"]), len(replies["b"])]
    assert [r.requests for r in others.splits] == [0, 0]

    samples = [s for f in text_string_to_metric_families(scraped) for s in f.samples]
    for arm, served in replies.items():
        counted = [
            s.value
            for s in samples
            if s.name == "switchpoint_split_requests_total"
            and s.labels == {"split": "pricing", "arm": arm, "outcome": "ok"}
        ]
        assert counted == [len(served)]

    logged = [vars(r).get("split", "") for r in lines.records if vars(r)["rpc"] == "Chat"]
    expected = [f"pricing/{arm}" for arm, served in replies.items() for _ in served]
    assert sorted(logged) == sorted([*expected, ""])
    assert not any(name in r.getMessage() for r in lines.records for name in USERS)


async def test_chat_stream_names_the_arm_on_its_first_chunk(openai_server: OpenAIServer) -> None:
    async with running_sidecar(_config(openai_server.base_url), ENV) as sidecar:
        request = pb.ChatRequest(messages=user("hello"), routing=pb.RoutingOptions(user="u-1"))
        routed = await sidecar.stub.Route(
            pb.RouteRequest(messages=request.messages, routing=request.routing)
        )
        chunks = [chunk async for chunk in sidecar.stub.ChatStream(request)]
    arm = _check_arm(chunks[0].decision)
    assert arm == _arm(routed)
    assert chunks[-1].done
    assert sum(1 for c in chunks if c.HasField("decision")) == 1


async def test_a_tenant_split_keys_on_the_api_keys_tenant_and_never_escapes_its_models() -> None:
    acme, limited = "sp-acme-Hq2w8ZkV1", "sp-cheap-Lp4n7YsB2"
    config = _config()
    config["routing"]["splits"]["pricing"]["sticky"] = "tenant"
    config["routing"]["splits"]["pricing"]["arms"][1]["models"] = ["strong", "fast"]
    config["auth"] = {
        "keys": [
            {"sha256": key_digest(acme), "tenant": "acme"},
            {"sha256": key_digest(limited), "tenant": "acme", "models": ["cheap", "tiny"]},
        ]
    }
    request = pb.RouteRequest(messages=user("hello"))
    async with running_sidecar(config, ENV) as sidecar:
        keyed = await sidecar.stub.Route(request, metadata=(("authorization", f"Bearer {acme}"),))
        bound = await sidecar.stub.Route(
            request, metadata=(("authorization", f"Bearer {limited}"),)
        )
    # The request named no tenant: the key's tenant is the split's key.
    assert _arm(keyed) == ("a" if arm_point("pricing", "acme") < 0.7 else "b")
    # The limited key's models are named on the request, so no arm can widen them.
    assert "split 'pricing' did not apply: the request names its models" in bound.reasons
    assert bound.model in {"cheap", "tiny"}
