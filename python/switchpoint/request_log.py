"""The one info line every request leaves behind: queued by the call, written in batches.

Through the logging machinery one line cost as much CPU as the rest of a Route call under load
(a LogRecord, the handler's locks, the redacting filter's walk over the record, the formatter's
walk over it again; docs/benchmarks.md, "Request lines"), and the calls waiting behind a batch paid
for it in their latency. So `add` only queues the line's values; `flush` writes the queue at most
`flush_after_s` later (or once `MAX_PENDING` wait, or when the sidecar stops). Where the lines
would reach only switchpoint's own JSON handler (`logs.direct_json`: the sidecar's default), a
batch is encoded here, redacted as that handler's filter would, with the same encoder and field
order, and written to its stream in one write; anywhere else (the text format, a test's or an
application's handler) each line goes through logging as a record, with the time its request
ended as `created`.

The prompt is the caller's data, not ours: it is logged only when the operator opted in
(`log_prompts`); otherwise only its size is.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from switchpoint.logs import JSON_LINE, DirectJson, direct_json, json_timestamp

# How long a request line may wait before it is written, and how many lines may wait at most.
FLUSH_AFTER_S = 0.1
MAX_PENDING = 512
_REQUEST_MESSAGE = "%s %s %s %.1fms"
_INFO = logging.getLevelName(logging.INFO)


# JSON's own string encoder (C), as the JSON lines' encoder uses it with ensure_ascii off.
_string: Callable[[str], str] = json.encoder.encode_basestring


def _json_fields(fields: dict[str, Any]) -> str | None:
    """`, "key": value` for each field, as `logs.JSON_LINE` encodes it; None for a value it
    would encode some other way (a float that is not finite, an odd type)."""
    parts = []
    for key, value in fields.items():
        kind = type(value)
        if kind is str:
            text = _string(value)
        elif kind is int:
            text = int.__repr__(value)
        elif kind is float and math.isfinite(value):
            text = float.__repr__(value)
        elif kind is list:
            text = JSON_LINE.encode(value)
        else:
            return None
        parts.append(f", {_string(key)}: {text}")
    return "".join(parts)


class _Stamps:
    """`logs.json_timestamp`, with the date and time to the second made once per second: lines
    come in bursts from the same second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def stamp(self, created: float) -> str:
        whole = math.floor(created)
        # As datetime does: microseconds rounded half to even, then cut to milliseconds.
        micros = round((created - whole) * 1e6)
        if micros >= 1_000_000:
            return json_timestamp(created)
        if whole != self._second:
            self._second = whole
            self._prefix = json_timestamp(whole)[:-5]  # "YYYY-MM-DDTHH:MM:SS"
        return f"{self._prefix}.{micros // 1000:03d}Z"


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
    # Below 1 where routing.exploration may have chosen another model (see route/explore.rs).
    choice_probability: float
    # "SPLIT/ARM" of an A/B split's arm; "" outside splits (and then not written).
    split: str = ""


class RequestLog:
    """Request lines for `logger`, queued and written in batches (see the module docs).
    `flush_after_s` 0 (or no running event loop) writes each line at once."""

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
        self._clock = _Stamps()

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
        choice_probability: float = 1.0,
        split: str = "",
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
                choice_probability,
                split,
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
        """Write every waiting line, oldest first."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        if not pending:
            return
        direct = direct_json(self._logger)
        if direct is not None and self._write_direct(direct, pending):
            return
        for line in pending:
            self._emit(line)

    def _fields(self, line: _Line) -> dict[str, Any]:
        """The line's fields after the message, in the order they are written."""
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
        if line.choice_probability < 1.0:
            # What offline evaluation of another routing policy weighs this line by.
            fields["choice_probability"] = line.choice_probability
        if line.split:
            fields["split"] = line.split
        if isinstance(line.prompt, int):
            fields["prompt_chars"] = line.prompt
        elif line.prompt is not None:
            if self._log_prompts:
                fields["prompt"] = [
                    {"role": role, "content": content} for role, content in line.prompt
                ]
            else:
                fields["prompt_chars"] = sum(len(content) for _, content in line.prompt)
        return fields

    @staticmethod
    def _message_args(line: _Line) -> tuple[str, str, str, float]:
        return (line.rpc, line.outcome, line.model or "-", line.latency_ms)

    def _write_direct(self, direct: DirectJson, lines: list[_Line]) -> bool:
        """The batch as the handler would write it, in one write; False (nothing written) if a
        value is one the direct encoding does not cover, so the records' path takes over."""
        encoded = []
        head = f'", "level": "{_INFO}", "logger": {_string(self._logger.name)}, "msg": '
        redaction = direct.redaction if direct.redaction.active else None
        for line in lines:
            message = _REQUEST_MESSAGE % self._message_args(line)
            fields = self._fields(line)
            if redaction is not None and redaction.finds_in(
                [message, *(v for v in fields.values() if isinstance(v, str))], line.prompt
            ):
                message = redaction.redact(message)
                fields = {key: redaction.redact_value(value) for key, value in fields.items()}
            body = _json_fields(fields)
            if body is None:
                return False
            encoded.append(
                f'{{"ts": "{self._clock.stamp(line.ended)}{head}{_string(message)}{body}}}'
            )
        handler = direct.handler
        text = handler.terminator.join(encoded) + handler.terminator
        handler.acquire()
        try:
            handler.stream.write(text)
            handler.flush()
        except Exception:
            # As logging does for a stream that fails: report it, never raise into the caller.
            handler.handleError(self._record(lines[-1]))
        finally:
            handler.release()
        return True

    def _record(self, line: _Line) -> logging.LogRecord:
        logger = self._logger
        record = logger.makeRecord(
            logger.name,
            logging.INFO,
            "",
            0,
            _REQUEST_MESSAGE,
            self._message_args(line),
            None,
            extra=self._fields(line),
        )
        # Back to when the request ended, as LogRecord.__init__ derives these from its clock.
        record.relativeCreated -= (record.created - line.ended) * 1000
        record.created = line.ended
        record.msecs = int((line.ended - int(line.ended)) * 1000) + 0.0
        return record

    def _emit(self, line: _Line) -> None:
        self._logger.handle(self._record(line))
