"""A cheap heuristic reading of a prompt: its task class and how hard it looks.

It runs on every auto-routed request, so it is a handful of regular expressions over the last user
turn, not a model, and those run in the Rust core (`switchpoint_core::classify`, where the patterns
and weights live). Its output only picks weights and a capability hint; the Rust scorer still ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from switchpoint import _native
from switchpoint.providers.base import ChatMessage


class Classification(NamedTuple):
    task_class: str
    complexity: float
    signals: tuple[str, ...]


def classify(messages: Sequence[ChatMessage]) -> Classification:
    """Classify the conversation by its last user message, with length over the whole of it."""
    last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
    total_chars = sum(len(m.content) for m in messages)
    task_class, complexity, signals = _native.classify(last_user, total_chars)
    return Classification(task_class, complexity, tuple(signals))
