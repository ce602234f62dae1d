"""One `TokenCounter` for every test that needs exact counts: loading an encoding takes most of a
second, so it is loaded once per session."""

from __future__ import annotations

from switchpoint.tokens import TokenCounter

ENCODINGS = ("cl100k_base", "o200k_base")
COUNTER = TokenCounter()
