"""pytest fixtures: a running loopback server per provider, and an adapter wired to it.

Import them where they are used (the provider tests import them directly; tests/conftest.py can
re-export them for the rest of the suite). Each fixture is function-scoped: every test gets a
fresh server with an empty script and request log, and the adapter is closed after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from switchpoint.errors import ProviderError
from switchpoint.providers import create_adapter
from switchpoint.providers.base import ProviderAdapter, ProviderRequest, StreamEnd, TextDelta

from .anthropic_server import AnthropicServer
from .openai_server import OpenAIServer

# Distinctive keys: a test that finds any part of one in an error message has found a leak.
OPENAI_TEST_KEY = "sk-proj-Zq7VfX2pLw9RbK4tNc8Hy3MdQe6G"
ANTHROPIC_TEST_KEY = "sk-ant-api03-Jd8Ws2QpXv7LmTz4Rb9Kc1NfYh5U"
# Generous: tests that want a timeout pass their own short timeout_s per call.
ADAPTER_TIMEOUT_S = 10.0


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    """An OpenAI loopback server that requires OPENAI_TEST_KEY."""
    with OpenAIServer(api_key=OPENAI_TEST_KEY) as server:
        yield server


@pytest.fixture
def anthropic_server() -> Iterator[AnthropicServer]:
    """An Anthropic loopback server that requires ANTHROPIC_TEST_KEY."""
    with AnthropicServer(api_key=ANTHROPIC_TEST_KEY) as server:
        yield server


@pytest_asyncio.fixture
async def openai_adapter(openai_server: OpenAIServer) -> AsyncIterator[ProviderAdapter]:
    """An OpenAI-compatible adapter named "openai-loopback" pointed at `openai_server`."""
    adapter = create_adapter(
        "openai-loopback",
        "openai",
        openai_server.base_url,
        OPENAI_TEST_KEY,
        timeout_s=ADAPTER_TIMEOUT_S,
    )
    try:
        yield adapter
    finally:
        await adapter.aclose()


@pytest_asyncio.fixture
async def anthropic_adapter(anthropic_server: AnthropicServer) -> AsyncIterator[ProviderAdapter]:
    """An Anthropic adapter named "anthropic-loopback" pointed at `anthropic_server`."""
    adapter = create_adapter(
        "anthropic-loopback",
        "anthropic",
        anthropic_server.base_url,
        ANTHROPIC_TEST_KEY,
        timeout_s=ADAPTER_TIMEOUT_S,
    )
    try:
        yield adapter
    finally:
        await adapter.aclose()


@dataclass(frozen=True, slots=True)
class StreamResult:
    """Everything a stream produced: its deltas, and either its end or the error it raised."""

    deltas: list[str]
    end: StreamEnd | None
    error: ProviderError | None

    @property
    def text(self) -> str:
        return "".join(self.deltas)


async def collect_stream(
    adapter: ProviderAdapter, request: ProviderRequest, *, timeout_s: float | None = None
) -> StreamResult:
    """Run one stream to its end (or its error), checking StreamEnd is last when it comes."""
    deltas: list[str] = []
    end: StreamEnd | None = None
    stream = adapter.stream(request, timeout_s=timeout_s)
    try:
        async for event in stream:
            assert end is None, f"event after StreamEnd: {event!r}"
            if isinstance(event, TextDelta):
                deltas.append(event.text)
            else:
                end = event
    except ProviderError as exc:
        return StreamResult(deltas, end, exc)
    finally:
        await stream.aclose()
    return StreamResult(deltas, end, None)


async def expect_failure(
    adapter: ProviderAdapter,
    request: ProviderRequest,
    *,
    stream: bool = False,
    timeout_s: float | None = None,
) -> ProviderError:
    """The ProviderError a call raises; a failed stream must not have ended with StreamEnd."""
    if stream:
        result = await collect_stream(adapter, request, timeout_s=timeout_s)
        assert result.end is None, "a failed stream ended successfully"
        assert result.error is not None, "the stream did not fail"
        return result.error
    try:
        await adapter.complete(request, timeout_s=timeout_s)
    except ProviderError as exc:
        return exc
    raise AssertionError("the call did not fail")


def leaked_fragments(text: str, secret: str, fragment: int = 8) -> list[str]:
    """Every run of `fragment` characters of `secret` found in `text` (empty: nothing leaked)."""
    return [
        secret[i : i + fragment]
        for i in range(len(secret) - fragment + 1)
        if secret[i : i + fragment] in text
    ]
