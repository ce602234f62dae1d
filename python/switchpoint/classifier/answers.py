"""What the classifier model is asked, how its answer is read, and the answers remembered.

The model sees an instruction and the last user turn (its two ends, when long: where a long
prompt's instruction sits, as the rules read it), and must answer with strict JSON
`{"task_class": "code", "difficulty": 0.8}`. Anything else is a malformed answer, which the
caller treats as a failure: the rules decide.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from dataclasses import dataclass

from switchpoint._native import TASK_CLASSES
from switchpoint.providers.base import ChatMessage

# Characters of the last user turn sent from each end when it is longer than twice this: what
# decides a task class sits at the ends, and the model's price is per token.
SENT_AT_EACH_END = 1500
# The answer is a few dozen tokens of JSON; a model that rambles past this is malformed anyway.
ANSWER_MAX_TOKENS = 64

INSTRUCTION = (
    "You classify a request sent to an AI model, so a router can pick the model for it. Reply "
    "with only a JSON object, no prose and no code fence: "
    '{"task_class": "<one of: ' + ", ".join(TASK_CLASSES) + '>", "difficulty": <a number '
    "from 0 (trivial, any small model answers it) to 1 (needs the strongest model)>}."
)


@dataclass(frozen=True, slots=True)
class ModelReading:
    task_class: str
    difficulty: float


class MalformedAnswer(ValueError):
    """The model's answer is not the JSON asked for; the message says what is wrong."""


def question(last_user: str) -> list[ChatMessage]:
    """The messages sent to the classifier model for a prompt whose last user turn is
    `last_user`."""
    if len(last_user) > 2 * SENT_AT_EACH_END:
        last_user = f"{last_user[:SENT_AT_EACH_END]}\n[...]\n{last_user[-SENT_AT_EACH_END:]}"
    return [ChatMessage("system", INSTRUCTION), ChatMessage("user", last_user)]


def read_answer(content: str) -> ModelReading:
    """The model's answer as a reading; MalformedAnswer unless it is exactly the JSON asked for."""
    try:
        answer = json.loads(content)
    except ValueError:
        raise MalformedAnswer("not JSON") from None
    if not isinstance(answer, dict):
        raise MalformedAnswer("not a JSON object")
    if set(answer) != {"task_class", "difficulty"}:
        raise MalformedAnswer(f"keys {sorted(answer)}, expected task_class and difficulty")
    task_class, difficulty = answer["task_class"], answer["difficulty"]
    if task_class not in TASK_CLASSES:
        raise MalformedAnswer(f"task_class {str(task_class)[:32]!r} is not a known class")
    # bool is an int to Python, never a difficulty.
    if isinstance(difficulty, bool) or not isinstance(difficulty, int | float):
        raise MalformedAnswer("difficulty is not a number")
    if not (math.isfinite(difficulty) and 0.0 <= difficulty <= 1.0):
        raise MalformedAnswer("difficulty is outside 0..1")
    return ModelReading(task_class, float(difficulty))


def answer_key(tenant: str, last_user: str) -> bytes:
    """A cached answer's key: a hash of the last user turn, per tenant, so whether a prompt was
    already classified (and paid for) says nothing across tenants."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(tenant.encode())
    digest.update(b"\0")
    digest.update(last_user.encode())
    return digest.digest()


class AnswerCache:
    """The last `capacity` readings, least recently used evicted first; 0 remembers none."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._readings: OrderedDict[bytes, ModelReading] = OrderedDict()

    def __len__(self) -> int:
        return len(self._readings)

    def get(self, key: bytes) -> ModelReading | None:
        reading = self._readings.get(key)
        if reading is not None:
            self._readings.move_to_end(key)
        return reading

    def put(self, key: bytes, reading: ModelReading) -> None:
        if self._capacity == 0:
            return
        self._readings[key] = reading
        self._readings.move_to_end(key)
        while len(self._readings) > self._capacity:
            self._readings.popitem(last=False)
