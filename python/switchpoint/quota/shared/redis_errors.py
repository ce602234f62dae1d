"""What "Redis is unreachable" looks like to the lease managers, and how it is described."""

from __future__ import annotations

import asyncio

from redis.exceptions import RedisError

# Refused or reset connections, timeouts, and a Redis that answers with an error (loading,
# read-only replica after a failover, out of memory).
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def raise_if_cancelled(exc: BaseException) -> None:
    """A cancelled caller (a client gone, a timeout) must not be taken for Redis being down:
    redis-py can turn a cancellation inside a command into a connection or timeout error."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc
