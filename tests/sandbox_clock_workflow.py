"""A workflow for tests/test_worker_sandbox.py whose module reads the clock as it is imported: fine
in the host, refused by the sandbox for every run."""

from __future__ import annotations

from temporalio import workflow

from tests import sandbox_clock


@workflow.defn(name="SandboxClockWorkflow")
class ClockWorkflow:
    @workflow.run
    async def run(self) -> str:
        return sandbox_clock.IMPORTED_AT.isoformat()
