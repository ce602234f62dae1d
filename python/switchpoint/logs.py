"""Structured logs: JSON lines on stderr, secrets redacted, one info line per request.

The sidecar runs beside an application whose log pipeline expects one JSON object per line, so the
default format is JSON lines; `text` is for people reading a terminal. Redaction happens in a
handler filter rather than at call sites because a key can reach a log line by many roads (an
exception message quoting a header, a repr of a config object); the filter sees them all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, TextIO

REDACTED = "[redacted]"

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a
# field of its own. Taken from a blank record so new Python versions' attributes are covered too.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


# One encoder for every line: json.dumps with options builds a new encoder per call.
# default=str: an odd extra value (a Path, an enum) must not cost us the whole line.
_JSON_LINE = json.JSONEncoder(ensure_ascii=False, default=str)


class _SwitchpointHandler(logging.StreamHandler[TextIO]):
    """Marks the handler configure_logging installed, so a second call replaces it."""


class SecretBook:
    """The secrets every `RedactingFilter` redacts besides its own: each running sidecar publishes
    those of its config (`switchpoint.security.secrets`) at start and at every reload, so keys of
    providers a reload added are covered too, and withdraws them when it stops. A value published
    once stays for the publisher's life: a key a reload rotated out may still appear in the lines
    of calls that ran with it."""

    def __init__(self) -> None:
        self._by_owner: dict[object, frozenset[str]] = {}
        # Longest first: a secret containing another must be replaced whole. Replaced, never
        # mutated, so a filter can tell by identity that it changed.
        self.values: tuple[str, ...] = ()

    def publish(self, owner: object, secrets: Iterable[str]) -> None:
        # Empty values would match everywhere, so they are never secrets.
        added = frozenset(s for s in secrets if s.strip())
        self._by_owner[owner] = self._by_owner.get(owner, frozenset()) | added
        self._refresh()

    def withdraw(self, owner: object) -> None:
        if self._by_owner.pop(owner, None) is not None:
            self._refresh()

    def _refresh(self) -> None:
        every = frozenset().union(*self._by_owner.values())
        self.values = tuple(sorted(every, key=len, reverse=True))


# Process-wide, like the root logger whose handler reads it.
SECRETS = SecretBook()

# A bearer credential (a tenant API key, the admin token) quoted in any text: the sidecar holds
# only the hashes of tenant keys, so the keys themselves are recognised by their form.
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\",]+")


class RedactingFilter(logging.Filter):
    """Replaces every secret (its own and those of `SECRETS`) and any bearer credential with
    "[redacted]" in the message, its args, the extra fields and the exception text. It rewrites
    the record itself, so every handler after it (and anything else that sees the record later)
    gets the redacted form."""

    def __init__(self, secrets: Iterable[str], book: SecretBook = SECRETS) -> None:
        super().__init__()
        self._own = frozenset(s for s in secrets if s.strip())
        self._book = book
        self._book_seen: tuple[str, ...] | None = None
        self._secrets: tuple[str, ...] = ()
        self._exc_formatter = logging.Formatter()

    def _current(self) -> tuple[str, ...]:
        published = self._book.values
        if published is not self._book_seen:
            self._book_seen = published
            merged = self._own.union(published)
            self._secrets = tuple(sorted(merged, key=len, reverse=True))
        return self._secrets

    def redact(self, text: str) -> str:
        for secret in self._current():
            if secret in text:
                text = text.replace(secret, REDACTED)
        if "earer" in text or "EARER" in text:
            text = _BEARER.sub(rf"\g<1>{REDACTED}", text)
        return text

    def _redact_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, bool | int | float) or value is None:
            return value
        if isinstance(value, dict):
            return {self._redact_value(k): self._redact_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._redact_value(v) for v in value]
        # Any other object: its string form is what a formatter would print, so redact that.
        text = str(value)
        redacted = self.redact(text)
        return value if redacted == text else redacted

    def filter(self, record: logging.LogRecord) -> bool:
        # Without a configured secret there is nothing to redact (a bearer credential reaches a
        # log only where keys or the admin token are configured, which makes secrets).
        if not self._current():
            return True
        # Render the message with its args first: a secret split across msg and an arg, or hidden
        # in an arg's repr, is only visible in the rendered text.
        record.msg = self.redact(record.getMessage())
        record.args = ()
        for key, value in list(vars(record).items()):
            if key not in _RECORD_ATTRS:
                setattr(record, key, self._redact_value(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exc_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a call site passed with `extra=`."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO 8601, UTC), level, logger, msg, then every extra field."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            # An extra field never overwrites the four fixed ones a log pipeline keys on.
            line.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return _JSON_LINE.encode(line)


class TextFormatter(logging.Formatter):
    """The classic line, with the extra fields appended as key=value so nothing is lost."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = extra_fields(record)
        if not fields:
            return text
        pairs = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in fields.items())
        head, sep, tail = text.partition("\n")
        return f"{head} {pairs}{sep}{tail}"


def configure_logging(
    level: str,
    *,
    json: bool = True,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Installs switchpoint's handler on the root logger, replacing one a previous call installed
    (so calling again, e.g. once the config names the secrets, never duplicates lines). Handlers
    others installed (pytest's capture, an embedding application's) are left alone."""
    root = logging.getLogger()
    unconfigure_logging()
    # Neither format prints the caller's file and line, thread or process, and looking up the
    # caller walks the stack on every record: a quarter of a request log line's cost. Turned off
    # as the logging HOWTO's "Optimization" section describes.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = _SwitchpointHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    handler.addFilter(RedactingFilter(secrets))
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


def unconfigure_logging() -> None:
    """Removes the handler configure_logging installed, if any."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _SwitchpointHandler)]:
        root.removeHandler(old)
        old.close()


# How long a request line may wait before it is handed to the handlers (see RequestLog), and how
# many lines may wait at most.
FLUSH_AFTER_S = 0.1
MAX_PENDING = 512
_REQUEST_MESSAGE = "%s %s %s %.1fms"


class _Line(NamedTuple):
    ended: float  # time.time() when the request ended: the record's `created`
    request_id: str
    rpc: str
    tenant: str
    stage: str
    model: str
    outcome: str
    latency_ms: float
    cost_usd: float
    attempts: int
    cache: str
    # The (role, content) pairs, or only their length in characters where that is all there is.
    prompt: Sequence[tuple[str, str]] | int | None


class RequestLog:
    """The one info line every request leaves behind, handed to `logging` in batches.

    Through the logging machinery one line costs several times more CPU at the end of each call
    under load, where every call finds it cold, than in a loop: as much as the rest of a Route
    call (docs/benchmarks.md). So
    `add` only queues the line's values, and `flush` turns the queue into records at most
    `flush_after_s` later (or once `MAX_PENDING` wait, or when the sidecar stops), where the
    machinery runs warm. Each record keeps the time its request ended as `created`, so `ts` is
    unchanged; what moves is when the line reaches the handlers. `flush_after_s` 0 (or no running
    event loop) writes each line at once.

    The prompt is the caller's data, not ours: it is logged only when the operator opted in
    (`log_prompts`); otherwise only its size is."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        log_prompts: bool = False,
        flush_after_s: float = FLUSH_AFTER_S,
    ) -> None:
        self._logger = logger
        self._log_prompts = log_prompts
        self._flush_after_s = flush_after_s
        self._pending: list[_Line] = []
        self._timer: asyncio.TimerHandle | None = None

    def configure(self, *, log_prompts: bool, flush_after_s: float) -> None:
        """New settings from a config reload. The lines already waiting are written first, under
        the settings their requests ran with."""
        self.flush()
        self._log_prompts = log_prompts
        self._flush_after_s = flush_after_s

    @property
    def logs_prompts(self) -> bool:
        return self._log_prompts

    @property
    def enabled(self) -> bool:
        """Lines are written at all (the logger passes INFO)."""
        return self._logger.isEnabledFor(logging.INFO)

    def add(
        self,
        *,
        request_id: str,
        rpc: str,
        tenant: str,
        stage: str,
        model: str,
        outcome: str,
        latency_ms: float,
        cost_usd: float,
        attempts: int,
        cache: str = "",
        prompt: Sequence[tuple[str, str]] | int | None = None,
    ) -> None:
        """Queue the line; `prompt` may be its length in characters alone when prompts are not
        logged (`logs_prompts`)."""
        if not self._logger.isEnabledFor(logging.INFO):
            return
        pending = self._pending
        pending.append(
            _Line(
                time.time(),
                request_id,
                rpc,
                tenant,
                stage,
                model,
                outcome,
                latency_ms,
                cost_usd,
                attempts,
                cache,
                prompt,
            )
        )
        if len(pending) >= MAX_PENDING or self._flush_after_s <= 0:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
            else:
                self._timer = loop.call_later(self._flush_after_s, self.flush)

    def flush(self) -> None:
        """Hand every waiting line to the handlers, oldest first."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        for line in pending:
            self._emit(line)

    def _emit(self, line: _Line) -> None:
        fields: dict[str, Any] = {
            "request_id": line.request_id,
            "rpc": line.rpc,
            "tenant": line.tenant,
            "stage": line.stage,
            "model": line.model,
            "outcome": line.outcome,
            "latency_ms": round(line.latency_ms, 3),
            "cost_usd": line.cost_usd,
            "attempts": line.attempts,
            "cache": line.cache,
        }
        if isinstance(line.prompt, int):
            fields["prompt_chars"] = line.prompt
        elif line.prompt is not None:
            if self._log_prompts:
                fields["prompt"] = [
                    {"role": role, "content": content} for role, content in line.prompt
                ]
            else:
                fields["prompt_chars"] = sum(len(content) for _, content in line.prompt)
        args = (line.rpc, line.outcome, line.model or "-", line.latency_ms)
        logger = self._logger
        record = logger.makeRecord(
            logger.name, logging.INFO, "", 0, _REQUEST_MESSAGE, args, None, extra=fields
        )
        # Back to when the request ended, as LogRecord.__init__ derives these from its clock.
        record.relativeCreated -= (record.created - line.ended) * 1000
        record.created = line.ended
        record.msecs = int((line.ended - int(line.ended)) * 1000) + 0.0
        logger.handle(record)
