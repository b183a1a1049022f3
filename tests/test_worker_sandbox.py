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

import pytest
from temporalio import workflow
from temporalio.worker.workflow_sandbox import RestrictedWorkflowAccessError, SandboxedWorkflowRunner

from worker.sandbox import SandboxRunner, compile_workflows_once
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


# --- the worker's runner (worker.sandbox.SandboxRunner): the SDK's sandbox, entered less often ----


async def test_the_workers_runner_still_imports_the_workflow_module_afresh_for_every_run():
    from tests import sandbox_counter, sandbox_state
    from tests.sandbox_workflows import CountedWorkflow

    runner = SandboxRunner()
    definition = workflow._Definition.must_from_class(CountedWorkflow)
    before = len(sandbox_counter.bodies_run)
    for _ in range(3):
        runner.prepare_workflow(definition)

    # The module body ran once per run, appending to the one passed-through list, each time with
    # a fresh copy of the module it imports without passing it through (not the host's).
    marks = sandbox_counter.bodies_run[before:]
    assert len(marks) == 3
    assert len({id(mark) for mark in marks}) == 3
    assert all(mark is not sandbox_state.MARK for mark in marks)


async def test_the_workers_runner_still_refuses_a_module_that_reads_the_clock_though_the_host_has_it():
    from tests import sandbox_clock
    from tests.sandbox_clock_workflow import ClockWorkflow

    assert sandbox_clock.IMPORTED_AT is not None  # loaded in the host: nothing may hand it over
    runner = SandboxRunner()
    definition = workflow._Definition.must_from_class(ClockWorkflow)
    for _ in range(2):
        with pytest.raises(RestrictedWorkflowAccessError, match="datetime.datetime.now"):
            runner.prepare_workflow(definition)


async def test_the_workers_runner_answers_the_serialization_context_the_sandbox_would():
    from temporalio.worker.workflow_sandbox import _runner

    created = []

    class Keeping(SandboxRunner):
        def create_instance(self, det):
            created.append(super().create_instance(det))
            return created[-1]

    Keeping().prepare_workflow(workflow._Definition.must_from_class(EnrollmentWorkflow))
    instance = created[-1]
    asked_directly = instance.get_serialization_context(None)
    assert asked_directly is not None
    assert asked_directly == _runner._Instance.get_serialization_context(instance, None)
    assert instance.get_external_store_context(None) == _runner._Instance.get_external_store_context(instance, None)
