"""The classifier model's config section (`routing.auto.classifier_model` in the YAML).

Off unless set: asking a model costs money and time, so an operator names the model knowingly.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class ClassifierModelConfig(BaseModel):
    """Ask `model` for the task class and difficulty when the rules' confidence is below
    `below_confidence`, for at most `timeout_ms`; remember `cache_size` answers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A model of the config's `models`; it is called (and charged) like an attempt.
    model: Annotated[str, Field(min_length=1)]
    # The rules' confidence (0..1) under which the model is asked; 0 never asks, 1 almost always.
    below_confidence: Annotated[float, Field(ge=0, le=1)] = 0.5
    # The strictest wait: past it the rules decide. Never more than half of what the caller's
    # deadline leaves, so the answer itself keeps the other half.
    timeout_ms: Annotated[int, Field(ge=1, le=60_000)] = 300
    # Answers remembered per (tenant, last user turn); 0 remembers none.
    cache_size: Annotated[int, Field(ge=0, le=1_000_000)] = 10_000


def check_classifier_model(
    known_models: set[str], config: ClassifierModelConfig | None
) -> list[str]:
    """The cross-reference pydantic cannot check: the model must be one the config defines."""
    if config is None or config.model in known_models:
        return []
    return [f"routing.auto.classifier_model.model: unknown model '{config.model}'"]
