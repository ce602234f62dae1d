"""The four decision levels; the first that applies wins:

1. override  - the request names a model or a model list
2. stage     - the request names a configured stage
3. auto      - the classifier reads the prompt and picks weights; Rust ranks every enabled model
4. fallback  - the configured fallback chain, in its own order
"""

from __future__ import annotations

from collections.abc import Sequence

from switchpoint._native import ScoreResult
from switchpoint.config import Config, StageConfig
from switchpoint.errors import InvalidRequestError, NoEligibleModelError, PolicyDeniedError
from switchpoint.registry import Registry
from switchpoint.request import ChatInput
from switchpoint.routing.classifier import classify
from switchpoint.routing.decision import Decision, Level, ScoredModel
from switchpoint.routing.strategies import ResolvedStrategy, Strategies, StrategyShift
from switchpoint.tokens import TokenCounter

_EXCLUSION_TEXT = {
    "context_window": "context window {window} < {needed} estimated tokens",
    "capabilities": "lacks a required capability",
    "max_cost": "estimated cost is above routing.max_cost_usd",
}


class Router:
    """Decides which models may serve a request and in what order. Pure and fast: no I/O."""

    def __init__(self, config: Config, registry: Registry, tokens: TokenCounter) -> None:
        self._config = config
        self._registry = registry
        self._tokens = tokens
        self._strategies = Strategies(config)
        # The Rust scorer takes one input-token count for every candidate, so the prompt is counted
        # once per distinct tokenizer among the enabled models (usually one or two) and the largest
        # count is used: no model is then judged to fit a context window it would overflow.
        self._encodings = tuple(dict.fromkeys(m.tokenizer for m in registry.models))
        self._names = tuple(m.name for m in registry.models)
        self._providers = tuple(m.provider for m in registry.models)
        self._default_output_tokens = config.routing.default_output_tokens
        auto = config.routing.auto
        self._hard_reason = f"complexity >= {auto.hard_complexity}: quality-first"
        self._easy_reason = f"complexity <= {auto.easy_complexity}: cost-first"
        self._enabled_fallback = tuple(
            name for name in config.routing.fallback_chain if registry.index_of(name) is not None
        )

    def decide(self, request: ChatInput, shift: StrategyShift | None = None) -> Decision:
        routing = request.routing
        count, messages = self._tokens.count_messages, request.messages
        input_tokens = max([count(messages, encoding) for encoding in self._encodings])
        output_tokens = request.params.max_tokens or self._default_output_tokens
        required = (
            self._registry.required_mask(routing.capabilities, "routing.capabilities")
            if routing.capabilities
            else 0
        )
        context = _Context(input_tokens, output_tokens, required, routing.max_cost_usd, shift)
        if routing.models:
            return self._override(request, context)
        if routing.stage:
            return self._stage(request, context)
        auto = self._config.routing.auto
        reasons: list[str] = []
        if auto.enabled:
            decision = self._auto(request, context, reasons)
            if decision is not None:
                return decision
        else:
            reasons.append("auto routing is disabled")
        return self._fallback(request, context, reasons)

    # -- levels -----------------------------------------------------------------------------

    def _override(self, request: ChatInput, ctx: _Context) -> Decision:
        # A stage is a whitelist: naming models does not get a request out of its stage.
        allowed = (
            self._stage_config(request.routing.stage).models if request.routing.stage else None
        )
        indices: list[int] = []
        for i, name in enumerate(request.routing.models):
            field = f"routing.models[{i}]"
            if allowed is not None and name not in allowed:
                raise PolicyDeniedError(
                    f"{field}: model '{name}' is not allowed in stage '{request.routing.stage}' "
                    f"(allowed: {', '.join(allowed)})"
                )
            index = self._registry.resolve_model(name, field)
            if index not in indices:
                indices.append(index)
        strategy = self._strategies.resolve(request.routing, self._default_strategy(), ctx.shift)
        names = ", ".join(self._registry.models[i].name for i in indices)
        reasons = [f"override: the request named {names}"]
        return self._ranked(Level.OVERRIDE, indices, strategy, ctx, reasons)

    def _stage_config(self, stage_name: str) -> StageConfig:
        stage = self._config.routing.stages.get(stage_name)
        if stage is None:
            known = ", ".join(sorted(self._config.routing.stages)) or "none configured"
            raise InvalidRequestError(
                "routing.stage", f"unknown stage '{stage_name}' (known: {known})"
            )
        return stage

    def _stage(self, request: ChatInput, ctx: _Context) -> Decision:
        stage_name = request.routing.stage
        stage = self._stage_config(stage_name)
        reasons = [f"stage '{stage_name}' allows {', '.join(stage.models)}"]
        indices = self._enabled_indices(stage.models, reasons)
        strategy = self._strategies.resolve(
            request.routing, stage.strategy or self._default_strategy(), ctx.shift
        )
        return self._ranked(Level.STAGE, indices, strategy, ctx, reasons)

    def _auto(self, request: ChatInput, ctx: _Context, reasons: list[str]) -> Decision | None:
        auto = self._config.routing.auto
        reading = classify(request.messages)
        strategy = self._strategies.resolve(request.routing, self._default_strategy(), ctx.shift)
        detail = f" ({'; '.join(reading.signals)})" if reading.signals else ""
        reasons.append(
            f"auto: task class {reading.task_class}, complexity {reading.complexity:.2f}{detail}"
        )
        if not strategy.explicit:
            if reading.complexity >= auto.hard_complexity:
                strategy = self._strategies.resolve(request.routing, "quality-first", ctx.shift)
                reasons.append(self._hard_reason)
            elif reading.complexity <= auto.easy_complexity:
                strategy = self._strategies.resolve(request.routing, "cost-first", ctx.shift)
                reasons.append(self._easy_reason)
        result: ScoreResult | None = None
        hinted = ctx
        if reading.task_class == "code" and self._registry.has_capability("code"):
            code_ctx = ctx.requiring(self._registry.capability_mask(["code"]))
            result = self._score(None, strategy, code_ctx)
            if len(result) == 0:
                reasons.append("no code-capable model is eligible; considering all models")
                result = None
            else:
                hinted = code_ctx
                reasons.append("code task: preferring models with the 'code' capability")
        if result is None:
            result = self._score(None, strategy, ctx)
        if len(result) == 0:
            reasons.extend(self._exclusion_reasons(result, hinted))
            reasons.append("auto: no model is eligible; using the fallback chain")
            return None
        return self._decision(
            Level.AUTO,
            result,
            strategy,
            hinted,
            reasons,
            task_class=reading.task_class,
            complexity=reading.complexity,
        )

    def _fallback(self, request: ChatInput, ctx: _Context, reasons: list[str]) -> Decision:
        chain = self._config.routing.fallback_chain
        if not chain:
            raise NoEligibleModelError(
                "no model can serve this request and routing.fallback_chain is empty: "
                + "; ".join(reasons)
            )
        reasons.append(f"fallback chain: {', '.join(chain)}")
        indices = self._enabled_indices(chain, reasons)
        strategy = self._strategies.resolve(request.routing, self._default_strategy(), ctx.shift)
        result = self._score(indices, strategy, ctx)
        scored = {c.table_index: c for c in self._scored_models(result)}
        # The chain is an order the operator chose; keep it rather than the score order.
        ordered = tuple(scored[i] for i in indices if i in scored)
        reasons.extend(self._exclusion_reasons(result, ctx))
        if strategy.shifted:
            reasons.append(strategy.shifted)
        if not ordered:
            raise NoEligibleModelError("no model can serve this request: " + "; ".join(reasons))
        reasons.append(f"chose {ordered[0].name}: first eligible model of the fallback chain")
        return Decision(
            candidates=ordered,
            level=Level.FALLBACK,
            reasons=tuple(reasons),
            strategy=strategy.name,
            weights=strategy.weights,
            input_tokens=ctx.input_tokens,
            output_tokens=ctx.output_tokens,
        )

    # -- helpers ----------------------------------------------------------------------------

    def _default_strategy(self) -> str:
        return self._config.routing.default_strategy

    def _enabled_indices(self, names: Sequence[str], reasons: list[str]) -> list[int]:
        indices: list[int] = []
        for name in names:
            index = self._registry.index_of(name)
            if index is None:
                reasons.append(f"{name} excluded: {self._registry.disabled.get(name, 'unknown')}")
            elif index not in indices:
                indices.append(index)
        return indices

    def _score(
        self, indices: list[int] | None, strategy: ResolvedStrategy, ctx: _Context
    ) -> ScoreResult:
        """Score `indices` (every model when None) with the Rust table."""
        return self._registry.table.score(
            ctx.input_tokens,
            ctx.output_tokens,
            strategy.weights,
            required_capabilities=ctx.required,
            max_cost_usd=ctx.max_cost_usd,
            candidates=indices,
        )

    def _ranked(
        self,
        level: Level,
        indices: list[int],
        strategy: ResolvedStrategy,
        ctx: _Context,
        reasons: list[str],
    ) -> Decision:
        result = self._score(indices, strategy, ctx)
        if len(result) == 0:
            reasons.extend(self._exclusion_reasons(result, ctx))
            raise NoEligibleModelError("no model can serve this request: " + "; ".join(reasons))
        return self._decision(level, result, strategy, ctx, reasons)

    def _decision(
        self,
        level: Level,
        result: ScoreResult,
        strategy: ResolvedStrategy,
        ctx: _Context,
        reasons: list[str],
        *,
        task_class: str = "",
        complexity: float = 0.0,
    ) -> Decision:
        candidates = tuple(self._scored_models(result))
        reasons.extend(self._exclusion_reasons(result, ctx))
        if strategy.shifted:
            reasons.append(strategy.shifted)
        best = candidates[0]
        reasons.append(
            f"chose {best.name}: score {best.score:.3f} under {strategy.name} "
            f"(cost {strategy.weights[0]:.2f}, latency {strategy.weights[1]:.2f}, "
            f"quality {strategy.weights[2]:.2f}) among {len(candidates)} eligible"
        )
        fallback: tuple[str, ...] = ()
        # An override or a stage is a whitelist: never leave it for the global chain.
        if self._enabled_fallback and level in (Level.AUTO, Level.FALLBACK):
            chosen = {c.name for c in candidates}
            fallback = tuple(name for name in self._enabled_fallback if name not in chosen)
        return Decision(
            candidates=candidates,
            level=level,
            reasons=tuple(reasons),
            strategy=strategy.name,
            weights=strategy.weights,
            input_tokens=ctx.input_tokens,
            output_tokens=ctx.output_tokens,
            task_class=task_class,
            complexity=complexity,
            fallback=fallback,
        )

    def _scored_models(self, result: ScoreResult) -> list[ScoredModel]:
        names, providers = self._names, self._providers
        return [
            ScoredModel(i, names[i], providers[i], score, cost, latency, quality, usd, ms, observed)
            for i, score, cost, latency, quality, usd, ms, observed in result.rows()
        ]

    def _exclusion_reasons(self, result: ScoreResult, ctx: _Context) -> list[str]:
        lines = []
        for index, why in result.excluded():
            model = self._registry.models[index]
            text = _EXCLUSION_TEXT[why].format(
                window=model.context_window, needed=ctx.input_tokens + ctx.output_tokens
            )
            lines.append(f"{model.name} excluded: {text}")
        return lines


class _Context:
    """The per-request features the Rust scorer needs, and any budget-pressure shift."""

    __slots__ = ("input_tokens", "max_cost_usd", "output_tokens", "required", "shift")

    def __init__(
        self,
        input_tokens: int,
        output_tokens: int,
        required: int,
        max_cost_usd: float | None,
        shift: StrategyShift | None,
    ) -> None:
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.required = required
        self.max_cost_usd = max_cost_usd
        self.shift = shift

    def requiring(self, extra_mask: int) -> _Context:
        return _Context(
            self.input_tokens,
            self.output_tokens,
            self.required | extra_mask,
            self.max_cost_usd,
            self.shift,
        )
