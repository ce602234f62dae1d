"""The one exception hierarchy of switchpoint.

Every failure the request path can meet is one of these; `switchpoint.server.status` is the single
place that maps them to gRPC status codes. The Rust core raises these (and its own `CoreError`,
`GateDenied` and `NoRoom`, re-exported here) through its one `From<CoreError> for PyErr`
conversion.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Protocol

from switchpoint._native import CoreError, GateDenied, NoRoom, quota_message, retry_wait


class SwitchpointError(Exception):
    """Base of every error switchpoint raises on purpose."""


class InvalidRequestError(SwitchpointError):
    """The caller's request is malformed; `field` names the offending field (`routing.weights`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class RequestTooLargeError(InvalidRequestError):
    """The request is over a size limit of `server.limits`; `field` names what is too large."""


class NoEligibleModelError(SwitchpointError):
    """The request is well formed but no enabled model can serve it (context, capability, cost)."""


class PolicyDeniedError(SwitchpointError):
    """Configured policy forbids the request (e.g. a model outside its stage's whitelist)."""


class NotFoundError(InvalidRequestError):
    """The request names something that does not exist (or no longer, or not for this caller)."""


class AlreadyDoneError(InvalidRequestError):
    """The request repeats something that may happen once (a second score of the same answer)."""


class FeatureOffError(SwitchpointError):
    """The request needs a feature this config leaves off; the message names the config key."""


class QuotaExceededError(SwitchpointError):
    """A rate limit or budget refuses the call; `retry_after_s` says when it may pass."""

    def __init__(self, kind: str, name: str, retry_after_s: float, detail: str = "") -> None:
        # Worded by the core, which words the same refusals in routing's reasons.
        if kind == "queue":
            wait = retry_wait(retry_after_s)
            message = f"admission queue of '{name}' refused the call ({detail}); {wait}"
        elif kind == "scopes":
            wait = retry_wait(retry_after_s)
            message = f"no room for a new rule instance under '{name}' ({detail}); {wait}"
        else:
            message = quota_message(kind, name, retry_after_s)
        super().__init__(message)
        self.kind = kind
        self.name = name
        self.retry_after_s = retry_after_s


class ConfigError(SwitchpointError):
    """A config file is invalid; `errors` lists every problem as `path: message`."""

    def __init__(self, errors: list[str], source: str = "config") -> None:
        self.errors = errors
        self.source = source
        super().__init__(f"{source} is invalid:\n" + "\n".join(f"  {e}" for e in errors))


class ErrorClass(StrEnum):
    """Why a provider call failed; decides retry and fallback behaviour."""

    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECT = "connect"
    AUTH = "auth"
    CONTEXT_WINDOW = "context_window"
    CONTENT_POLICY = "content_policy"
    INVALID_REQUEST = "invalid_request"
    BAD_RESPONSE = "bad_response"
    NOT_FOUND = "not_found"


class ProviderError(SwitchpointError):
    """A provider call failed. The message names the provider and never carries an API key."""

    def __init__(
        self,
        provider: str,
        error_class: ErrorClass,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        detail = f"HTTP {status}: {message}" if status is not None else message
        super().__init__(f"provider '{provider}' failed ({error_class.value}): {detail}")
        self.provider = provider
        self.error_class = error_class
        self.status = status
        self.retry_after_s = retry_after_s
        self.detail = message


class AttemptSummary(Protocol):
    @property
    def model(self) -> str: ...

    @property
    def error_class(self) -> str: ...


class AllAttemptsFailedError(SwitchpointError):
    """Every model in the chain failed or was skipped; carries the attempts and the last provider
    error (None when no provider was even called, e.g. every circuit breaker was open)."""

    def __init__(self, last: ProviderError | None, attempts: Sequence[AttemptSummary]) -> None:
        tried = ", ".join(f"{a.model} ({a.error_class})" for a in attempts) or "none"
        detail = f"; last: {last}" if last is not None else ""
        super().__init__(f"all {len(attempts)} attempt(s) failed [{tried}]{detail}")
        self.last = last
        self.attempts = tuple(attempts)


class DeadlineExceededError(SwitchpointError):
    """The caller's deadline passed before any attempt succeeded."""


__all__ = [
    "AllAttemptsFailedError",
    "AlreadyDoneError",
    "ConfigError",
    "CoreError",
    "ErrorClass",
    "FeatureOffError",
    "GateDenied",
    "InvalidRequestError",
    "NoEligibleModelError",
    "NoRoom",
    "NotFoundError",
    "PolicyDeniedError",
    "ProviderError",
    "QuotaExceededError",
    "RequestTooLargeError",
    "SwitchpointError",
]
