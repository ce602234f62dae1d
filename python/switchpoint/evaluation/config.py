"""The evaluation section (`evaluation:` in the YAML): hooks and cascades.

Hooks are the operator's own code, loaded by dotted path when the engine is built (a path that
does not load refuses the config, naming the field). A cascade is asked per stage
(`routing.stages.NAME.cascade`) or, here, for every call routed by a named strategy.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# `package.module:attribute`: the module is imported, the attribute called with the hook's options.
HOOK_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")

Check = Literal["empty", "refusal", "truncated"]
ALL_CHECKS: tuple[Check, ...] = ("empty", "refusal", "truncated")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HookConfig(_Strict):
    path: Annotated[str, Field(pattern=HOOK_PATH.pattern)]
    # Names the hook in logs, counters and veto reasons; the path when unset.
    name: str | None = None
    # Passed, as a mapping, to the class or factory `path` names.
    options: dict[str, Any] = Field(default_factory=dict)
    # How long a call waits for this hook at each hook point; past it the call goes on without it.
    timeout_ms: Annotated[int, Field(ge=1, le=60_000)] = 250
    # Runs of this hook still going (past their budget too): beyond this many a run is skipped, so
    # a hook that hangs holds a bounded number of threads or tasks.
    max_pending: Annotated[int, Field(ge=1, le=1024)] = 16

    @property
    def label(self) -> str:
        return self.name or self.path


class CascadeConfig(_Strict):
    # Calls routed by one of these strategies cascade, as stages with `cascade: true` do.
    strategies: list[str] = Field(default_factory=list)
    # The built-in checks an answer of a cascading call must pass to be kept.
    checks: list[Check] = Field(default_factory=lambda: list(ALL_CHECKS))


class EvaluationConfig(_Strict):
    hooks: list[HookConfig] = Field(default_factory=list)
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)


def check_evaluation(section: EvaluationConfig, known_strategies: set[str]) -> list[str]:
    """Cross-field rules: strategies that exist, hook names that tell hooks apart."""
    errors = [
        f"evaluation.cascade.strategies[{i}]: unknown strategy '{name}'"
        for i, name in enumerate(section.cascade.strategies)
        if name not in known_strategies
    ]
    labels = [hook.label for hook in section.hooks]
    errors.extend(
        f"evaluation.hooks[{i}].name: duplicate hook name '{label}'"
        for i, label in enumerate(labels)
        if labels.index(label) != i
    )
    return errors
