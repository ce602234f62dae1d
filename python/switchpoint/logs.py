"""Structured logs: JSON lines on stderr, secrets redacted, one info line per request.

The sidecar runs beside an application whose log pipeline expects one JSON object per line, so the
default format is JSON lines; `text` is for people reading a terminal. Redaction happens in a
handler filter rather than at call sites because a key can reach a log line by many roads (an
exception message quoting a header, a repr of a config object); the filter sees them all.
"""

from __future__ import annotations

import json
import logging
import re
import sys
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
JSON_LINE = json.JSONEncoder(ensure_ascii=False, default=str)


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

    @property
    def active(self) -> bool:
        """There is a secret to redact. Without one a bearer credential cannot reach a log
        either (keys or the admin token are configured secrets), so nothing is rewritten."""
        return bool(self._current())

    def finds_in(self, texts: Sequence[str], prompt: object) -> bool:
        """Whether `redact` could change any of `texts` or a string inside `prompt` (a list of
        (role, content) pairs or a count): one scan of them together, for the common case where
        none holds a secret or a bearer credential."""
        if isinstance(prompt, list | tuple):
            texts = [*texts, *(part for pair in prompt for part in pair if isinstance(part, str))]
        joined = "\x00".join(texts)
        if any(secret in joined for secret in self._current()):
            return True
        return "earer" in joined or "EARER" in joined

    def redact_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, bool | int | float) or value is None:
            return value
        if isinstance(value, dict):
            return {self.redact_value(k): self.redact_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact_value(v) for v in value]
        # Any other object: its string form is what a formatter would print, so redact that.
        text = str(value)
        redacted = self.redact(text)
        return value if redacted == text else redacted

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.active:
            return True
        # Render the message with its args first: a secret split across msg and an arg, or hidden
        # in an arg's repr, is only visible in the rendered text.
        record.msg = self.redact(record.getMessage())
        record.args = ()
        for key, value in list(vars(record).items()):
            if key not in _RECORD_ATTRS:
                setattr(record, key, self.redact_value(value))
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


def json_timestamp(created: float) -> str:
    """A record's `created` as JSON lines carry it: ISO 8601 in UTC, to the millisecond."""
    return (
        datetime.fromtimestamp(created, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def json_line(fixed: dict[str, Any], extra: dict[str, Any]) -> str:
    """The JSON line of the fixed fields (ts, level, logger, msg and the exception's) and the
    extra ones, which never overwrite a fixed field a log pipeline keys on."""
    line = dict(fixed)
    for key, value in extra.items():
        line.setdefault(key, value)
    return JSON_LINE.encode(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO 8601, UTC), level, logger, msg, then every extra field."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": json_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json_line(line, extra_fields(record))


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
    handler = switchpoint_handler(json=json, secrets=secrets, stream=stream)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


def switchpoint_handler(
    *, json: bool = True, secrets: Iterable[str] = (), stream: TextIO | None = None
) -> logging.StreamHandler[TextIO]:
    """The handler configure_logging installs: JSON (or text) lines on `stream`, redacted."""
    handler = _SwitchpointHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    handler.addFilter(RedactingFilter(secrets))
    return handler


class DirectJson(NamedTuple):
    """Where a logger's INFO lines can be written without the logging machinery: the stream of
    the one handler they would reach, and the redaction that handler applies."""

    handler: logging.StreamHandler[TextIO]
    redaction: RedactingFilter


def direct_json(logger: logging.Logger) -> DirectJson | None:
    """`logger`'s INFO records reach exactly one handler, a switchpoint JSON handler whose only
    filter is its redaction, and no logger filter on the way: then a line can be encoded and
    written straight to its stream, exactly as the handler would. None in every other case (a
    second handler, a test's or an application's; the text format; a filter), where records go
    through logging as usual."""
    found: logging.StreamHandler[TextIO] | None = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if found is not None or type(handler) is not _SwitchpointHandler:
                return None
            found = handler
        if not current.propagate:
            break
        current = current.parent
    if found is None or found.level > logging.INFO or type(found.formatter) is not JsonFormatter:
        return None
    filters = found.filters
    if len(filters) != 1 or type(filters[0]) is not RedactingFilter:
        return None
    return DirectJson(found, filters[0])


def unconfigure_logging() -> None:
    """Removes the handler configure_logging installed, if any."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _SwitchpointHandler)]:
        root.removeHandler(old)
        old.close()
