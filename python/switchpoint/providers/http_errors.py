"""The one place that turns a failed provider call into a `ProviderError` with its `ErrorClass`.

Every failure an adapter can meet passes through `FailureClassifier`: an HTTP status with the
provider's error body, a transport exception from httpx, an error event inside a 200 stream, and a
200 whose body is not what the protocol promises. Retry and fallback decisions downstream read only
the class, so this module is where "what went wrong" is decided, for every provider alike.

Messages are for people reading logs: they carry the provider's own words, cut to a few hundred
characters, and are scrubbed of the API key (also of masked forms like `sk-abc...wxyz`, and of
secret-looking extra headers). Request headers are never part of a message.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import MappingProxyType

import httpx

from switchpoint.errors import ErrorClass, ProviderError

MESSAGE_LIMIT = 300
# Scrub this much of a body before cutting it to MESSAGE_LIMIT, so a key that straddles the cut is
# still caught whole: whatever survives the cut was scrubbed.
_SCRUB_SCAN_LIMIT = 4_000
# Any run of this many characters taken from a secret counts as leaking it: providers echo keys
# masked, keeping a prefix and the last characters (`sk-proj-abc***...***wxyz`).
_SECRET_FRAGMENT = 8
_REDACTED = "[redacted]"
# Extra headers whose name contains one of these carry credentials (Azure `api-key`, tokens, ...).
_SECRET_HEADER_WORDS = ("auth", "key", "token", "secret")

_STATUS_CLASSES: Mapping[int, ErrorClass] = MappingProxyType(
    {
        401: ErrorClass.AUTH,
        403: ErrorClass.AUTH,
        404: ErrorClass.NOT_FOUND,
        408: ErrorClass.TIMEOUT,
        429: ErrorClass.RATE_LIMITED,
        529: ErrorClass.OVERLOADED,  # Anthropic's "overloaded"
    }
)

# Error `type`/`code` labels that decide the class whatever the HTTP status says.
_DECISIVE_LABELS: Mapping[str, ErrorClass] = MappingProxyType(
    {
        "context_length_exceeded": ErrorClass.CONTEXT_WINDOW,  # OpenAI
        "exceed_context_size_error": ErrorClass.CONTEXT_WINDOW,  # llama.cpp server
        "content_filter": ErrorClass.CONTENT_POLICY,  # Azure OpenAI
        "content_policy_violation": ErrorClass.CONTENT_POLICY,  # OpenAI
        "overloaded_error": ErrorClass.OVERLOADED,  # Anthropic, also mid-stream
        # OpenAI answers 429 when the account is out of credit. Retrying the same key cannot
        # help, so this is an account problem like a bad key, not a rate limit to wait out.
        "insufficient_quota": ErrorClass.AUTH,
    }
)

# Labels that classify an error that came without a status: an error event inside a 200 stream.
_LABEL_CLASSES: Mapping[str, ErrorClass] = MappingProxyType(
    {
        "rate_limit_error": ErrorClass.RATE_LIMITED,
        "rate_limit_exceeded": ErrorClass.RATE_LIMITED,
        "api_error": ErrorClass.SERVER_ERROR,
        "server_error": ErrorClass.SERVER_ERROR,
        "authentication_error": ErrorClass.AUTH,
        "permission_error": ErrorClass.AUTH,
        "invalid_api_key": ErrorClass.AUTH,
        "not_found_error": ErrorClass.NOT_FOUND,
        "model_not_found": ErrorClass.NOT_FOUND,
        "invalid_request_error": ErrorClass.INVALID_REQUEST,
        "request_too_large": ErrorClass.INVALID_REQUEST,
        "timeout_error": ErrorClass.TIMEOUT,
    }
)

# How servers word "the prompt does not fit" when they give no decisive label (Anthropic, vLLM,
# llama.cpp, and proxies in front of OpenAI).
_CONTEXT_WINDOW_PHRASES = (
    "context length",  # OpenAI / vLLM: "maximum context length is 8192 tokens"
    "context window",
    "context limit",  # Anthropic: "input length and `max_tokens` exceed context limit"
    "context size",  # llama.cpp: "exceeds the available context size"
    "prompt is too long",  # Anthropic
)


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    """What a provider's error body says, in whichever of the common shapes it came."""

    message: str
    labels: frozenset[str]  # the error's `type` and `code`, lower-cased
    status: int | None  # a numeric `code`, as vLLM and llama.cpp send inside stream errors


def secrets_to_scrub(api_key: str | None, headers: Mapping[str, str]) -> tuple[str, ...]:
    """The API key and the values of credential-looking extra headers (Bearer prefix dropped)."""
    found = [api_key] if api_key else []
    for name, value in headers.items():
        if any(word in name.lower() for word in _SECRET_HEADER_WORDS):
            found.append(value)
            found.append(value.removeprefix("Bearer ").removeprefix("bearer "))
    return tuple(dict.fromkeys(secret for secret in found if secret))


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret, and every fragment of one, replaced by `[redacted]`."""
    fragments: set[str] = set()
    for secret in secrets:
        text = text.replace(secret, _REDACTED)
        n = len(secret) - _SECRET_FRAGMENT + 1
        fragments.update(secret[i : i + _SECRET_FRAGMENT] for i in range(max(n, 0)))
    if not fragments:
        return text
    leaked = [False] * len(text)
    for i in range(len(text) - _SECRET_FRAGMENT + 1):
        if text[i : i + _SECRET_FRAGMENT] in fragments:
            leaked[i : i + _SECRET_FRAGMENT] = [True] * _SECRET_FRAGMENT
    pieces: list[str] = []
    for i, char in enumerate(text):
        if not leaked[i]:
            pieces.append(char)
        elif i == 0 or not leaked[i - 1]:
            pieces.append(_REDACTED)
    return "".join(pieces)


def parse_retry_after(headers: httpx.Headers, now: datetime | None = None) -> float | None:
    """Seconds to wait, from `retry-after-ms` (OpenAI) or `Retry-After` (seconds or HTTP-date)."""
    millis = _non_negative_float(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _non_negative_float(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # RFC 9110 dates are GMT; an offset-less one means it too
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _non_negative_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def parse_error_detail(payload: object) -> ErrorDetail | None:
    """Read OpenAI `{"error": {...}}`, Anthropic `{"type": "error", "error": {...}}`, vLLM
    `{"object": "error", "message": ...}`, Ollama `{"error": "..."}` and `{"detail": "..."}`."""
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, str):
        return ErrorDetail(error, frozenset(), None)
    source: dict[str, object]
    if isinstance(error, dict):
        source = error
    elif payload.get("object") == "error" or isinstance(payload.get("message"), str):
        source = payload
    elif isinstance(payload.get("detail"), str):
        return ErrorDetail(str(payload["detail"]), frozenset(), None)
    else:
        return None
    message = source.get("message")
    kind, code = source.get("type"), source.get("code")
    labels = frozenset(label.lower() for label in (kind, code) if isinstance(label, str) and label)
    numeric = code if isinstance(code, int) and not isinstance(code, bool) else None
    status = numeric if numeric is not None and 100 <= numeric <= 599 else None
    text = message if isinstance(message, str) else json.dumps(source)[:_SCRUB_SCAN_LIMIT]
    return ErrorDetail(text, labels, status)


def classify(status: int | None, detail: ErrorDetail | None) -> ErrorClass:
    """The class of a failure from its HTTP status (None inside a 200 stream) and error body."""
    labels = detail.labels if detail else frozenset()
    if status is None and detail is not None:
        status = detail.status
    message = detail.message.lower() if detail else ""
    is_client_error = status is None or 400 <= status < 500
    if is_client_error and any(phrase in message for phrase in _CONTEXT_WINDOW_PHRASES):
        return ErrorClass.CONTEXT_WINDOW
    for label in sorted(labels):
        if label in _DECISIVE_LABELS:
            return _DECISIVE_LABELS[label]
    if status is not None:
        return _class_for_status(status)
    for label in sorted(labels):
        if label in _LABEL_CLASSES:
            return _LABEL_CLASSES[label]
    # An error the stream reported without saying what kind: the server failed mid-answer.
    return ErrorClass.SERVER_ERROR


def _class_for_status(status: int) -> ErrorClass:
    if status in _STATUS_CLASSES:
        return _STATUS_CLASSES[status]
    if 400 <= status < 500:
        return ErrorClass.INVALID_REQUEST
    if 500 <= status < 600:
        return ErrorClass.SERVER_ERROR
    # 1xx/3xx (redirects are not followed): nothing an adapter can read an answer from.
    return ErrorClass.BAD_RESPONSE


def _transport_class(exc: httpx.HTTPError) -> ErrorClass:
    if isinstance(exc, httpx.TimeoutException):  # connect, read, write and pool timeouts
        return ErrorClass.TIMEOUT
    if isinstance(exc, httpx.DecodingError | httpx.TooManyRedirects):
        return ErrorClass.BAD_RESPONSE
    if isinstance(exc, httpx.LocalProtocolError):
        # We could not even send the request (e.g. a header value with a newline): a config error.
        return ErrorClass.INVALID_REQUEST
    # ConnectError, and a connection that broke after it was made: reset (ReadError/WriteError),
    # closed without or in the middle of a response (RemoteProtocolError), proxy failures. To the
    # caller these are one event, "the provider could not be reached", with the same retry and
    # fallback, so they share CONNECT.
    return ErrorClass.CONNECT


class FailureClassifier:
    """Builds the `ProviderError`s of one adapter: its provider name, its secrets to scrub."""

    def __init__(self, provider: str, secrets: Iterable[str]) -> None:
        self.provider = provider
        self._secrets = tuple(secrets)

    def error(
        self,
        error_class: ErrorClass,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> ProviderError:
        return ProviderError(
            self.provider,
            error_class,
            self.clean(message),
            status=status,
            retry_after_s=retry_after_s,
        )

    def clean(self, text: str) -> str:
        """One line, scrubbed of secrets, at most MESSAGE_LIMIT characters."""
        text = scrub(" ".join(text[:_SCRUB_SCAN_LIMIT].split()), self._secrets)
        if len(text) > MESSAGE_LIMIT:
            text = text[: MESSAGE_LIMIT - 3] + "..."
        return text or "(no message)"

    def bad_response(self, what: str) -> ProviderError:
        """A 200 whose body breaks the protocol; `what` says how."""
        return self.error(ErrorClass.BAD_RESPONSE, what)

    def from_status(self, status: int, headers: httpx.Headers, body: bytes) -> ProviderError:
        """A non-2xx answer, classified by its status and the provider's error body."""
        detail = parse_error_detail(_json_or_none(body))
        if detail is not None:
            message = _labelled(detail)
        else:
            text = body[:_SCRUB_SCAN_LIMIT].decode("utf-8", errors="replace")
            message = text.strip() or "empty error body"
        return self.error(
            classify(status, detail),
            message,
            status=status,
            retry_after_s=parse_retry_after(headers),
        )

    def from_error_payload(self, payload: object) -> ProviderError:
        """An error the provider reported inside a 200: a stream error event, or an error body."""
        detail = parse_error_detail(payload)
        if detail is None:
            return self.bad_response(f"unrecognised error payload: {json.dumps(payload)}")
        return self.error(classify(None, detail), _labelled(detail), status=detail.status)

    def from_transport(self, exc: httpx.HTTPError) -> ProviderError:
        return self.error(_transport_class(exc), _describe(exc))

    @contextmanager
    def translating_transport_errors(self) -> Iterator[None]:
        """Inside this block every httpx failure leaves as the matching `ProviderError`."""
        try:
            yield
        except httpx.HTTPError as exc:
            raise self.from_transport(exc) from None

    async def raise_for_status(self, response: httpx.Response) -> None:
        """Raise the classified error of a non-2xx response, reading its body first if streamed.

        Streaming callers call this before touching the body, so an error answer is never parsed
        as events.
        """
        if response.is_success:
            return
        with self.translating_transport_errors():
            body = await response.aread()
        raise self.from_status(response.status_code, response.headers, body)

    async def raise_unless_event_stream(self, response: httpx.Response) -> None:
        """For streaming calls: a non-2xx, or a JSON answer where events were asked for, fails.

        Some servers report errors as a 200 JSON body, and some ignore `stream: true`; neither
        may be read as an (empty) event stream that ended "successfully".
        """
        await self.raise_for_status(response)
        content_type = response.headers.get("content-type", "")
        if not content_type.lower().startswith("application/json"):
            return
        with self.translating_transport_errors():
            body = await response.aread()
        payload = _json_or_none(body)
        if parse_error_detail(payload) is not None:
            raise self.from_error_payload(payload)
        raise self.bad_response("expected an event stream, got a JSON body")

    def json_object(self, body: bytes | str, what: str = "response") -> dict[str, object]:
        """Parse a JSON object, or fail with BAD_RESPONSE; an error object is raised as such."""
        try:
            payload: object = json.loads(body)
        except (ValueError, RecursionError):
            snippet = body[:80] if isinstance(body, str) else body[:80].decode(errors="replace")
            raise self.bad_response(f"{what} is not JSON: {snippet!r}") from None
        if not isinstance(payload, dict):
            raise self.bad_response(f"{what} is not a JSON object")
        if payload.get("error") is not None or payload.get("type") == "error":
            raise self.from_error_payload(payload)
        return payload

    def encode_json(self, body: Mapping[str, object]) -> bytes:
        """The request body as JSON; unencodable values (NaN, objects in extra_body) fail here."""
        try:
            return json.dumps(body, ensure_ascii=False, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise self.error(
                ErrorClass.INVALID_REQUEST, f"request body is not JSON-encodable: {exc}"
            ) from None

    # Reading fields of a parsed 200 payload: a missing or mistyped field is a BAD_RESPONSE that
    # names the field's path, e.g. "missing choices[0].message.content".

    def value(self, payload: object, *path: str | int) -> object:
        """The value at `path` (None when it is JSON null); absent -> BAD_RESPONSE."""
        node = payload
        for depth, key in enumerate(path):
            present, node = _step(node, key)
            if not present:
                raise self.bad_response(f"missing {_path_name(path[: depth + 1])}")
        return node

    def text(self, payload: object, *path: str | int, null_as: str | None = None) -> str:
        """A string field; JSON null becomes `null_as` when given, else fails."""
        found = self.value(payload, *path)
        if found is None and null_as is not None:
            return null_as
        if not isinstance(found, str):
            raise self.bad_response(f"{_path_name(path)} is not a string: {_kind(found)}")
        return found

    def optional_text(self, payload: object, *path: str | int) -> str | None:
        """A string field that may be absent or null."""
        if _absent_or_null(payload, path):
            return None
        return self.text(payload, *path)

    def count(self, payload: object, *path: str | int) -> int:
        """A non-negative integer field, such as a token count."""
        found = self.value(payload, *path)
        if not isinstance(found, int) or isinstance(found, bool) or found < 0:
            raise self.bad_response(f"{_path_name(path)} is not a token count: {_kind(found)}")
        return found

    def items(self, payload: object, *path: str | int) -> list[object]:
        """A list field."""
        found = self.value(payload, *path)
        if not isinstance(found, list):
            raise self.bad_response(f"{_path_name(path)} is not a list: {_kind(found)}")
        return found

    def has(self, payload: object, *path: str | int) -> bool:
        """Whether `path` holds a non-null value."""
        return not _absent_or_null(payload, path)


def _step(node: object, key: str | int) -> tuple[bool, object]:
    """(present, child) for one step of a path into parsed JSON."""
    if isinstance(key, int):
        if isinstance(node, list) and 0 <= key < len(node):
            return True, node[key]
    elif isinstance(node, dict) and key in node:
        return True, node[key]
    return False, None


def _absent_or_null(payload: object, path: tuple[str | int, ...]) -> bool:
    node = payload
    for key in path:
        present, node = _step(node, key)
        if not present:
            return True
    return node is None


def _path_name(path: tuple[str | int, ...]) -> str:
    name = ""
    for key in path:
        name += f"[{key}]" if isinstance(key, int) else (f".{key}" if name else key)
    return name


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _describe(exc: BaseException) -> str:
    """`ReadError: [Errno 104] Connection reset by peer`: the exception's name, and the first
    non-empty message down its cause chain (httpx often re-raises with an empty message)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        description = str(cause).strip()
        if description:
            return f"{type(exc).__name__}: {description}"
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


def _json_or_none(body: bytes) -> object:
    try:
        parsed: object = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return parsed


def _labelled(detail: ErrorDetail) -> str:
    """The provider's message behind its error labels, e.g. `overloaded_error: Overloaded`."""
    labels = "/".join(sorted(detail.labels))
    return f"{labels}: {detail.message}" if labels else detail.message
