"""Tenant API keys through a real gRPC server: who may call the Router service, as which tenant,
with which stages and models; trusted callers without keys; keys reloaded with the config."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from switchpoint.config import parse_config
from switchpoint.errors import ConfigError
from switchpoint.security.keys import key_digest, load_tenant_keys
from switchpoint.server import create_server
from switchpoint.v1 import router_pb2 as pb
from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.sidecar_harness import (
    RunningSidecar,
    routing_config,
    running_sidecar,
    user,
    write_config,
)
from tests.support.log_records import RecordedLogs, recorded
from tests.support.waiting import wait_until

ACME_KEY = "sp-acme-Hq2w8ZkV1"
BETA_KEY = "sp-beta-Jt5c3RmX9"
CHEAP_KEY = "sp-cheap-Lp4n7YsB2"
ENV = {"T_OAI": OPENAI_TEST_KEY}


def _bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def _config(openai_url: str = "http://127.0.0.1:9/v1", **auth: Any) -> dict[str, Any]:
    config = routing_config(openai_url)
    config["providers"]["openai"]["api_key_env"] = "T_OAI"
    # Request lines are written as each call ends, so a test reads them at once.
    config["telemetry"] = {"request_log_flush_ms": 0}
    config["auth"] = auth or {
        "keys": [
            {"sha256": key_digest(ACME_KEY), "tenant": "acme"},
            {
                "sha256": key_digest(BETA_KEY).upper(),
                "tenant": "beta",
                "stages": ["architecture"],
                "models": ["strong"],
            },
            {"sha256": key_digest(CHEAP_KEY), "tenant": "acme", "models": ["cheap", "tiny"]},
        ]
    }
    return config


def _route(**routing: Any) -> pb.RouteRequest:
    return pb.RouteRequest(messages=user("hello"), routing=pb.RoutingOptions(**routing))


def _chat(**routing: Any) -> pb.ChatRequest:
    return pb.ChatRequest(
        messages=user("hello"),
        routing=pb.RoutingOptions(**routing),
        params=pb.GenerationParams(max_tokens=5),
    )


@pytest.fixture
async def sidecar(openai_server: OpenAIServer) -> AsyncIterator[RunningSidecar]:
    async with running_sidecar(_config(openai_server.base_url), ENV) as running:
        yield running


@pytest.fixture
def request_lines() -> Iterator[RecordedLogs]:
    with recorded("switchpoint.request") as handler:
        yield handler


def _tenants(lines: RecordedLogs) -> list[str]:
    return [str(vars(record)["tenant"]) for record in lines.records]


async def _refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_every_router_rpc_without_a_key_is_unauthenticated(
    sidecar: RunningSidecar, openai_server: OpenAIServer, request_lines: RecordedLogs
) -> None:
    stub = sidecar.stub
    refusals = [
        await _refused(stub.Route(_route())),
        await _refused(stub.Chat(_chat())),
        await _refused(stub.GetStats(pb.StatsRequest())),
        await _refused(stub.Route(_route(), metadata=(("authorization", ACME_KEY),))),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as stream_refusal:
        async for _ in stub.ChatStream(_chat()):
            pass
    refusals.append(stream_refusal.value)
    for refusal in refusals:
        assert refusal.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer <key>" in (refusal.details() or "")
    assert openai_server.requests == []
    # Each refused Router call leaves its request line, as any refusal does (GetStats has none).
    seen = [(vars(r)["rpc"], vars(r)["outcome"]) for r in request_lines.records]
    assert sorted(seen) == sorted(
        [("Route", "unauthenticated")] * 2
        + [("Chat", "unauthenticated"), ("ChatStream", "unauthenticated")]
    )


async def test_an_unknown_key_is_permission_denied(
    sidecar: RunningSidecar, openai_server: OpenAIServer
) -> None:
    for call in (
        sidecar.stub.Route(_route(), metadata=_bearer("sp-made-up")),
        sidecar.stub.Chat(_chat(), metadata=_bearer(ACME_KEY + "x")),
    ):
        refusal = await _refused(call)
        assert refusal.code() == grpc.StatusCode.PERMISSION_DENIED
        assert refusal.details() == "unknown API key"
    assert openai_server.requests == []


async def test_the_tenant_comes_from_the_key(
    sidecar: RunningSidecar, request_lines: RecordedLogs
) -> None:
    # The Route path decided from the request's bytes: the key's tenant must be in those bytes.
    auth = _bearer(ACME_KEY)
    await sidecar.stub.Route(_route(), metadata=auth)
    await sidecar.stub.Route(_route(tenant="acme"), metadata=auth)
    await sidecar.stub.Chat(_chat(), metadata=auth)
    async for _ in sidecar.stub.ChatStream(_chat(), metadata=auth):
        pass
    assert _tenants(request_lines) == ["acme"] * 4


async def test_naming_another_tenant_is_permission_denied(
    sidecar: RunningSidecar, openai_server: OpenAIServer, request_lines: RecordedLogs
) -> None:
    auth = _bearer(ACME_KEY)
    for call in (
        sidecar.stub.Route(_route(tenant="beta"), metadata=auth),
        sidecar.stub.Chat(_chat(tenant="beta"), metadata=auth),
    ):
        refusal = await _refused(call)
        assert refusal.code() == grpc.StatusCode.PERMISSION_DENIED
        assert refusal.details() == "routing.tenant: this API key is for tenant 'acme', not 'beta'"
    long_name = "z" * 5000
    refusal = await _refused(sidecar.stub.Route(_route(tenant=long_name), metadata=auth))
    assert len(refusal.details() or "") < 200
    assert openai_server.requests == []
    assert "beta" not in _tenants(request_lines)


async def test_the_route_bytes_decided_are_those_checked(
    sidecar: RunningSidecar, request_lines: RecordedLogs
) -> None:
    """Protobuf merges a repeated message field and keeps the last tenant; whatever the bytes
    hold, the tenant the decision is made for is the one that was checked."""
    route: grpc.aio.UnaryUnaryMultiCallable[bytes, pb.RouteDecision] = sidecar.channel.unary_unary(
        "/switchpoint.v1.Router/Route",
        request_serializer=None,
        response_deserializer=pb.RouteDecision.FromString,
    )
    acme_last = (
        _route(tenant="beta").SerializeToString() + _route(tenant="acme").SerializeToString()
    )
    beta_last = (
        _route(tenant="acme").SerializeToString() + _route(tenant="beta").SerializeToString()
    )
    auth = _bearer(ACME_KEY)
    assert (await route(acme_last, metadata=auth)).model
    refusal = await _refused(route(beta_last, metadata=auth))
    assert refusal.code() == grpc.StatusCode.PERMISSION_DENIED
    # The decided call is acme's; the refused one is logged unread, as no tenant's.
    lines = [(vars(r)["tenant"], vars(r)["outcome"]) for r in request_lines.records]
    assert lines == [("acme", "ok"), ("", "permission_denied")]


async def test_a_key_limited_to_a_stage_and_model(sidecar: RunningSidecar) -> None:
    auth = _bearer(BETA_KEY)
    no_stage = await _refused(sidecar.stub.Route(_route(), metadata=auth))
    assert no_stage.code() == grpc.StatusCode.PERMISSION_DENIED
    assert no_stage.details() == (
        "routing.stage: this API key may use stages architecture; the request names no stage"
    )
    other_model = await _refused(
        sidecar.stub.Route(_route(stage="architecture", models=["fast"]), metadata=auth)
    )
    assert other_model.code() == grpc.StatusCode.PERMISSION_DENIED
    assert other_model.details() == "routing.models[0]: this API key may not use model 'fast'"
    # The stage allows strong and fast; the key only strong, so only strong is a candidate.
    decision = await sidecar.stub.Route(_route(stage="architecture"), metadata=auth)
    assert decision.model == "strong"
    assert [c.model for c in decision.candidates] == ["strong"]


async def test_a_key_limited_to_models_routes_among_them_only(sidecar: RunningSidecar) -> None:
    auth = _bearer(CHEAP_KEY)
    for strategy in ("quality-first", "latency-first", "cost-first"):
        decision = await sidecar.stub.Route(_route(strategy=strategy), metadata=auth)
        assert {c.model for c in decision.candidates} == {"cheap", "tiny"}
    refusal = await _refused(sidecar.stub.Route(_route(models=["strong"]), metadata=auth))
    assert refusal.code() == grpc.StatusCode.PERMISSION_DENIED
    # The unrestricted key of the same tenant still reaches every model.
    decision = await sidecar.stub.Route(
        _route(strategy="quality-first"), metadata=_bearer(ACME_KEY)
    )
    assert decision.model == "strong"


async def test_stats_show_the_keys_tenant_only(sidecar: RunningSidecar) -> None:
    await sidecar.stub.Chat(_chat(models=["cheap"]), metadata=_bearer(ACME_KEY))
    other = await _refused(
        sidecar.stub.GetStats(pb.StatsRequest(tenant="acme"), metadata=_bearer(BETA_KEY))
    )
    assert other.code() == grpc.StatusCode.PERMISSION_DENIED
    assert other.details() == "tenant: this API key is for tenant 'beta', not 'acme'"
    beta = await sidecar.stub.GetStats(pb.StatsRequest(), metadata=_bearer(BETA_KEY))
    assert [m.model for m in beta.models] == ["strong"]
    assert beta.models[0].requests == 0
    acme = await sidecar.stub.GetStats(
        pb.StatsRequest(models=["cheap"]), metadata=_bearer(ACME_KEY)
    )
    assert acme.models[0].requests == 1


async def test_the_keys_tenants_keep_their_own_label(sidecar: RunningSidecar) -> None:
    # No limit or budget names 'acme': its key alone makes it a tenant stats and metrics keep
    # apart from the `other` label of unknown tenants.
    await sidecar.stub.Chat(_chat(models=["cheap"]), metadata=_bearer(ACME_KEY))
    tenants = {key.tenant for key, _ in sidecar.sidecar.engine.stats.items()}
    assert tenants == {"acme"}


async def test_without_keys_callers_are_trusted_and_told_so() -> None:
    with recorded("switchpoint.server") as server_lines:
        config = routing_config()
        async with running_sidecar(config) as running:
            decision = await running.stub.Route(_route(tenant="anyone"))
            assert decision.model
    notes = [record.getMessage() for record in server_lines.records]
    assert any("trusted-caller mode" in note for note in notes)


async def test_keys_from_a_file_and_a_variable_reload_with_the_config(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# tenants\n{key_digest(ACME_KEY)} acme\n", encoding="utf-8")
    environ = {**ENV, "TENANT_KEYS": f"{key_digest(BETA_KEY)} beta models=strong"}
    config = _config(keys_file=str(keys_file), keys_env="TENANT_KEYS")
    config["server"] = {"reload_poll_s": None}
    path = tmp_path / "switchpoint.yaml"
    async with running_sidecar(config, environ, config_path=path) as running:
        decision = await running.stub.Route(_route(), metadata=_bearer(BETA_KEY))
        assert decision.model == "strong"
        await running.stub.Route(_route(), metadata=_bearer(ACME_KEY))
        # Rotate: the file now holds another key for acme; the config file itself is unchanged.
        keys_file.write_text(f"{key_digest(CHEAP_KEY)} acme models=cheap\n", encoding="utf-8")
        result = await running.sidecar.reload()
        assert result.ok
        refusal = await _refused(running.stub.Route(_route(), metadata=_bearer(ACME_KEY)))
        assert refusal.code() == grpc.StatusCode.PERMISSION_DENIED
        decision = await running.stub.Route(_route(), metadata=_bearer(CHEAP_KEY))
        assert decision.model == "cheap"
        # A bad line refuses the reload: the keys loaded last stay.
        keys_file.write_text("not-a-hash acme\n", encoding="utf-8")
        result = await running.sidecar.reload()
        assert not result.ok
        assert result.errors == (
            "auth.keys_file line 1: the first word must be a SHA-256 in hex (64 characters)",
        )
        await running.stub.Route(_route(), metadata=_bearer(CHEAP_KEY))
        # Keys written in the config reload too, and removing every source trusts callers again.
        write_config(path, {**config, "auth": {}})
        assert (await running.sidecar.reload()).ok
        await running.stub.Route(_route(tenant="whoever"))


def test_key_sources_are_checked_with_their_paths(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(
        f"{key_digest(ACME_KEY)} acme stages=nope\n{key_digest(ACME_KEY)} beta\nshort\n",
        encoding="utf-8",
    )
    config = _config(
        keys=[{"sha256": key_digest(BETA_KEY), "tenant": "b", "models": ["gpt-9"]}],
        keys_file=str(keys_file),
        keys_env="UNSET_VARIABLE",
    )
    with pytest.raises(ConfigError) as caught:
        load_tenant_keys(parse_config(config), {})
    assert caught.value.errors == [
        "auth.keys_file line 3: expected '<sha256> <tenant> [stages=a,b] [models=x,y]'",
        "auth.keys_env: variable UNSET_VARIABLE is not set",
        "auth.keys[0].models: unknown model 'gpt-9'",
        "auth.keys_file line 1 stages=: unknown stage 'nope'",
        "auth.keys_file line 2: the same key hash as auth.keys_file line 1",
    ]


async def test_a_sidecar_with_an_unset_keys_variable_does_not_start() -> None:
    config = parse_config(_config(keys_env="UNSET_VARIABLE"))
    with pytest.raises(ConfigError, match="variable UNSET_VARIABLE is not set"):
        await create_server(config, "127.0.0.1:0", environ=ENV)


async def test_an_edited_key_file_is_taken_without_a_signal(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"{key_digest(ACME_KEY)} acme\n", encoding="utf-8")
    config = _config(keys_file=str(keys_file))
    config["server"] = {"reload_poll_s": 0.05}
    async with running_sidecar(config, ENV, config_path=tmp_path / "switchpoint.yaml") as running:
        await running.stub.Route(_route(), metadata=_bearer(ACME_KEY))
        staging = tmp_path / "keys.tmp"
        staging.write_text(f"{key_digest(BETA_KEY)} beta\n", encoding="utf-8")
        staging.replace(keys_file)
        await wait_until(lambda: running.sidecar.config_version == 2, timeout_s=5)
        refusal = await _refused(running.stub.Route(_route(), metadata=_bearer(ACME_KEY)))
        assert refusal.details() == "unknown API key"
        await running.stub.Route(_route(), metadata=_bearer(BETA_KEY))
        # Nothing changed since: no further reload.
        await asyncio.sleep(0.3)
        assert running.sidecar.config_version == 2
