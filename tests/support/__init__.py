"""Helpers shared by tests: stand-in child processes and the like."""
