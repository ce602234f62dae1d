"""Provider adapters: one per wire protocol, each over its own HTTP/1.1 connection pool.

`create_adapter` is how the rest of switchpoint gets one; every adapter raises only
`switchpoint.errors.ProviderError` (classified in `http_errors`), and `aclose()` closes its client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Literal

import httpx

from switchpoint.providers.anthropic import AnthropicAdapter
from switchpoint.providers.base import ProviderAdapter
from switchpoint.providers.http import ProviderHTTP
from switchpoint.providers.openai_compat import OpenAICompatAdapter

ProviderKind = Literal["openai", "anthropic"]


def create_adapter(
    name: str,
    kind: ProviderKind,
    base_url: str,
    api_key: str | None,
    *,
    timeout_s: float = 60.0,
    connect_timeout_s: float = 5.0,
    max_connections: int = 100,
    headers: Mapping[str, str] | None = None,
    anthropic_default_max_tokens: int = 1024,
) -> ProviderAdapter:
    """An adapter named `name` (the name its errors carry) for the provider at `base_url`.

    `timeout_s` is the default read timeout, which `complete`/`stream` replace per call;
    `headers` are sent with every request (e.g. OpenAI-Organization); credential-looking ones are
    scrubbed from error messages like the API key.
    """
    if kind not in ("openai", "anthropic"):
        raise ValueError(f"unknown provider kind {kind!r}; expected 'openai' or 'anthropic'")
    _require_positive("timeout_s", timeout_s)
    _require_positive("connect_timeout_s", connect_timeout_s)
    _require_positive("max_connections", max_connections)
    _require_positive("anthropic_default_max_tokens", anthropic_default_max_tokens)
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"base_url is not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"base_url must be an absolute http(s) URL, got {base_url!r}")
    http = ProviderHTTP(
        url,
        headers=dict(headers or {}),
        timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
        max_connections=max_connections,
        # Environment proxies (HTTP_PROXY, ...) are for reaching remote hosts; a local model
        # server is never behind one. Redirects are never followed (see ProviderHTTP): one from a
        # provider API is a misconfigured base_url, not something to follow with the API key.
        trust_env=not _is_loopback(url.host),
    )
    if kind == "openai":
        return OpenAICompatAdapter(name, http, api_key)
    return AnthropicAdapter(name, http, api_key, default_max_tokens=anthropic_default_max_tokens)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _require_positive(parameter: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{parameter} must be positive, got {value}")


__all__ = [
    "AnthropicAdapter",
    "OpenAICompatAdapter",
    "ProviderAdapter",
    "ProviderKind",
    "create_adapter",
]
