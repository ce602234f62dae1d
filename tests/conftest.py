"""Fixtures shared by the whole suite: the loopback provider servers."""

from tests.providers.fixtures import (
    anthropic_adapter,
    anthropic_server,
    openai_adapter,
    openai_server,
)

__all__ = ["anthropic_adapter", "anthropic_server", "openai_adapter", "openai_server"]
