"""Waiting in a test for something another thread or process does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest


async def wait_until(condition: Callable[[], object], timeout_s: float = 15.0) -> None:
    """Poll `condition` until it is truthy; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.01)
