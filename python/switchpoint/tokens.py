"""Token estimates for routing (context-window fit, expected cost and latency).

Routing needs an estimate before the call; the provider's reported usage is what is billed. The
estimate is ~4 characters per token plus a few tokens of framing per message, which tracks
cl100k/o200k-style tokenizers within about 15% on English prose and errs high on code.
"""

from __future__ import annotations

from collections.abc import Sequence

from switchpoint.providers.base import ChatMessage

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3


def estimate_prompt_tokens(messages: Sequence[ChatMessage]) -> int:
    chars = sum(len(m.content) for m in messages)
    return -(-chars // CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages) + TOKENS_PER_REPLY
