"""The soak's world: loopback providers that fail at random, the sidecar config, and the chaos
actions (Redis killed and restarted, a hot reload) that `benches/soak.py` fires mid-run.

Providers (all real HTTP on loopback, from tests/providers):
- `oai` (OpenAI wire format) and `ant` (Anthropic wire format) draw each answer from a seeded
  `FaultScript`: while faults are on, a share of calls answer 429 with Retry-After, 500 or 503,
  stall past the provider timeout, reset the connection (before the answer or mid-stream) or
  return malformed JSON;
- `steady` always answers: the last model of the fallback chain, as the local model is in the
  default config, so a call with time left always has somewhere to land;
- `stall` sends two chunks of a stream and then stalls: the cancelling clients' model, so what
  was streamed before their cancel (and thus what they are charged) is known exactly.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from tests.providers import LoopbackServer
from tests.providers.anthropic_server import AnthropicServer
from tests.providers.fixtures import ANTHROPIC_TEST_KEY, OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import (
    Script,
    Step,
    error,
    garbage,
    hang,
    ok,
    reset,
    stream_cut,
)

ADMIN_TOKEN = "soak-admin-token"
ENV = {"SOAK_OAI": OPENAI_TEST_KEY, "SOAK_ANT": ANTHROPIC_TEST_KEY, "SOAK_ADMIN": ADMIN_TOKEN}
ADMIN_AUTH = (("authorization", f"Bearer {ADMIN_TOKEN}"),)

PROVIDER_TIMEOUT_S = 1.0
STALL_S = 3.0  # a stalled answer outlives the provider timeout: the attempt times out
CANCEL_AFTER_CHUNKS = 2
TOKENIZER = "o200k_base"  # exact counts, so a cancelled stream's charge is known to the token
MAX_RETRIES = 1
BUDGET_USD = 1000.0  # far above what a run spends: no refusal hides a charge
RELOADED_BUDGET_USD = 1200.0
TENANT_CONCURRENCY = 64
QUEUED_MODEL_CONCURRENCY = 4
# The providers remember only their latest requests: the run measures the sidecar's memory, not
# the loopbacks' logs.
KEEP_REQUESTS = 100  # oai-mini's slots: its admission queue fills under load


@dataclass(frozen=True)
class Fault:
    name: str
    weight: float
    step: Step


# Shares of calls while faults are on; the rest answer normally.
FAULTS: tuple[Fault, ...] = (
    Fault("429", 0.04, error(429, retry_after=1)),
    Fault("500", 0.04, error(500)),
    Fault("503", 0.04, error(503)),
    Fault("stall", 0.03, hang(STALL_S)),
    Fault("reset", 0.03, reset()),
    Fault("reset-mid-stream", 0.04, stream_cut(2, abort=True)),
    Fault("malformed-json", 0.03, garbage()),
)


class FaultScript(Script):
    """Seeded random faults while `faults_on`, else `ok()`; counts what it drew, by name."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.faults_on = False
        self.drawn: Counter[str] = Counter()

    def next_step(self) -> Step:
        with self._lock:
            if not self.faults_on:
                self.drawn["ok"] += 1
                return ok()
            draw = self._rng.random()
            for fault in FAULTS:
                if draw < fault.weight:
                    self.drawn[fault.name] += 1
                    return fault.step
                draw -= fault.weight
            self.drawn["ok"] += 1
            return ok()


@dataclass
class Providers:
    oai: OpenAIServer
    ant: AnthropicServer
    steady: OpenAIServer
    stall: OpenAIServer
    oai_faults: FaultScript
    ant_faults: FaultScript

    def set_faults(self, on: bool) -> None:
        self.oai_faults.faults_on = on
        self.ant_faults.faults_on = on

    def faults_drawn(self) -> dict[str, dict[str, int]]:
        return {"oai": dict(self.oai_faults.drawn), "ant": dict(self.ant_faults.drawn)}

    def requests_received(self) -> dict[str, int]:
        servers: dict[str, LoopbackServer] = {
            "oai": self.oai,
            "ant": self.ant,
            "steady": self.steady,
            "stall": self.stall,
        }
        return {name: server.requests_received for name, server in servers.items()}


@contextmanager
def providers(seed: int) -> Iterator[Providers]:
    with ExitStack() as stack:
        keep = KEEP_REQUESTS
        oai = stack.enter_context(OpenAIServer(api_key=OPENAI_TEST_KEY, keep_requests=keep))
        ant = stack.enter_context(AnthropicServer(api_key=ANTHROPIC_TEST_KEY, keep_requests=keep))
        steady = stack.enter_context(OpenAIServer(api_key=OPENAI_TEST_KEY, keep_requests=keep))
        stall = stack.enter_context(OpenAIServer(api_key=OPENAI_TEST_KEY, keep_requests=keep))
        oai.script = FaultScript(seed)
        ant.script = FaultScript(seed + 1)
        # Long enough that only the client's cancel ends it.
        stall.script.default = hang(60.0, after_chunks=CANCEL_AFTER_CHUNKS)
        yield Providers(oai, ant, steady, stall, oai.script, ant.script)


def _provider(kind: str, url: str, key_env: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "base_url": url,
        "api_key_env": key_env,
        "timeout_s": PROVIDER_TIMEOUT_S,
        "retry": {"max_retries": MAX_RETRIES, "base_delay_s": 0.05, "max_delay_s": 0.5},
        # Opens on a run of failures, probes again soon: the run sees breakers open and close.
        "breaker": {"consecutive_failures": 5, "open_s": 2.0},
    }


def _model(name: str, provider: str, per_mtok: float, quality: float, **extra: Any) -> Any:
    return {
        "name": name,
        "provider": provider,
        "tokenizer": TOKENIZER,
        "price": {"input_per_mtok": per_mtok, "output_per_mtok": per_mtok * 4},
        "context_window": 32000,
        "quality": quality,
        "latency_prior": {"ttft_ms": 50, "tpot_ms": 5},
        "capabilities": ["chat", "code"],
        **extra,
    }


def sidecar_config(
    found: Providers, redis_url: str, *, budget_usd: float = BUDGET_USD
) -> dict[str, Any]:
    """The default config's shape (INFO logs and metrics on, hosted models falling back to an
    always-there model, per-tenant limits and budgets) pointed at the loopback providers, with
    shared state in `redis_url`."""
    return {
        "telemetry": {"metrics_address": "127.0.0.1:0"},
        "admin": {"token_env": "SOAK_ADMIN"},
        "providers": {
            "oai": _provider("openai", found.oai.base_url, "SOAK_OAI"),
            "ant": _provider("anthropic", found.ant.base_url, "SOAK_ANT"),
            "steady": _provider("openai", found.steady.base_url, "SOAK_OAI"),
            "stall": {
                **_provider("openai", found.stall.base_url, "SOAK_OAI"),
                "timeout_s": 60.0,
            },
        },
        "models": [
            _model("oai-mini", "oai", 0.15, 0.70, max_concurrency=QUEUED_MODEL_CONCURRENCY),
            _model("oai-big", "oai", 2.5, 0.86),
            _model("claude-haiku", "ant", 0.8, 0.85, upstream_model="claude-3-5-haiku-latest"),
            _model("steady-local", "steady", 0.05, 0.2),
            # Without "code", so auto-routed Chats (which ask for it) never land on it.
            _model("stall-model", "stall", 1.0, 0.5, capabilities=["chat"]),
        ],
        "routing": {
            "default_strategy": "balanced",
            # Ranking by quality alone puts the always-there model last, so the faulty ones are
            # tried first, and fixes which provider each stage starts on.
            "strategies": {"best": {"cost": 0, "latency": 0, "quality": 1}},
            "stages": {
                "ui": {
                    "models": ["claude-haiku", "oai-mini", "steady-local"],
                    "strategy": "best",
                },
                "api": {
                    "models": ["oai-big", "oai-mini", "claude-haiku", "steady-local"],
                    "strategy": "best",
                },
            },
            "fallback_chain": ["oai-mini", "claude-haiku", "steady-local"],
        },
        "limits": [
            {"name": "tenant-slots", "match": {"tenant": "*"}, "concurrency": TENANT_CONCURRENCY}
        ],
        "budgets": [
            {
                "name": "tenant-day",
                "match": {"tenant": "*"},
                "window": "day",
                "limit_usd": budget_usd,
            }
        ],
        "shared_state": {
            "redis_url": redis_url,
            "slice_usd": 1.0,
            "sync_interval_s": 0.25,
            "timeout_s": 0.5,
            "policy": "fail-closed",
            "replica_id": "soak",
        },
    }
