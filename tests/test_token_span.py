"""Routing counts a long prompt exactly only when the count can change the decision.

Above EXACT_BELOW_BYTES the router bounds the count from one pass over the bytes and routes on an
estimate unless a context window, a cost cap, a rate limit or a budget lies between the bounds.
These tests hold the bounds to tiktoken's real counts and the decisions at the boundaries to the
exact arithmetic.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchpoint._native import EXACT_BELOW_BYTES, REMEMBERED_FROM_BYTES, prompt_token_span
from switchpoint.config import parse_config
from switchpoint.engine.building import build_engine
from switchpoint.engine.path import Engine
from switchpoint.errors import QuotaExceededError
from switchpoint.providers.base import ChatMessage
from switchpoint.tokens import TokenCounter
from switchpoint.v1 import router_pb2 as pb
from tests.sidecar_harness import routing_config
from tests.support.token_counts import COUNTER, ENCODINGS

OUTPUT_TOKENS = 100
# Prose, code, numbers and other scripts: what the bounds' reasoning must survive.
SAMPLES = (
    "Why is the sky blue? It's Rayleigh scattering; shorter wavelengths scatter more. ",
    "def area(r: float) -> float:\n    return 3.14159 * r**2  # circle's area\n",
    "Invoice 2024-11-05: 1234567 units at $89.99, total 111,097,530.33 USD. ",
    "naïve café, 日本語のテキスト, Привет мир, emoji 🦊🦊 and tabs\t\tand  spaces ",
    "don't won't y'all O'Brien's 'quoted' '' '' rock'n'roll ",
    "CamelCaseIdentifiersLikeHTTPServerError andXMLHttpRequest\r\n\r\n",
)


@pytest.fixture
def counter() -> TokenCounter:
    return COUNTER


def _span_holds(counter: TokenCounter, text: str) -> None:
    messages = [ChatMessage("system", "be brief"), ChatMessage("user", text)]
    span = prompt_token_span(messages)
    assert span.low <= span.estimate <= span.high
    for encoding in ENCODINGS:
        exact = counter.count_messages(messages, encoding)
        assert span.low <= exact <= span.high, (encoding, text[:80])


def test_the_bounds_hold_on_prose_code_numbers_and_other_scripts(counter: TokenCounter) -> None:
    for sample in SAMPLES:
        _span_holds(counter, sample * 40)
    _span_holds(counter, "".join(SAMPLES) * 20)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "a",
                "Z",
                "é",
                "e\u0301",
                "日",
                "🦊",
                "7",
                "٣",
                "'",
                "'s",
                " ",
                "  ",
                "\n",
                "\r\n",
                "-",
                "$",
                ".",
                "_",
                "\t",
                "ǅ",
                "ʰ",
            ]
        ),
        max_size=200,
    ).map("".join)
)
def test_the_bounds_hold_on_any_mix_of_character_classes(text: str) -> None:
    _span_holds(COUNTER, text)


def _engine(tokenizer: str = "o200k_base", **sections: Any) -> Engine:
    config = routing_config()
    for model in config["models"]:
        model["tokenizer"] = tokenizer
    return build_engine(parse_config({**config, **sections}), environ={}).engine


def _route(engine: Engine, text: str, models: tuple[str, ...] = ()) -> pb.RouteDecision:
    request = pb.RouteRequest(
        messages=[pb.Message(role="user", content=text)],
        routing=pb.RoutingOptions(tenant="acme", models=list(models)),
        params=pb.GenerationParams(max_tokens=OUTPUT_TOKENS),
    )
    raw = request.SerializeToString()
    return pb.RouteDecision.FromString(
        engine.router.route_wire(raw, now=engine.gate.now()).decision
    )


def _prompt_of(counter: TokenCounter, tokens: int) -> str:
    """English text of exactly `tokens` prompt tokens (o200k, framing included), or one past it
    when no cut lands there."""
    text = SAMPLES[0] * 400
    low, high = 0, len(text)
    while low < high:
        mid = (low + high) // 2
        if counter.count_messages([ChatMessage("user", text[:mid])], "o200k_base") < tokens:
            low = mid + 1
        else:
            high = mid
    return text[:low]


def test_a_context_window_within_the_bounds_is_judged_on_the_exact_count(
    counter: TokenCounter,
) -> None:
    engine = _engine()
    tiny_window = 1024  # routing_config's "tiny"
    for tokens in (tiny_window - OUTPUT_TOKENS + d for d in (-1, 0, 1)):
        text = _prompt_of(counter, tokens)
        exact = counter.count_messages([ChatMessage("user", text)], "o200k_base")
        assert len(text.encode()) > EXACT_BELOW_BYTES
        decision = _route(engine, text, models=("tiny", "strong"))
        served = [c.model for c in decision.candidates]
        assert ("tiny" in served) == (exact + OUTPUT_TOKENS <= tiny_window), (exact, served)
        assert decision.estimated_input_tokens == exact
        assert not any("estimated at" in reason for reason in decision.reasons)


def test_far_from_every_boundary_the_estimate_decides_without_counting(
    counter: TokenCounter,
) -> None:
    engine = _engine()
    # ~126 KB: at least 18k tokens, past "cheap" and "fast" (16k); at most 126k, inside "strong".
    text = SAMPLES[0] * 1500
    exact = counter.count_messages([ChatMessage("user", text)], "o200k_base")
    decision = _route(engine, text)
    assert decision.model == "strong"
    assert any("input tokens estimated at" in reason for reason in decision.reasons)
    assert decision.estimated_input_tokens != exact
    assert abs(decision.estimated_input_tokens - exact) / exact < 0.15
    assert engine.router.remembered_counts == 0  # nothing was counted
    # The same prompt with the estimate tokenizer is its own exact count: no estimate reason.
    plain = _route(_engine("estimate"), text)
    assert not any("estimated at" in reason for reason in plain.reasons)


def test_english_under_a_16k_window_is_decided_without_counting(counter: TokenCounter) -> None:
    # ~20 KB, more bytes than the 16k windows of "cheap" and "fast" hold tokens: only the letter
    # runs' bound (two tokens in three bytes) puts the prompt clear of them.
    text = SAMPLES[0] * 250
    window = 16000
    messages = [ChatMessage("user", text)]
    assert len(text.encode()) > window
    span = prompt_token_span(messages)
    assert span.high + OUTPUT_TOKENS <= window
    for encoding in ENCODINGS:
        exact = counter.count_messages(messages, encoding)
        assert exact <= span.high
        engine = _engine(encoding)
        decision = _route(engine, text)
        # The models an exact count admits: all but "tiny" (1k).
        assert {c.model for c in decision.candidates} == {"cheap", "fast", "strong"}
        assert any("input tokens estimated at" in reason for reason in decision.reasons)
        assert engine.router.remembered_counts == 0  # nothing was counted


def test_a_budget_within_the_bounds_is_judged_on_the_exact_count(counter: TokenCounter) -> None:
    text = SAMPLES[0] * 30  # ~2.4 KB, ~530 tokens: bounds ~400-2,500
    exact = counter.count_messages([ChatMessage("user", text)], "o200k_base")

    def cost(tokens: int) -> float:  # "strong": $5 in, $20 out per million tokens
        return (tokens * 5.0 + OUTPUT_TOKENS * 20.0) / 1e6

    for limit_usd, admitted in (
        ((cost(exact) + cost(exact + 1)) / 2, True),
        ((cost(exact - 1) + cost(exact)) / 2, False),
    ):
        budgets = [{"name": "daily", "window": "day", "limit_usd": limit_usd}]
        engine = _engine(budgets=budgets)
        if admitted:
            assert _route(engine, text, models=("strong",)).model == "strong"
        else:
            with pytest.raises(QuotaExceededError):
                _route(engine, text, models=("strong",))


def test_the_turns_of_a_conversation_are_counted_once_each(counter: TokenCounter) -> None:
    engine = _engine()
    # Near "tiny"'s window, so every turn is counted exactly.
    turns = [SAMPLES[0] * 4 + f"question {i}" for i in range(4)]
    assert all(len(turn) >= REMEMBERED_FROM_BYTES for turn in turns)
    for n in range(1, len(turns) + 1):
        request = pb.RouteRequest(
            messages=[pb.Message(role="user", content=t) for t in turns[:n]],
            routing=pb.RoutingOptions(models=["tiny", "strong"]),
            params=pb.GenerationParams(max_tokens=OUTPUT_TOKENS),
        )
        raw = request.SerializeToString()
        decision = pb.RouteDecision.FromString(
            engine.router.route_wire(raw, now=engine.gate.now()).decision
        )
        messages = [ChatMessage("user", t) for t in turns[:n]]
        assert decision.estimated_input_tokens == counter.count_messages(messages, "o200k_base")
        # Each turn adds one message to remember; the earlier ones are found, not recounted.
        assert engine.router.remembered_counts == n
