"""The semantic-cache hit guard: numbers, dates, named entities and negation must agree."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchpoint.cache.guard import MAX_GUARDED_CHARS, _starts_sentence, agrees


@pytest.mark.parametrize(
    ("query", "cached", "kind"),
    [
        ("weather in Paris today", "weather in London today", "entities"),
        ("what is 2+2", "what is 2+3", "numbers"),
        ("is it safe", "is it not safe", "negation"),
        ("Is it safe to fly?", "Isn't it safe to fly?", "negation"),
        (
            "How do I cook rice without a rice cooker?",
            "How do I cook rice in a rice cooker?",
            "negation",
        ),
        ("What happened in 2019?", "What happened in 2020?", "numbers"),
        ("Can I lose two kilos in a week?", "Can I lose 5 kilos in a week?", "numbers"),
        ("What is the weather today?", "What is the weather tomorrow?", "dates"),
        ("Best restaurants in Rome on Monday?", "Best restaurants in Rome on Friday?", "dates"),
        ("How do I install Python on Windows?", "How do I install Python on a Mac?", "entities"),
        ("Is the iPhone better than Android?", "Is the Pixel better than Android?", "entities"),
        ("How tall is Obama?", "How tall is Trump's son?", "entities"),
        ("price of 2,000 shares", "price of 20 shares", "numbers"),
    ],
)
def test_refuses_when_the_answer_changing_words_differ(query: str, cached: str, kind: str) -> None:
    verdict = agrees(query, cached)
    assert not verdict.ok
    assert verdict.reason.startswith(kind), verdict.reason
    assert not agrees(cached, query).ok  # refusal is symmetric


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        ("How do I learn Python quickly?", "What is the fastest way to learn Python?"),
        ("What is the capital of France?", "what is the capital of france"),
        ("What's the capital of France?!", "what is the capital of France"),
        ("Why is Donald Trump so popular?", "Why do people like Donald Trump?"),
        ("Who is Obama's wife?", "Who is the wife of Obama?"),
        ("Can I lose 2 kilos in a week?", "Can I lose two kilos in one week?"),
        ("Price of 2,000 shares", "price of 2000 shares"),
        ("Why can't I sleep?", "Why am I not able to sleep?"),
        ("Which one is better, tea or coffee?", "Is tea better than coffee?"),
        ("I want to learn guitar. Where do I start?", "Where do I start learning guitar?"),
    ],
)
def test_true_paraphrases_pass(query: str, cached: str) -> None:
    assert agrees(query, cached).ok, agrees(query, cached).reason
    assert agrees(cached, query).ok


def test_sentence_initial_capitals_are_not_entities() -> None:
    assert agrees("Tell me a joke", "tell me a joke").ok
    assert agrees("Explain recursion. Then give an example", "explain recursion, give example").ok


def test_reason_names_both_sides() -> None:
    verdict = agrees("weather in Paris today", "weather in London today")
    assert verdict.reason == "entities: query has ['paris'], cached question has ['london']"
    assert agrees("same question", "same question").reason == ""


def test_guard_is_cheap() -> None:
    query = "Why is Donald Trump nasty and why do people actually like him in 2016?"
    cached = "Why is Donald Trump so popular in 2016?"
    agrees(query, cached)
    runs = 2000
    started = time.perf_counter()
    for _ in range(runs):
        agrees(query, cached)
    per_call_us = (time.perf_counter() - started) / runs * 1e6
    # ~30 us here; the bound leaves room for a loaded CI machine.
    assert per_call_us < 500


# The sentence-start rule as it was first written: a regex searched from the text's start for
# every capitalised word (quadratic on a long text). `_starts_sentence` must agree with it.
_SENTENCE_START_REGEX = re.compile(r"(?:^|[.!?:;\"\u201c(\n]\s*)\s*$")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('aB .!?:;"\u201c(\n\t\r\x0b\x1c\x85\u2028\u3000x,'))))
def test_sentence_start_is_the_regexs_rule(text: str) -> None:
    for start in range(len(text) + 1):
        expected = _SENTENCE_START_REGEX.search(text, 0, start) is not None
        assert _starts_sentence(text, start) == expected, (text, start)


def test_texts_too_long_to_compare_are_refused() -> None:
    long = "x Bob " * (MAX_GUARDED_CHARS // 6 + 1)
    verdict = agrees(long, long)
    assert not verdict.ok
    assert "too long to compare" in verdict.reason
    # At the bound the texts are compared, and identical ones agree.
    fits = long[:MAX_GUARDED_CHARS]
    assert agrees(fits, fits).ok
