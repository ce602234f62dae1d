"""A request line's cost: written straight by `RequestLog` (the default: switchpoint's own JSON
handler is the only one) against the same lines through the logging machinery (another handler
attached), in the same run. Both write to the null device; nothing is asserted about time.
`make bench` runs it."""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

from switchpoint.bench.figures import per_op_ns
from switchpoint.logs import direct_json, switchpoint_handler
from switchpoint.request_log import RequestLog

Benchmark = Any
LINES = 256  # a batch: what a flush writes at ~2,500 calls/s


def _log(extra_handler: bool) -> tuple[RequestLog, logging.Logger]:
    logger = logging.getLogger(f"switchpoint.request.bench-{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    sink = open(os.devnull, "w")  # noqa: SIM115  (closed by the test, with its handler)
    logger.addHandler(switchpoint_handler(secrets=["sk-bench-secret"], stream=sink))
    if extra_handler:
        logger.addHandler(logging.NullHandler())
    return RequestLog(logger, flush_after_s=3600.0), logger


def _batch(log: RequestLog) -> None:
    for i in range(LINES):
        log.add(
            request_id=f"{i:032x}", rpc="Route", tenant="acme", stage="", model="fast",
            outcome="ok", latency_ms=0.42, cost_usd=0.0, attempts=0, prompt=120,
        )  # fmt: skip
    log.flush()


def test_request_lines(benchmark: Benchmark) -> None:
    direct, direct_logger = _log(extra_handler=False)
    records, records_logger = _log(extra_handler=True)
    assert direct_json(direct_logger) is not None
    assert direct_json(records_logger) is None
    benchmark(lambda: _batch(direct))
    direct_ns = per_op_ns(lambda: _batch(direct), 20) / LINES
    records_ns = per_op_ns(lambda: _batch(records), 20) / LINES
    for logger in (direct_logger, records_logger):
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            if isinstance(handler, logging.StreamHandler):
                handler.stream.close()
    print(
        f"\n[request lines] written directly {direct_ns / 1000:.2f} us a line, "
        f"through logging's records {records_ns / 1000:.2f} us ({records_ns / direct_ns:.1f}x)"
    )
