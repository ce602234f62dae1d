"""switchpoint: an LLM routing sidecar, and the same engine as a library. The gRPC API is
`switchpoint.v1`; the server factory is `switchpoint.server.create_server`; the in-process API is
`switchpoint.Router` (async) and `switchpoint.SyncRouter` (docs/library.md). Every error raised on
purpose is one of `switchpoint.errors`, re-exported here."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from switchpoint.errors import (
    AllAttemptsFailedError,
    AlreadyDoneError,
    ConfigError,
    DeadlineExceededError,
    ErrorClass,
    FeatureOffError,
    InvalidRequestError,
    NoEligibleModelError,
    NotFoundError,
    PolicyDeniedError,
    ProviderError,
    QuotaExceededError,
    RequestTooLargeError,
    SwitchpointError,
)

if TYPE_CHECKING:
    from switchpoint.library import (
        ChatResult,
        Decision,
        Message,
        Router,
        Stats,
        StreamChunk,
        SyncRouter,
    )

__version__ = "0.1.0"

# Imported on first use: the CLI and the sidecar need none of the library's imports.
_LIBRARY = frozenset(
    {"ChatResult", "Decision", "Message", "Router", "Stats", "StreamChunk", "SyncRouter"}
)


def __getattr__(name: str) -> object:
    if name in _LIBRARY:
        return getattr(importlib.import_module("switchpoint.library"), name)
    raise AttributeError(f"module 'switchpoint' has no attribute {name!r}")


__all__ = [
    "AllAttemptsFailedError",
    "AlreadyDoneError",
    "ChatResult",
    "ConfigError",
    "DeadlineExceededError",
    "Decision",
    "ErrorClass",
    "FeatureOffError",
    "InvalidRequestError",
    "Message",
    "NoEligibleModelError",
    "NotFoundError",
    "PolicyDeniedError",
    "ProviderError",
    "QuotaExceededError",
    "RequestTooLargeError",
    "Router",
    "Stats",
    "StreamChunk",
    "SwitchpointError",
    "SyncRouter",
]
