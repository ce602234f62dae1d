"""What every provider adapter speaks: one request shape in, one completion or event stream out."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, NamedTuple, Protocol

from pydantic import AfterValidator


def _plain_json(fields: dict[str, Any]) -> dict[str, Any]:
    # Checked once at config load: a value the request body cannot carry would fail every call.
    try:
        same = json.loads(json.dumps(fields, allow_nan=False)) == fields
    except (TypeError, ValueError, RecursionError):
        same = False
    if not same:
        raise ValueError("must be plain JSON (string keys; no NaN, infinity, dates or binary)")
    return fields


# A model's `extra_body`: fields merged into each of its provider request bodies (e.g.
# repeat_penalty for llama.cpp).
ExtraBody = Annotated[dict[str, Any], AfterValidator(_plain_json)]

# The httpx request extension under which a call's `SentMark` travels to the transport.
SENT_MARK_EXTENSION: Final = "switchpoint.sent_mark"


class ChatMessage(NamedTuple):
    role: str
    content: str


class SentMark:
    """Whether a provider call's request has gone out: the one definition of "sent" that charging
    follows (`switchpoint.engine.attempts`). Set the moment the request's bytes are handed to the
    socket's transport (`connections._send`), or, through a proxy, when httpcore starts writing
    the request's headers to it. From then on the provider may bill the call however it ends;
    before (queued for a pooled connection, connecting, the TLS handshake) nothing went out."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = False

    async def on_trace(self, event: str, info: Mapping[str, object]) -> None:
        """httpcore's `trace` extension (the proxy transport). A tunnel's CONNECT goes to the
        proxy only: the request itself is the one that is not a CONNECT."""
        request = info.get("request")
        if event.endswith("send_request_headers.started") and (
            getattr(request, "method", b"") != b"CONNECT"
        ):
            self.sent = True


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """A chat call as the adapter sends it; `upstream_model` is the provider's own model name."""

    upstream_model: str
    messages: Sequence[ChatMessage]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: Sequence[str] = ()
    # Provider-specific body fields from the model's config (e.g. repeat_penalty for llama.cpp).
    extra_body: dict[str, object] = field(default_factory=dict)
    # Extra HTTP headers for this call: the W3C trace context of its attempt span.
    headers: Mapping[str, str] = field(default_factory=dict)
    # Set by the transport once the request went out (see SentMark); None: nobody asks.
    sent: SentMark | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    content: str
    finish_reason: str
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last event of every successful stream, with the provider-reported usage."""

    finish_reason: str
    input_tokens: int
    output_tokens: int


StreamEvent = TextDelta | StreamEnd


class ProviderAdapter(Protocol):
    """One wire protocol. Raises `switchpoint.errors.ProviderError` for every failure."""

    name: str

    async def complete(
        self, request: ProviderRequest, *, timeout_s: float | None
    ) -> Completion: ...

    def stream(
        self, request: ProviderRequest, *, timeout_s: float | None
    ) -> AsyncGenerator[StreamEvent, None]: ...

    async def aclose(self) -> None: ...
