"""Routing: the decision types, and the router the Rust core runs (see `router.py`)."""

from switchpoint.routing.decision import Decision, Level, ScoredModel, StrategyShift
from switchpoint.routing.router import build_router

__all__ = ["Decision", "Level", "ScoredModel", "StrategyShift", "build_router"]
