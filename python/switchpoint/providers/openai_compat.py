"""The OpenAI chat-completions wire protocol: OpenAI itself, and the local servers that copy it.

POST {base_url}/chat/completions, with `base_url` ending in the API version ("https://api.openai.com/v1",
"http://127.0.0.1:8080/v1"). llama.cpp, vLLM, Ollama and most gateways speak this too, some of
them loosely, which is why missing usage is estimated rather than treated as an error.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from switchpoint.errors import ErrorClass
from switchpoint.providers.base import (
    ChatMessage,
    Completion,
    ProviderRequest,
    StreamEnd,
    StreamEvent,
    TextDelta,
)
from switchpoint.providers.http import ProviderHTTP
from switchpoint.providers.http_errors import FailureClassifier, secrets_to_scrub
from switchpoint.providers.sse import drain

_PATH = "chat/completions"
_DONE = "[DONE]"
# OpenAI's rule of thumb for English text; only used when a server reports no usage.
_CHARS_PER_TOKEN = 4
# Protocol fields the adapter owns: a model's extra_body may not override them.
_RESERVED_FIELDS = frozenset({"model", "messages", "stream", "stream_options"})


def estimate_input_tokens(messages: Sequence[ChatMessage]) -> int:
    """Prompt tokens when the server reports none: characters of all messages / 4, rounded up."""
    return math.ceil(sum(len(message.content) for message in messages) / _CHARS_PER_TOKEN)


def estimate_output_tokens(text: str) -> int:
    """Completion tokens of a non-streamed answer when the server reports none: characters / 4."""
    return math.ceil(len(text) / _CHARS_PER_TOKEN)


@dataclass(slots=True)
class _StreamState:
    """What a stream has told so far; usage stays None until (unless) a chunk reports it."""

    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    content_chunks: int = 0
    done: bool = False  # [DONE] arrived

    def end(self, request: ProviderRequest) -> StreamEnd:
        # Without reported usage (servers that ignore stream_options.include_usage, such as
        # llama-cpp-python), input is estimated from characters and output is the number of
        # content deltas: servers stream one token per chunk, so the count is close to exact.
        return StreamEnd(
            finish_reason=self.finish_reason or "stop",
            input_tokens=(
                self.input_tokens
                if self.input_tokens is not None
                else estimate_input_tokens(request.messages)
            ),
            output_tokens=(
                self.output_tokens if self.output_tokens is not None else self.content_chunks
            ),
        )


class OpenAICompatAdapter:
    """Chat completions over one provider connection pool, which the adapter owns and closes.

    `http` must have its base URL set to the API root ("…/v1"); `api_key`, when set, is sent as
    `Authorization: Bearer …` (local servers run without one).
    """

    def __init__(self, name: str, http: ProviderHTTP, api_key: str | None) -> None:
        self.name = name
        self._http = http
        self._api_key = api_key
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
        return self._completion(request, payload)

    async def stream(
        self, request: ProviderRequest, *, timeout_s: float | None
    ) -> AsyncGenerator[StreamEvent, None]:
        """Text deltas, then one StreamEnd; a stream that dies before its end raises instead.

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
                if event.data == _DONE:
                    await drain(events)
                    state.done = True
                    break
                text = self._read_chunk(event.data, state)
                if text:
                    yield TextDelta(text)
        # Some compatible servers never send [DONE]; once a finish_reason has arrived the model
        # has finished, so the answer is complete (usage may be estimated).
        if not state.done and state.finish_reason is None:
            raise self._failures.error(
                ErrorClass.CONNECT,
                f"stream ended before [DONE] after {state.content_chunks} content chunk(s)",
            )
        # Yielded after the response is closed, so a consumer that stops at the last event holds
        # nothing open, whether or not it closes this generator.
        yield state.end(request)

    async def aclose(self) -> None:
        await self._http.aclose()

    def _headers(self, request: ProviderRequest) -> dict[str, str]:
        # The body is encoded by FailureClassifier.encode_json, so httpx does not label it.
        headers = {"content-type": "application/json"}
        if self._api_key:
            headers["authorization"] = f"Bearer {self._api_key}"
        # Trace context (traceparent) first, so nothing it carries can replace our own headers.
        return {**request.headers, **headers}

    def _body(self, request: ProviderRequest, *, stream: bool) -> dict[str, object]:
        # The model's extra_body goes in first, so the request's own parameters win over it and
        # it can never change the protocol fields this adapter parses the answer by.
        body = {k: v for k, v in request.extra_body.items() if k not in _RESERVED_FIELDS}
        body["model"] = request.upstream_model
        body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop"] = list(request.stop)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def _completion(self, request: ProviderRequest, payload: dict[str, object]) -> Completion:
        failures = self._failures
        failures.value(payload, "choices", 0, "message")
        # A null content is what OpenAI sends with a refusal or tool calls: an empty answer.
        content = failures.text(payload, "choices", 0, "message", "content", null_as="")
        finish_reason = failures.optional_text(payload, "choices", 0, "finish_reason") or "stop"
        if failures.has(payload, "usage"):
            input_tokens = failures.count(payload, "usage", "prompt_tokens")
            output_tokens = failures.count(payload, "usage", "completion_tokens")
        else:
            # Same estimate as for streams, for servers that report no usage at all.
            input_tokens = estimate_input_tokens(request.messages)
            output_tokens = estimate_output_tokens(content)
        return Completion(content, finish_reason, input_tokens, output_tokens)

    def _read_chunk(self, data: str, state: _StreamState) -> str:
        """Fold one `chat.completion.chunk` into `state`; return its text (maybe empty)."""
        failures = self._failures
        # Compatible servers (vLLM, llama.cpp, OpenRouter) report mid-stream failures as a chunk
        # holding an `error` object; json_object raises those as the classified error.
        chunk = failures.json_object(data, what="stream chunk")
        if failures.has(chunk, "usage"):
            # With include_usage, OpenAI sends `usage: null` on every chunk but the last.
            state.input_tokens = failures.count(chunk, "usage", "prompt_tokens")
            state.output_tokens = failures.count(chunk, "usage", "completion_tokens")
        if not failures.has(chunk, "choices", 0):
            return ""  # the usage-only final chunk has empty choices
        finish_reason = failures.optional_text(chunk, "choices", 0, "finish_reason")
        if finish_reason:
            state.finish_reason = finish_reason
        text = failures.optional_text(chunk, "choices", 0, "delta", "content") or ""
        if text:
            state.content_chunks += 1
        return text
