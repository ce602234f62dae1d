"""Config hot reload through real gRPC: the file watcher, Admin ReloadConfig and SIGHUP; calls in
flight finish on their config; refused configs leave the running one and say why; spend, latency
history, admin overrides and breakers survive a reload."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from switchpoint._native import Gate
from switchpoint.config import BreakerConfig, load_config, parse_config
from switchpoint.engine.resilience import Breakers
from switchpoint.errors import ErrorClass
from switchpoint.quota.gate import TokenGate
from switchpoint.quota.scopes import RequestScope
from switchpoint.server import Sidecar, create_server
from switchpoint.v1 import admin_pb2, admin_pb2_grpc, router_pb2_grpc
from switchpoint.v1 import router_pb2 as pb
from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import hang
from tests.sidecar_harness import user
from tests.support.log_records import recorded

ADMIN_TOKEN = "reload-admin-token"
AUTH = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
ENV = {"T_OAI": OPENAI_TEST_KEY, "SWITCHPOINT_ADMIN_TOKEN": ADMIN_TOKEN}


def _config(
    openai: OpenAIServer, *, strategy: str = "cost-first", poll_s: float | None = 0.1
) -> dict[str, Any]:
    """Two models: stage "s" picks `cheap` under cost-first and `strong` under quality-first."""
    common = {
        "provider": "oai",
        "context_window": 100000,
        "latency_prior": {"ttft_ms": 100, "tpot_ms": 10},
    }
    return {
        "server": {"reload_poll_s": poll_s, "graceful_stop_s": 5},
        "providers": {
            "oai": {
                "kind": "openai",
                "base_url": openai.base_url,
                "api_key_env": "T_OAI",
                "headers": {"x-config": "v1"},
            }
        },
        "models": [
            {
                **common,
                "name": "cheap",
                "quality": 0.3,
                "price": {"input_per_mtok": 1000.0, "output_per_mtok": 1000.0},
            },
            {
                **common,
                "name": "strong",
                "quality": 0.95,
                "price": {"input_per_mtok": 5000.0, "output_per_mtok": 5000.0},
            },
        ],
        "routing": {
            "stages": {"s": {"models": ["cheap", "strong"], "strategy": strategy}},
            # Long enough that decayed latency sample counts do not move during a test.
            "latency_half_life_s": 1e9,
        },
    }


def _write(path: Path, config: dict[str, Any]) -> None:
    # Replaced whole, as editors and config managers do: the watcher never sees half a file.
    staging = path.with_suffix(".tmp")
    staging.write_text(yaml.safe_dump(config), encoding="utf-8")
    staging.replace(path)


@dataclass
class Running:
    sidecar: Sidecar
    channel: grpc.aio.Channel
    stub: router_pb2_grpc.RouterAsyncStub
    admin: admin_pb2_grpc.AdminAsyncStub

    async def stats(self, *models: str) -> pb.Stats:
        return await self.stub.GetStats(pb.StatsRequest(models=list(models)))

    async def health(self, service: str) -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        status: int = response.status
        return status

    async def route(self) -> pb.RouteDecision:
        return await self.stub.Route(pb.RouteRequest(messages=user("hi"), routing=_stage()))


def _stage(tenant: str = "acme") -> pb.RoutingOptions:
    return pb.RoutingOptions(stage="s", tenant=tenant)


def _chat(text: str = "hello there") -> pb.ChatRequest:
    return pb.ChatRequest(
        messages=user(text), routing=_stage(), params=pb.GenerationParams(max_tokens=10)
    )


@asynccontextmanager
async def _running(path: Path, config: dict[str, Any]) -> AsyncIterator[Running]:
    _write(path, config)
    sidecar, port = await create_server(
        load_config(path), "127.0.0.1:0", environ=ENV, config_path=path
    )
    await sidecar.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Running(
            sidecar,
            channel,
            router_pb2_grpc.RouterStub(channel),
            admin_pb2_grpc.AdminStub(channel),
        )
    finally:
        await channel.close()
        await sidecar.stop(0)


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def _until_version(running: Running, version: int, timeout_s: float = 5.0) -> pb.Stats:
    deadline = time.monotonic() + timeout_s
    while (stats := await running.stats()).config_version < version:
        assert time.monotonic() < deadline, f"config version {version} not reached"
        await asyncio.sleep(0.02)
    return stats


# -- the watcher ---------------------------------------------------------------------------------


async def test_a_changed_file_applies_to_new_calls_while_calls_in_flight_keep_theirs(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    path = tmp_path / "switchpoint.yaml"
    async with _running(path, _config(openai_server)) as running:
        assert (await running.route()).model == "cheap"
        assert (await running.stats()).config_version == 1
        openai_server.script.push(hang(1.0))
        in_flight = running.stub.Chat(_chat())  # under way until awaited
        await _until(lambda: len(openai_server.requests) == 1)

        _write(path, _config(openai_server, strategy="quality-first"))
        stats = await _until_version(running, 2)
        assert stats.config_error == ""
        assert not in_flight.done()
        assert (await running.route()).model == "strong"

        answer = await in_flight
        assert answer.model == "cheap"
        assert answer.decision.model == "cheap"
        assert answer.content == "[cheap] hello there"
        after = await running.stub.Chat(_chat())
        assert after.model == "strong"


async def test_a_replaced_provider_adapter_is_closed_only_after_its_calls_finish(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    path = tmp_path / "switchpoint.yaml"
    async with _running(path, _config(openai_server)) as running:
        openai_server.script.push(hang(1.0))
        in_flight = running.stub.Chat(_chat())  # under way until awaited
        await _until(lambda: len(openai_server.requests) == 1)

        changed = _config(openai_server)
        changed["providers"]["oai"]["headers"] = {"x-config": "v2"}  # a new adapter
        _write(path, changed)
        await _until_version(running, 2)
        assert (await running.stub.Chat(_chat("second"))).content == "[cheap] second"

        # The call that started before the reload finishes on the old adapter, still open.
        assert (await in_flight).content == "[cheap] hello there"
        headers = [request.headers["x-config"] for request in openai_server.requests]
        assert headers == ["v1", "v2"]


async def test_an_invalid_file_is_refused_and_shown_until_it_is_fixed(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    path = tmp_path / "switchpoint.yaml"
    async with _running(path, _config(openai_server)) as running:
        broken = _config(openai_server, strategy="quality-first")
        broken["models"][0]["price"]["input_per_mtok"] = -1
        _write(path, broken)
        deadline = time.monotonic() + 5
        while not (stats := await running.stats()).config_error:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert "models[0].price.input_per_mtok: must be >= 0" in stats.config_error
        assert str(path) in stats.config_error
        assert stats.config_version == 1
        assert (
            await running.health("switchpoint.v1.Config")
            == health_pb2.HealthCheckResponse.NOT_SERVING
        )
        assert await running.health("") == health_pb2.HealthCheckResponse.SERVING
        # Still serving on the config it had.
        assert (await running.route()).model == "cheap"
        assert (await running.stub.Chat(_chat())).model == "cheap"

        _write(path, _config(openai_server, strategy="quality-first"))
        stats = await _until_version(running, 2)
        assert stats.config_error == ""
        assert (
            await running.health("switchpoint.v1.Config") == health_pb2.HealthCheckResponse.SERVING
        )
        assert (await running.route()).model == "strong"


def _unset_key(config: dict[str, Any]) -> None:
    config["providers"]["oai"]["api_key_env"] = "T_UNSET_FOR_RELOAD"


def _move_address(config: dict[str, Any]) -> None:
    config["server"]["grpc_address"] = "127.0.0.1:1"


def _move_http_address(config: dict[str, Any]) -> None:
    config["server"]["http_address"] = "127.0.0.1:1"


def _unknown_stage_model(config: dict[str, Any]) -> None:
    config["routing"]["stages"]["s"]["models"] = ["cheap", "nope"]


def _managed_server(config: dict[str, Any]) -> None:
    config["providers"]["local"] = {"kind": "openai", "managed": {"model": "/nowhere.gguf"}}


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (_unset_key, "providers.oai.api_key_env: environment variable T_UNSET_FOR_RELOAD"),
        (_move_address, "server.grpc_address: changing it needs a restart"),
        (_move_http_address, "server.http_address: changing it needs a restart"),
        (_unknown_stage_model, "routing.stages.s.models[1]: unknown model 'nope'"),
        (_managed_server, "providers.local.managed: changing a managed local server needs a"),
    ],
)
async def test_configs_that_cannot_run_here_are_refused(
    openai_server: OpenAIServer,
    tmp_path: Path,
    change: Callable[[dict[str, Any]], None],
    error: str,
) -> None:
    path = tmp_path / "switchpoint.yaml"
    async with _running(path, _config(openai_server, poll_s=None)) as running:
        config = _config(openai_server, strategy="quality-first", poll_s=None)
        change(config)
        _write(path, config)
        result = await running.sidecar.reload()
        assert not result.ok
        assert result.version == 1
        assert any(error in e for e in result.errors), result.errors
        assert error in running.sidecar.config_error
        assert (await running.route()).model == "cheap"


# -- what survives -------------------------------------------------------------------------------


def _budgets(config: dict[str, Any], *, total_limit: float, tenant_limit: float) -> None:
    config["budgets"] = [
        {"name": "all", "window": "day", "limit_usd": total_limit},
        {"name": "tenant", "match": {"tenant": "*"}, "window": "day", "limit_usd": tenant_limit},
    ]
    config["limits"] = [{"name": "conc", "match": {"tenant": "*"}, "concurrency": 4}]


async def _spent(running: Running) -> dict[str, tuple[float, float]]:
    budgets = await running.admin.GetBudgets(admin_pb2.GetBudgetsRequest(), metadata=AUTH)
    return {b.name: (b.spent_usd, b.limit_usd) for b in budgets.budgets}


async def test_spend_latency_history_and_admin_overrides_survive_a_reload(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    path = tmp_path / "switchpoint.yaml"
    config = _config(openai_server, poll_s=None)
    _budgets(config, total_limit=10.0, tenant_limit=10.0)
    async with _running(path, config) as running:
        for _ in range(3):
            await running.stub.Chat(_chat())
        await running.admin.SetBudget(
            admin_pb2.SetBudgetRequest(name="tenant", limit_usd=7.0), metadata=AUTH
        )
        before = await _spent(running)
        assert before["all"][0] > 0
        assert before["tenant"] == (before["all"][0], 7.0)
        cheap = (await running.stats("cheap")).models[0]
        assert cheap.latency.samples > 0

        changed = _config(openai_server, strategy="quality-first", poll_s=None)
        _budgets(changed, total_limit=20.0, tenant_limit=30.0)
        changed["models"].append({**changed["models"][0], "name": "extra"})
        _write(path, changed)
        assert (await running.sidecar.reload()).ok

        after = await _spent(running)
        assert after["all"] == (before["all"][0], 20.0)  # the config's new limit
        assert after["tenant"] == (before["all"][0], 7.0)  # the admin's override stays
        kept = (await running.stats("cheap")).models[0]
        assert kept.latency.samples == pytest.approx(cheap.latency.samples, rel=1e-3)
        assert kept.requests == cheap.requests == 3
        assert kept.cost_usd == pytest.approx(cheap.cost_usd)

        # A budget whose window changed is another budget: it starts from nothing.
        changed["budgets"][0]["window"] = "month"
        _write(path, changed)
        assert (await running.sidecar.reload()).ok
        await running.stub.Chat(_chat())
        fresh = await _spent(running)
        one_call = fresh["tenant"][0] - before["tenant"][0]
        assert one_call > 0
        assert fresh["all"][0] == pytest.approx(one_call)


def test_gate_carry_over_keeps_only_unchanged_rule_instances() -> None:
    def config(rpm: float, window: str) -> Any:
        data = {
            "providers": {"p": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
            "models": [
                {
                    "name": "m",
                    "provider": "p",
                    "price": {"input_per_mtok": 1, "output_per_mtok": 1},
                    "context_window": 1000,
                    "quality": 0.5,
                    "latency_prior": {"ttft_ms": 1, "tpot_ms": 1},
                }
            ],
            "limits": [
                {"name": "rpm", "match": {"tenant": "*"}, "rpm": rpm},
                {"name": "conc", "match": {"tenant": "*"}, "concurrency": 2},
            ],
            "budgets": [{"name": "b", "match": {"tenant": "*"}, "window": window, "limit_usd": 1}],
        }
        return parse_config(data)

    first = config(60, "day")
    model = first.models[0]
    scope = RequestScope("acme", "")
    old = TokenGate(first, Gate())
    (rpm_id, conc_id), (budget_id,) = old.ids_for(scope, model)

    same = TokenGate(config(60, "day"), old.gate)
    same.carry_over(old)
    assert same.ids_for(scope, model) == ([rpm_id, conc_id], [budget_id])

    changed = TokenGate(config(120, "month"), old.gate)
    changed.carry_over(old)
    (new_rpm, new_conc), (new_budget,) = changed.ids_for(scope, model)
    assert new_conc == conc_id
    assert new_rpm != rpm_id
    assert new_budget != budget_id


def test_breakers_carry_over_only_under_the_same_policy() -> None:
    policy = BreakerConfig(consecutive_failures=1)
    old = Breakers(lambda _: policy)
    old.get("m").record(ErrorClass.SERVER_ERROR)
    old.get("gone").record(ErrorClass.SERVER_ERROR)
    assert old.get("m").state == "open"

    same = Breakers(lambda _: policy)
    same.carry_over(old, {"m"})
    assert same.get("m") is old.get("m")
    assert same.get("gone") is not old.get("gone")
    assert same.transitions is old.transitions

    other = Breakers(lambda _: BreakerConfig(consecutive_failures=3))
    other.carry_over(old, {"m"})
    assert other.get("m").state == "closed"


# -- Admin and SIGHUP ----------------------------------------------------------------------------


async def test_admin_reload_needs_the_token_and_reports_errors(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    path = tmp_path / "switchpoint.yaml"
    async with _running(path, _config(openai_server, poll_s=None)) as running:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.admin.ReloadConfig(admin_pb2.ReloadConfigRequest())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.admin.ReloadConfig(
                admin_pb2.ReloadConfigRequest(), metadata=(("authorization", "Bearer nope"),)
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

        broken = _config(openai_server, poll_s=None)
        broken["models"][0]["price"]["input_per_mtok"] = -1
        _write(path, broken)
        refused = await running.admin.ReloadConfig(admin_pb2.ReloadConfigRequest(), metadata=AUTH)
        assert not refused.ok
        assert refused.version == 1
        assert list(refused.errors) == ["models[0].price.input_per_mtok: must be >= 0"]

        fixed = _config(openai_server, strategy="quality-first", poll_s=None)
        fixed["routing"]["queue_max_age_s"] = 9
        _write(path, fixed)
        done = await running.admin.ReloadConfig(admin_pb2.ReloadConfigRequest(), metadata=AUTH)
        assert done.ok
        assert done.version == 2
        assert list(done.errors) == []
        assert list(done.warnings) == [
            "routing.queue_max_age_s: the new value applies after a restart"
        ]
        assert (await running.route()).model == "strong"


async def test_the_request_log_follows_a_reload_and_telemetry_says_what_waits(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    with recorded("switchpoint.request") as records:
        path = tmp_path / "switchpoint.yaml"
        config = _config(openai_server, poll_s=None)
        config["telemetry"] = {"request_log_flush_ms": 10_000}
        async with _running(path, config) as running:
            await running.route()
            assert records.records == []  # waiting for its batch
            config["telemetry"] = {
                "log_prompts": True,
                "request_log_flush_ms": 10_000,
                "sample_ratio": 0.5,
            }
            _write(path, config)
            done = await running.admin.ReloadConfig(admin_pb2.ReloadConfigRequest(), metadata=AUTH)
            assert done.ok
            assert list(done.warnings) == [
                "telemetry.sample_ratio: the new value applies after a restart"
            ]
            # The line from before the reload was written under the settings it ran with.
            (before,) = records.records
            assert before.prompt_chars == 2  # type: ignore[attr-defined]
            assert not hasattr(before, "prompt")
            await running.route()
            assert len(records.records) == 1
        after = records.records[1]
        assert after.prompt == [{"role": "user", "content": "hi"}]  # type: ignore[attr-defined]


async def test_sighup_reloads_the_file(openai_server: OpenAIServer, tmp_path: Path) -> None:
    path = tmp_path / "switchpoint.yaml"
    async with _running(path, _config(openai_server, poll_s=None)) as running:
        # Installed on this test's loop; the sidecar's stop() (in _running) removes it again.
        running.sidecar.install_reload_signal(asyncio.get_running_loop())
        _write(path, _config(openai_server, strategy="quality-first", poll_s=None))
        os.kill(os.getpid(), signal.SIGHUP)
        await _until_version(running, 2)
        assert (await running.route()).model == "strong"


async def test_a_reload_keeps_the_loaded_tokenizers(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    """Reading an encoding's ranks takes ~0.5 s on the event loop; a reload must not pay it again
    (the running engine's counter is handed over, like the latency tracker)."""
    config = _config(openai_server, poll_s=None)
    for model in config["models"]:
        model["tokenizer"] = "o200k_base"
    path = tmp_path / "switchpoint.yaml"
    async with _running(path, config) as running:
        before = running.sidecar.engine.tokens
        encoding = before.encoding("o200k_base")
        assert encoding is not None
        config["routing"]["stages"]["s"]["strategy"] = "quality-first"
        _write(path, config)
        result = await running.sidecar.reload()
        assert result.ok, result.errors
        after = running.sidecar.engine.tokens
        assert after is before
        assert after.encoding("o200k_base") is encoding
        assert (await running.route()).model == "strong"
