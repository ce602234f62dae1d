"""The request the OpenAI adapter tests send, and what the loopback server answers to it."""

from __future__ import annotations

from switchpoint.providers.base import ChatMessage, ProviderRequest

MODEL = "gpt-4o-mini"
REQUEST = ProviderRequest(
    upstream_model=MODEL,
    messages=[
        ChatMessage("system", "You answer briefly."),
        ChatMessage("user", "first question"),
        ChatMessage("assistant", "first answer"),
        ChatMessage("user", "tell me about routing"),
    ],
)
ANSWER = f"[{MODEL}] tell me about routing"
ANSWER_TOKENS = [f"[{MODEL}] ", "tell ", "me ", "about ", "routing"]
INPUT_WORDS = 3 + 2 + 2 + 4  # the server counts words across all messages
