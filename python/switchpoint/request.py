"""The request as the engine sees it, independent of the wire (gRPC today, HTTP later), and its
validation: every rule about what a caller may send is decided here, once, naming the field."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from enum import IntEnum
from typing import NamedTuple

from switchpoint.cache.records import CacheControls
from switchpoint.errors import InvalidRequestError
from switchpoint.providers.base import ChatMessage

ROLES = ("system", "user", "assistant")
MAX_ID_LENGTH = 128
# The one piece of module-level state: ids only have to be unique in the process (and, through the
# random prefix, across processes), so servers sharing a process may share the sequence.
_ID_PREFIX = os.urandom(8).hex()
_ID_SEQUENCE = itertools.count()


class Priority(IntEnum):
    UNSPECIFIED = 0
    REALTIME = 1
    INTERACTIVE = 2
    BATCH = 3


PRIORITIES = frozenset(Priority)


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


def new_request_id() -> str:
    """32 hex digits, unique across processes and restarts: a random prefix drawn at start, then
    a counter. An id has to be unique, not unguessable, and drawing 128 random bits per request
    was a measurable part of a Route call."""
    return f"{_ID_PREFIX}{next(_ID_SEQUENCE):016x}"


def _check_finite_range(
    name: str, value: float | None, low: float, high: float, *, low_open: bool = False
) -> None:
    if value is None:
        return
    if not math.isfinite(value):
        raise InvalidRequestError(name, "must be a finite number")
    if value < low or (low_open and value == low):
        raise InvalidRequestError(name, f"must be {'>' if low_open else '>='} {low:g}")
    if value > high:
        raise InvalidRequestError(name, f"must be <= {high:g}")


def _validate_messages(messages: Sequence[ChatMessage]) -> None:
    if not messages:
        raise InvalidRequestError("messages", "must contain at least one message")
    for i, message in enumerate(messages):
        if message.role not in ROLES:
            raise InvalidRequestError(
                f"messages[{i}].role",
                f"must be one of {', '.join(ROLES)} (got {message.role!r})",
            )
    if not any(m.content.strip() for m in messages if m.role != "system"):
        raise InvalidRequestError("messages", "no user or assistant message has any content")
    if messages[-1].role == "system":
        raise InvalidRequestError("messages", "the last message must not be a system message")


def _validate_routing(routing: RoutingOptions) -> None:
    for i, name in enumerate(routing.models):
        if not name.strip():
            raise InvalidRequestError(f"routing.models[{i}]", "must not be empty")
    if routing.weights is not None:
        for part, value in zip(("cost", "latency", "quality"), routing.weights, strict=True):
            _check_finite_range(f"routing.weights.{part}", value, 0.0, math.inf)
        if sum(routing.weights) <= 0:
            raise InvalidRequestError("routing.weights", "must not all be zero")
    if routing.priority not in PRIORITIES:
        raise InvalidRequestError("routing.priority", f"unknown priority {routing.priority}")
    _check_finite_range("routing.max_cost_usd", routing.max_cost_usd, 0.0, math.inf)
    if len(routing.tenant) > MAX_ID_LENGTH:
        raise InvalidRequestError("routing.tenant", f"must be at most {MAX_ID_LENGTH} characters")
    for i, capability in enumerate(routing.capabilities):
        if not capability.strip():
            raise InvalidRequestError(f"routing.capabilities[{i}]", "must not be empty")


def _validate_params(params: GenerationParams) -> None:
    if params.max_tokens is not None and params.max_tokens < 1:
        raise InvalidRequestError("params.max_tokens", "must be >= 1")
    _check_finite_range("params.temperature", params.temperature, 0.0, 2.0)
    _check_finite_range("params.top_p", params.top_p, 0.0, 1.0, low_open=True)
    for i, stop in enumerate(params.stop):
        if not stop:
            raise InvalidRequestError(f"params.stop[{i}]", "must not be empty")


def validate(request: ChatInput) -> None:
    """Raise `InvalidRequestError` for the first thing wrong with `request`, naming its field."""
    _validate_messages(request.messages)
    # The shared defaults are valid by construction; most requests leave some section unset.
    if request.routing is not NO_ROUTING:
        _validate_routing(request.routing)
    if request.params is not NO_PARAMS:
        _validate_params(request.params)
    if request.cache is not NO_CACHE_CONTROLS:
        _check_finite_range("cache.threshold", request.cache.threshold, 0.0, 1.0, low_open=True)
    if len(request.request_id) > MAX_ID_LENGTH:
        raise InvalidRequestError("request_id", f"must be at most {MAX_ID_LENGTH} characters")
