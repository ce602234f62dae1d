"""The router of one config load, handed to the Rust core whole.

What routing decides (validation, the four levels, strategies, token counts, scoring) lives in
`switchpoint_core::route`; a request crosses into Rust once, and a Route RPC can be answered from
its bytes without building a Python object. What stays here is what only Python knows: the
enabled models (`Registry`), the strategies and stages a config adds, and the tokenizers' ranks.

The levels, in order; the first that applies wins:

1. override  - the request names a model or a model list
2. stage     - the request names a configured stage
3. auto      - the classifier reads the prompt and picks weights; every enabled model is ranked
4. fallback  - the configured fallback chain, in its own order
"""

from __future__ import annotations

from switchpoint._native import Router
from switchpoint.config import Config
from switchpoint.registry import Registry
from switchpoint.routing.decision import Decision, Level, ScoredModel
from switchpoint.tokens import TokenCounter


def build_router(config: Config, registry: Registry, tokens: TokenCounter) -> Router:
    routing = config.routing
    auto = routing.auto
    configured = {name: s.as_tuple() for name, s in routing.strategies.items()}
    # The prompt is counted once per distinct tokenizer among the enabled models.
    encodings = dict.fromkeys(m.tokenizer for m in registry.models)
    return Router(
        registry.table,
        providers=[m.provider for m in registry.models],
        capabilities=registry.capability_names,
        disabled=list(registry.disabled.items()),
        strategies=list(configured.items()),
        default_strategy=routing.default_strategy,
        stages=[(name, stage.models, stage.strategy) for name, stage in routing.stages.items()],
        fallback_chain=routing.fallback_chain,
        auto=(auto.enabled, auto.hard_complexity, auto.easy_complexity),
        default_output_tokens=routing.default_output_tokens,
        encodings=[tokens.encoding(name) for name in encodings],
        limits=config.server.limits.as_tuple(),
        decision_type=Decision,
        candidate_type=ScoredModel,
        levels=list(Level),
    )
