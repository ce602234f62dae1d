"""Replay evaluation of routing: how well a router's scores sort prompts by which model needs
them (`switchpoint eval`, benches/routing_eval.py)."""
