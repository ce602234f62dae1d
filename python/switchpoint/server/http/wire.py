"""OpenAI's chat-completions JSON and switchpoint's request and answer, both ways.

A body is read into the same `switchpoint.v1.ChatRequest` the gRPC front receives, so one
conversion (`server.convert`), one tenant binding (`security.access`) and one validation (the
router's) serve both fronts. Fields switchpoint cannot honour are refused by name rather than
ignored: a client sending them would otherwise get an answer that silently differs from what it
asked for."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from switchpoint.engine.path import ChatResult
from switchpoint.server.http.errors import HttpError, invalid
from switchpoint.v1 import router_pb2 as pb

AUTO_MODEL = "switchpoint/auto"
STRATEGY_PREFIX = "switchpoint/"
STAGE_PREFIX = "switchpoint/stage/"

_ROLES = frozenset({"system", "user", "assistant"})
# Accepted only at (or equal to) the value that asks for nothing switchpoint would have to do.
_NEUTRAL: dict[str, object] = {
    "n": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": False,
}
_UNSUPPORTED = frozenset(
    {
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "top_logprobs",
        "seed",
        "logit_bias",
        "audio",
        "modalities",
        "prediction",
        "reasoning_effort",
        "service_tier",
        "store",
        "metadata",
        "web_search_options",
        "parallel_tool_calls",
    }
)
_KNOWN = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "user",
        "stream",
        "stream_options",
        "response_format",
    }
    | set(_NEUTRAL)
)
FINISH_REASONS = frozenset({"stop", "length", "content_filter", "tool_calls"})


@dataclass(frozen=True, slots=True)
class ChatCall:
    """One parsed POST /v1/chat/completions."""

    request: pb.ChatRequest
    model: str
    stream: bool
    include_usage: bool


@dataclass(frozen=True, slots=True)
class ModelNames:
    """What `model` may name, from the live config."""

    models: frozenset[str]
    strategies: frozenset[str]
    stages: frozenset[str]


def parse_chat(body: object, names: ModelNames) -> ChatCall:
    if not isinstance(body, dict):
        raise HttpError(400, "the request body must be a JSON object", code="invalid_request")
    _refuse_unhonoured(body)
    request = pb.ChatRequest()
    model = _string(body, "model", required=True)
    _route_model(model, names, request.routing)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise invalid("messages", "must be a list of messages")
    for i, message in enumerate(messages):
        request.messages.append(_message(message, f"messages[{i}]"))
    _params(body, request.params)
    user = _string(body, "user")
    if user:
        request.routing.user = user
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise invalid("stream_options", "must be an object")
        for key in options:
            if key != "include_usage":
                raise invalid(f"stream_options.{key}", "is not supported by switchpoint")
        include_usage = _boolean(options, "include_usage", "stream_options.include_usage")
    return ChatCall(request, model, stream, include_usage)


def _refuse_unhonoured(body: Mapping[str, Any]) -> None:
    for key, value in body.items():
        if key in _NEUTRAL:
            if value is None or value == _NEUTRAL[key]:
                continue
            raise invalid(key, f"only {_NEUTRAL[key]!r} is supported by switchpoint")
        if key in _UNSUPPORTED:
            raise invalid(key, "is not supported by switchpoint")
        if key == "response_format":
            kind = value.get("type") if isinstance(value, dict) else None
            if kind != "text":
                raise invalid("response_format", "only {'type': 'text'} is supported")
        elif key not in _KNOWN:
            raise invalid(key, "is not a field switchpoint honours")


def _route_model(model: str, names: ModelNames, routing: pb.RoutingOptions) -> None:
    if model in names.models:
        routing.models.append(model)
    elif model == AUTO_MODEL:
        pass
    elif model.startswith(STAGE_PREFIX) and model[len(STAGE_PREFIX) :] in names.stages:
        routing.stage = model[len(STAGE_PREFIX) :]
    elif model.startswith(STRATEGY_PREFIX) and model[len(STRATEGY_PREFIX) :] in names.strategies:
        routing.strategy = model[len(STRATEGY_PREFIX) :]
    else:
        raise HttpError(
            404,
            f"model: {model[:64]!r} is not a model of this sidecar (GET /v1/models lists them)",
            param="model",
            code="model_not_found",
        )


def _message(message: object, path: str) -> pb.Message:
    if not isinstance(message, dict):
        raise invalid(path, "must be an object")
    role = message.get("role")
    if role not in _ROLES:
        raise invalid(f"{path}.role", "must be one of system, user, assistant")
    for key in message:
        if key not in ("role", "content"):
            raise invalid(f"{path}.{key}", "is not supported by switchpoint")
    return pb.Message(role=role, content=_content(message.get("content"), f"{path}.content"))


def _content(content: object, path: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(path, "must be a string or a list of text parts")
    texts = []
    for i, part in enumerate(content):
        if not isinstance(part, dict):
            raise invalid(f"{path}[{i}]", "must be an object")
        if part.get("type") != "text":
            raise invalid(f"{path}[{i}].type", "only 'text' content parts are supported")
        text = part.get("text")
        if not isinstance(text, str):
            raise invalid(f"{path}[{i}].text", "must be a string")
        texts.append(text)
    return "".join(texts)


def _params(body: Mapping[str, Any], params: pb.GenerationParams) -> None:
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise invalid(field, "must be a positive integer")
        params.max_tokens = value
        break
    for field in ("temperature", "top_p"):
        value = body.get(field)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise invalid(field, "must be a number")
        setattr(params, field, float(value))
    stop = body.get("stop")
    if isinstance(stop, str):
        params.stop.append(stop)
    elif isinstance(stop, list):
        for i, item in enumerate(stop):
            if not isinstance(item, str):
                raise invalid(f"stop[{i}]", "must be a string")
            params.stop.append(item)
    elif stop is not None:
        raise invalid("stop", "must be a string or a list of strings")


def _string(body: Mapping[str, Any], field: str, *, required: bool = False) -> str:
    value = body.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise invalid(field, "must be a string")
    return value


def _boolean(body: Mapping[str, Any], field: str, path: str | None = None) -> bool:
    value = body.get(field)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(path or field, "must be a boolean")
    return value


def finish_reason(reason: str) -> str:
    """The provider's finish reason in OpenAI's names; anything else ended normally."""
    if reason in ("max_tokens", "length"):
        return "length"
    return reason if reason in FINISH_REASONS else "stop"


def usage(result: ChatResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.input_tokens,
        "completion_tokens": result.output_tokens,
        "total_tokens": result.input_tokens + result.output_tokens,
    }


def completion(result: ChatResult) -> dict[str, object]:
    return {
        "id": result.request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": result.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.content},
                "finish_reason": finish_reason(result.finish_reason),
                "logprobs": None,
            }
        ],
        "usage": usage(result),
    }


def chunk(
    request_id: str,
    model: str,
    created: int,
    delta: dict[str, str],
    finish: str | None = None,
) -> dict[str, object]:
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def usage_chunk(result: ChatResult, created: int) -> dict[str, object]:
    return {
        "id": result.request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": result.model,
        "choices": [],
        "usage": usage(result),
    }
