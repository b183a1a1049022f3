"""One contact's enrollment in one flow, interpreted from the flow snapshot in its input.

Deterministic code only: time from ``workflow.now()``, every side effect in an activity.
Signals and updates change the state (``state.RunState``); the run loop reacts to it, so an
exit (goal met, unsubscribed) interrupts whatever wait is in progress. Each step runs through
its handler in ``steps.STEP_HANDLERS``.

The enrollments row is this workflow's to write (after the starter created it): reports ride
in the send activity a step already runs, or in a local activity when the enrollment comes to
rest (before a wait, a pause, the end), never in an activity of their own per step.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, FailureError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from nurture import search_attributes as attributes
    from nurture.contracts import (
        ContactChangedSignal,
        ContactEventSignal,
        EnrollmentInput,
        EnrollmentResult,
        EnrollmentState,
        ExitSignal,
        PauseSignal,
        PauseState,
        PauseUpdate,
        ProgressReport,
        ResumeSignal,
        ResumeUpdate,
    )
    from nurture.flow.language import Step
    # The pure reducer (no Temporal calls, no clock: every moment is an argument) is loaded once per
    # process, not once per run: the sandbox would otherwise rebuild its dataclasses for every enrollment.
    from workflows.enrollment.state import RunState

from workflows.enrollment import calls
from workflows.enrollment.steps import STEP_HANDLERS


class _Exit(Exception):
    """Raised inside the interpreter once the enrollment must stop."""


class _ContinueAsNew(Exception):
    pass


@workflow.defn(name="EnrollmentWorkflow")
class EnrollmentWorkflow:
    @workflow.init
    def __init__(self, input: EnrollmentInput) -> None:
        self.input = input
        now = workflow.now()
        if input.carried is None:
            self.state_ = RunState.enter_flow(
                input.flow, input.contact, input.paused, now, detail=f"flow {input.flow_id} v{input.flow_version}"
            )
        else:
            self.state_ = RunState(input.flow, input.carried)
            self.state_.carried.runs += 1
        # Reports are numbered in the order they are made and written in that order.
        self._reporting = asyncio.Lock()
        self._visible: str | None = None
        self._not_recorded = False

    # --- signals, updates and the query -----------------------------------------

    @workflow.signal
    def contact_event(self, event: ContactEventSignal) -> None:
        self.state_.hear_event(event, workflow.now())

    @workflow.signal
    def contact_changed(self, change: ContactChangedSignal) -> None:
        self.state_.hear_contact(change.contact, workflow.now())

    @workflow.signal
    def pause(self, pause: PauseSignal) -> None:
        self.state_.pause(PauseState(until=pause.until, reason=pause.reason, paused_by=pause.paused_by), workflow.now())

    @workflow.signal
    def resume(self, resume: ResumeSignal) -> None:
        self.state_.resume(resume.resumed_by, resume.reason, workflow.now())

    @workflow.signal
    def exit(self, request: ExitSignal) -> None:
        self.state_.request_exit(request.reason, workflow.now(), detail=f"by {request.requested_by}")

    @workflow.update
    async def pause_enrollment(self, request: PauseUpdate) -> EnrollmentState:
        """Pause (or extend a pause) and answer with the state the rep will see, once the row says so."""
        self.pause(PauseSignal(until=request.until, reason=request.reason, paused_by=request.paused_by))
        await self._publish_pause()
        return self.state()

    @pause_enrollment.validator
    def _check_pause(self, request: PauseUpdate) -> None:
        if request.until <= workflow.now():
            raise ValueError("the pause must end in the future")
        if not request.reason.strip() or not request.paused_by.strip():
            raise ValueError("a pause needs a reason and the rep who asks for it")
        if self.state_.status != "active":
            raise ValueError(f"the enrollment is {self.state_.status}")

    @workflow.update
    async def resume_enrollment(self, request: ResumeUpdate) -> EnrollmentState:
        self.resume(ResumeSignal(resumed_by=request.resumed_by, reason=request.reason))
        await self._publish_pause()
        return self.state()

    @resume_enrollment.validator
    def _check_resume(self, request: ResumeUpdate) -> None:
        if self.state_.status != "active":
            raise ValueError(f"the enrollment is {self.state_.status}")

    @workflow.query
    def state(self) -> EnrollmentState:
        return self.state_.query(
            workflow.now(),
            workflow_id=workflow.info().workflow_id,
            flow_id=self.input.flow_id,
            flow_version=self.input.flow_version,
            contact_id=self.input.contact_id,
        )

    async def _publish_pause(self) -> None:
        """The row and visibility show a pause at once, not at the next step."""
        await self.report(with_entries=False)
        if self.input.search_attributes:
            workflow.upsert_search_attributes([attributes.PAUSED_KEY.value_set(self._paused())])

    # --- the run loop --------------------------------------------------------------

    @workflow.run
    async def run(self, input: EnrollmentInput) -> EnrollmentResult:
        try:
            return await self._interpret(input)
        except (ActivityError, ApplicationError) as err:
            if isinstance(err, ActivityError) and not_on_record(err):
                return self._unrecorded()
            # The row must not say "active" about a workflow that has failed; a cancelled
            # enrollment is not a failed one (Temporal closes it as cancelled).
            if not is_cancelled_exception(err):
                await self._record_failure(err)
            raise

    async def _interpret(self, input: EnrollmentInput) -> EnrollmentResult:
        state = self.state_
        state.check_contact(workflow.now())
        try:
            while state.carried.current_step is not None:
                self.raise_if_exiting()
                if self._should_continue_as_new():
                    raise _ContinueAsNew()
                step = state.step(state.carried.current_step)
                if state.carried.step_deadline is None:  # not a wait resumed after continue-as-new
                    state.enter(step, workflow.now())
                    self.raise_if_exiting()
                next_step = await STEP_HANDLERS[type(step)](self, step)
                state.carried.step_deadline = None
                state.matched_event = None
                state.carried.current_step = next_step
            state.status = "completed"
            state.note(workflow.now(), "completed")
        except _Exit:
            state.status = "exited"
            state.note(workflow.now(), "exited", detail=state.exit_reason)
        except _ContinueAsNew:
            await self.report()
            await workflow.wait_condition(workflow.all_handlers_finished)
            workflow.logger.info("continuing as new", extra=self._log_fields())
            workflow.continue_as_new(input.model_copy(update={"carried": state.carried}))
        workflow.logger.info(
            f"enrollment {state.status}", extra={**self._log_fields(), "exit_reason": state.exit_reason}
        )
        state.waiting_for = None
        await self.report()
        self._show_step()
        return EnrollmentResult(
            status=state.status,  # type: ignore[arg-type]
            exit_reason=state.exit_reason,
            steps_run=state.steps_run,
            emails_sent=sum(1 for s in state.carried.sends if s.status == "sent"),
        )

    async def _record_failure(self, err: Exception) -> None:
        state = self.state_
        state.status = "failed"
        state.exit_reason = failure_reason(err)
        state.waiting_for = None
        state.note(workflow.now(), "failed", detail=state.exit_reason)
        workflow.logger.warning("enrollment failed", extra={**self._log_fields(), "exit_reason": state.exit_reason})
        await self.report()
        self._show_step()

    # --- helpers the step handlers use -------------------------------------------------

    async def wait(self, step: Step, duration: timedelta, what: str, done=lambda: False) -> bool:
        """Wait until the step's deadline, an exit, or ``done()``; True when ``done()`` ended it."""
        state = self.state_
        state.waiting_for = what
        # At rest first: the deadline counts from the moment the wait begins, after the report.
        await self.rest()
        if state.carried.step_deadline is None:
            state.carried.step_deadline = workflow.now() + duration
        try:
            await self.sleep_until(state.carried.step_deadline, f"{step.id}: {what}", done)
            self.raise_if_exiting()
            if done():
                return True
            if self._should_continue_as_new():
                raise _ContinueAsNew()
            return False
        finally:
            state.waiting_for = None

    async def sleep_until(self, deadline: datetime, summary: str, done=lambda: False) -> None:
        """Come to rest, then sleep until the deadline, an exit, ``done()`` or the server's hint to
        continue as new."""
        await self.rest()
        remaining = (deadline - workflow.now()).total_seconds()
        if remaining <= 0:
            return
        try:
            await workflow.wait_condition(
                lambda: self.state_.exiting or done() or self._should_continue_as_new(),
                timeout=remaining,
                timeout_summary=summary,
            )
        except asyncio.TimeoutError:
            pass

    async def hold_while_paused(self) -> None:
        """A send that falls due during a pause goes out when the pause ends or on resume."""
        state = self.state_
        pause = state.active_pause(workflow.now())
        held = False
        while pause is not None:
            held = state.send_held = True
            state.waiting_for = "pause to end"
            await self.rest()
            try:
                await workflow.wait_condition(
                    lambda: state.exiting or state.carried.paused != pause,
                    timeout=max((pause.until - workflow.now()).total_seconds(), 0.001),
                    timeout_summary="sales pause",
                )
            except asyncio.TimeoutError:
                state.pause_lapsed(pause, workflow.now())
            self.raise_if_exiting()
            pause = state.active_pause(workflow.now())
        if held:
            state.send_held = False
            state.waiting_for = None

    def raise_if_exiting(self) -> None:
        if self.state_.exiting:
            raise _Exit()

    def idempotency_key(self, step: Step) -> str:
        """Stable through retries, worker crashes and continue-as-new; new for a re-enrollment."""
        info = workflow.info()
        visit = self.state_.carried.visits.get(step.id, 1)
        return f"{info.workflow_id}/{info.first_execution_run_id}/{step.id}/{visit}"

    def take_progress_report(self, with_entries: bool = True) -> ProgressReport | None:
        """The next report for the row, to ride in an activity the step runs anyway."""
        info = workflow.info()
        return self.state_.progress_report(
            workflow.now(),
            enrollment_id=self.input.enrollment_id,
            workflow_id=info.workflow_id,
            run_id=info.first_execution_run_id,
            flow_id=self.input.flow_id,
            flow_version=self.input.flow_version,
            contact_id=self.input.contact_id,
            with_entries=with_entries,
        )

    async def rest(self) -> None:
        """Before the enrollment sleeps: the row and (with step attributes) visibility say where it is."""
        await self.report()
        self._show_step()

    async def report(self, with_entries: bool = True) -> None:
        """Write what the row should say now, if it says something else (a local activity)."""
        async with self._reporting:
            report = self.take_progress_report(with_entries)
            if report is not None and not self._not_recorded:
                try:
                    await calls.record_progress(report)
                except ActivityError as err:
                    if not not_on_record(err):
                        raise
                    self._not_recorded = True
                    self.state_.request_exit("not_recorded", workflow.now())

    def _unrecorded(self) -> EnrollmentResult:
        """The starter never committed this enrollment's row: leave at once, without a trace in the index."""
        self._not_recorded = True
        self.state_.status = "exited"
        self.state_.exit_reason = "not_recorded"
        workflow.logger.warning("enrollment not on record", extra=self._log_fields())
        return EnrollmentResult(status="exited", exit_reason="not_recorded", steps_run=self.state_.steps_run, emails_sent=0)

    def _show_step(self) -> None:
        """With step attributes on, visibility follows the step and status at each rest (one action)."""
        if not (self.input.search_attributes and self.input.step_search_attributes):
            return
        state = self.state_
        shown = f"{state.carried.current_step}|{state.status}|{self._paused()}"
        if shown == self._visible:
            return
        self._visible = shown
        workflow.upsert_search_attributes(
            [
                attributes.STEP_KEY.value_set(state.carried.current_step or ""),
                attributes.STATUS_KEY.value_set(state.status),
                attributes.PAUSED_KEY.value_set(self._paused()),
            ]
        )

    def _paused(self) -> bool:
        return self.state_.active_pause(workflow.now()) is not None

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        limit = self.input.continue_as_new_after_events
        return info.is_continue_as_new_suggested() or (limit is not None and info.get_current_history_length() >= limit)

    def _log_fields(self) -> dict:
        return {
            "flow_id": self.input.flow_id,
            "enrollment_id": workflow.info().workflow_id,
            "contact_id": self.input.contact_id,
            "step_id": self.state_.carried.current_step,
        }


def not_on_record(err: ActivityError) -> bool:
    return isinstance(err.cause, ApplicationError) and err.cause.type == "EnrollmentNotRecorded"


def failure_reason(err: Exception) -> str:
    """What failed, in words an operator can act on: "send_email failed: ContactMissing: contact 3 does not exist"."""
    cause = err.cause if isinstance(err, ActivityError) and err.cause is not None else err
    kind = cause.type if isinstance(cause, ApplicationError) and cause.type else None
    detail = cause.message if isinstance(cause, FailureError) else str(cause)
    what = f"{kind}: {detail}" if kind else detail
    if isinstance(err, ActivityError):
        what = f"{err.activity_type} failed: {what}"
    return what[:500]
