"""What a loopback provider does with its next requests: a queue of scripted steps.

Tests push steps; each request the server receives pops the next one (or takes the default,
`ok()` unless changed). Both loopback servers read the same steps and render each in their own
provider's wire format, so one test can be written for either provider.

    server.script.push(error(429, retry_after=2), ok("fine"))
    server.script.default = error(503)        # every request from now on fails
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Ok:
    """Answer normally: `text`, or the deterministic echo answer when None."""

    text: str | None = None


@dataclass(frozen=True, slots=True)
class Error:
    """Answer `status` with `body` (None: the provider's own error body for that status)."""

    status: int
    body: object = None
    retry_after: str | float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hang:
    """Stay silent for `seconds`: before the response, or mid-stream after `after_chunks`."""

    seconds: float
    after_chunks: int | None = None


@dataclass(frozen=True, slots=True)
class Reset:
    """Abort the TCP connection (RST) without sending any response."""


@dataclass(frozen=True, slots=True)
class Garbage:
    """A 200 whose body is not the protocol: non-JSON, or an event stream of non-JSON data."""


@dataclass(frozen=True, slots=True)
class StreamCut:
    """Stop after `after_chunks` text chunks without the end marker ([DONE] / message_stop).

    With `abort`, the connection is reset at that point; otherwise the body ends cleanly, as a
    proxy that times out upstream would end it. A non-streamed request gets half its body.
    """

    after_chunks: int
    abort: bool = False


@dataclass(frozen=True, slots=True)
class StreamError:
    """Stream `after_chunks` text chunks, then the provider's in-stream error event for `status`."""

    after_chunks: int
    status: int = 529
    body: object = None


Step = Ok | Error | Hang | Reset | Garbage | StreamCut | StreamError


def ok(text: str | None = None) -> Ok:
    return Ok(text)


def error(
    status: int,
    body: object = None,
    retry_after: str | float | None = None,
    headers: Mapping[str, str] | None = None,
) -> Error:
    return Error(status, body, retry_after, dict(headers or {}))


def hang(seconds: float, after_chunks: int | None = None) -> Hang:
    return Hang(seconds, after_chunks)


def reset() -> Reset:
    return Reset()


def garbage() -> Garbage:
    return Garbage()


def stream_cut(after_chunks: int, *, abort: bool = False) -> StreamCut:
    return StreamCut(after_chunks, abort)


def stream_error(after_chunks: int, status: int = 529, body: object = None) -> StreamError:
    return StreamError(after_chunks, status, body)


class Script:
    """The step queue; safe to push from the test thread while the server thread pops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._steps: deque[Step] = deque()
        self._default: Step = Ok()

    @property
    def default(self) -> Step:
        """The step taken when the queue is empty."""
        with self._lock:
            return self._default

    @default.setter
    def default(self, step: Step) -> None:
        with self._lock:
            self._default = step

    def push(self, *steps: Step) -> None:
        with self._lock:
            self._steps.extend(steps)

    def next_step(self) -> Step:
        with self._lock:
            return self._steps.popleft() if self._steps else self._default

    def clear(self) -> None:
        """Drop pending steps and restore the `ok()` default."""
        with self._lock:
            self._steps.clear()
            self._default = Ok()

    def __len__(self) -> int:
        """Steps still pending (the default is not counted)."""
        with self._lock:
            return len(self._steps)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as a loopback server received it."""

    path: str
    headers: Mapping[str, str]  # lower-cased names
    body: object  # parsed JSON, or None when the body was not JSON
    client_port: int  # the client's TCP port: equal ports mean one reused connection


class RequestLog:
    """Every request a server received, in order (with `keep_last`, only the latest that many:
    a long run's memory then stays flat); read from the test thread."""

    def __init__(self, keep_last: int | None = None) -> None:
        self._lock = threading.Lock()
        self._requests: deque[RecordedRequest] = deque(maxlen=keep_last)
        self.received = 0  # every request, kept or not

    def append(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)
            self.received += 1

    def snapshot(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)


def answer_tokens(text: str) -> list[str]:
    """`text` split into word tokens that join back to it exactly (one stream chunk each)."""
    return re.findall(r"\s*\S+\s*", text)


def echo_answer(model: str, last_user_text: str) -> str:
    """The deterministic answer of an `ok()` step: the model name, then the user's last words."""
    return f"[{model}] {last_user_text}".strip()


def word_count(texts: list[str]) -> int:
    """The servers' input token count: words across all messages."""
    return sum(len(text.split()) for text in texts)
