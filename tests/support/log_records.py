"""The records one logger emits during a test, kept in a list."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class RecordedLogs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def recorded(logger_name: str) -> Iterator[RecordedLogs]:
    """Keeps what `logger_name` emits at INFO and above until the block ends; the logger's level
    is restored after."""
    logger = logging.getLogger(logger_name)
    handler, level = RecordedLogs(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
