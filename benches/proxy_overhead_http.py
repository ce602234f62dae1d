"""The HTTP front's rows in `benches/proxy_overhead.py`: the same chat as OpenAI JSON, side by side.

The same prompt (with its sequence-number slot) and max_tokens as the gRPC Chat, POSTed to
`/v1/chat/completions` on the sidecar's `server.http_address` over HTTP/1.1 keep-alive, with the
model `switchpoint/auto` (routed as a Chat that names no model is). The rows run only when the
sidecar's config has `server.http_address` (the bench sets it to a free loopback port) and one
call answers 200 with the provider's model; otherwise the reason is printed and the gRPC and
direct rows run alone, so the bench works with or without the front.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

from benches.loadgen import HttpTarget, slot_offset
from switchpoint.config import ServerConfig

CHAT_PATH = "/v1/chat/completions"
AUTO_MODEL = "switchpoint/auto"
PROBE_TIMEOUT_S = 10.0


def free_loopback_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def front_address() -> tuple[str | None, str | None]:
    """(a free loopback address for the front, None) when this build has `server.http_address`,
    else (None, why the HTTP rows are skipped)."""
    if "http_address" not in ServerConfig.model_fields:
        return None, "this build's config has no server.http_address (no HTTP front)"
    return free_loopback_address(), None


def with_front(config: dict[str, Any], address: str | None) -> dict[str, Any]:
    """`config` with the front on `address`; unchanged when None (the key may not exist)."""
    if address is None:
        return config
    return {**config, "server": {**config.get("server", {}), "http_address": address}}


def body(prompt: str, max_tokens: int) -> bytes:
    request = {
        "model": AUTO_MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
    }
    return json.dumps(request, ensure_ascii=False).encode()


def target(address: str, prompt: str, max_tokens: int) -> HttpTarget:
    payload = body(prompt, max_tokens)
    return HttpTarget(
        f"http://{address}{CHAT_PATH}",
        payload,
        headers={"content-type": "application/json"},
        slot_offset=slot_offset(payload),
    )


def probe(address: str, prompt: str, max_tokens: int, model: str) -> str | None:
    """None when one chat on the front answers 200 with `model`; else why the rows are skipped."""
    request = urllib.request.Request(
        f"http://{address}{CHAT_PATH}",
        data=body(prompt, max_tokens),
        headers={"content-type": "application/json"},
        method="POST",
    )
    # No proxy from the environment: the front is on loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=PROBE_TIMEOUT_S) as reply:
            answer = json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return f"POST {CHAT_PATH} on {address} answered {error.code}"
    except (OSError, ValueError) as error:
        return f"POST {CHAT_PATH} on {address} failed: {error}"
    if answer.get("model") != model:
        return f"POST {CHAT_PATH} on {address} served {answer.get('model')!r}, not {model!r}"
    return None
