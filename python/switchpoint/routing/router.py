"""The router of one config load, handed to the Rust core whole.

What routing decides (validation, budget pressure, the four levels, strategies, token counts,
scoring, the gate's check and the open-breaker mask) lives in `switchpoint_core::route`; a request
crosses into Rust once (`Router.decide`), and a Route RPC can be answered from its bytes. What
stays here is what only Python knows: the enabled models (`Registry`), the config objects the core
reads by name, the rule book of the token gate and the tokenizers' ranks.

The levels, in order; the first that applies wins:

1. override  - the request names a model or a model list
2. stage     - the request names a configured stage
3. auto      - the classifier reads the prompt and picks weights; every enabled model is ranked
4. fallback  - the configured fallback chain, in its own order
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from switchpoint._native import Router, RuleBook

if TYPE_CHECKING:  # routing is imported by the config schema (its predictor section)
    from switchpoint.config import Config
    from switchpoint.registry import Registry
    from switchpoint.tokens import TokenCounter


def build_router(
    config: Config, registry: Registry, tokens: TokenCounter, quota: RuleBook | None
) -> Router:
    # The prompt is counted once per distinct tokenizer among the enabled models.
    encodings = dict.fromkeys(m.tokenizer for m in registry.models)
    return Router(
        registry.table,
        routing=config.routing,
        limits=config.server.limits,
        quota=quota,
        providers=[m.provider for m in registry.models],
        capabilities=registry.capability_names,
        disabled=list(registry.disabled.items()),
        encodings=[tokens.encoding(name) for name in encodings],
    )
