"""pytest fixtures for a private real Redis (tests/redis_server.py).

tests/conftest.py re-exports these. Without redis-server on PATH they fail with a message that
says how to install it: a shared-state test that silently skipped would hide that the multi-replica
guarantees were never checked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from tests.redis_server import RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh, empty redis-server on a free loopback port, stopped after the test."""
    try:
        server = RedisServer()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server


@pytest_asyncio.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A client of `redis_server` for inspecting what the code under test wrote."""
    client = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()
