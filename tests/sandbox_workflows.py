"""Workflows for tests/test_worker_sandbox.py: what the worker's sandbox must still re-import for
every run, and still refuse."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from tests.sandbox_counter import bodies_run  # passed through: one list for the host and every run

from tests import sandbox_state  # not passed through: a fresh module for every run

bodies_run.append(sandbox_state.MARK)


@workflow.defn(name="SandboxCountedWorkflow")
class CountedWorkflow:
    @workflow.run
    async def run(self) -> None:
        return None
