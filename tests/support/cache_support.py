"""Builders shared by the response-cache tests and benchmarks: requests, answers, a clock."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from switchpoint.cache.config import CacheConfig, SemanticConfig
from switchpoint.cache.records import CacheControls, CachedAnswer, CacheParams, CacheQuery

# The QQP paraphrase pairs (origin question, a similar one) the cache tests and benches read.
QQP_PAIRS = (
    Path(__file__).resolve().parents[3] / "shared/data/semantic-cache/qqp_similar_pairs.json.gz"
)

# Fixed here rather than taken from the default, which moves with measurement: the tests pin the
# behaviour around a threshold, not the threshold itself.
TEST_THRESHOLD = 0.85
STRONG = ("strong-model", 0.9)
CHEAP = ("cheap-model", 0.3)


@dataclass
class FakeClock:
    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def cache_config(**overrides: object) -> CacheConfig:
    settings: dict[str, object] = {
        "enabled": True,
        "semantic": SemanticConfig(threshold=TEST_THRESHOLD),
    }
    settings.update(overrides)
    return CacheConfig.model_validate(settings)


def ask(
    text: str,
    *,
    tenant: str = "acme",
    model: tuple[str, float] = STRONG,
    history: tuple[tuple[str, str], ...] = (),
    params: CacheParams | None = None,
    controls: CacheControls | None = None,
) -> CacheQuery:
    return CacheQuery(
        tenant=tenant,
        model=model[0],
        quality=model[1],
        messages=(*history, ("user", text)),
        params=params or CacheParams(),
        controls=controls or CacheControls(),
    )


def answer(
    content: str, *, model: tuple[str, float] = STRONG, finish_reason: str = "stop"
) -> CachedAnswer:
    return CachedAnswer(
        content=content,
        model=model[0],
        quality=model[1],
        finish_reason=finish_reason,
        input_tokens=12,
        output_tokens=34,
        cost_usd=0.0021,
    )


def qqp_pairs(count: int) -> list[tuple[str, str]]:
    """The first `count` distinct origins of the QQP set, each with its first paraphrase."""
    with gzip.open(QQP_PAIRS, "rt", encoding="utf-8") as file:
        pairs = json.load(file)
    unique: dict[str, str] = {}
    for pair in pairs:
        unique.setdefault(pair["origin"], pair["similar"])
        if len(unique) == count:
            break
    return list(unique.items())
