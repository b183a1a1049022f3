"""Passed through to the sandbox by tests/sandbox_workflows.py: counts the runs that import it."""

bodies_run: list[object] = []
