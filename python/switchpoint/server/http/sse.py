"""A streamed chat as OpenAI streams it: server-sent `data: <chat.completion.chunk>` events, the
first carrying the role, the last the finish reason (then, when asked, one with the usage), then
`data: [DONE]`.

The response starts with the first event, so a call refused before anything was streamed (every
model failed, a limit) is still answered with its own HTTP status; an error after that is one
`data: {"error": ...}` event, then the stream ends, as OpenAI does."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from contextlib import aclosing
from typing import Any

from switchpoint._native import Decision
from switchpoint.engine.path import ChatResult, Engine
from switchpoint.request import ChatInput
from switchpoint.server.http.errors import ErrorAnswer, Headers, error_answer
from switchpoint.server.http.wire import ChatCall, chunk, finish_reason, usage_chunk
from switchpoint.server.observe import Observation

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

DONE = b"data: [DONE]\n\n"
HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def event(payload: object) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def send_stream(
    send: Send,
    engine: Engine,
    call: ChatCall,
    chat_input: ChatInput,
    seen: Observation,
    *,
    headers: Headers,
    refuse: Callable[[ErrorAnswer], Awaitable[None]],
) -> None:
    """Stream the engine's answer to `send`; `refuse` answers an error before the first event.
    Closing the events (the caller hung up and this task was cancelled) closes the engine's
    stream at once: its gate reservation and the upstream response are released."""
    decision = seen.decision
    assert decision is not None
    started = False
    try:
        async with aclosing(_events(engine, call, chat_input, decision, seen)) as events:
            async for payload in events:
                if not started:
                    head = [*HEADERS, *headers]
                    if seen.decision is not None:
                        model = seen.decision.chosen.name.encode()
                        head.append((b"x-switchpoint-model", model))
                    await send({"type": "http.response.start", "status": 200, "headers": head})
                    started = True
                await send({"type": "http.response.body", "body": payload, "more_body": True})
    except Exception as exc:
        answer = error_answer(exc, chat_input.request_id)
        seen.failed(answer.grpc_code, answer.message)
        if not started:
            await refuse(answer)
            return
        await send({"type": "http.response.body", "body": event(answer.body), "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.body", "body": DONE})


async def _events(
    engine: Engine, call: ChatCall, chat_input: ChatInput, routed: Decision, seen: Observation
) -> AsyncGenerator[bytes, None]:
    request_id, created = chat_input.request_id, int(time.time())
    first = True
    stream_deltas = engine.stream(chat_input, routed, deadline=None)
    async with aclosing(stream_deltas) as stream:
        async for item in stream:
            if isinstance(item, Decision):
                # The decision that serves the call, admitted.
                seen.decision = item
                continue
            if isinstance(item, ChatResult):
                seen.result = item
                if first:
                    # An empty answer: the role still comes first.
                    role = {"role": "assistant", "content": ""}
                    yield event(chunk(request_id, item.model, created, role))
                reason = finish_reason(item.finish_reason)
                yield event(chunk(request_id, item.model, created, {}, reason))
                if call.include_usage:
                    yield event(usage_chunk(item, created))
                continue
            delta = {"role": "assistant", "content": item.text} if first else {"content": item.text}
            first = False
            yield event(chunk(request_id, item.model, created, delta))
