"""Server-sent events as OpenAI streams them: `data: <json>` events, `data: [DONE]` at the end."""

from __future__ import annotations

import json

DONE = b"data: [DONE]\n\n"
HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def event(payload: object) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
