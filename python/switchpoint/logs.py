"""Structured logs: JSON lines on stderr, secrets redacted, one info line per request.

The sidecar runs beside an application whose log pipeline expects one JSON object per line, so the
default format is JSON lines; `text` is for people reading a terminal. Redaction happens in a
handler filter rather than at call sites because a key can reach a log line by many roads (an
exception message quoting a header, a repr of a config object); the filter sees them all.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

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


class RedactingFilter(logging.Filter):
    """Replaces every configured secret with "[redacted]" in the message, its args, the extra
    fields and the exception text. It rewrites the record itself, so every handler after it (and
    anything else that sees the record later) gets the redacted form."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first: a secret containing another must be replaced whole. Empty values would
        # match everywhere, so they are never secrets.
        self._secrets = sorted({s for s in secrets if s.strip()}, key=len, reverse=True)
        self._exc_formatter = logging.Formatter()

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
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
        if not self._secrets:
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


def request_log(
    logger: logging.Logger,
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
    prompt: Sequence[tuple[str, str]] | None = None,
    log_prompts: bool = False,
) -> None:
    """The one info line a request leaves behind. The prompt is the caller's data, not ours: it
    is logged only when the operator opted in; otherwise only its size is."""
    if not logger.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {
        "request_id": request_id,
        "rpc": rpc,
        "tenant": tenant,
        "stage": stage,
        "model": model,
        "outcome": outcome,
        "latency_ms": round(latency_ms, 3),
        "cost_usd": cost_usd,
        "attempts": attempts,
        "cache": cache,
    }
    if prompt is not None:
        if log_prompts:
            fields["prompt"] = [{"role": role, "content": content} for role, content in prompt]
        else:
            fields["prompt_chars"] = sum(len(content) for _, content in prompt)
    logger.info("%s %s %s %.1fms", rpc, outcome, model or "-", latency_ms, extra=fields)
