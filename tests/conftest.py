"""Fixtures shared by the whole suite: the loopback provider servers and a private Redis."""

from tests.providers.fixtures import (
    anthropic_adapter,
    anthropic_server,
    openai_adapter,
    openai_server,
)
from tests.redis_fixtures import redis_client, redis_server

__all__ = [
    "anthropic_adapter",
    "anthropic_server",
    "openai_adapter",
    "openai_server",
    "redis_client",
    "redis_server",
]
