"""Module state of tests/sandbox_workflows.py, imported afresh (not passed through) for every run."""

MARK = object()
