"""The one mapping from switchpoint's exceptions to gRPC status codes and client-safe messages."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from switchpoint.errors import (
    AllAttemptsFailedError,
    AlreadyDoneError,
    CoreError,
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
from switchpoint.limits import shown
from switchpoint.security.access import AccessDenied

log = logging.getLogger("switchpoint.server")

_PROVIDER_STATUS: dict[ErrorClass, grpc.StatusCode] = {
    ErrorClass.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorClass.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorClass.INVALID_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorClass.CONTEXT_WINDOW: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorClass.CONTENT_POLICY: grpc.StatusCode.FAILED_PRECONDITION,
}


Metadata = tuple[tuple[str, str | bytes], ...]

# Trailing metadata key carrying the seconds until a refused call may pass, for clients that do
# not parse google.rpc.RetryInfo from the status details.
RETRY_AFTER_KEY = "retry-after"


@dataclass(frozen=True, slots=True)
class Failure:
    code: grpc.StatusCode
    message: str
    trailing_metadata: Metadata = ()


def failure_for(exc: BaseException, request_id: str = "") -> Failure:
    """What a client sees for `exc`: status, message and, for quota refusals, the retry delay."""
    if isinstance(exc, QuotaExceededError):
        return _quota_failure(exc)
    code, message = _status_for(exc, request_id)
    return Failure(code, message)


def _quota_failure(exc: QuotaExceededError) -> Failure:
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    message = str(exc)
    if not math.isfinite(exc.retry_after_s):
        return Failure(code, message)
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(exc.retry_after_s * 1e9))
    detail = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message)
    detail.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return Failure(
        code,
        message,
        (
            ("grpc-status-details-bin", detail.SerializeToString()),
            (RETRY_AFTER_KEY, f"{exc.retry_after_s:.3f}"),
        ),
    )


# Refusals whose message is the status message, subclasses before their bases.
_STATUS_OF_REFUSAL: tuple[tuple[type[SwitchpointError], grpc.StatusCode], ...] = (
    (RequestTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyDoneError, grpc.StatusCode.ALREADY_EXISTS),
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (FeatureOffError, grpc.StatusCode.FAILED_PRECONDITION),
    (NoEligibleModelError, grpc.StatusCode.FAILED_PRECONDITION),
    (PolicyDeniedError, grpc.StatusCode.PERMISSION_DENIED),
)


def _status_for(exc: BaseException, request_id: str) -> tuple[grpc.StatusCode, str]:
    """The status code and message of every error but quota refusals. Unknown errors never
    leak details."""
    if isinstance(exc, AccessDenied):
        return exc.code, exc.message
    for kind, code in _STATUS_OF_REFUSAL:
        if isinstance(exc, kind):
            return code, str(exc)
    if isinstance(exc, AllAttemptsFailedError):
        # No provider error at all (every model skipped): the service is unavailable.
        if exc.last is None:
            return grpc.StatusCode.UNAVAILABLE, str(exc)
        return _PROVIDER_STATUS.get(exc.last.error_class, grpc.StatusCode.UNAVAILABLE), str(exc)
    if isinstance(exc, DeadlineExceededError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)
    if isinstance(exc, ProviderError):
        return _PROVIDER_STATUS.get(exc.error_class, grpc.StatusCode.UNAVAILABLE), str(exc)
    request_id = shown(request_id)
    if isinstance(exc, CoreError):
        log.error("routing core error (request %s): %s", request_id, exc)
        return grpc.StatusCode.INTERNAL, f"routing core error: {exc}"
    log.exception("unexpected error (request %s)", request_id, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id or 'unknown'})"
