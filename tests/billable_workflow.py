"""A workflow that does one or more of every billable thing, for tests/test_billable_actions.py.

Its first run: a patch marker (free), three local activities in two workflow tasks (2 actions),
an activity that succeeds on its second attempt (2), another activity (1), a timer (1), an update
accepted (1), a signal received (1), a search attribute upsert (1) and the start itself (1): 10
actions. It then continues as new; the second run only starts (1) and completes.

Kept apart from the test so the workflow sandbox imports only temporalio and pydantic.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ApplicationError

BILLABLE_WORKFLOW = "BillableKindsWorkflow"
# Registered on the dev server by tests/conftest.py (the enrollment workflow's search attributes).
STEP = SearchAttributeKey.for_keyword("NurtureStep")
RUN_FIRST_AND_CONTINUE = "first"
FIRST_RUN_ACTIONS = {
    "workflow_started": 1,
    "local_activity_tasks": 2,
    "activities": 2,
    "activity_retries": 1,
    "timers": 1,
    "updates": 1,
    "signals": 1,
    "search_attribute_upserts": 1,
}


class KindsInput(BaseModel):
    run: str = RUN_FIRST_AND_CONTINUE


class Echo(BaseModel):
    value: int


@activity.defn(name="billable_echo")
async def echo(value: Echo) -> Echo:
    return value


@activity.defn(name="billable_flaky")
async def flaky(value: Echo) -> Echo:
    if activity.info().attempt == 1:
        raise ApplicationError("the first attempt fails on purpose")
    return value


@workflow.defn(name=BILLABLE_WORKFLOW)
class BillableKindsWorkflow:
    def __init__(self) -> None:
        self._signalled = False
        self._updated = False

    @workflow.run
    async def run(self, input: KindsInput) -> int:
        if input.run != RUN_FIRST_AND_CONTINUE:
            return 0
        workflow.patched("billable-patch")
        for value in (1, 2):
            await workflow.execute_local_activity(echo, Echo(value=value), start_to_close_timeout=timedelta(seconds=10))
        await workflow.execute_activity(
            flaky, Echo(value=3), start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100)),
        )
        await workflow.execute_activity(echo, Echo(value=4), start_to_close_timeout=timedelta(seconds=10))
        await workflow.sleep(timedelta(milliseconds=100))
        await workflow.execute_local_activity(echo, Echo(value=5), start_to_close_timeout=timedelta(seconds=10))
        await workflow.wait_condition(lambda: self._updated and self._signalled)
        workflow.upsert_search_attributes([STEP.value_set("done")])
        workflow.continue_as_new(KindsInput(run="second"))

    @workflow.update
    def bump(self) -> None:
        self._updated = True

    @workflow.signal
    def go(self) -> None:
        self._signalled = True
