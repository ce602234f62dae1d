"""Labelled outcomes: (prompt, model, score) from JSONL files, Feedback calls and hooks.

A line of an outcome file is one JSON object:

    {"messages": [{"role": "user", "content": "..."}], "model": "name", "score": 1.0}
    {"prompt": "...", "model": "name", "score": 0}          # one user message, shorthand

A file with malformed lines is refused whole, every bad line named with its number (up to
MAX_REPORTED), so a reload never half-applies a file.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from switchpoint.errors import ConfigError
from switchpoint.providers.base import ChatMessage

MAX_REPORTED: Final = 20
# What of a long prompt is embedded: its start and its end, where a question and its
# instruction sit (the classifier reads a long turn the same way). The local model's time grows
# with the text: a few milliseconds at this length, a quarter of a second at 3,000 characters
# (benches/test_predictor_bench.py).
HEAD_CHARS: Final = 400
TAIL_CHARS: Final = 200


@dataclass(frozen=True, slots=True)
class Outcome:
    text: str
    model: str
    score: float


def prompt_text(messages: Sequence[ChatMessage]) -> str:
    """What the predictor compares prompts by: the last user turn (the whole conversation's
    last message when none is a user's), its head and tail when long."""
    text = ""
    for message in reversed(messages):
        if message.role == "user":
            text = message.content
            break
    else:
        text = messages[-1].content if messages else ""
    if len(text) > HEAD_CHARS + TAIL_CHARS:
        text = text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]
    return text


def valid_score(score: object) -> float | None:
    """`score` as a float in [0, 1], or None."""
    if isinstance(score, bool) or not isinstance(score, int | float):
        return None
    value = float(score)
    return value if math.isfinite(value) and 0.0 <= value <= 1.0 else None


class _BadLine(Exception):
    """What is wrong with one line of an outcome file."""


def _outcome(line: str) -> Outcome:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _BadLine(f"not JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise _BadLine("not a JSON object")
    model = record.get("model")
    if not isinstance(model, str) or not model:
        raise _BadLine("'model' must be a non-empty string")
    score = valid_score(record.get("score"))
    if score is None:
        raise _BadLine("'score' must be a number within [0, 1]")
    if "messages" in record:
        raw = record["messages"]
        if not isinstance(raw, list) or not raw:
            raise _BadLine("'messages' must be a non-empty list")
        messages = []
        for item in raw:
            if not (
                isinstance(item, dict)
                and isinstance(item.get("role"), str)
                and isinstance(item.get("content"), str)
            ):
                raise _BadLine("each message needs string 'role' and 'content'")
            messages.append(ChatMessage(item["role"], item["content"]))
        text = prompt_text(messages)
    elif isinstance(record.get("prompt"), str):
        text = prompt_text([ChatMessage("user", record["prompt"])])
    else:
        raise _BadLine("needs 'messages' or 'prompt'")
    if not text.strip():
        raise _BadLine("the prompt is empty")
    return Outcome(text, model, score)


def read_outcomes(path: Path, *, field: str) -> tuple[str, list[Outcome]]:
    """The file's content digest (sha256) and every outcome in it; ConfigError naming `field`,
    the file and each bad line."""
    try:
        content = path.read_bytes()
        lines = content.decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{field}: cannot read {path}: {exc}"]) from None
    outcomes: list[Outcome] = []
    errors: list[str] = []
    malformed = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            outcomes.append(_outcome(line))
        except _BadLine as exc:
            malformed += 1
            if malformed <= MAX_REPORTED:
                errors.append(f"{field}: {path}:{number}: {exc}")
    if malformed > MAX_REPORTED:
        errors.append(f"{field}: {path}: {malformed - MAX_REPORTED} more malformed lines")
    if errors:
        raise ConfigError(errors)
    return hashlib.sha256(content).hexdigest(), outcomes
