"""The A/B splits' config section (`routing.splits:` in the YAML).

A split sends each tenant's or user's requests to one of its arms, by weight; an arm is a routing
policy (a strategy, a model list, or both; neither is the control arm, routing as configured). The
cross-checks that need the rest of the config (known models, strategies and stages) are
`check_splits`, called by the config's own reference checks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Arms of one split: each is a metric label and a GetStats row, so they stay few.
MAX_ARMS = 16
# Split and arm names: metric label values and log fields, so short and plain.
NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArmConfig(_Strict):
    name: Name
    # Relative to the other arms' weights; 0 drains an arm without renaming the others.
    weight: Annotated[float, Field(ge=0, le=1_000_000)]
    # What the arm sets on a request that left it unset.
    strategy: str | None = None
    models: Annotated[list[str], Field(min_length=1)] | None = None


class AppliesTo(_Strict):
    # The stages whose requests the split takes; None: every request. "" names requests that
    # name no stage.
    stages: Annotated[list[str], Field(min_length=1)] | None = None


class SplitConfig(_Strict):
    # Which identity keeps a request in its arm: RoutingOptions.tenant or RoutingOptions.user.
    sticky: Literal["tenant", "user"]
    arms: Annotated[list[ArmConfig], Field(min_length=1, max_length=MAX_ARMS)]
    applies_to: AppliesTo = Field(default_factory=AppliesTo)

    @model_validator(mode="after")
    def _weighed(self) -> SplitConfig:
        if sum(arm.weight for arm in self.arms) <= 0:
            raise ValueError("the arms' weights must not all be zero")
        return self


def check_splits(
    splits: Mapping[str, SplitConfig],
    *,
    models: frozenset[str],
    stages: Mapping[str, frozenset[str]],
    knows_strategy: Callable[[str], bool],
) -> list[str]:
    """Names that must exist, arms named once, a stage's arms within its models, and each request
    in at most one split. `stages` maps each configured stage to its models."""
    errors: list[str] = []
    claimed: dict[str, frozenset[str]] = {}  # split -> the stages it takes ("*": every request)
    for split_name, split in splits.items():
        path = f"routing.splits.{split_name}"
        if re.fullmatch(NAME_PATTERN, split_name) is None:
            errors.append(f"{path}: a split's name is 1-64 letters, digits, '_', '.' or '-'")
        errors.extend(_check_arms(path, split, models, stages, knows_strategy))
        taken = split.applies_to.stages
        errors.extend(
            f"{path}.applies_to.stages[{j}]: unknown stage '{stage}'"
            for j, stage in enumerate(taken or ())
            if stage and stage not in stages
        )
        claim = frozenset(taken) if taken is not None else frozenset("*")
        # One request, one split: two splits over the same requests would each claim it.
        for other, other_claim in claimed.items():
            if "*" in claim or "*" in other_claim or claim & other_claim:
                errors.append(f"{path}.applies_to: takes requests split '{other}' takes already")
                break
        claimed[split_name] = claim
    return errors


def _check_arms(
    path: str,
    split: SplitConfig,
    models: frozenset[str],
    stages: Mapping[str, frozenset[str]],
    knows_strategy: Callable[[str], bool],
) -> list[str]:
    errors: list[str] = []
    names = [arm.name for arm in split.arms]
    # The stages whose requests the split takes: without applies_to, every stage's.
    taken = split.applies_to.stages
    applies = [s for s in taken if s in stages] if taken is not None else list(stages)
    for i, arm in enumerate(split.arms):
        at = f"{path}.arms[{i}]"
        if names.index(arm.name) != i:
            errors.append(f"{at}.name: duplicate arm name '{arm.name}'")
        if arm.strategy is not None and not knows_strategy(arm.strategy):
            errors.append(f"{at}.strategy: unknown strategy '{arm.strategy}'")
        for j, model in enumerate(arm.models or ()):
            if model not in models:
                errors.append(f"{at}.models[{j}]: unknown model '{model}'")
                continue
            # A stage's whitelist refuses other models (PERMISSION_DENIED): an arm would make
            # every request of its share fail.
            errors.extend(
                f"{at}.models[{j}]: '{model}' is not a model of stage '{stage}'"
                for stage in applies
                if model not in stages[stage]
            )
    return errors
