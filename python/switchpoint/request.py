"""The request as the engine sees it, independent of the wire (gRPC today, HTTP later).

What a caller may send is decided in one place, the Rust router's validation
(`switchpoint_core::route::request`), which every request passes through before it is routed;
each refusal names the field. The tuples here are read by attribute name there.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from enum import IntEnum
from typing import NamedTuple

from switchpoint._native import PredictedQuality
from switchpoint.cache.records import CacheControls
from switchpoint.providers.base import ChatMessage

# The one piece of module-level state: ids only have to be unique in the process (and, through the
# random prefix, across processes), so servers sharing a process may share the sequence.
_ID_PREFIX = os.urandom(8).hex()
_ID_SEQUENCE = itertools.count()


class Priority(IntEnum):
    UNSPECIFIED = 0
    REALTIME = 1
    INTERACTIVE = 2
    BATCH = 3


class RoutingOptions(NamedTuple):
    models: Sequence[str] = ()
    stage: str = ""
    strategy: str = ""
    # (cost, latency, quality), or None when the caller set no custom weights.
    weights: tuple[float, float, float] | None = None
    tenant: str = ""
    priority: int = Priority.UNSPECIFIED
    capabilities: Sequence[str] = ()
    max_cost_usd: float | None = None
    hedge: bool = False
    # The key of a split sticky per user (switchpoint.splits).
    user: str = ""


class GenerationParams(NamedTuple):
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: Sequence[str] = ()


# What a request that leaves a section unset carries: one shared, immutable, valid value each.
NO_ROUTING = RoutingOptions()
NO_PARAMS = GenerationParams()
NO_CACHE_CONTROLS = CacheControls()


class ChatInput(NamedTuple):
    messages: Sequence[ChatMessage]
    routing: RoutingOptions = NO_ROUTING
    params: GenerationParams = NO_PARAMS
    request_id: str = ""
    cache: CacheControls = NO_CACHE_CONTROLS
    # The quality predictor's view of this request (model -> PredictedQuality); None when off.
    predicted: dict[str, PredictedQuality] | None = None
    # Uniform in [0, 1): whether this request explores (routing.exploration); 1 never does.
    explore_draw: float = 1.0


def new_request_id() -> str:
    """32 hex digits, unique across processes and restarts: a random prefix drawn at start, then
    a counter. An id has to be unique, not unguessable, and drawing 128 random bits per request
    was a measurable part of a Route call."""
    return f"{_ID_PREFIX}{next(_ID_SEQUENCE):016x}"


def prompt_size(request: ChatInput) -> int:
    """What routing the request will read, for deciding where to route it: its characters (at
    most its bytes), and a message's framing counted as 64 of them. Bounded by server.limits."""
    return sum(len(message[1]) + 64 for message in request.messages)
