"""Route against the same-bytes floor over prompt sizes x tokenizers, at the sidecar's default log
level (`python -m benches.rpc_floor --matrix`).

Every cell is one `benches.rpc_floor.compare` (concurrency 1, an open loop, 8 callers; Route and
the empty RPC alternating, ratios from one run) on a shorter budget, so the whole matrix takes a
few minutes:

- prompt sizes 50 B, 4 KB, 20 KB, 100 KB of real text: Quora questions joined (the QQP set the
  cache benches use, non-ASCII kept as it is), each call's first 8 bytes its sequence number;
- tokenizers `estimate`, `o200k_base`, `cl100k_base`, set on every model of `routing_config()`
  (one sidecar per tokenizer; the floor server stays up for the whole matrix);
- the sidecar at INFO (its default: a request line per call), plus a WARNING row for 50 B /
  `estimate`, the case the earlier figures were taken on.

A 100 KB prompt (about 25k tokens) fits only the 200k-token model of the config: Route still
decides, over one candidate. Writes `benches/results/rpc_floor_matrix.json` and prints a table
that marks every ratio missing its target (and open-loop figures the load generator could not
send on schedule).
"""

from __future__ import annotations

import copy
import gzip
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from benches.loadgen import (
    SEND_LAG_LIMIT_US,
    SLOT_DIGITS,
    ServerProcess,
    machine,
    plan_cores,
    server_process,
    sidecar_process,
)
from benches.rpc_floor import RESULTS_DIR, TARGETS, Comparison, Settings, compare, pinning
from tests.sidecar_harness import routing_config

RESULT_FILE = RESULTS_DIR / "rpc_floor_matrix.json"
QQP = Path(__file__).resolve().parents[2] / "shared/data/semantic-cache/qqp_similar_pairs.json.gz"
SIZES = {"50 B": 50, "4 KB": 4 * 1024, "20 KB": 20 * 1024, "100 KB": 100 * 1024}
TOKENIZERS = ("estimate", "o200k_base", "cl100k_base")
DEFAULT_LEVEL = "INFO"
# The second row the issue keeps: the best case the earlier figures were measured on.
EXTRA_CELLS = (("WARNING", "estimate", "50 B"),)
CELL = Settings(
    calls=1000,
    warmup=50,
    block=100,
    rate=300.0,
    open_loop_s=3.0,
    concurrency=8,
    throughput_s=3.0,
    sequential_s=3.0,
)


@cache
def _questions() -> tuple[str, ...]:
    with gzip.open(QQP, "rt", encoding="utf-8") as file:
        pairs = json.load(file)
    return tuple(text for pair in pairs for text in (pair["origin"], pair["similar"]))


def prompt_text(size: int) -> str:
    """`size` bytes (UTF-8) of questions joined by spaces, the first 8 the slot's digits."""
    head = SLOT_DIGITS.decode() + " "
    parts, length = [head], len(head)
    for question in _questions():
        if length >= size:
            break
        parts.append(question + " ")
        length += len(question.encode()) + 1
    raw = "".join(parts).encode()[:size]
    # A cut through a multi-byte character drops it; spaces make up the bytes it took.
    text = raw.decode(errors="ignore")
    return text + " " * (size - len(text.encode()))


def tokenizer_config(tokenizer: str) -> dict[str, Any]:
    config = copy.deepcopy(routing_config())
    for model in config["models"]:
        model["tokenizer"] = tokenizer
    return config


@dataclass(frozen=True)
class Cell:
    log_level: str
    tokenizer: str
    size: str
    comparison: Comparison

    def misses(self) -> list[str]:
        """The ratios past their targets."""
        c, out = self.comparison, []
        for name, ratio in (
            ("seq p50", c.ratio_sequential_p50),
            ("open p50", c.ratio_open_loop_p50),
        ):
            if not ratio <= TARGETS["p50_ratio_max"]:
                out.append(name)
        for name, ratio in (
            ("seq p99", c.ratio_sequential_p99),
            ("open p99", c.ratio_open_loop_p99),
        ):
            if not ratio <= TARGETS["p99_ratio_max"]:
                out.append(name)
        if not c.ratio_throughput >= TARGETS["throughput_min"]:
            out.append("throughput")
        return out


def _plan() -> list[tuple[str, str, str]]:
    cells = [(DEFAULT_LEVEL, t, size) for t in TOKENIZERS for size in SIZES]
    return cells + list(EXTRA_CELLS)


@contextmanager
def _sidecar(tokenizer: str, log_level: str, core: int | None) -> Iterator[ServerProcess]:
    with sidecar_process(tokenizer_config(tokenizer), core=core, log_level=log_level) as sidecar:
        # A tokenizer that fails to load falls back to the estimate: that cell would lie.
        if "is unavailable" in sidecar.log_path.read_text(errors="replace"):
            raise RuntimeError(f"tokenizer {tokenizer} did not load in the sidecar")
        yield sidecar


def measure(settings: Settings = CELL) -> dict[str, Any]:
    started = time.perf_counter()
    cores = plan_cores()
    described = machine()
    cells: list[Cell] = []
    plan = _plan()
    with server_process(
        "empty", "benches.rpc_floor", ["empty-server"], core=cores.servers
    ) as floor:
        # One sidecar per (log level, tokenizer), its cells one after another.
        for level, tokenizer in dict.fromkeys((lv, t) for lv, t, _ in plan):
            with _sidecar(tokenizer, level, cores.servers) as sidecar:
                for size in (s for lv, t, s in plan if (lv, t) == (level, tokenizer)):
                    comparison = compare(
                        {"route": sidecar.port, "empty": floor.port},
                        {"route": sidecar.pid, "empty": floor.pid},
                        prompt_text(SIZES[size]),
                        settings,
                        cores.loadgen,
                    )
                    cells.append(Cell(level, tokenizer, size, comparison))
                    print(row(cells[-1]), flush=True)
    return {
        "benchmark": "rpc_floor_matrix",
        "unit": "microseconds",
        "cells": [asdict(cell) for cell in cells],
        "misses": {f"{c.log_level} {c.tokenizer} {c.size}": c.misses() for c in cells},
        "settings": asdict(settings),
        "targets": TARGETS,
        "pinning": pinning(cores.loadgen, cores.servers),
        "machine": described,
        "wall_s": time.perf_counter() - started,
    }


HEADER = (
    f"{'level':7} {'tokenizer':11} {'prompt':>6} | {'Route p50':>9} {'floor p50':>9} "
    f"{'p50 x':>6} {'p99 x':>6} | {'rate/s':>6} {'p50 x':>6} {'p99 x':>6} | {'thr x':>6} | misses"
)


def row(cell: Cell) -> str:
    c = cell.comparison
    flags = cell.misses()
    if not c.open_loop_on_schedule:
        flags.append(f"open loop not a figure: sends late (p99 > {SEND_LAG_LIMIT_US:.0f} us)")
    errors = sum(
        side.errors
        for side in (c.route_sequential, c.empty_sequential, c.route_open_loop, c.empty_open_loop)
    ) + (c.route_throughput.errors + c.empty_throughput.errors)
    if errors:
        flags.append(f"{errors} errors")
    return (
        f"{cell.log_level:7} {cell.tokenizer:11} {cell.size:>6} | "
        f"{c.route_sequential.p50_us:9.0f} {c.empty_sequential.p50_us:9.0f} "
        f"{c.ratio_sequential_p50:6.2f} {c.ratio_sequential_p99:6.2f} | "
        f"{c.rate_per_s:6.0f} {c.ratio_open_loop_p50:6.2f} {c.ratio_open_loop_p99:6.2f} | "
        f"{c.ratio_throughput:6.2f} | {', '.join(flags) or '-'}"
    )


def write_json(result: dict[str, Any], path: Path = RESULT_FILE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def main() -> None:
    pin = plan_cores()
    print(
        "Route vs the empty RPC on the same bytes; ratios Route/floor, one run per cell; "
        f"concurrency 1 (us), open loop, {CELL.concurrency} callers (throughput); "
        f"load generator on CPU {pin.loadgen}, servers on CPU {pin.servers}"
    )
    print(
        f"targets: p50 x <= {TARGETS['p50_ratio_max']}, p99 x <= {TARGETS['p99_ratio_max']}, "
        f"thr x >= {TARGETS['throughput_min']}"
    )
    print(HEADER)
    result = measure()
    print(f"wrote {write_json(result)} in {result['wall_s']:.0f} s")
