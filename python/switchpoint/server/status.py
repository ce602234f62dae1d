"""The one mapping from switchpoint's exceptions to gRPC status codes and client-safe messages."""

from __future__ import annotations

import logging

import grpc

from switchpoint.errors import (
    AllAttemptsFailedError,
    CoreError,
    ErrorClass,
    InvalidRequestError,
    NoEligibleModelError,
    ProviderError,
)

log = logging.getLogger("switchpoint.server")

_PROVIDER_STATUS: dict[ErrorClass, grpc.StatusCode] = {
    ErrorClass.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorClass.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorClass.INVALID_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorClass.CONTEXT_WINDOW: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorClass.CONTENT_POLICY: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_for(exc: BaseException, request_id: str = "") -> tuple[grpc.StatusCode, str]:
    """The status code and message a client sees for `exc`. Unknown errors never leak details."""
    if isinstance(exc, InvalidRequestError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, NoEligibleModelError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, AllAttemptsFailedError):
        code = _PROVIDER_STATUS.get(exc.last.error_class, grpc.StatusCode.UNAVAILABLE)
        return code, str(exc)
    if isinstance(exc, ProviderError):
        return _PROVIDER_STATUS.get(exc.error_class, grpc.StatusCode.UNAVAILABLE), str(exc)
    if isinstance(exc, CoreError):
        log.error("routing core error (request %s): %s", request_id, exc)
        return grpc.StatusCode.INTERNAL, f"routing core error: {exc}"
    log.exception("unexpected error (request %s)", request_id, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id or 'unknown'})"
