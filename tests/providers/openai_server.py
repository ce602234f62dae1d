"""A loopback server speaking OpenAI's chat-completions protocol: POST /v1/chat/completions.

Bodies, stream chunks and error bodies have OpenAI's exact shapes (ids and timestamps aside).
Knobs imitate the looser compatible servers: `reports_usage=False` ignores include_usage and
omits usage (llama-cpp-python), `sends_done=False` ends streams without `data: [DONE]`.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import Answer, LoopbackServer, content_text, sse_frame


def openai_error(
    message: str, type_: str = "invalid_request_error", code: str | None = None
) -> dict[str, object]:
    """An OpenAI error body."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def context_length_error(model: str = "gpt-4o") -> dict[str, object]:
    """OpenAI's 400 body for a prompt longer than the model's context window."""
    return {
        "error": {
            "message": (
                f"This model's maximum context length is 8192 tokens. However, your messages "
                f"resulted in 9000 tokens. Please reduce the length of the messages. ({model})"
            ),
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }


# What OpenAI-compatible servers send when the prompt does not fit: vLLM says so only in its
# message, llama.cpp's server with its own error type.
VLLM_CONTEXT_ERROR = {
    "object": "error",
    "message": "This model's maximum context length is 4096 tokens.",
    "type": "BadRequestError",
    "code": 400,
}
LLAMA_CPP_CONTEXT_ERROR = {
    "error": {
        "code": 400,
        "message": "the request exceeds the available context size",
        "type": "exceed_context_size_error",
    }
}


class OpenAIServer(LoopbackServer):
    """OpenAI on 127.0.0.1; `base_url` is "http://127.0.0.1:PORT/v1"."""

    api_prefix = "/v1"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        reports_usage: bool = True,
        sends_done: bool = True,
        keep_requests: int | None = None,
    ) -> None:
        super().__init__(api_key=api_key, keep_requests=keep_requests)
        self.reports_usage = reports_usage
        self.sends_done = sends_done

    def routes(self) -> list[Route]:
        return [Route("/v1/chat/completions", self.handle, methods=["POST"])]

    def reject(self, request: Request, body: object) -> Response | None:
        if self.api_key is not None:
            presented = request.headers.get("authorization", "")
            if presented != f"Bearer {self.api_key}":
                return JSONResponse(self.error_body(401, request, body), 401)
        if not isinstance(body, dict):
            return _bad_request("We could not parse the JSON body of your request.")
        if not isinstance(body.get("model"), str):
            return _bad_request("you must provide a model parameter")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _bad_request("[] is too short - 'messages'")
        if "stream_options" in body and body.get("stream") is not True:
            return _bad_request(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled."
            )
        return None

    def conversation(self, body: dict[str, object]) -> tuple[list[str], str]:
        messages = [m for m in _list(body.get("messages")) if isinstance(m, dict)]
        texts = [content_text(m.get("content")) for m in messages]
        user_texts = [content_text(m.get("content")) for m in messages if m.get("role") == "user"]
        return texts, user_texts[-1] if user_texts else ""

    def completion_body(self, answer: Answer, body: dict[str, object]) -> dict[str, object]:
        completion: dict[str, object] = {
            "id": "chatcmpl-loopback",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": answer.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": _finish_reason(answer),
                }
            ],
            "system_fingerprint": "fp_loopback",
        }
        if self.reports_usage:
            completion["usage"] = _usage(answer)
        return completion

    def stream_frames(
        self, answer: Answer, body: dict[str, object]
    ) -> tuple[list[str], list[str], list[str]]:
        options = body.get("stream_options")
        include_usage = (
            self.reports_usage
            and isinstance(options, dict)
            and options.get("include_usage") is True
        )

        def chunk(delta: dict[str, object], finish_reason: str | None = None) -> str:
            data: dict[str, object] = {
                "id": "chatcmpl-loopback",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": answer.model,
                "system_fingerprint": "fp_loopback",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
            if include_usage:
                data["usage"] = None  # OpenAI sends null usage on every chunk but the last
            return sse_frame(data)

        # A comment first, as gateways send while the model warms up; clients must skip it.
        head = [": loopback processing\n\n", chunk({"role": "assistant", "content": ""})]
        tokens = [chunk({"content": token}) for token in answer.tokens]
        tail = [chunk({}, _finish_reason(answer))]
        if include_usage:
            tail.append(
                sse_frame(
                    {
                        "id": "chatcmpl-loopback",
                        "object": "chat.completion.chunk",
                        "created": int(time.time()),
                        "model": answer.model,
                        "choices": [],
                        "usage": _usage(answer),
                    }
                )
            )
        if self.sends_done:
            tail.append(sse_frame("[DONE]"))
        return head, tokens, tail

    def error_body(self, status: int, request: Request, body: object) -> dict[str, object]:
        model = body.get("model") if isinstance(body, dict) else None
        if status == 401:
            presented = request.headers.get("authorization", "").removeprefix("Bearer ")
            if not presented:
                return openai_error(
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                )
            # OpenAI masks the key it echoes; this server echoes it whole, the worst case an
            # adapter has to scrub.
            return openai_error(
                f"Incorrect API key provided: {presented}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )
        if status == 403:
            return openai_error(
                "Country, region, or territory not supported",
                type_="request_forbidden",
                code="unsupported_country_region_territory",
            )
        if status == 404:
            return openai_error(
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        if status == 429:
            return openai_error(
                f"Rate limit reached for {model} on requests per min (RPM): Limit 3, Used 3, "
                "Requested 1. Please try again in 20s.",
                type_="requests",
                code="rate_limit_exceeded",
            )
        if status == 503:
            return openai_error(
                "The engine is currently overloaded, please try again later",
                type_="server_error",
            )
        if status >= 500:
            return openai_error(
                "The server had an error while processing your request. Sorry about that!",
                type_="server_error",
            )
        return openai_error(f"Invalid request (HTTP {status}).")

    def stream_error_frame(self, error_body: object) -> str:
        # Compatible servers (vLLM, llama.cpp, OpenRouter) send a data chunk holding the error.
        return sse_frame(error_body)

    def garbage_frames(self) -> list[str]:
        return [sse_frame('{"choices": [ this is not json')]


def _finish_reason(answer: Answer) -> str:
    return "length" if answer.truncated else "stop"


def _usage(answer: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": answer.input_tokens + answer.output_tokens,
    }


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _bad_request(message: str) -> Response:
    return JSONResponse(openai_error(message), 400)
