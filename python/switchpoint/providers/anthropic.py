"""The Anthropic Messages wire protocol: POST {base_url}/v1/messages, base_url "https://api.anthropic.com".

Differences from chat completions that this adapter absorbs: system prompts travel in a top-level
`system` field, `max_tokens` is required, the answer is a list of content blocks, stop reasons have
their own names (mapped to the OpenAI names the rest of switchpoint uses), and streams are typed
events (message_start, content_block_delta, message_delta, message_stop, ping, error).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from switchpoint.errors import ErrorClass
from switchpoint.providers.base import (
    Completion,
    ProviderRequest,
    StreamEnd,
    StreamEvent,
    TextDelta,
)
from switchpoint.providers.http import ProviderHTTP
from switchpoint.providers.http_errors import FailureClassifier, secrets_to_scrub
from switchpoint.providers.sse import drain

_PATH = "v1/messages"
API_VERSION = "2023-06-01"
# Roles whose messages become the top-level `system` prompt. "developer" is OpenAI's newer name
# for the same thing, so requests written for either provider route to this one unchanged.
_SYSTEM_ROLES = frozenset({"system", "developer"})
# Anthropic stop reasons in the OpenAI vocabulary the rest of switchpoint speaks; reasons not
# listed here (e.g. pause_turn) pass through unchanged.
_STOP_REASONS: Mapping[str, str] = MappingProxyType(
    {
        "end_turn": "stop",
        "stop_sequence": "stop",
        "max_tokens": "length",
        "tool_use": "tool_calls",
        "refusal": "content_filter",
    }
)
# Protocol fields the adapter owns: a model's extra_body may not override them.
_RESERVED_FIELDS = frozenset({"model", "messages", "system", "stream"})
# Prompt-caching fields: input_tokens counts only the uncached part of the prompt.
_CACHED_INPUT_FIELDS = ("cache_creation_input_tokens", "cache_read_input_tokens")


def finish_reason_of(stop_reason: str | None) -> str:
    """Anthropic's stop_reason in OpenAI's finish_reason names (a missing one means "stop")."""
    if stop_reason is None:
        return "stop"
    return _STOP_REASONS.get(stop_reason, stop_reason)


@dataclass(slots=True)
class _StreamState:
    stop_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int = 0
    text_chunks: int = 0
    stopped: bool = False  # message_stop arrived


class AnthropicAdapter:
    """Messages API over one provider connection pool, which the adapter owns and closes.

    `http` must have its base URL set to the API host ("https://api.anthropic.com"). `api_key`
    is sent as `x-api-key` when set. `default_max_tokens` is sent when neither the request nor
    the model's extra_body sets `max_tokens`, because Anthropic rejects requests without it.
    """

    def __init__(
        self,
        name: str,
        http: ProviderHTTP,
        api_key: str | None,
        *,
        default_max_tokens: int = 1024,
    ) -> None:
        if default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be at least 1, got {default_max_tokens}")
        self.name = name
        self._http = http
        self._api_key = api_key
        self._default_max_tokens = default_max_tokens
        self._failures = FailureClassifier(name, secrets_to_scrub(api_key, http.headers))

    async def complete(self, request: ProviderRequest, *, timeout_s: float | None) -> Completion:
        payload = await self._http.post_json(
            _PATH,
            self._body(request, stream=False),
            headers=self._headers(request),
            timeout_s=timeout_s,
            failures=self._failures,
            sent=request.sent,
        )
        return self._completion(payload)

    async def stream(
        self, request: ProviderRequest, *, timeout_s: float | None
    ) -> AsyncGenerator[StreamEvent, None]:
        """Text deltas, then one StreamEnd; a stream that dies before message_stop raises.

        A consumer that stops early should close the iterator (`contextlib.aclosing`) so the
        connection is released at once rather than when the generator is collected.
        """
        state = _StreamState()
        async with self._http.post_for_events(
            _PATH,
            self._body(request, stream=True),
            headers=self._headers(request),
            timeout_s=timeout_s,
            failures=self._failures,
            sent=request.sent,
        ) as events:
            async for event in events:
                # An `error` event's payload ({"type": "error", "error": {...}}) is raised here,
                # classified by its error type (overloaded_error, ...).
                payload = self._failures.json_object(event.data, what=f"{event.event} event")
                kind = payload.get("type", event.event)
                if kind == "message_stop":
                    await drain(events)
                    state.stopped = True
                    break
                text = self._fold_event(kind, payload, state)
                if text:
                    yield TextDelta(text)
        if not state.stopped:
            raise self._failures.error(
                ErrorClass.CONNECT,
                f"stream ended before message_stop after {state.text_chunks} text chunk(s)",
            )
        # Yielded after the response is closed, so a consumer that stops at the last event holds
        # nothing open, whether or not it closes this generator.
        yield self._stream_end(state)

    async def aclose(self) -> None:
        await self._http.aclose()

    def _headers(self, request: ProviderRequest) -> dict[str, str]:
        # The body is encoded by FailureClassifier.encode_json, so httpx does not label it.
        headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
        if self._api_key:
            headers["x-api-key"] = self._api_key
        # Trace context (traceparent) first, so nothing it carries can replace our own headers.
        return {**request.headers, **headers}

    def _body(self, request: ProviderRequest, *, stream: bool) -> dict[str, object]:
        # extra_body first, so the request's own parameters win over the model's config, and a
        # config-level max_tokens wins over the adapter default.
        body = {k: v for k, v in request.extra_body.items() if k not in _RESERVED_FIELDS}
        body["model"] = request.upstream_model
        system = [m.content for m in request.messages if m.role in _SYSTEM_ROLES]
        if system:
            # Anthropic has one system prompt; several system messages (wherever they stood in
            # the conversation) are joined in order.
            body["system"] = "\n\n".join(system)
        body["messages"] = [
            {"role": m.role, "content": m.content}
            for m in request.messages
            if m.role not in _SYSTEM_ROLES
        ]
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        else:
            body.setdefault("max_tokens", self._default_max_tokens)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        if stream:
            body["stream"] = True
        return body

    def _completion(self, payload: dict[str, object]) -> Completion:
        failures = self._failures
        blocks = failures.items(payload, "content")
        # Only text blocks make the answer; thinking or tool_use blocks are not text to return.
        texts = [
            failures.text(payload, "content", index, "text")
            for index, block in enumerate(blocks)
            if isinstance(block, dict) and block.get("type") == "text"
        ]
        return Completion(
            content="".join(texts),
            finish_reason=finish_reason_of(failures.optional_text(payload, "stop_reason")),
            input_tokens=self._input_tokens(payload, "usage"),
            output_tokens=failures.count(payload, "usage", "output_tokens"),
        )

    def _input_tokens(self, payload: object, *usage_path: str) -> int:
        """Prompt tokens: the uncached input_tokens plus the cache writes and reads."""
        failures = self._failures
        total = failures.count(payload, *usage_path, "input_tokens")
        for field in _CACHED_INPUT_FIELDS:
            if failures.has(payload, *usage_path, field):
                total += failures.count(payload, *usage_path, field)
        return total

    def _fold_event(self, kind: object, payload: dict[str, object], state: _StreamState) -> str:
        """Fold one stream event into `state`; return the text it carries (maybe empty)."""
        failures = self._failures
        text = ""
        if kind == "message_start":
            state.input_tokens = self._input_tokens(payload, "message", "usage")
            if failures.has(payload, "message", "usage", "output_tokens"):
                state.output_tokens = failures.count(payload, "message", "usage", "output_tokens")
        elif kind == "content_block_start":
            if failures.optional_text(payload, "content_block", "type") == "text":
                text = failures.optional_text(payload, "content_block", "text") or ""
        elif kind == "content_block_delta":
            if failures.optional_text(payload, "delta", "type") == "text_delta":
                text = failures.text(payload, "delta", "text")
        elif kind == "message_delta":
            stop_reason = failures.optional_text(payload, "delta", "stop_reason")
            state.stop_reason = stop_reason or state.stop_reason
            # message_delta usage is cumulative; newer API versions repeat input_tokens here.
            if failures.has(payload, "usage", "output_tokens"):
                state.output_tokens = failures.count(payload, "usage", "output_tokens")
            if failures.has(payload, "usage", "input_tokens"):
                state.input_tokens = self._input_tokens(payload, "usage")
        # ping, content_block_stop and event types added after this was written carry no text;
        # Anthropic's versioning policy asks clients to ignore unknown events.
        if text:
            state.text_chunks += 1
        return text

    def _stream_end(self, state: _StreamState) -> StreamEnd:
        if state.input_tokens is None:
            raise self._failures.bad_response("stream ended without a message_start event")
        return StreamEnd(
            finish_reason=finish_reason_of(state.stop_reason),
            input_tokens=state.input_tokens,
            output_tokens=state.output_tokens,
        )
