"""The baselines for benchmarks/enrollments.py: the least a Temporal workflow of the same shape costs.

``RawWorkflow``: start → one activity that does nothing → a timer → one activity → complete, with a
signal the query reflects (for the round trip) and a signal that ends the wait early (the analogue
of a goal event). ``RawBranchWorkflow``: an activity → wait for a signal (or a timeout) → branch →
an activity, the shape of send_email → wait_for_event → branch → send_email. ``RawSendWorkflow``:
asleep until a given instant, then one send on a task queue of its own (benchmarks/send_rate.py). Kept in their own module
so the workflow sandbox imports only temporalio and pydantic.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.common import RetryPolicy

RAW_WORKFLOW = "BenchmarkRawWorkflow"
RAW_BRANCH_WORKFLOW = "BenchmarkRawBranchWorkflow"


class RawInput(BaseModel):
    timer_seconds: float


class NoopInput(BaseModel):
    step: int


class PingSignal(BaseModel):
    value: int


class FinishSignal(BaseModel):
    reason: str


class PingsQuery(BaseModel):
    """Nothing to ask for: the query answers the last ping it heard."""


class Pings(BaseModel):
    last: int
    waiting: bool


class RawResult(BaseModel):
    finished_early: bool


class RawBranchInput(BaseModel):
    timeout_seconds: float
    # The branch's condition, as the engine's would read a contact property.
    company: str


class EventSignal(BaseModel):
    type: str


class RawBranchResult(BaseModel):
    event_arrived: bool
    took_then: bool


@activity.defn(name="benchmark_noop")
async def noop(input: NoopInput) -> None:
    return None


@workflow.defn(name=RAW_WORKFLOW)
class RawWorkflow:
    def __init__(self) -> None:
        self._last_ping = -1
        self._finish = False
        self._waiting = False

    @workflow.run
    async def run(self, input: RawInput) -> RawResult:
        await workflow.execute_activity(noop, NoopInput(step=1), start_to_close_timeout=timedelta(seconds=30))
        self._waiting = True
        try:
            await workflow.wait_condition(lambda: self._finish, timeout=timedelta(seconds=input.timer_seconds))
        except asyncio.TimeoutError:
            pass
        self._waiting = False
        if self._finish:
            return RawResult(finished_early=True)
        await workflow.execute_activity(noop, NoopInput(step=2), start_to_close_timeout=timedelta(seconds=30))
        return RawResult(finished_early=False)

    @workflow.signal
    def ping(self, signal: PingSignal) -> None:
        self._last_ping = signal.value

    @workflow.signal
    def finish(self, signal: FinishSignal) -> None:
        self._finish = True

    @workflow.query
    def pings(self, query: PingsQuery) -> Pings:
        return Pings(last=self._last_ping, waiting=self._waiting)


@workflow.defn(name=RAW_BRANCH_WORKFLOW)
class RawBranchWorkflow:
    def __init__(self) -> None:
        self._event: EventSignal | None = None
        self._waiting = False

    @workflow.run
    async def run(self, input: RawBranchInput) -> RawBranchResult:
        await workflow.execute_activity(noop, NoopInput(step=1), start_to_close_timeout=timedelta(seconds=30))
        self._waiting = True
        try:
            await workflow.wait_condition(lambda: self._event is not None, timeout=timedelta(seconds=input.timeout_seconds))
        except asyncio.TimeoutError:
            pass
        self._waiting = False
        took_then = input.company == "Bench"
        await workflow.execute_activity(
            noop, NoopInput(step=2 if took_then else 3), start_to_close_timeout=timedelta(seconds=30)
        )
        return RawBranchResult(event_arrived=self._event is not None, took_then=took_then)

    @workflow.signal
    def event(self, signal: EventSignal) -> None:
        self._event = signal

    @workflow.query
    def pings(self, query: PingsQuery) -> Pings:
        return Pings(last=-1, waiting=self._waiting)


RAW_SEND_WORKFLOW = "BenchmarkRawSendWorkflow"
RAW_SEND_ACTIVITY = "benchmark_raw_send"


class RawSendInput(BaseModel):
    """benchmarks/send_rate.py's bare shape: asleep until ``due``, then one send on ``send_queue``."""

    due: datetime
    send_queue: str
    to: str


class RawSendRequest(BaseModel):
    message_id: str
    to: str


@workflow.defn(name=RAW_SEND_WORKFLOW)
class RawSendWorkflow:
    @workflow.run
    async def run(self, input: RawSendInput) -> None:
        wait = (input.due - workflow.now()).total_seconds()
        if wait > 0:
            await asyncio.sleep(wait)
        await workflow.execute_activity(
            RAW_SEND_ACTIVITY,
            RawSendRequest(message_id=workflow.info().workflow_id, to=input.to),
            task_queue=input.send_queue,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)),
        )
