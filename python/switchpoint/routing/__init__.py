"""Routing: the four decision levels, the prompt classifier and the strategy weights."""

from switchpoint.routing.decision import Decision, Level, ScoredModel
from switchpoint.routing.levels import Router

__all__ = ["Decision", "Level", "Router", "ScoredModel"]
