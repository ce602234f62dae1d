"""Models and deployments as routing sees them: which are enabled, their capability bits, and the
Rust routing table built from them once per config load."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from switchpoint._native import LatencyTracker, ModelSpec, ModelTable, capability_bits
from switchpoint.config import Config, ModelConfig, ProviderConfig
from switchpoint.errors import ConfigError, CoreError


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    name: str
    config: ProviderConfig
    api_key: str | None
    enabled: bool
    # Why the provider is disabled; empty when enabled.
    reason: str = ""


def resolve_providers(config: Config, environ: Mapping[str, str]) -> dict[str, ProviderStatus]:
    """Decide which providers are usable in this environment (API key variables set or not)."""
    statuses: dict[str, ProviderStatus] = {}
    errors: list[str] = []
    for name, provider in config.providers.items():
        key = environ.get(provider.api_key_env) if provider.api_key_env else None
        if provider.api_key_env and not key:
            reason = f"environment variable {provider.api_key_env} is not set"
            if not provider.optional:
                errors.append(f"providers.{name}.api_key_env: {reason}")
            statuses[name] = ProviderStatus(name, provider, None, enabled=False, reason=reason)
        else:
            statuses[name] = ProviderStatus(name, provider, key or None, enabled=True)
    if errors:
        raise ConfigError(errors, "environment")
    return statuses


class Registry:
    """The enabled models, indexed as the Rust table indexes them."""

    def __init__(
        self, config: Config, providers: Mapping[str, ProviderStatus], latency: LatencyTracker
    ) -> None:
        self.providers = providers
        self.disabled: dict[str, str] = {}
        self.models: list[ModelConfig] = []
        for model in config.models:
            status = providers[model.provider]
            if status.enabled:
                self.models.append(model)
            else:
                self.disabled[model.name] = f"provider '{status.name}' is disabled: {status.reason}"
        if not self.models:
            raise ConfigError(["models: no model is enabled (" + self._disabled_summary() + ")"])
        self._index = {m.name: i for i, m in enumerate(self.models)}
        try:
            self._capability_names, masks = capability_bits([m.capabilities for m in self.models])
        except CoreError as exc:
            raise ConfigError([str(exc)]) from None
        self._specs = {
            m.name: self._spec(m, mask) for m, mask in zip(self.models, masks, strict=True)
        }
        self.table = ModelTable(
            list(self._specs.values()),
            latency,
            min_samples=config.routing.min_latency_samples,
        )

    @staticmethod
    def _spec(model: ModelConfig, capabilities: int) -> ModelSpec:
        return ModelSpec(
            model.name,
            input_per_mtok=model.price.input_per_mtok,
            output_per_mtok=model.price.output_per_mtok,
            context_window=model.context_window,
            quality=model.quality,
            ttft_prior_ms=model.latency_prior.ttft_ms,
            tpot_prior_ms=model.latency_prior.tpot_ms,
            capabilities=capabilities,
        )

    def _disabled_summary(self) -> str:
        return "; ".join(f"{name}: {why}" for name, why in self.disabled.items())

    def cost_usd(self, model: ModelConfig, input_tokens: int, output_tokens: int) -> float:
        """What a call costs at the model's configured prices (the core's formula)."""
        return self._specs[model.name].cost_usd(input_tokens, output_tokens)

    def prior_latency_ms(self, model: ModelConfig, output_tokens: int) -> float:
        """The model's configured latency for `output_tokens`, before live samples exist."""
        return self._specs[model.name].prior_latency_ms(output_tokens)

    def index_of(self, name: str) -> int | None:
        return self._index.get(name)

    @property
    def capability_names(self) -> list[str]:
        """Every capability of an enabled model, in bit order."""
        return self._capability_names
