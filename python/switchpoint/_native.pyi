"""Type stubs for the Rust extension (rust/py). Checked against the binary by mypy.stubtest."""

from typing import Literal, final

__all__ = [
    "CoreError",
    "LatencyTracker",
    "ModelSpec",
    "ModelTable",
    "ScoreResult",
    "ScoredCandidate",
]

class CoreError(Exception):
    """Raised by the Rust core; message says what was wrong."""

@final
class ModelSpec:
    """One model row of the routing table, as loaded from config."""

    name: str
    input_per_mtok: float
    output_per_mtok: float
    context_window: int
    quality: float
    ttft_prior_ms: float
    tpot_prior_ms: float
    capabilities: int
    def __new__(
        cls,
        name: str,
        *,
        input_per_mtok: float,
        output_per_mtok: float,
        context_window: int,
        quality: float,
        ttft_prior_ms: float,
        tpot_prior_ms: float,
        capabilities: int = 0,
    ) -> ModelSpec: ...

@final
class LatencyTracker:
    """Per-model time-decayed latency histograms (total, TTFT, per output token).

    Slots are keyed by model name and survive table rebuilds, so reloading config keeps history.
    """

    def __new__(cls, half_life_s: float = 300.0) -> LatencyTracker: ...
    def slot(self, name: str) -> int:
        """The stable slot for `name`, created on first use."""
    def record(
        self, slot: int, total_ms: float, ttft_ms: float | None = None, output_tokens: int = 0
    ) -> None:
        """Record one successful call. tpot is derived as (total - ttft) / (output_tokens - 1)."""
    def percentiles(
        self, slot: int, kind: Literal["total", "ttft", "tpot"]
    ) -> tuple[float, float, float, float]:
        """(p50, p95, p99, weighted sample count); zeros when there are no samples."""

@final
class ScoredCandidate:
    index: int
    score: float
    norm_cost: float
    norm_latency: float
    quality: float
    estimated_cost_usd: float
    estimated_latency_ms: float
    latency_observed: bool

@final
class ScoreResult:
    """Eligible candidates best first, and the excluded ones with a reason."""

    def __len__(self) -> int: ...
    @property
    def ranked(self) -> list[int]:
        """Indices of eligible models, best first."""
    def best(self) -> int | None:
        """Index of the best candidate, or None when none is eligible."""
    def candidates(self) -> list[ScoredCandidate]:
        """Every eligible candidate, best first."""
    def excluded(self) -> list[tuple[int, Literal["context_window", "capabilities", "max_cost"]]]:
        """Models that were candidates but not eligible, with the reason."""

@final
class ModelTable:
    """The routing table: built once per config load, scored per request."""

    def __new__(
        cls, models: list[ModelSpec], latency: LatencyTracker, min_samples: int = 20
    ) -> ModelTable: ...
    def __len__(self) -> int: ...
    def slot(self, index: int) -> int:
        """The latency-tracker slot of model `index`."""
    def set_penalty(self, index: int, penalty: float) -> None:
        """A score penalty in [0, 1] (open breaker, recent errors); 0 clears it."""
    def score(
        self,
        input_tokens: int,
        output_tokens: int,
        weights: tuple[float, float, float],
        required_capabilities: int = 0,
        max_cost_usd: float | None = None,
        candidates: list[int] | None = None,
    ) -> ScoreResult:
        """Score `candidates` (all models when None) for one request.

        `weights` is (cost, latency, quality): finite, >= 0, not all zero; normalised to sum 1.
        """
