"""Routing: the decision types (made in Rust) and the router the Rust core runs (`router.py`)."""

from switchpoint._native import Decision, Level, ScoredModel
from switchpoint.routing.router import build_router

__all__ = ["Decision", "Level", "ScoredModel", "build_router"]
