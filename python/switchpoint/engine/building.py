"""Building an engine from a config; with the running engine's build, a reload of it.

What a reload carries over from the running engine (everything else is built from the new config):

- the latency tracker and the usage counters: both are keyed by model name, so a model that stays
  keeps its history and a new one starts with its config priors;
- the Rust gate: budget and rate-limit instances whose rule is unchanged keep their accounting
  (`TokenGate.carry_over` says exactly when), admin budget overrides stay, and the shared-quota
  lease manager stays with it. Instances of changed or removed rules stay in the Rust gate, unused
  by new calls (calls in flight settle against them); the Rust gate has no removal;
- circuit breakers of models still served by the same provider under the same policy;
- the priority queues (`Scheduler.update` applies the new concurrency limits);
- provider adapters (their connection pools) of providers whose config and API key are the same.
  An adapter the new config no longer uses is closed once the last call that holds the old engine
  has ended (`LiveEngine` counts them), never under a call still streaming through it.

Tenant API keys and the TLS certificate are read anew (their files and variable too), so a reload
rotates them. The gRPC address, managed local model servers, the shared-state section, the admin
token variable and whether the port speaks TLS (and asks for client certificates) belong to the
process: a reload that changes them is refused and says a restart is needed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

from opentelemetry.trace import Tracer

from switchpoint._native import Gate, LatencyTracker
from switchpoint.cache.store import ResponseCache
from switchpoint.config import Config
from switchpoint.engine.path import Engine
from switchpoint.errors import ConfigError, SwitchpointError
from switchpoint.evaluation.loading import load_hooks
from switchpoint.instruments import MetricsSink
from switchpoint.local_model import llama_cpp_available, resolve_model_path
from switchpoint.providers import create_adapter
from switchpoint.providers.base import ProviderAdapter
from switchpoint.quota.gate import TokenGate
from switchpoint.quota.shared import SharedQuota
from switchpoint.registry import ProviderStatus, Registry, resolve_providers
from switchpoint.routing.predictor.service import QualityPredictor
from switchpoint.security.keys import TRUSTED_CALLERS, TenantKeys, load_tenant_keys
from switchpoint.stats import StatsBook

log = logging.getLogger("switchpoint.reload")


@dataclass(frozen=True, slots=True)
class EngineBuild:
    """An engine and the provider adapters it calls (by provider name). `retired` lists the
    previous build's adapters this one does not use: close them once the old engine drains."""

    engine: Engine
    adapters: Mapping[str, ProviderAdapter]
    retired: tuple[ProviderAdapter, ...] = ()
    # The tenant API keys of this config load (re-read from their file or variable on reload).
    tenant_keys: TenantKeys = TRUSTED_CALLERS


def restart_only_changes(running: Config, new: Config) -> list[str]:
    """What `new` changes that a running process cannot: each as `path: message`."""
    errors: list[str] = []
    if new.server.grpc_address != running.server.grpc_address:
        errors.append("server.grpc_address: changing it needs a restart")
    if new.server.http_address != running.server.http_address:
        errors.append("server.http_address: changing it needs a restart")
    for name in sorted(running.providers.keys() | new.providers.keys()):
        before, after = running.providers.get(name), new.providers.get(name)
        managed_before = before.managed if before is not None else None
        managed_after = after.managed if after is not None else None
        if managed_before != managed_after:
            errors.append(
                f"providers.{name}.managed: changing a managed local server needs a restart"
            )
    if new.shared_state != running.shared_state:
        errors.append("shared_state: changing it needs a restart")
    if new.admin.token_env != running.admin.token_env:
        errors.append("admin.token_env: changing it needs a restart")
    if new.cache != running.cache:
        errors.append("cache: changing it needs a restart")
    # The outcome files are re-read on reload; the rest shapes the predictor the process runs.
    predictor_before = running.routing.predictor.model_copy(update={"outcomes": []})
    if new.routing.predictor.model_copy(update={"outcomes": []}) != predictor_before:
        errors.append("routing.predictor: changing anything but its outcomes needs a restart")
    # New certificate files (or new contents) are taken on reload; what the port speaks is not.
    tls_before, tls_after = running.server.tls, new.server.tls
    if (tls_before is None) != (tls_after is None):
        errors.append("server.tls: turning TLS on or off needs a restart")
    elif (
        tls_before is not None
        and tls_after is not None
        and (tls_before.client_ca_file is None) != (tls_after.client_ca_file is None)
    ):
        errors.append("server.tls.client_ca_file: asking for client certificates needs a restart")
    return errors


def with_managed_availability(statuses: dict[str, ProviderStatus]) -> dict[str, ProviderStatus]:
    """A managed local server that is not installed disables its provider instead of failing."""
    out = dict(statuses)
    for name, status in statuses.items():
        managed = status.config.managed
        if not status.enabled or managed is None:
            continue
        reason = ""
        if not llama_cpp_available():
            reason = "local model server is not installed (run `make local-model`)"
        else:
            try:
                resolve_model_path(managed.model)
            except SwitchpointError as exc:
                reason = str(exc)
        if reason:
            log.warning("provider %s disabled: %s", name, reason)
            out[name] = replace(status, enabled=False, reason=reason)
    return out


def _adapter_for(status: ProviderStatus) -> ProviderAdapter:
    provider = status.config
    return create_adapter(
        status.name,
        provider.kind,
        provider.endpoint,
        status.api_key,
        timeout_s=provider.timeout_s,
        connect_timeout_s=provider.connect_timeout_s,
        max_connections=provider.max_connections,
        headers=provider.headers,
        anthropic_default_max_tokens=provider.default_max_tokens,
    )


def _adapters(
    statuses: Mapping[str, ProviderStatus], previous: EngineBuild | None
) -> dict[str, ProviderAdapter]:
    """An adapter per enabled provider: the previous one where its config and key are the same."""
    old_statuses = previous.engine.registry.providers if previous is not None else {}
    old_adapters = previous.adapters if previous is not None else {}
    adapters: dict[str, ProviderAdapter] = {}
    for name, status in statuses.items():
        if not status.enabled:
            continue
        before, reusable = old_statuses.get(name), old_adapters.get(name)
        same = (
            before is not None
            and before.config == status.config
            and before.api_key == status.api_key
        )
        adapters[name] = reusable if same and reusable is not None else _adapter_for(status)
    return adapters


def _same_deployments(running: Config, new: Config) -> set[str]:
    """Models of `new` that `running` also had, on the same provider."""
    before = {m.name: m.provider for m in running.models}
    return {m.name for m in new.models if before.get(m.name) == m.provider}


def build_engine(
    config: Config,
    *,
    environ: Mapping[str, str],
    previous: EngineBuild | None = None,
    latency: LatencyTracker | None = None,
    stats: StatsBook | None = None,
    tracer: Tracer | None = None,
    metrics: MetricsSink | None = None,
    cache: ResponseCache | None = None,
    predictor: QualityPredictor | None = None,
) -> EngineBuild:
    """The engine for `config`; with `previous`, a reload of it (see the module docstring).

    Everything that can refuse the config (restart-only changes, missing API keys, the Rust table)
    runs first and raises ConfigError with every problem, leaving `previous` untouched. The last
    step moves the carried state over (budget limits, breakers, queue limits) and cannot fail:
    swap the result in at once. `latency`, `stats`, `tracer` and `metrics` are for a first
    build; a reload takes the previous engine's.
    """
    old = previous.engine if previous is not None else None
    if old is not None:
        errors = restart_only_changes(old.config, config)
        if errors:
            raise ConfigError(errors, "reload")
    tenant_keys = load_tenant_keys(config, environ)
    hooks = load_hooks(config.evaluation.hooks)
    statuses = with_managed_availability(resolve_providers(config, environ))
    for name, status in statuses.items():
        if not status.enabled:
            log.info("provider %s disabled: %s", name, status.reason)
    if old is not None:
        latency = old.latency
    elif latency is None:
        latency = LatencyTracker(config.routing.latency_half_life_s)
    registry = Registry(config, statuses, latency)  # builds the Rust table
    if old is None:
        rust_gate = Gate()
        shared = (
            SharedQuota(config.shared_state, rust_gate)
            if config.shared_state.redis_url is not None
            else None
        )
        gate = TokenGate(config, rust_gate, shared=shared, key_tenants=tenant_keys.tenants())
    else:
        gate = TokenGate(
            config, old.gate.gate, shared=old.gate.shared, key_tenants=tenant_keys.tenants()
        )
    # Nothing below can refuse the config: new adapters are never left unclosed by a refusal.
    adapters = _adapters(statuses, previous)
    engine = Engine(
        config,
        registry,
        adapters,
        latency,
        old.stats if old is not None else stats or StatsBook(),
        gate=gate,
        scheduler=old.scheduler if old is not None else None,
        tracer=old.tracer if old is not None else tracer,
        metrics=old.metrics if old is not None else metrics,
        cache=old.cache.cache if old is not None and old.cache is not None else cache,
        predictor=old.predictor if old is not None else predictor,
        hooks=hooks,
        tokens=old.tokens if old is not None else None,
    )
    # One config's known tenants and stages, for every book and sink that labels by them.
    engine.stats.set_labels(gate.labels)
    engine.metrics.set_labels(gate.labels)
    if previous is None:
        return EngineBuild(engine, adapters, tenant_keys=tenant_keys)
    # The commit: from here on the running engine sees the new limits too.
    old = previous.engine
    gate.carry_over(old.gate)
    engine.breakers.carry_over(old.breakers, _same_deployments(old.config, config))
    engine.scheduler.update({m.name: m.max_concurrency for m in registry.models})
    engine.scheduler.set_bounds(config.routing.queue_max_depth, config.routing.queue_max_wait_s)
    kept = {id(adapter) for adapter in adapters.values()}
    retired = tuple(a for a in previous.adapters.values() if id(a) not in kept)
    return EngineBuild(engine, adapters, retired, tenant_keys)
