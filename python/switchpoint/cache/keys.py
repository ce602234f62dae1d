"""How a request becomes cache keys: its scope, its exact key, and the text the semantic layer
embeds; and which requests must not use the cache at all.

Scope. Entries are partitioned by (tenant, model class, parameters key), and nothing is ever
looked up across partitions of different tenants or parameters. The parameters key covers what
changes the answer besides the conversation: the system messages, top_p, max_tokens, stop and
response_format. Temperature is not in it: every temperature up to `max_temperature` counts as
"the caller wants the usual answer", and above it the request bypasses the cache.

Model class (config `model_class_scope`). The class of an entry is that of the model that
ANSWERED; the class a request asks for is that of the model the router chose for it:
  model         label = the model's name; served only entries of that same model.
  quality_band  label = "q<band>", band = floor(quality x quality_bands) (1.0 falls in the top
                band); served entries of its band or any higher one, never a lower one. A request
                routed to a strong model is never answered from a cheap model's entry; a request
                routed to a cheap model may be answered from a strong model's entry.
  none          label = "*"; any entry of the tenant.

Normalisation. The exact key keeps case and inner whitespace (code indentation matters) but drops
CR line endings, trailing spaces and surrounding blank space. The semantic text also collapses
runs of whitespace to one space, but keeps case: the similarity threshold is measured on text as
people type it (benches/cache_eval.py), and the guard reads capitals to find named entities.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from switchpoint.cache.config import CacheConfig
from switchpoint.cache.guard import MAX_GUARDED_CHARS
from switchpoint.cache.records import CacheQuery, CacheScope

# Bumped whenever the derivation below changes, so snapshots holding keys made the old way are
# refused instead of silently never matching.
KEY_VERSION = 1

_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class ModelClass:
    label: str
    rank: int


@dataclass(frozen=True, slots=True)
class RequestKeys:
    # The scope this request's answer is stored in (its own model class).
    scope: CacheScope
    class_rank: int
    # Class labels whose entries may serve this request, nearest first.
    servable_classes: tuple[str, ...]
    # sha256 hex over the tenant, the parameters key and the conversation window; the model class
    # is not part of it, it is the other half of the exact map's key.
    exact_key: str
    # The conversation window as text (case kept, for the guard); None = exact-match only.
    semantic_text: str | None


def model_class_of(config: CacheConfig, model: str, quality: float) -> ModelClass:
    if config.model_class_scope == "model":
        return ModelClass(label=model, rank=0)
    if config.model_class_scope == "none":
        return ModelClass(label="*", rank=0)
    bands = config.quality_bands
    band = min(bands - 1, max(0, math.floor(quality * bands))) if math.isfinite(quality) else 0
    return ModelClass(label=f"q{band}", rank=band)


def servable_classes(config: CacheConfig, requested: ModelClass) -> tuple[str, ...]:
    if config.model_class_scope != "quality_band":
        return (requested.label,)
    return tuple(f"q{band}" for band in range(requested.rank, config.quality_bands))


def bypass_reason(query: CacheQuery, config: CacheConfig) -> str | None:
    """Why this request must neither read nor write the cache, or None when it may use it."""
    if not config.enabled:
        return "disabled"
    if query.controls.bypass:
        return "requested"
    if query.params.tools:
        return "tools"
    temperature = query.params.temperature
    if temperature is not None and temperature > config.max_temperature:
        return "temperature"
    if not any(content.strip() for role, content in query.messages if role != "system"):
        return "empty"
    return None


def exact_only_reason(query: CacheQuery, config: CacheConfig) -> str | None:
    if not config.semantic.enabled:
        return "semantic_disabled"
    if query.controls.no_semantic:
        return "requested"
    if query.params.response_format is not None:
        return "response_format"
    return None


def normalise_for_key(text: str) -> str:
    unix = text.replace("\r\n", "\n").replace("\r", "\n")
    return _TRAILING_SPACE.sub("\n", unix).strip()


def normalise_for_semantic(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def conversation_window(
    messages: Sequence[tuple[str, str]], window: int
) -> tuple[list[str], list[tuple[str, str]]]:
    """(system message contents, the last `window` other messages; 0 = all), both normalised."""
    system = [normalise_for_key(content) for role, content in messages if role == "system"]
    turns = [(role, normalise_for_key(content)) for role, content in messages if role != "system"]
    return system, turns[-window:] if window > 0 else turns


def render_semantic_text(turns: Sequence[tuple[str, str]]) -> str:
    """A single question embeds as itself; a conversation as one `role: text` line per turn, so
    the same follow-up after a different history embeds differently."""
    if len(turns) == 1:
        return normalise_for_semantic(turns[0][1])
    return "\n".join(f"{role}: {normalise_for_semantic(content)}" for role, content in turns)


def _digest(value: object) -> str:
    canonical = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def derive_keys(query: CacheQuery, config: CacheConfig) -> RequestKeys:
    system, turns = conversation_window(query.messages, config.conversation_window)
    params = query.params
    params_key = _digest(
        {
            "v": KEY_VERSION,
            "system": system,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "stop": list(params.stop),
            "response_format": params.response_format,
        }
    )[:32]
    exact_key = _digest(
        {"v": KEY_VERSION, "tenant": query.tenant, "params": params_key, "turns": turns}
    )
    requested = model_class_of(config, query.model, query.quality)
    exact_only = exact_only_reason(query, config) is not None
    semantic_text = None if exact_only else render_semantic_text(turns)
    if semantic_text is not None and len(semantic_text) > MAX_GUARDED_CHARS:
        # The guard would refuse any hit for it: embedding it would be work for nothing.
        semantic_text = None
    return RequestKeys(
        scope=CacheScope(tenant=query.tenant, model_class=requested.label, params_key=params_key),
        class_rank=requested.rank,
        servable_classes=servable_classes(config, requested),
        exact_key=exact_key,
        semantic_text=semantic_text,
    )


def tenant_tag(tenant: str) -> str:
    """A fixed-alphabet stand-in for the tenant in Redis keys and file names (tenant names may
    hold ':' or glob characters)."""
    return hashlib.sha256(tenant.encode()).hexdigest()[:24]
