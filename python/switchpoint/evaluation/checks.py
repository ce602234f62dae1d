"""The built-in checks a cascading call's answers must pass: not empty, not a refusal, not cut
off at the token limit. Each says why it rejects, for the attempt's record."""

from __future__ import annotations

import re
from collections.abc import Sequence

from switchpoint.evaluation.config import Check

# Refusals are recognised at the start of an answer only: a refusal opens with it, while an answer
# that quotes or discusses one ("... so it said 'I can't help'") must not be thrown away.
_REFUSAL_OPENINGS = re.compile(
    r"""^\W*(
        (i'?m|i\ am)\ (so\ )?sorry,?\ (but\ )?(i|we)\ (can(no|')?t|am\ unable|won'?t|will\ not)
      | sorry,?\ (but\ )?(i|we)\ (can(no|')?t|am\ unable|won'?t)
      | (i|we)\ (can(no|')?t|am\ unable\ to|won'?t|will\ not|must\ decline\ to)
          \ (help|assist|comply|provide|do\ that|answer|fulfil)
      | i\ must\ (decline|refuse)
    )""",
    re.IGNORECASE | re.VERBOSE,
)
_REFUSAL_WINDOW = 200


def rejection(checks: Sequence[Check], content: str, finish_reason: str) -> str:
    """Why the answer fails the first of `checks` it fails; empty when it passes them all."""
    for check in checks:
        if check == "empty" and not content.strip():
            return "empty answer"
        if check == "truncated" and finish_reason == "length":
            return "truncated at the token limit (finish_reason length)"
        if check == "refusal":
            opening = content[:_REFUSAL_WINDOW].replace("\u2019", "'")
            if _REFUSAL_OPENINGS.match(opening):
                return f"refusal: {opening[:60]!r}"
    return ""
