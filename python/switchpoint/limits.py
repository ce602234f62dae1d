"""What one request may carry: the `server.limits` config section.

Every limit is checked in one place, the Rust router's request validation
(`switchpoint_core::route::request`), for Route, Chat and ChatStream alike, before anything reads
the request's text; the gRPC server refuses a message over `max_message_bytes` before it is even
parsed. A refusal names the limit and its value:

    messages[3].content: 2000000 bytes exceeds server.limits.message_bytes (262144)

Sizes (`max_message_bytes`, `messages`, `message_bytes`, `prompt_bytes`, `list_items`) are
RESOURCE_EXHAUSTED; a name or id over `name_bytes` is INVALID_ARGUMENT.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# Characters of a client's string that an error or a log line shows; the rest is cut, marked "…"
# (the Rust validation's `clipped` follows the same rule).
SHOWN_CHARS = 64
# gRPC's own limit is 4 MiB; a message can hardly be larger than the signed 32-bit length gRPC
# keeps it in.
MAX_GRPC_MESSAGE = 2**31 - 1
AtLeastOne = Annotated[int, Field(ge=1)]


def shown(text: str) -> str:
    """`text` as an error or a log line may show it."""
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}…"


class LimitsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Bytes of one serialized request (gRPC's max_receive_message_length).
    max_message_bytes: Annotated[int, Field(ge=1024, le=MAX_GRPC_MESSAGE)] = 1024 * 1024
    # RPCs served at once (gRPC's maximum_concurrent_rpcs); more are refused RESOURCE_EXHAUSTED at
    # once. With max_message_bytes it bounds the memory requests can hold: calls waiting for a
    # worker thread or a provider each keep their request.
    max_concurrent_rpcs: AtLeastOne = 1024
    # Messages in one request.
    messages: AtLeastOne = 1024
    # Bytes of one message's content.
    message_bytes: AtLeastOne = 256 * 1024
    # Bytes of all messages' contents together.
    prompt_bytes: AtLeastOne = 512 * 1024
    # Bytes of a name or id: tenant, stage, strategy, model and capability names, request id,
    # role, stop sequence.
    name_bytes: AtLeastOne = 128
    # Items of routing.models, routing.capabilities and params.stop.
    list_items: AtLeastOne = 64
