"""A library call's arguments as the engine reads them (`ChatInput`), the same value the gRPC front
converts its messages to. Only what Python's types leave open is checked here (a message that is
not a role and a text, an option of the wrong type); what a value may be is the Rust router's to
decide, as for every front, and its refusals name the same fields."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from switchpoint.cache.records import CacheControls
from switchpoint.errors import InvalidRequestError
from switchpoint.providers.base import ChatMessage
from switchpoint.request import (
    NO_CACHE_CONTROLS,
    NO_PARAMS,
    ChatInput,
    GenerationParams,
    Priority,
    RoutingOptions,
    new_request_id,
)


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message; a mapping with "role" and "content" is accepted as well."""

    role: str
    content: str


MAX_UINT32 = 2**32 - 1
MessageLike = Message | Mapping[str, str]
PriorityName = Literal["realtime", "interactive", "batch"]


@dataclass(frozen=True, slots=True)
class CallOptions:
    """Everything a call may say besides its messages (RoutingOptions, GenerationParams and
    CacheControl of the gRPC API, flattened). `model` is a one-model `models`."""

    model: str | None = None
    models: Sequence[str] = ()
    stage: str = ""
    strategy: str = ""
    # (cost, latency, quality), as RoutingOptions.weights.
    weights: tuple[float, float, float] | None = None
    tenant: str = ""
    priority: int | PriorityName | None = None
    capabilities: Sequence[str] = ()
    max_cost_usd: float | None = None
    hedge: bool = False
    user: str = ""
    request_id: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: Sequence[str] = ()
    cache_bypass: bool = False
    cache_no_semantic: bool = False
    cache_threshold: float | None = None


def chat_input(
    messages: Iterable[MessageLike],
    options: CallOptions,
    check_count: Callable[[int], None] | None = None,
) -> ChatInput:
    """The engine's view of one call; raises InvalidRequestError naming the field.
    `check_count` refuses too many messages before any is converted, as on the wire."""
    if isinstance(messages, str | bytes | Mapping):
        raise InvalidRequestError("messages", "must be a list of messages, not a single value")
    items = messages if isinstance(messages, Sequence) else list(messages)
    if check_count is not None:
        check_count(len(items))
    return ChatInput(
        messages=tuple(_messages(items)),
        routing=_routing(options),
        params=_params(options),
        request_id=_text("request_id", options.request_id) or new_request_id(),
        cache=_cache(options),
    )


def _messages(messages: Iterable[MessageLike]) -> Iterable[ChatMessage]:
    for i, message in enumerate(messages):
        role: object
        content: object
        if isinstance(message, Message):
            role, content = message.role, message.content
        elif isinstance(message, Mapping):
            role, content = message.get("role"), message.get("content")
        else:
            raise InvalidRequestError(
                f"messages[{i}]", "must be a Message or a mapping with role and content"
            )
        yield ChatMessage(
            _text(f"messages[{i}].role", role), _text(f"messages[{i}].content", content)
        )


def _routing(options: CallOptions) -> RoutingOptions:
    if options.model is not None and options.models:
        raise InvalidRequestError("routing.models", "give model or models, not both")
    models = (options.model,) if options.model is not None else options.models
    return RoutingOptions(
        models=_texts("routing.models", models),
        stage=_text("routing.stage", options.stage),
        strategy=_text("routing.strategy", options.strategy),
        weights=_weights(options.weights),
        tenant=_text("routing.tenant", options.tenant),
        priority=_priority(options.priority),
        capabilities=_texts("routing.capabilities", options.capabilities),
        max_cost_usd=_number("routing.max_cost_usd", options.max_cost_usd),
        hedge=bool(options.hedge),
        user=_text("routing.user", options.user),
    )


def _params(options: CallOptions) -> GenerationParams:
    if (
        options.max_tokens is None
        and options.temperature is None
        and options.top_p is None
        and not options.stop
    ):
        return NO_PARAMS
    max_tokens = options.max_tokens
    if max_tokens is not None and (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or not 0 <= max_tokens <= MAX_UINT32
    ):
        # The wire's uint32: what the gRPC API cannot carry is refused here.
        raise InvalidRequestError("params.max_tokens", f"must be an integer in [0, {MAX_UINT32}]")
    return GenerationParams(
        max_tokens=max_tokens,
        temperature=_number("params.temperature", options.temperature),
        top_p=_number("params.top_p", options.top_p),
        stop=_texts("params.stop", options.stop),
    )


def _cache(options: CallOptions) -> CacheControls:
    if (
        not options.cache_bypass
        and not options.cache_no_semantic
        and options.cache_threshold is None
    ):
        return NO_CACHE_CONTROLS
    return CacheControls(
        bypass=bool(options.cache_bypass),
        no_semantic=bool(options.cache_no_semantic),
        threshold=_number("cache.threshold", options.cache_threshold),
    )


def _priority(priority: int | str | None) -> int:
    if priority is None:
        return Priority.UNSPECIFIED
    if isinstance(priority, str):
        try:
            return Priority[priority.upper()]
        except KeyError:
            raise InvalidRequestError(
                "routing.priority", "must be realtime, interactive or batch"
            ) from None
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidRequestError("routing.priority", "must be a name or a Priority")
    return priority


def _weights(weights: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
    if weights is None:
        return None
    values = tuple(weights) if isinstance(weights, Sequence) else ()
    if len(values) != 3:
        raise InvalidRequestError("routing.weights", "must be (cost, latency, quality)")
    cost, latency, quality = (_weight(v) for v in values)
    return cost, latency, quality


def _weight(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError("routing.weights", "must be numbers")
    return float(value)


def _number(field: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(field, "must be a number")
    # Finite and in range is the router's to check, as for a value that came over the wire.
    return float(value)


def _text(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(field, f"must be a string, not {type(value).__name__}")
    return value


def _texts(field: str, values: Iterable[object]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise InvalidRequestError(field, "must be a list of strings, not one string")
    return tuple(_text(f"{field}[{i}]", v) for i, v in enumerate(values))
