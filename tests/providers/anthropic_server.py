"""A loopback server speaking Anthropic's Messages protocol: POST /v1/messages.

It validates requests the way the real API does where adapters can go wrong: the x-api-key and
anthropic-version headers, the required max_tokens, no "system" role inside messages, and no
top-level fields the API does not know (e.g. OpenAI's `stop`). Stream events, bodies and error
bodies have Anthropic's exact shapes (ids aside).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import Answer, LoopbackServer, content_text, sse_frame

# Top-level request fields the Messages API accepts; anything else is a 400, as it is upstream.
KNOWN_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "metadata",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
    }
)


def anthropic_error(type_: str, message: str) -> dict[str, object]:
    """An Anthropic error body (also the data of an `event: error` stream event)."""
    return {
        "type": "error",
        "error": {"type": type_, "message": message},
        "request_id": "req_loopback",
    }


def prompt_too_long_error() -> dict[str, object]:
    """Anthropic's 400 body for a prompt longer than the model's context window."""
    return anthropic_error(
        "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"
    )


_ERRORS_BY_STATUS: Mapping[int, tuple[str, str]] = MappingProxyType(
    {
        400: ("invalid_request_error", "Invalid request."),
        401: ("authentication_error", "invalid x-api-key"),
        403: (
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
        404: ("not_found_error", "The requested resource could not be found."),
        413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
        429: (
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of 50 requests "
            "per minute.",
        ),
        500: ("api_error", "Internal server error"),
        529: ("overloaded_error", "Overloaded"),
    }
)


class AnthropicServer(LoopbackServer):
    """Anthropic on 127.0.0.1; `base_url` is "http://127.0.0.1:PORT" (the path adds /v1)."""

    def routes(self) -> list[Route]:
        return [Route("/v1/messages", self.handle, methods=["POST"])]

    def reject(self, request: Request, body: object) -> Response | None:
        if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
            return JSONResponse(self.error_body(401, request, body), 401)
        if "anthropic-version" not in request.headers:
            return _bad_request("anthropic-version: header is required")
        if not isinstance(body, dict):
            return _bad_request("There was an issue with your request body: invalid JSON")
        unknown = sorted(set(body) - KNOWN_FIELDS)
        if unknown:
            return _bad_request(f"{unknown[0]}: Extra inputs are not permitted")
        if not isinstance(body.get("model"), str):
            return _bad_request("model: Field required")
        if not isinstance(body.get("max_tokens"), int):
            return _bad_request("max_tokens: Field required")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _bad_request("messages: at least one message is required")
        for message in messages:
            role = message.get("role") if isinstance(message, dict) else None
            if role not in ("user", "assistant"):
                return _bad_request(
                    f'messages: Unexpected role "{role}". The Messages API accepts a top-level '
                    f'`system` parameter, not "{role}" as an input message role.'
                )
        return None

    def conversation(self, body: dict[str, object]) -> tuple[list[str], str]:
        messages = body.get("messages")
        messages = (
            [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
        )
        texts = [content_text(body.get("system"))]
        texts += [content_text(m.get("content")) for m in messages]
        user_texts = [content_text(m.get("content")) for m in messages if m.get("role") == "user"]
        return texts, user_texts[-1] if user_texts else ""

    def completion_body(self, answer: Answer, body: dict[str, object]) -> dict[str, object]:
        return {
            "id": "msg_loopback",
            "type": "message",
            "role": "assistant",
            "model": answer.model,
            "content": [{"type": "text", "text": answer.text}],
            "stop_reason": _stop_reason(answer),
            "stop_sequence": None,
            "usage": {"input_tokens": answer.input_tokens, "output_tokens": answer.output_tokens},
        }

    def stream_frames(
        self, answer: Answer, body: dict[str, object]
    ) -> tuple[list[str], list[str], list[str]]:
        message_start = {
            "type": "message_start",
            "message": {
                "id": "msg_loopback",
                "type": "message",
                "role": "assistant",
                "model": answer.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": answer.input_tokens, "output_tokens": 1},
            },
        }
        head = [
            sse_frame(message_start, "message_start"),
            sse_frame(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
                "content_block_start",
            ),
            sse_frame({"type": "ping"}, "ping"),
        ]
        tokens = [
            sse_frame(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": token},
                },
                "content_block_delta",
            )
            for token in answer.tokens
        ]
        tail = [
            sse_frame({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            sse_frame(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": _stop_reason(answer), "stop_sequence": None},
                    "usage": {"output_tokens": answer.output_tokens},
                },
                "message_delta",
            ),
            sse_frame({"type": "message_stop"}, "message_stop"),
        ]
        return head, tokens, tail

    def error_body(self, status: int, request: Request, body: object) -> dict[str, object]:
        fallback = (
            ("api_error", "Internal server error")
            if status >= 500
            else ("invalid_request_error", f"HTTP {status}")
        )
        type_, message = _ERRORS_BY_STATUS.get(status, fallback)
        return anthropic_error(type_, message)

    def stream_error_frame(self, error_body: object) -> str:
        return sse_frame(error_body, "error")

    def garbage_frames(self) -> list[str]:
        return [sse_frame('{"type": "message_start", this is not json', "message_start")]


def _stop_reason(answer: Answer) -> str:
    return "max_tokens" if answer.truncated else "end_turn"


def _bad_request(message: str) -> Response:
    return JSONResponse(anthropic_error("invalid_request_error", message), 400)
