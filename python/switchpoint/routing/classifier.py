"""A cheap heuristic reading of a prompt: its task class and how hard it looks.

It runs on every auto-routed request, so it is a handful of regular expressions over the last user
turn, not a model. Its output only picks weights and a capability hint; the Rust scorer still ranks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from switchpoint.providers.base import ChatMessage

_TASK_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "code",
        re.compile(
            r"```|\b(def|class|function|return|import|SELECT|const|let|var|fn|impl|struct)\b"
            r"|\b(python|javascript|typescript|rust|golang|java|sql|regex|bash|compile|"
            r"stack trace|traceback|bug|refactor|unit test)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "math",
        re.compile(
            r"\b(integral|derivative|equation|prove|theorem|lemma|probability|matrix|solve for)\b"
            r"|[0-9]\s*[-+*/^=]\s*[0-9]",
            re.IGNORECASE,
        ),
    ),
    (
        "summarize",
        re.compile(r"\b(summari[sz]e|tl;?dr|extract|list the|key points)\b", re.IGNORECASE),
    ),
    (
        "creative",
        re.compile(r"\b(poem|story|haiku|lyrics|slogan|write a (song|tale))\b", re.IGNORECASE),
    ),
)

_HARD_MARKERS = re.compile(
    r"\b(step[- ]by[- ]step|prove|derive|analy[sz]e|design|architect\w*|trade-?offs?|optimi[sz]e|"
    r"compare|evaluate|explain why|justify|rigorous|edge cases?|concurren\w+|distributed)\b",
    re.IGNORECASE,
)
_EASY_MARKERS = re.compile(
    r"^\s*(hi|hello|hey|thanks|thank you|what is|who is|when did|define|translate)\b",
    re.IGNORECASE,
)

# Characters of prompt at which length alone makes a request look fully hard.
_LONG_PROMPT_CHARS = 6000


@dataclass(frozen=True, slots=True)
class Classification:
    task_class: str
    complexity: float
    signals: tuple[str, ...]


def classify(messages: Sequence[ChatMessage]) -> Classification:
    """Classify the conversation by its last user message, with length over the whole of it."""
    last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
    task_class = next((name for name, p in _TASK_PATTERNS if p.search(last_user)), "chat")
    signals: list[str] = []
    complexity = 0.3
    total_chars = sum(len(m.content) for m in messages)
    length_part = min(total_chars / _LONG_PROMPT_CHARS, 1.0) * 0.35
    if length_part >= 0.05:
        signals.append(f"{total_chars} characters")
    complexity += length_part
    hard_hits = {m.group(0).lower() for m in _HARD_MARKERS.finditer(last_user)}
    if hard_hits:
        complexity += min(0.15 * len(hard_hits), 0.45)
        signals.append("asks to " + ", ".join(sorted(hard_hits)))
    if task_class in ("code", "math"):
        complexity += 0.1
        signals.append(f"{task_class} task")
    if _EASY_MARKERS.search(last_user) and not hard_hits and total_chars < 400:
        complexity -= 0.2
        signals.append("short, simple question")
    return Classification(task_class, min(max(complexity, 0.0), 1.0), tuple(signals))
