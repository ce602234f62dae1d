"""The typed config schema, YAML loading, and validation errors listed with their paths.

Every section refuses unknown keys: a typo must fail loudly at start, not silently fall back to a
default. `load_config` is the one entry point; it returns a fully cross-checked `Config` or raises
`ConfigError` listing every problem as `path: message`.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from switchpoint import _native
from switchpoint.addresses import Address
from switchpoint.cache.config import CacheConfig
from switchpoint.classifier.config import ClassifierModelConfig, check_classifier_model
from switchpoint.errors import ConfigError, ErrorClass
from switchpoint.evaluation.config import EvaluationConfig, check_evaluation
from switchpoint.limits import LimitsConfig
from switchpoint.providers.base import ExtraBody
from switchpoint.quota.instances_config import StateConfig, check_state
from switchpoint.quota.queue_config import QueueConfig
from switchpoint.quota.shared_config import SharedStateConfig
from switchpoint.routing.predictor import config as learning
from switchpoint.security.config import AdminConfig, AuthConfig, TlsConfig
from switchpoint.splits.config import SplitConfig, check_splits

NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]

# (cost, latency, quality) of the strategies every config has; the core defines them.
BUILTIN_STRATEGIES = _native.BUILTIN_STRATEGIES


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(StrictModel):
    grpc_address: str = "127.0.0.1:50051"
    # The OpenAI-compatible HTTP front (docs/http.md), served beside gRPC; None: no HTTP.
    http_address: Address | None = None
    # In-flight calls get this long to finish on SIGTERM before they are cancelled.
    graceful_stop_s: NonNegative = 10.0
    # How often the config file the sidecar was started from is checked for changes (mtime, size
    # and content hash); a change reloads it. None: no watching (SIGHUP and Admin still reload).
    reload_poll_s: Positive | None = 2.0
    tls: TlsConfig | None = None
    state: StateConfig = Field(default_factory=StateConfig)
    # What one request may carry (switchpoint.limits).
    limits: LimitsConfig = Field(default_factory=LimitsConfig)


class ManagedServerConfig(StrictModel):
    """A local OpenAI-compatible model server that switchpoint starts, watches and stops itself."""

    kind: Literal["llama_cpp"] = "llama_cpp"
    # A GGUF file path, or "package:MODULE/RELATIVE/PATH" for a model shipped inside a package.
    model: str
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8089
    n_ctx: Annotated[int, Field(ge=256)] = 2048
    threads: Annotated[int, Field(ge=1)] = 2
    startup_timeout_s: Positive = 120.0
    # After an unexpected exit the server is restarted, at most this many times in a row.
    max_restarts: Annotated[int, Field(ge=0)] = 5


class RetryConfig(StrictModel):
    """How failures of this provider's calls are handled (see switchpoint.engine.resilience)."""

    # Retries on the same deployment after the first try, for the classes in retry_on.
    max_retries: Annotated[int, Field(ge=0)] = 2
    base_delay_s: NonNegative = 0.2
    max_delay_s: NonNegative = 8.0
    retry_on: list[ErrorClass] = Field(
        default_factory=lambda: [
            ErrorClass.RATE_LIMITED,
            ErrorClass.OVERLOADED,
            ErrorClass.SERVER_ERROR,
            ErrorClass.CONNECT,
            ErrorClass.TIMEOUT,
        ]
    )
    # Move to the next model at once. context_window always moves, and only to larger windows;
    # any class in neither list (invalid_request, and content_policy unless listed) fails the call.
    next_model_on: list[ErrorClass] = Field(
        default_factory=lambda: [
            ErrorClass.AUTH,
            ErrorClass.NOT_FOUND,
            ErrorClass.BAD_RESPONSE,
            ErrorClass.RATE_LIMITED,
            ErrorClass.OVERLOADED,
            ErrorClass.SERVER_ERROR,
            ErrorClass.CONNECT,
            ErrorClass.TIMEOUT,
        ]
    )


class BreakerConfig(StrictModel):
    """The circuit breaker of each deployment (model) of this provider."""

    consecutive_failures: Annotated[int, Field(ge=1)] = 5
    failure_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    # The failure rate is taken over the last `window` calls, once there are `min_calls`.
    window: Annotated[int, Field(ge=1)] = 20
    min_calls: Annotated[int, Field(ge=1)] = 10
    open_s: Positive = 30.0
    half_open_trials: Annotated[int, Field(ge=1)] = 1


class ProviderConfig(StrictModel):
    kind: Literal["openai", "anthropic"]
    # Required unless `managed` is set, in which case it is the managed server's address.
    base_url: str | None = None
    # Name of the environment variable holding the API key; the key itself never appears in config.
    api_key_env: str | None = None
    # Key variable unset: True drops this provider and its models, False refuses to start.
    optional: bool = False
    timeout_s: Positive = 60.0
    connect_timeout_s: Positive = 5.0
    max_connections: Annotated[int, Field(ge=1)] = 100
    headers: dict[str, str] = Field(default_factory=dict)
    # Anthropic requires max_tokens; used when the request does not set it.
    default_max_tokens: Annotated[int, Field(ge=1)] = 1024
    managed: ManagedServerConfig | None = None
    retry: RetryConfig = Field(default_factory=RetryConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)

    @property
    def endpoint(self) -> str:
        if self.managed is not None:
            return f"http://{self.managed.host}:{self.managed.port}/v1"
        assert self.base_url is not None  # enforced by _check_references
        return self.base_url


class Price(StrictModel):
    input_per_mtok: NonNegative
    output_per_mtok: NonNegative


class LatencyPrior(StrictModel):
    ttft_ms: NonNegative
    tpot_ms: NonNegative


class ModelConfig(StrictModel):
    name: Annotated[str, Field(min_length=1)]
    provider: str
    upstream_model: str | None = None
    price: Price
    context_window: Annotated[int, Field(ge=1)]
    quality: Annotated[float, Field(ge=0, le=1)]
    latency_prior: LatencyPrior
    capabilities: list[str] = Field(default_factory=lambda: ["chat"])
    # Prepended when a request has no system message (small local models need one to behave).
    system_prompt: str | None = None
    extra_body: ExtraBody = Field(default_factory=dict)
    # Calls in flight to this deployment; more wait in the priority queue.
    max_concurrency: Annotated[int, Field(ge=1)] | None = None
    # How routing counts this model's prompt tokens (switchpoint.tokens): gpt-4o/o-series ->
    # o200k_base, gpt-4/gpt-3.5 -> cl100k_base. Other vendors' tokenizers (Anthropic, Llama, ...)
    # are not available offline: "estimate" (~4 chars/token). cl100k is deliberately not used as
    # a proxy for Claude, whose tokenizer is reported to need 20-30% more tokens than OpenAI's.
    tokenizer: Literal["cl100k_base", "o200k_base", "estimate"] = "estimate"

    @property
    def wire_model(self) -> str:
        return self.upstream_model or self.name


class WeightsConfig(StrictModel):
    cost: NonNegative
    latency: NonNegative
    quality: NonNegative

    @model_validator(mode="after")
    def _not_all_zero(self) -> WeightsConfig:
        if self.cost + self.latency + self.quality <= 0:
            raise ValueError("weights must not all be zero")
        return self

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.cost, self.latency, self.quality)


class StageConfig(StrictModel):
    models: Annotated[list[str], Field(min_length=1)]
    strategy: str | None = None
    # Hedge every Chat of this stage (see RoutingOptions.hedge).
    hedge: bool = False
    # Try the cheapest candidate first and escalate when an answer is rejected (evaluation).
    cascade: bool = False


class AutoRoutingConfig(StrictModel):
    enabled: bool = True
    # Prompts the classifier rates at or above this complexity use quality-first weights.
    hard_complexity: Annotated[float, Field(ge=0, le=1)] = 0.6
    # Prompts rated at or below this use cost-first weights.
    easy_complexity: Annotated[float, Field(ge=0, le=1)] = 0.25
    # A model asked when the rules are unsure (switchpoint.classifier); None: the rules decide.
    classifier_model: ClassifierModelConfig | None = None


class RoutingConfig(QueueConfig):  # the queue_* keys are queue_config's
    default_strategy: str = "balanced"
    strategies: dict[str, WeightsConfig] = Field(default_factory=dict)
    stages: dict[str, StageConfig] = Field(default_factory=dict)
    fallback_chain: list[str] = Field(default_factory=list)
    auto: AutoRoutingConfig = Field(default_factory=AutoRoutingConfig)
    predictor: learning.PredictorConfig = Field(default_factory=learning.PredictorConfig)
    exploration: learning.ExplorationConfig = Field(default_factory=learning.ExplorationConfig)
    # Live latency replaces the config prior once a model has this many (decayed) samples.
    min_latency_samples: Annotated[int, Field(ge=1)] = 20
    # The output-token estimate for requests that set no max_tokens; a decision carries it as a
    # uint32 (as requests carry max_tokens).
    default_output_tokens: Annotated[int, Field(ge=1, le=2**32 - 1)] = 512
    # A stream that dies after tokens reached the client continues on the next model (asked to
    # carry on from the partial answer); false fails the stream instead.
    stream_continuation: bool = True
    latency_half_life_s: Positive = 300.0
    # A/B splits between routing policies (switchpoint.splits).
    splits: dict[str, SplitConfig] = Field(default_factory=dict)


ScopeKey = Literal["tenant", "stage", "model", "provider"]


class LimitConfig(StrictModel):
    """A rate limit. `match` scopes it: a value applies it to that value only, "*" gives each
    distinct value its own limit, an absent key means the limit is shared across all values."""

    name: Annotated[str, Field(min_length=1)]
    match: dict[ScopeKey, str] = Field(default_factory=dict)
    rpm: Positive | None = None
    tpm: Positive | None = None
    concurrency: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _sets_something(self) -> LimitConfig:
        if self.rpm is None and self.tpm is None and self.concurrency is None:
            raise ValueError("set at least one of rpm, tpm, concurrency")
        return self


class BudgetPressure(StrictModel):
    """Past `at_share` of the budget, requests using one of `applies_to` use `strategy` instead."""

    at_share: Annotated[float, Field(gt=0, le=1)]
    strategy: str = "cost-first"
    applies_to: list[str] = Field(default_factory=lambda: ["balanced"])


class BudgetConfig(StrictModel):
    """USD per window (UTC boundaries), scoped by `match` like a rate limit."""

    name: Annotated[str, Field(min_length=1)]
    match: dict[ScopeKey, str] = Field(default_factory=dict)
    window: Literal["hour", "day", "month", "total"]
    limit_usd: NonNegative
    pressure: BudgetPressure | None = None


class TelemetryConfig(StrictModel):
    """Traces, metrics and the request log (switchpoint.telemetry, switchpoint.logs)."""

    # "host:port" ("[::1]:9464" for IPv6) for the Prometheus /metrics listener; None serves none.
    # Port 0 binds any free port (tests); `Telemetry.metrics_port` tells which.
    metrics_address: Address | None = None
    # Head sampling for root spans; a sampled incoming parent is always followed (ParentBased).
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    service_name: str = "switchpoint"
    # Read by the logging module: prompts and completions are kept out of logs unless asked.
    log_prompts: bool = False
    # Request log lines are handed to the log handlers in batches, at most this long after their
    # request ended (`ts` stays the end time); 0 writes each line as its request ends.
    request_log_flush_ms: int = Field(default=100, ge=0, le=10_000)


class Config(StrictModel):
    server: ServerConfig = Field(default_factory=ServerConfig)
    providers: Annotated[dict[str, ProviderConfig], Field(min_length=1)]
    models: Annotated[list[ModelConfig], Field(min_length=1)]
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    limits: list[LimitConfig] = Field(default_factory=list)
    budgets: list[BudgetConfig] = Field(default_factory=list)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    shared_state: SharedStateConfig = Field(default_factory=SharedStateConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    def strategy_weights(self, name: str) -> tuple[float, float, float] | None:
        """Weights of a built-in or configured strategy; None when the name is unknown."""
        if name in self.routing.strategies:
            return self.routing.strategies[name].as_tuple()
        return BUILTIN_STRATEGIES.get(name)

    def model_named(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)


def _format_location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int) or not part.isprintable() or part.strip() != part or not part:
            out += f"[{part!r}]"  # an index, or a key that would read as no key at all
        else:
            out += f".{part}" if out else part
    return out or "(root)"


def _bound(value: float) -> str:
    """A limit as written: integers whole (4294967295, not 4.29497e+09), floats short."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def _format_pydantic_error(error: Any) -> str:
    # Pydantic's own messages ("Input should be greater than or equal to 0") are wordy; these read
    # like the rest of our errors and state the rule.
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "greater_than_equal":
        message = f"must be >= {_bound(ctx['ge'])}"
    elif kind == "greater_than":
        message = f"must be > {_bound(ctx['gt'])}"
    elif kind == "less_than_equal":
        message = f"must be <= {_bound(ctx['le'])}"
    elif kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "missing":
        message = "required"
    elif kind == "too_short":
        message = "must not be empty"
    elif kind == "value_error":
        message = str(ctx.get("error", error["msg"]))
    else:
        message = str(error["msg"])
    # Unions add a branch name (e.g. "managed.ManagedServerConfig") that means nothing to a user.
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p[:1].isupper()))
    return f"{_format_location(loc)}: {message}"


def _check_providers(config: Config) -> list[str]:
    errors: list[str] = []
    for name, provider in config.providers.items():
        if provider.managed is None and not provider.base_url:
            errors.append(f"providers.{name}.base_url: required (or set providers.{name}.managed)")
        if provider.managed is not None and provider.base_url:
            errors.append(f"providers.{name}.base_url: must not be set with managed")
        if provider.managed is not None and provider.kind != "openai":
            errors.append(f"providers.{name}.kind: a managed server speaks the openai protocol")
    return errors


def _check_models(config: Config) -> list[str]:
    errors: list[str] = []
    names = [m.name for m in config.models]
    for i, model in enumerate(config.models):
        if names.index(model.name) != i:
            errors.append(f"models[{i}].name: duplicate model name '{model.name}'")
        if model.provider not in config.providers:
            errors.append(f"models[{i}].provider: unknown provider '{model.provider}'")
    return errors


def _check_routing(config: Config) -> list[str]:
    errors: list[str] = []
    known = {m.name for m in config.models}
    routing = config.routing
    if config.strategy_weights(routing.default_strategy) is None:
        errors.append(f"routing.default_strategy: unknown strategy '{routing.default_strategy}'")
    for stage_name, stage in routing.stages.items():
        path = f"routing.stages.{stage_name}"
        errors.extend(
            f"{path}.models[{j}]: unknown model '{name}'"
            for j, name in enumerate(stage.models)
            if name not in known
        )
        if stage.strategy is not None and config.strategy_weights(stage.strategy) is None:
            errors.append(f"{path}.strategy: unknown strategy '{stage.strategy}'")
    errors.extend(
        f"routing.fallback_chain[{j}]: unknown model '{name}'"
        for j, name in enumerate(routing.fallback_chain)
        if name not in known
    )
    if routing.auto.easy_complexity > routing.auto.hard_complexity:
        errors.append("routing.auto.easy_complexity: must be <= routing.auto.hard_complexity")
    errors += learning.check_exploration(
        routing.exploration,
        knows_strategy=lambda name: config.strategy_weights(name) is not None,
        stages=routing.stages.keys(),
    )
    errors += check_splits(
        routing.splits,
        models=frozenset(known),
        stages={name: frozenset(stage.models) for name, stage in routing.stages.items()},
        knows_strategy=lambda name: config.strategy_weights(name) is not None,
    )
    errors.extend(check_classifier_model(known, routing.auto.classifier_model))
    return errors


def _check_rules(
    config: Config, kind: str, rules: Sequence[LimitConfig | BudgetConfig]
) -> list[str]:
    errors: list[str] = []
    names = [r.name for r in rules]
    for i, rule in enumerate(rules):
        if names.index(rule.name) != i:
            errors.append(f"{kind}[{i}].name: duplicate name '{rule.name}'")
        model = rule.match.get("model")
        if model not in (None, "*") and config.model_named(str(model)) is None:
            errors.append(f"{kind}[{i}].match.model: unknown model '{model}'")
        provider = rule.match.get("provider")
        if provider not in (None, "*") and provider not in config.providers:
            errors.append(f"{kind}[{i}].match.provider: unknown provider '{provider}'")
    return errors


def _check_gate(config: Config) -> list[str]:
    errors = [
        *_check_rules(config, "limits", config.limits),
        *_check_rules(config, "budgets", config.budgets),
    ]
    for i, budget in enumerate(config.budgets):
        pressure = budget.pressure
        if pressure is not None and config.strategy_weights(pressure.strategy) is None:
            errors.append(f"budgets[{i}].pressure.strategy: unknown strategy '{pressure.strategy}'")
    return errors


def _check_references(config: Config) -> list[str]:
    """Cross-field rules pydantic cannot express: names that must refer to something that exists."""
    return [
        *_check_providers(config),
        *_check_models(config),
        *_check_routing(config),
        *_check_gate(config),
        *check_state(config.server.state, len(config.limits) + len(config.budgets)),
        *check_evaluation(config.evaluation, {*BUILTIN_STRATEGIES, *config.routing.strategies}),
    ]


def parse_config(data: object, source: str = "config") -> Config:
    """Validate already-parsed YAML/JSON data into a `Config`."""
    if not isinstance(data, dict):
        raise ConfigError(["(root): must be a mapping"], source)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_format_pydantic_error(e) for e in exc.errors()], source) from None
    errors = _check_references(config)
    if errors:
        raise ConfigError(errors, source)
    return config


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"(file): cannot read: {exc.strerror}"], str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"(yaml): {exc}"], str(path)) from None
    return parse_config(data, str(path))


def default_config_path() -> Path:
    """The embedded default config shipped inside the package."""
    return Path(str(resources.files("switchpoint").joinpath("default.yaml")))
