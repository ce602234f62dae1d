"""One place where a refusal becomes an HTTP answer: the gRPC front's `failure_for` decides the
status code and message, and one table turns the code into an HTTP status and OpenAI's error
body `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import json
import math

import grpc

from switchpoint.errors import (
    AllAttemptsFailedError,
    ProviderError,
    QuotaExceededError,
    RequestTooLargeError,
)
from switchpoint.server.status import failure_for

_HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNAVAILABLE: 503,
}

# OpenAI's error `type` per HTTP status.
_ERROR_TYPE: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout",
}

Headers = list[tuple[bytes, bytes]]


class HttpError(Exception):
    """A refusal of the HTTP front itself (bad JSON, unknown path, unsupported field)."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def invalid(param: str, message: str) -> HttpError:
    """A 400 naming the field: `messages[2].content[0].type: ...`."""
    return HttpError(400, f"{param}: {message}", param=param, code="invalid_request")


class ErrorAnswer:
    """The status, headers and JSON body of one refusal."""

    __slots__ = ("body", "grpc_code", "headers", "message", "status")

    def __init__(
        self, status: int, body: dict[str, object], headers: Headers, grpc_code: grpc.StatusCode
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers
        self.grpc_code = grpc_code
        error = body["error"]
        self.message = str(error["message"]) if isinstance(error, dict) else ""

    def encoded(self) -> bytes:
        return json.dumps(self.body).encode()


def error_answer(exc: BaseException, request_id: str = "") -> ErrorAnswer:
    """What an HTTP client sees for `exc`; never a traceback (unknown errors say only the id)."""
    if isinstance(exc, HttpError):
        return _answer(exc.status, exc.message, exc.param, exc.code, [], _grpc_code_of(exc.status))
    failure = failure_for(exc, request_id)
    status = _HTTP_STATUS.get(failure.code, 500)
    headers: Headers = []
    if isinstance(exc, RequestTooLargeError):
        status = 413
    retry_after_s = _retry_after_s(exc) if status == 429 else None
    if retry_after_s is not None and math.isfinite(retry_after_s):
        # Whole seconds, rounded up, as RFC 9110 wants; never 0 for a refusal that has to wait.
        headers.append((b"retry-after", str(max(1, math.ceil(retry_after_s))).encode()))
    code = failure.code.name.lower()
    return _answer(status, failure.message, None, code, headers, failure.code)


def _retry_after_s(exc: BaseException) -> float | None:
    """When a 429 may pass: the gate's own delay, or the rate-limited provider's."""
    if isinstance(exc, QuotaExceededError):
        return exc.retry_after_s
    if isinstance(exc, AllAttemptsFailedError) and exc.last is not None:
        return exc.last.retry_after_s
    if isinstance(exc, ProviderError):
        return exc.retry_after_s
    return None


def _grpc_code_of(status: int) -> grpc.StatusCode:
    """The gRPC code a front refusal is observed (metrics, log line) as."""
    for code, http_status in _HTTP_STATUS.items():
        if http_status == status:
            return code
    if status == 413:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode.NOT_FOUND if status == 405 else grpc.StatusCode.INTERNAL


def _answer(  # noqa: PLR0917 (one call per kind of refusal, each with all six)
    status: int,
    message: str,
    param: str | None,
    code: str | None,
    headers: Headers,
    grpc_code: grpc.StatusCode,
) -> ErrorAnswer:
    body: dict[str, object] = {
        "error": {
            "message": message,
            "type": _ERROR_TYPE.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }
    return ErrorAnswer(status, body, headers, grpc_code)
