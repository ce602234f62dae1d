"""The classifier model's side of the router: its question, the answers it keeps, and the reading
the Rust router takes in place of its rules'."""

from __future__ import annotations

import pytest

from switchpoint.classifier.answers import (
    SENT_AT_EACH_END,
    AnswerCache,
    ModelReading,
    answer_key,
    question,
)
from switchpoint.config import parse_config
from switchpoint.engine.building import build_engine
from switchpoint.engine.path import Engine
from switchpoint.errors import InvalidRequestError
from switchpoint.providers.base import ChatMessage
from switchpoint.request import ChatInput
from switchpoint.routing import Level
from tests.sidecar_harness import routing_config

NOW = 1_706_745_600.0


@pytest.fixture(scope="module")
def engine() -> Engine:
    return build_engine(parse_config(routing_config()), environ={}).engine


def _ask(text: str) -> ChatInput:
    return ChatInput(messages=[ChatMessage("user", text)])


def test_the_rules_report_how_sure_they_are(engine: Engine) -> None:
    unsure = engine.router.route(_ask("where do otters live"), now=NOW)
    sure = engine.router.route(_ask("please refactor this python function"), now=NOW)
    assert unsure.level is sure.level is Level.AUTO
    assert unsure.confidence == pytest.approx(0.4)
    assert sure.confidence == pytest.approx(0.8, abs=0.01)


def test_a_given_reading_is_routed_and_a_bad_one_refused_by_its_field(engine: Engine) -> None:
    given = engine.router.route(
        _ask("where do otters live"), now=NOW, classified=("code", 0.9), note="asked"
    )
    assert (given.task_class, given.strategy) == ("code", "quality-first")
    assert given.reasons[1] == "asked"
    with pytest.raises(InvalidRequestError) as caught:
        engine.router.route(_ask("hello"), now=NOW, classified=("poetry", 0.5))
    assert caught.value.field == "classification.task_class"
    assert "unknown task class 'poetry'" in caught.value.message
    with pytest.raises(InvalidRequestError) as caught:
        engine.router.decide(_ask("hello"), now=NOW, classified=("chat", 1.5))
    assert caught.value.field == "classification.complexity"


def test_a_long_turn_is_sent_at_its_two_ends() -> None:
    short = question("fix it")
    assert [m.role for m in short] == ["system", "user"]
    assert short[1].content == "fix it"
    text = "a" * SENT_AT_EACH_END + "b" * 5000 + "c" * SENT_AT_EACH_END
    sent = question(text)[1].content
    assert sent == "a" * SENT_AT_EACH_END + "\n[...]\n" + "c" * SENT_AT_EACH_END


def test_answers_are_kept_per_tenant_least_recently_used_first_out() -> None:
    cache = AnswerCache(2)
    reading = ModelReading("code", 0.9)
    one, two, three = (answer_key("acme", text) for text in ("one", "two", "three"))
    assert answer_key("globex", "one") != one
    cache.put(one, reading)
    cache.put(two, reading)
    assert cache.get(one) == reading  # `two` is now the least recently used
    cache.put(three, reading)
    assert (cache.get(two), len(cache)) == (None, 2)
    assert cache.get(one) == cache.get(three) == reading
    none = AnswerCache(0)
    none.put(one, reading)
    assert none.get(one) is None
