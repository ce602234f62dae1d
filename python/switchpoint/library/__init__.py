"""switchpoint as a library: the sidecar's engine in the application's process (see
docs/library.md). `Router` is async, on the application's event loop; `SyncRouter` wraps it for
plain code."""

from switchpoint.library.requests import Message
from switchpoint.library.results import (
    Attempt,
    CacheHit,
    Candidate,
    ChatResult,
    Decision,
    StreamChunk,
    Usage,
    Weights,
)
from switchpoint.library.router import CallKeywords, Router
from switchpoint.library.stats import BudgetLeft, CacheStats, LatencySummary, ModelStats, Stats
from switchpoint.library.sync import SyncRouter

__all__ = [
    "Attempt",
    "BudgetLeft",
    "CacheHit",
    "CacheStats",
    "CallKeywords",
    "Candidate",
    "ChatResult",
    "Decision",
    "LatencySummary",
    "Message",
    "ModelStats",
    "Router",
    "Stats",
    "StreamChunk",
    "SyncRouter",
    "Usage",
    "Weights",
]
