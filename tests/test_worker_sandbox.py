"""A new workflow run enters the sandbox without reading or compiling the workflow code again.

The sandbox imports the workflow's modules afresh for every run (global state isolation); the
worker keeps their compiled code (worker/sandbox.py), so with no ``.pyc`` on disk
(PYTHONDONTWRITEBYTECODE, as in the Dockerfile) a burst of new enrollments does not compile the
enrollment package once per enrollment on the worker's event loop.
"""

from __future__ import annotations

import importlib.machinery
import sys
from pathlib import Path

from temporalio import workflow
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from worker.sandbox import compile_workflows_once
from workflows import EnrollmentWorkflow

WORKFLOW_CODE = Path(__file__).resolve().parent.parent / "workflows"


def _reads_of_workflow_code(monkeypatch) -> list[str]:
    reads: list[str] = []
    original = importlib.machinery.SourceFileLoader.get_data

    def get_data(self, path):
        if Path(path).resolve().is_relative_to(WORKFLOW_CODE):
            reads.append(path)
        return original(self, path)

    monkeypatch.setattr(importlib.machinery.SourceFileLoader, "get_data", get_data)
    return reads


async def test_new_runs_execute_the_workflow_code_compiled_once(monkeypatch):
    # As in a fresh process: no cache installed yet (other tests' workers install it for good).
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if type(f).__module__ != "worker.sandbox"])
    reads = _reads_of_workflow_code(monkeypatch)
    runner = SandboxedWorkflowRunner()
    definition = workflow._Definition.must_from_class(EnrollmentWorkflow)
    runner.prepare_workflow(definition)
    assert reads, "without the worker's code cache every run reads the workflow code from disk"

    compile_workflows_once()
    runner.prepare_workflow(definition)  # the first run after it compiles once
    reads.clear()
    for _ in range(3):
        runner.prepare_workflow(definition)

    assert reads == []
