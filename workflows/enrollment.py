"""One contact's enrollment in one flow, interpreted from the flow snapshot in its input.

Deterministic code only: time from ``workflow.now()``, every side effect in an
activity. Signals only change state; the interpreter loop reacts to them, so
an exit (goal met, unsubscribed) interrupts whatever wait is in progress.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, FailureError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from nurture.contracts import (
        ActionResult,
        CarriedState,
        CreateTaskInput,
        EnrollInFlowInput,
        NotifyOwnerInput,
        RecentEvents,
        RecentEventsInput,
        ResolvedTime,
        ResolveTimeInput,
        SendSmsInput,
        WebhookInput,
        ContactChangedSignal,
        ContactEventSignal,
        ContactSnapshot,
        EnrollmentInput,
        EnrollmentResult,
        EnrollmentState,
        ExitSignal,
        LoadContactInput,
        PauseSignal,
        PauseState,
        PauseUpdate,
        QuietPeriodInput,
        ReserveSendInput,
        ResumeUpdate,
        SendDecision,
        RecordProgressInput,
        ResumeSignal,
        SendEmailInput,
        SendEmailResult,
        SentEmail,
        TimelineEntry,
        UpdateContactInput,
    )
    from nurture import search_attributes as attributes
    from nurture.flow.durations import format_duration
    from nurture.flow.conditions import (
        Condition,
        ListCondition,
        PropertyCondition,
        TagCondition,
        evaluate,
        event_lookback,
        iter_conditions,
        matches_properties,
    )
    from nurture.flow.language import (
        BranchStep,
        CreateTaskStep,
        DelayStep,
        DelayUntilStep,
        EnrollInFlowStep,
        ExitStep,
        GotoStep,
        HandoffToSalesStep,
        NotifyOwnerStep,
        SendEmailStep,
        SendSmsStep,
        SplitStep,
        Step,
        SwitchStep,
        UpdateContactStep,
        WaitForEventStep,
        WaitUntilStep,
        WebhookStep,
    )

FLOW_ID = SearchAttributeKey.for_keyword(attributes.FLOW_ID.name)
FLOW_VERSION = SearchAttributeKey.for_int(attributes.FLOW_VERSION.name)
CONTACT_ID = SearchAttributeKey.for_keyword(attributes.CONTACT_ID.name)
CURRENT_STEP = SearchAttributeKey.for_keyword(attributes.STEP.name)
STATUS = SearchAttributeKey.for_keyword(attributes.STATUS.name)
PAUSED = SearchAttributeKey.for_bool(attributes.PAUSED.name)
SEARCH_ATTRIBUTES = (FLOW_ID, FLOW_VERSION, CONTACT_ID, CURRENT_STEP, STATUS, PAUSED)

ENGAGEMENT_EVENTS = {"email_opened": "opened", "email_clicked": "clicked"}
UNSUBSCRIBE_EVENTS = {"unsubscribed", "email_unsubscribed"}
MAX_VISITS_PER_STEP = 100
TIMELINE_LIMIT = 200
SEEN_EVENTS_LIMIT = 500

QUICK = timedelta(seconds=30)
ACTION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    maximum_interval=timedelta(minutes=5),
    maximum_attempts=6,
    non_retryable_error_types=["WebhookRefused", "WebhookRejected", "ContactMissing"],
)
DB_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))
SEND_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=10),
    maximum_attempts=12,
    non_retryable_error_types=["PermanentDeliveryFailure", "TemplateError"],
)


class _Exit(Exception):
    """Raised inside the interpreter once the enrollment must stop."""


class _ContinueAsNew(Exception):
    pass


@workflow.defn(name="EnrollmentWorkflow")
class EnrollmentWorkflow:
    @workflow.init
    def __init__(self, input: EnrollmentInput) -> None:
        self._input = input
        self._flow = input.flow
        self._index = {step.id: i for i, step in enumerate(self._flow.steps)}
        self._state: CarriedState | None = input.carried
        self._exit_reason: str | None = None
        self._status = "active"
        self._waiting_for: str | None = None
        self._matched_event: ContactEventSignal | None = None
        self._send_deferred = False
        self._deferred_until: datetime | None = None
        self._deferred_reason: str | None = None
        self._early_signals: list[tuple[str, object]] = []
        self._steps_run = 0

    # --- signals and query ---------------------------------------------------

    @workflow.signal
    def contact_event(self, event: ContactEventSignal) -> None:
        if self._state is None:
            self._early_signals.append(("event", event))
            return
        if event.event_id in self._state.seen_event_ids:
            return
        self._state.seen_event_ids = (self._state.seen_event_ids + [event.event_id])[-SEEN_EVENTS_LIMIT:]
        self._note("event", detail=event.type)
        if event.type in ENGAGEMENT_EVENTS:
            self._record_engagement(event)
        if event.type in UNSUBSCRIBE_EVENTS:
            self._request_exit("unsubscribed")
        goal = self._flow.goal
        if goal and goal.event == event.type and matches_properties(goal.where, event.properties):
            self._request_exit("goal_met")
        step = self._current()
        if isinstance(step, HandoffToSalesStep) and self._matched_event is None and (
            event.type == "returned_to_marketing"
            or (event.type == "deal_stage_changed" and "stage" in event.properties)
        ):
            self._matched_event = event
            if self._sales_outcome() is None:
                self._matched_event = None  # a stage on the way, not an outcome
        if (
            isinstance(step, WaitForEventStep)
            and self._matched_event is None
            and step.event == event.type
            and matches_properties(step.where, event.properties)
        ):
            self._matched_event = event

    @workflow.signal
    def contact_changed(self, change: ContactChangedSignal) -> None:
        if self._state is None:
            self._early_signals.append(("contact", change))
            return
        self._state.contact = change.contact
        self._check_contact()

    @workflow.signal
    def pause(self, pause: PauseSignal) -> None:
        state = PauseState(until=pause.until, reason=pause.reason, paused_by=pause.paused_by)
        if self._state is None:
            self._early_signals.append(("pause", state))
            return
        self._state.paused = state
        self._note("paused", detail=f"until {pause.until.isoformat()} by {pause.paused_by}: {pause.reason}")

    @workflow.signal
    def resume(self, resume: ResumeSignal) -> None:
        if self._state is None:
            self._early_signals.append(("resume", resume))
            return
        if self._state.paused is not None:
            self._state.paused = None
            self._note("resumed", detail=f"by {resume.resumed_by}" + (f": {resume.reason}" if resume.reason else ""))

    @workflow.update
    async def pause_enrollment(self, request: PauseUpdate) -> EnrollmentState:
        """Pause (or extend a pause) and answer with the state the rep will see."""
        await self._until_initialised()
        self.pause(PauseSignal(until=request.until, reason=request.reason, paused_by=request.paused_by))
        await self._publish_pause()
        return self.state()

    @pause_enrollment.validator
    def _check_pause(self, request: PauseUpdate) -> None:
        if request.until <= workflow.now():
            raise ValueError("the pause must end in the future")
        if not request.reason.strip() or not request.paused_by.strip():
            raise ValueError("a pause needs a reason and the rep who asks for it")
        if self._status != "active":
            raise ValueError(f"the enrollment is {self._status}")

    @workflow.update
    async def resume_enrollment(self, request: ResumeUpdate) -> EnrollmentState:
        await self._until_initialised()
        self.resume(ResumeSignal(resumed_by=request.resumed_by, reason=request.reason))
        await self._publish_pause()
        return self.state()

    async def _until_initialised(self) -> None:
        """An update that arrives before the enrollment has loaded its contact waits for that, so
        the rep's pause is applied and confirmed rather than answered with an empty state."""
        if self._state is None and workflow.patched("confirm-early-updates"):
            await workflow.wait_condition(lambda: self._state is not None)

    async def _publish_pause(self) -> None:
        """Visibility shows a pause at once, not at the next step.

        The database flag is the caller's to write (in its own transaction): an activity
        here would wait on the caller's SQLite write lock while the caller waits on us.
        """
        if self._state is not None and workflow.patched("publish-pause"):
            await self._upsert_search_attributes()

    @resume_enrollment.validator
    def _check_resume(self, request: ResumeUpdate) -> None:
        if self._status != "active":
            raise ValueError(f"the enrollment is {self._status}")

    @workflow.signal
    def exit(self, request: ExitSignal) -> None:
        self._request_exit(request.reason, detail=f"by {request.requested_by}")

    @workflow.query
    def state(self) -> EnrollmentState:
        s = self._state
        step = self._current()
        return EnrollmentState(
            workflow_id=workflow.info().workflow_id,
            flow_id=self._input.flow_id,
            flow_version=self._input.flow_version,
            contact_id=self._input.contact_id,
            status=self._status,  # type: ignore[arg-type]
            current_step=s.current_step if s else None,
            current_step_type=step.type if step else None,
            waiting_until=s.step_deadline if s else None,
            waiting_for=self._waiting_for,
            paused=self._active_pause(),
            send_deferred=self._send_deferred,
            deferred_until=self._deferred_until,
            deferred_reason=self._deferred_reason,
            exit_reason=self._exit_reason,
            entered_at=s.entered_at if s else workflow.now(),
            visits=dict(s.visits) if s else {},
            engagement=dict(s.engagement) if s else {},
            choices=dict(s.choices) if s else {},
            sends=list(s.sends) if s else [],
            timeline=list(s.timeline) if s else [],
            runs=s.runs if s else 1,
        )

    # --- the interpreter -------------------------------------------------------

    @workflow.run
    async def run(self, input: EnrollmentInput) -> EnrollmentResult:
        try:
            return await self._interpret(input)
        except (ActivityError, ApplicationError) as err:
            # The enrollments row is the API's index: it must not say "active" about a workflow
            # that has failed. Histories from before this change fail without the record, and a
            # cancelled enrollment is not a failed one (Temporal closes it as cancelled).
            if is_cancelled_exception(err) or not workflow.patched("record-failure"):
                raise
            await self._record_failure(err)
            raise

    async def _interpret(self, input: EnrollmentInput) -> EnrollmentResult:
        if self._state is None:
            contact = await self._load_contact()
            self._state = CarriedState(
                entered_at=workflow.now(),
                contact=contact,
                current_step=self._flow.steps[0].id,
                paused=input.paused,
            )
            self._note("entered", detail=f"flow {input.flow_id} v{input.flow_version}")
            self._replay_early_signals()
            if workflow.patched("confirm-early-updates"):
                # Updates that waited for the contact apply first, so the first progress
                # report already carries their pause.
                await workflow.wait_condition(workflow.all_handlers_finished)
        else:
            self._state.runs += 1
        self._check_contact()

        try:
            while self._state.current_step is not None:
                self._raise_if_exiting()
                if self._should_continue_as_new():
                    raise _ContinueAsNew()
                step = self._flow.steps[self._index[self._state.current_step]]
                resuming = self._state.step_deadline is not None
                if not resuming:
                    await self._enter(step)
                next_step = await self._run_step(step)
                self._state.step_deadline = None
                self._matched_event = None
                self._state.current_step = next_step
            self._status = "completed"
            self._note("completed")
        except _Exit:
            self._status = "exited"
            self._note("exited", detail=self._exit_reason)
        except _ContinueAsNew:
            await workflow.wait_condition(workflow.all_handlers_finished)
            workflow.logger.info("continuing as new", extra=self._log_fields())
            workflow.continue_as_new(input.model_copy(update={"carried": self._state}))
        workflow.logger.info(f"enrollment {self._status}", extra={**self._log_fields(), "exit_reason": self._exit_reason})

        self._waiting_for = None
        await self._record_progress()
        await self._upsert_search_attributes()
        return EnrollmentResult(
            status=self._status,  # type: ignore[arg-type]
            exit_reason=self._exit_reason,
            steps_run=self._steps_run,
            emails_sent=sum(1 for s in self._state.sends if s.status == "sent"),
        )

    async def _record_failure(self, err: Exception) -> None:
        self._status = "failed"
        self._exit_reason = _failure_reason(err)
        self._waiting_for = None
        self._note("failed", detail=self._exit_reason)
        workflow.logger.warning("enrollment failed", extra={**self._log_fields(), "exit_reason": self._exit_reason})
        await self._record_progress()
        await self._upsert_search_attributes()

    async def _enter(self, step: Step) -> None:
        assert self._state is not None
        visits = self._state.visits.get(step.id, 0) + 1
        if visits > MAX_VISITS_PER_STEP:
            self._request_exit("loop_limit", detail=f"step {step.id} ran {MAX_VISITS_PER_STEP} times")
            self._raise_if_exiting()
        self._state.visits[step.id] = visits
        self._steps_run += 1
        self._note("step", step_id=step.id, detail=step.type)
        await self._record_progress()
        await self._upsert_search_attributes()

    async def _run_step(self, step: Step) -> str | None:
        index = self._index[step.id]
        default_next = step.next or self._flow.following(index)
        if isinstance(step, SendEmailStep):
            await self._send_email(step)
            return default_next
        if isinstance(step, DelayStep):
            await self._wait(step, step.duration, f"delay {format_duration(step.duration)}")
            return default_next
        if isinstance(step, WaitForEventStep):
            # An event that arrives while the step is being entered counts; older runs reset here.
            if not workflow.patched("keep-events-during-step-entry"):
                self._matched_event = None
            arrived = await self._wait(step, step.timeout, f"event {step.event}", lambda: self._matched_event is not None)
            self._note("wait_ended", step_id=step.id, detail="event arrived" if arrived else "timed out")
            return (step.on_event if arrived else step.on_timeout) or default_next
        if isinstance(step, (DelayUntilStep, WaitUntilStep)):
            if await self._wait_until(step):
                return default_next
            self._request_exit("date_passed")
            self._raise_if_exiting()
        if isinstance(step, BranchStep):
            taken = await self._holds(step.condition)
            self._note("branch", step_id=step.id, detail="then" if taken else "else")
            return (step.then if taken else step.else_) or default_next
        if isinstance(step, SwitchStep):
            for number, case in enumerate(step.cases):
                if await self._holds(case.condition):
                    self._note("branch", step_id=step.id, detail=case.name or f"case {number + 1}")
                    return case.goto
            self._note("branch", step_id=step.id, detail="default")
            return step.default or default_next
        if isinstance(step, SplitStep):
            path = self._choose(step.id, [(p.name, p.percent) for p in step.paths])
            self._note("split", step_id=step.id, detail=path)
            return next(p.goto for p in step.paths if p.name == path)
        if isinstance(step, UpdateContactStep):
            await self._update_contact(step)
            return default_next
        if isinstance(step, (NotifyOwnerStep, CreateTaskStep, WebhookStep, SendSmsStep, EnrollInFlowStep)):
            await self._act(step)
            return default_next
        if isinstance(step, HandoffToSalesStep):
            outcome = await self._handoff(step)
            target = {"won": step.on_won, "lost": step.on_lost, "returned": step.on_returned,
                      "silence": step.on_silence}[outcome]
            return target or default_next
        if isinstance(step, GotoStep):
            assert self._state is not None
            if self._state.visits.get(step.id, 0) <= step.max_loops:
                return step.target
            self._note("loop_done", step_id=step.id, detail=f"looped {step.max_loops} times")
            return default_next
        if isinstance(step, ExitStep):
            self._request_exit(step.reason)
            self._raise_if_exiting()
        raise ApplicationError(f"unknown step type {step.type}", non_retryable=True)

    async def _holds(self, condition: Condition) -> bool:
        """Evaluate on fresh contact data, and on recent events when the condition looks at them."""
        assert self._state is not None
        if _needs_contact(condition):
            self._state.contact = await self._load_contact()
            self._check_contact()
            self._raise_if_exiting()
        lookback = event_lookback(condition)
        events = None
        if lookback:
            since = workflow.now() - max(lookback.values())
            found: RecentEvents = await workflow.execute_activity(
                "recent_events",
                RecentEventsInput(contact_id=self._input.contact_id, types=sorted(lookback), since=since),
                result_type=RecentEvents,
                start_to_close_timeout=QUICK,
                retry_policy=DB_RETRY,
            )
            events = found.events
        return evaluate(condition, self._state.contact.fields(), self._state.engagement, events, workflow.now())

    def _choose(self, step_id: str, weighted: list[tuple[str, int]]) -> str:
        """A weighted draw made once per enrollment and step: loops and replays draw the same."""
        assert self._state is not None
        if step_id not in self._state.choices:
            total = sum(weight for _, weight in weighted)
            point = workflow.random().random() * total
            for name, weight in weighted:
                point -= weight
                if point < 0:
                    break
            self._state.choices[step_id] = name
        return self._state.choices[step_id]

    async def _wait_until(self, step: DelayUntilStep | WaitUntilStep) -> bool:
        """Wait for a calendar moment in the contact's time zone; False when it has passed."""
        assert self._state is not None
        if self._state.step_deadline is None:
            offset = step.offset if isinstance(step, DelayUntilStep) else None
            resolved: ResolvedTime = await workflow.execute_activity(
                "resolve_time",
                ResolveTimeInput(
                    contact_id=self._input.contact_id,
                    flow_timezone=self._flow.timezone,
                    now=workflow.now(),
                    kind=step.type,
                    date=getattr(step, "date", None),
                    property=getattr(step, "property", None),
                    offset_months=offset.months if offset else 0,
                    offset_seconds=offset.seconds if offset else 0,
                    time=step.time,
                    yearly=getattr(step, "yearly", False),
                    weekdays=list(getattr(step, "weekdays", [])),
                ),
                result_type=ResolvedTime,
                start_to_close_timeout=QUICK,
                retry_policy=DB_RETRY,
            )
            if resolved.at is None:
                self._note("wait_skipped", step_id=step.id, detail=resolved.detail)
                return isinstance(step, WaitUntilStep) or step.if_passed == "continue"
            self._state.step_deadline = resolved.at
            self._note("wait_planned", step_id=step.id, detail=f"{resolved.detail} -> {resolved.at.isoformat()}")
        await self._wait(step, timedelta(0), f"until {self._state.step_deadline.isoformat()}")
        return True

    async def _act(self, step: NotifyOwnerStep | CreateTaskStep | WebhookStep | SendSmsStep | EnrollInFlowStep) -> None:
        assert self._state is not None
        if isinstance(step, SendSmsStep):
            await self._hold_while_paused()  # a sales pause silences every marketing channel
        common = dict(
            idempotency_key=self._idempotency_key(step),
            workflow_id=workflow.info().workflow_id,
            flow_id=self._input.flow_id,
            step_id=step.id,
            contact_id=self._input.contact_id,
            at=workflow.now(),
        )
        if isinstance(step, NotifyOwnerStep):
            name, payload = "notify_owner", NotifyOwnerInput(
                **common, subject=step.subject, message=step.message, fallback_to=step.fallback_to
            )
        elif isinstance(step, CreateTaskStep):
            name, payload = "create_task", CreateTaskInput(
                **common,
                kind=step.kind,
                title=step.title,
                description=step.description,
                assignee=step.assignee,
                due_at=workflow.now() + step.due_in if step.due_in else None,
                priority=step.priority,
            )
        elif isinstance(step, WebhookStep):
            name, payload = "call_webhook", WebhookInput(
                **common, url=step.url, method=step.method, body=step.body, headers=step.headers
            )
        elif isinstance(step, SendSmsStep):
            name, payload = "send_sms", SendSmsInput(**common, text=step.text)
        else:
            name, payload = "enroll_in_flow", EnrollInFlowInput(**common, target_flow_id=step.flow_id)
        try:
            result: ActionResult = await workflow.execute_activity(
                name,
                payload,
                result_type=ActionResult,
                start_to_close_timeout=timedelta(minutes=1),
                heartbeat_timeout=self._input.timeouts.heartbeat,
                retry_policy=ACTION_RETRY,
            )
        except ActivityError as err:
            # A failed side step is recorded and the contact goes on, as a failed send does.
            result = ActionResult(status="failed", detail=err.cause.message if err.cause else str(err))
        self._note("action", step_id=step.id, detail=f"{step.type} {result.status}: {result.detail}")

    async def _wait(self, step: Step, duration: timedelta, what: str, done=lambda: False) -> bool:
        """Wait until the deadline, an exit, or ``done()``; True when ``done()`` ended it."""
        assert self._state is not None
        if self._state.step_deadline is None:
            self._state.step_deadline = workflow.now() + duration
        deadline = self._state.step_deadline
        self._waiting_for = what
        try:
            remaining = (deadline - workflow.now()).total_seconds()
            if remaining > 0:
                try:
                    await workflow.wait_condition(
                        lambda: self._exit_reason is not None or done() or self._should_continue_as_new(),
                        timeout=remaining,
                        timeout_summary=f"{step.id}: {what}",
                    )
                except asyncio.TimeoutError:
                    return False
            self._raise_if_exiting()
            if done():
                return True
            if self._should_continue_as_new():
                raise _ContinueAsNew()
            return False
        finally:
            self._waiting_for = None

    async def _send_email(self, step: SendEmailStep) -> None:
        assert self._state is not None
        await self._hold_while_paused()
        key = self._idempotency_key(step)
        variant = None
        template = step.template
        if step.variants:
            variant = self._choose(step.id, [(v.id, v.weight) for v in step.variants])
            template = next(v.template for v in step.variants if v.id == variant)
        # Enrollments recorded before send governance existed replay without the gate.
        if workflow.patched("send-gate"):
            await self._until_send_allowed(step, key, template or "")
        try:
            result: SendEmailResult = await workflow.execute_activity(
                "send_email",
                SendEmailInput(
                    idempotency_key=key,
                    workflow_id=workflow.info().workflow_id,
                    flow_id=self._input.flow_id,
                    flow_version=self._input.flow_version,
                    step_id=step.id,
                    contact_id=self._input.contact_id,
                    template=template or "",
                    variant=variant,
                    scheduled_at=workflow.now(),
                    max_attempts=SEND_RETRY.maximum_attempts,
                ),
                result_type=SendEmailResult,
                # Sized from the SMTP timeout; the heartbeat moves a dead worker's send within seconds.
                start_to_close_timeout=self._input.timeouts.send,
                heartbeat_timeout=self._input.timeouts.heartbeat,
                retry_policy=SEND_RETRY,
            )
        except ActivityError as err:
            # Delivery failed for good: recorded on the message; the contact goes on, as in HubSpot.
            cause = err.cause.message if err.cause else str(err)
            result = SendEmailResult(message_id=None, status="failed", detail=cause)
        self._state.sends.append(
            SentEmail(step_id=step.id, message_id=result.message_id, status=result.status, at=workflow.now())
        )
        for kind in self._state.early_engagement.pop(str(result.message_id), []):
            self._engage(step.id, kind)
        self._note("email", step_id=step.id, detail=f"{result.status}" + (f": {result.detail}" if result.detail else ""))
        if result.status == "refused":
            self._request_exit("unsubscribed")
            self._raise_if_exiting()

    async def _until_send_allowed(self, step: SendEmailStep, key: str, template: str) -> None:
        """Defer, don't drop: wait out send windows, quiet hours, holidays and the frequency cap."""
        assert self._state is not None
        while True:
            decision: SendDecision = await workflow.execute_activity(
                "reserve_send",
                ReserveSendInput(
                    idempotency_key=key,
                    workflow_id=workflow.info().workflow_id,
                    flow_id=self._input.flow_id,
                    flow_version=self._input.flow_version,
                    step_id=step.id,
                    contact_id=self._input.contact_id,
                    template=template,
                    now=workflow.now(),
                    flow_timezone=self._flow.timezone,
                    window=self._flow.send_window,
                    transactional=self._flow.transactional,
                ),
                result_type=SendDecision,
                start_to_close_timeout=QUICK,
                retry_policy=DB_RETRY,
            )
            if decision.ok:
                break
            assert decision.defer_until is not None
            self._note("send_deferred", step_id=step.id, detail=f"{decision.reason} until {decision.defer_until.isoformat()}")
            self._send_deferred, self._deferred_until, self._deferred_reason = True, decision.defer_until, decision.reason
            self._waiting_for = decision.reason
            await self._upsert_search_attributes()
            try:
                await workflow.wait_condition(
                    lambda: self._exit_reason is not None,
                    timeout=max((decision.defer_until - workflow.now()).total_seconds(), 0.001),
                    timeout_summary=f"{step.id}: {decision.reason}",
                )
            except asyncio.TimeoutError:
                pass
            self._raise_if_exiting()
            await self._hold_while_paused()  # a pause that began meanwhile still holds the send
        if self._deferred_until is not None:
            self._send_deferred, self._deferred_until, self._deferred_reason = False, None, None
            self._waiting_for = None

    async def _handoff(self, step: HandoffToSalesStep) -> str:
        """Notify the owner, go quiet in every flow, and wait for the sales outcome."""
        assert self._state is not None
        limit = step.silence_limit or self._flow.silence_limit
        if self._state.step_deadline is None:
            self._state.step_deadline = workflow.now() + limit
            await workflow.execute_activity(
                "notify_owner",
                NotifyOwnerInput(
                    idempotency_key=self._idempotency_key(step),
                    workflow_id=workflow.info().workflow_id,
                    flow_id=self._input.flow_id,
                    step_id=step.id,
                    contact_id=self._input.contact_id,
                    at=workflow.now(),
                    subject=step.subject,
                    message=step.message,
                ),
                result_type=ActionResult,
                start_to_close_timeout=timedelta(minutes=1),
                heartbeat_timeout=self._input.timeouts.heartbeat,
                retry_policy=ACTION_RETRY,
            )
            await self._quiet_period(True, self._state.step_deadline, "sales handoff")
        arrived = await self._wait(step, limit, "sales outcome", lambda: self._sales_outcome() is not None)
        outcome = self._sales_outcome() if arrived else "silence"
        await self._quiet_period(False, workflow.now(), f"sales outcome: {outcome}")
        self._note("handoff_outcome", step_id=step.id, detail=outcome)
        return outcome or "silence"

    def _sales_outcome(self) -> str | None:
        event = self._matched_event
        if event is None:
            return None
        if event.type == "returned_to_marketing":
            return "returned"
        stage = str(event.properties.get("stage", "")).lower().replace("_", "").replace(" ", "")
        return {"closedwon": "won", "won": "won", "closedlost": "lost", "lost": "lost"}.get(stage)

    async def _quiet_period(self, start: bool, until: datetime, reason: str) -> None:
        await workflow.execute_activity(
            "quiet_period",
            QuietPeriodInput(
                contact_id=self._input.contact_id,
                workflow_id=workflow.info().workflow_id,
                until=until,
                reason=reason,
                start=start,
            ),
            start_to_close_timeout=QUICK,
            retry_policy=DB_RETRY,
        )

    async def _hold_while_paused(self) -> None:
        """A send that falls due during a pause goes out when the pause ends or on resume."""
        pause = self._active_pause()
        held = False
        while pause is not None:
            held = self._send_deferred = True
            self._waiting_for = "pause to end"
            await self._record_progress()
            await self._upsert_search_attributes()
            try:
                await workflow.wait_condition(
                    lambda: self._exit_reason is not None or self._state.paused != pause,  # type: ignore[union-attr]
                    timeout=max((pause.until - workflow.now()).total_seconds(), 0.001),
                    timeout_summary="sales pause",
                )
            except asyncio.TimeoutError:
                if self._state is not None and self._state.paused == pause:
                    self._state.paused = None
                    self._note("pause_ended")
            self._raise_if_exiting()
            pause = self._active_pause()
        if held:
            self._send_deferred = False
            self._waiting_for = None
            await self._record_progress()
            await self._upsert_search_attributes()

    async def _update_contact(self, step: UpdateContactStep) -> None:
        assert self._state is not None
        self._state.contact = await workflow.execute_activity(
            "update_contact",
            UpdateContactInput(
                contact_id=self._input.contact_id,
                set=step.set,
                clear=step.clear,
                lifecycle_stage=step.lifecycle_stage,
                add_to_lists=step.add_to_lists,
                remove_from_lists=step.remove_from_lists,
                add_tags=step.add_tags,
                remove_tags=step.remove_tags,
                idempotency_key=self._idempotency_key(step),
            ),
            result_type=ContactSnapshot,
            start_to_close_timeout=QUICK,
            retry_policy=DB_RETRY,
        )
        self._check_contact()

    async def _load_contact(self) -> ContactSnapshot:
        return await workflow.execute_activity(
            "load_contact",
            LoadContactInput(contact_id=self._input.contact_id),
            result_type=ContactSnapshot,
            start_to_close_timeout=QUICK,
            retry_policy=DB_RETRY,
        )

    async def _record_progress(self) -> None:
        state = self._state  # None only when the enrollment failed before loading its contact
        await workflow.execute_activity(
            "record_progress",
            RecordProgressInput(
                workflow_id=workflow.info().workflow_id,
                run_id=workflow.info().first_execution_run_id,
                flow_id=self._input.flow_id,
                flow_version=self._input.flow_version,
                contact_id=self._input.contact_id,
                entered_at=state.entered_at if state else workflow.info().start_time,
                status=self._status,  # type: ignore[arg-type]
                current_step=state.current_step if state else None,
                paused=self._active_pause() is not None,
                exit_reason=self._exit_reason,
                at=workflow.now(),
            ),
            start_to_close_timeout=QUICK,
            retry_policy=DB_RETRY,
        )

    async def _upsert_search_attributes(self) -> None:
        if not self._input.search_attributes or self._state is None:
            return
        workflow.upsert_search_attributes(
            [
                FLOW_ID.value_set(str(self._input.flow_id)),
                FLOW_VERSION.value_set(self._input.flow_version),
                CONTACT_ID.value_set(str(self._input.contact_id)),
                CURRENT_STEP.value_set(self._state.current_step or ""),
                STATUS.value_set(self._status),
                PAUSED.value_set(self._active_pause() is not None),
            ]
        )

    # --- helpers -----------------------------------------------------------

    def _log_fields(self) -> dict:
        return {
            "flow_id": self._input.flow_id,
            "enrollment_id": workflow.info().workflow_id,
            "contact_id": self._input.contact_id,
            "step_id": self._state.current_step if self._state else None,
        }

    def _idempotency_key(self, step: Step) -> str:
        """Stable through retries, worker crashes and continue-as-new; new for a re-enrollment."""
        assert self._state is not None
        info = workflow.info()
        return f"{info.workflow_id}/{info.first_execution_run_id}/{step.id}/{self._state.visits.get(step.id, 1)}"

    def _current(self) -> Step | None:
        if self._state is None or self._state.current_step is None:
            return None
        return self._flow.steps[self._index[self._state.current_step]]

    def _active_pause(self) -> PauseState | None:
        if self._state is None or self._state.paused is None:
            return None
        return self._state.paused if self._state.paused.until > workflow.now() else None

    def _check_contact(self) -> None:
        assert self._state is not None
        contact = self._state.contact
        if not contact.reachable:
            self._request_exit("unsubscribed" if contact.subscription_status == "unsubscribed" else contact.subscription_status)
        goal = self._flow.goal
        if goal and goal.condition is not None and evaluate(goal.condition, contact.fields(), self._state.engagement):
            self._request_exit("goal_met")

    def _record_engagement(self, event: ContactEventSignal) -> None:
        assert self._state is not None
        message_id = str(event.properties.get("message_id"))
        kind = ENGAGEMENT_EVENTS[event.type]
        for send in self._state.sends:
            if send.message_id is not None and str(send.message_id) == message_id:
                self._engage(send.step_id, kind)
                return
        # The provider can report an open before the send activity's result reaches us.
        early = self._state.early_engagement.setdefault(message_id, [])
        if kind not in early:
            early.append(kind)

    def _engage(self, step_id: str, kind: str) -> None:
        assert self._state is not None
        seen = self._state.engagement.setdefault(step_id, [])
        if kind not in seen:
            seen.append(kind)

    def _request_exit(self, reason: str, detail: str | None = None) -> None:
        if self._exit_reason is None and self._status == "active":
            self._exit_reason = reason
            if detail:
                self._note("exit_requested", detail=f"{reason} {detail}")

    def _raise_if_exiting(self) -> None:
        if self._exit_reason is not None:
            raise _Exit()

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        limit = self._input.continue_as_new_after_events
        return info.is_continue_as_new_suggested() or (
            limit is not None and info.get_current_history_length() >= limit
        )

    def _replay_early_signals(self) -> None:
        """Signals that arrived before the first activity finished are applied now, in order."""
        for kind, payload in self._early_signals:
            if kind == "event":
                self.contact_event(payload)  # type: ignore[arg-type]
            elif kind == "contact":
                self.contact_changed(payload)  # type: ignore[arg-type]
            elif kind == "pause":
                assert self._state is not None
                self._state.paused = payload  # type: ignore[assignment]
            elif kind == "resume":
                self.resume(payload)  # type: ignore[arg-type]
        self._early_signals.clear()

    def _note(self, kind: str, step_id: str | None = None, detail: str | None = None) -> None:
        if self._state is None:
            return
        entry = TimelineEntry(at=workflow.now(), kind=kind, step_id=step_id or self._state.current_step, detail=detail)
        self._state.timeline = (self._state.timeline + [entry])[-TIMELINE_LIMIT:]


def _failure_reason(err: Exception) -> str:
    """What failed, in words an operator can act on: "reserve_send failed: ContactMissing: contact 3 does not exist"."""
    cause = err.cause if isinstance(err, ActivityError) and err.cause is not None else err
    kind = cause.type if isinstance(cause, ApplicationError) and cause.type else None
    detail = cause.message if isinstance(cause, FailureError) else str(cause)
    what = f"{kind}: {detail}" if kind else detail
    if isinstance(err, ActivityError):
        what = f"{err.activity_type} failed: {what}"
    return what[:500]


def _needs_contact(condition: Condition) -> bool:
    """Conditions on contact data read fresh data; engagement-only and event conditions need none."""
    return any(isinstance(c, (PropertyCondition, ListCondition, TagCondition)) for c in iter_conditions(condition))
