"""One handler per step family, found by step type in ``STEP_HANDLERS``.

A handler runs its step and answers the id of the step to go to next (None: the flow is done).
It reads and changes the enrollment through ``run`` (the workflow), whose helpers wait, hold for
a pause and keep the enrollments row current.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from nurture.contracts import (
        ActionResult,
        CreateTaskInput,
        EnrollInFlowInput,
        NotifyOwnerInput,
        QuietPeriodInput,
        RecentEventsInput,
        ResolveTimeInput,
        SendEmailInput,
        SendEmailResult,
        SendSmsInput,
        UpdateContactInput,
        WebhookInput,
    )
    from nurture.flow.conditions import Condition, evaluate, event_lookback
    from nurture.flow.durations import format_duration
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

from workflows.enrollment import calls
from workflows.enrollment.calls import SEND_RETRY

if TYPE_CHECKING:
    from workflows.enrollment.workflow import EnrollmentWorkflow

S = TypeVar("S", bound=Step)
StepHandler = Callable[["EnrollmentWorkflow", S], Awaitable[str | None]]
STEP_HANDLERS: dict[type[Step], StepHandler] = {}


def handles(*types: type[S]) -> Callable[[StepHandler], StepHandler]:
    def register(handler: StepHandler) -> StepHandler:
        for kind in types:
            STEP_HANDLERS[kind] = handler
        return handler

    return register


@handles(SendEmailStep)
async def send_email(run: EnrollmentWorkflow, step: SendEmailStep) -> str | None:
    """Hold for a pause, then one activity gates, reserves and sends; a deferral waits and asks again."""
    state = run.state_
    await run.hold_while_paused()
    variant, template = None, step.template
    if step.variants:
        variant = state.choose(step.id, [(v.id, v.weight) for v in step.variants], workflow.random().random())
        template = next(v.template for v in step.variants if v.id == variant)
    while True:
        try:
            result = await calls.send_email(
                SendEmailInput(
                    idempotency_key=run.idempotency_key(step),
                    workflow_id=workflow.info().workflow_id,
                    flow_id=run.input.flow_id,
                    flow_version=run.input.flow_version,
                    step_id=step.id,
                    contact_id=run.input.contact_id,
                    template=template or "",
                    variant=variant,
                    scheduled_at=workflow.now(),
                    max_attempts=SEND_RETRY.maximum_attempts,
                    flow_timezone=state.flow.timezone,
                    window=state.flow.send_window,
                    transactional=state.flow.transactional,
                    progress=run.take_progress_report(),
                ),
                run.input.timeouts,
                run.input.send_task_queue,
            )
        except ActivityError as err:
            if isinstance(err.cause, ApplicationError) and err.cause.type in ("ContactMissing", "EnrollmentNotRecorded"):
                raise  # nobody left to send to, or never enrolled: the enrollment ends with the reason
            # Delivery failed for good: recorded on the message; the contact goes on, as in HubSpot.
            result = SendEmailResult(message_id=None, status="failed", detail=err.cause.message if err.cause else str(err))
        if result.status != "deferred":
            break
        assert result.defer_until is not None
        # Defer, don't drop: wait out send windows, quiet hours, holidays and the frequency cap.
        state.defer_send(step.id, result.defer_until, result.detail or "deferred", workflow.now())
        await run.sleep_until(result.defer_until, f"{step.id}: {result.detail}")
        run.raise_if_exiting()
        await run.hold_while_paused()  # a pause that began meanwhile still holds the send
    if state.deferred_until is not None:
        state.release_send()
    state.record_send(step.id, result, workflow.now())
    run.raise_if_exiting()
    return state.default_next(step)


@handles(DelayStep)
async def delay(run: EnrollmentWorkflow, step: DelayStep) -> str | None:
    await run.wait(step, step.duration, f"delay {format_duration(step.duration)}")
    return run.state_.default_next(step)


@handles(WaitForEventStep)
async def wait_for_event(run: EnrollmentWorkflow, step: WaitForEventStep) -> str | None:
    state = run.state_
    arrived = await run.wait(step, step.timeout, f"event {step.event}", lambda: state.matched_event is not None)
    state.note(workflow.now(), "wait_ended", step_id=step.id, detail="event arrived" if arrived else "timed out")
    return (step.on_event if arrived else step.on_timeout) or state.default_next(step)


@handles(DelayUntilStep, WaitUntilStep)
async def wait_until(run: EnrollmentWorkflow, step: DelayUntilStep | WaitUntilStep) -> str | None:
    """Wait for a calendar moment in the contact's time zone; exit when a delay_until date has passed."""
    state = run.state_
    if state.carried.step_deadline is None:
        offset = step.offset if isinstance(step, DelayUntilStep) else None
        resolved = await calls.resolve_time(
            ResolveTimeInput(
                contact=state.carried.contact,
                flow_timezone=state.flow.timezone,
                now=workflow.now(),
                kind=step.type,
                date=getattr(step, "date", None),
                property=getattr(step, "property", None),
                offset_months=offset.months if offset else 0,
                offset_seconds=offset.seconds if offset else 0,
                time=step.time,
                yearly=getattr(step, "yearly", False),
                weekdays=list(getattr(step, "weekdays", [])),
            )
        )
        if resolved.at is None:
            state.note(workflow.now(), "wait_skipped", step_id=step.id, detail=resolved.detail)
            if isinstance(step, WaitUntilStep) or step.if_passed == "continue":
                return state.default_next(step)
            state.request_exit("date_passed", workflow.now())
            run.raise_if_exiting()
        state.carried.step_deadline = resolved.at
        state.note(workflow.now(), "wait_planned", step_id=step.id, detail=f"{resolved.detail} -> {resolved.at.isoformat()}")
    await run.wait(step, timedelta(0), f"until {state.carried.step_deadline.isoformat()}")
    return state.default_next(step)


@handles(BranchStep)
async def branch(run: EnrollmentWorkflow, step: BranchStep) -> str | None:
    taken = await holds(run, step.condition)
    run.state_.note(workflow.now(), "branch", step_id=step.id, detail="then" if taken else "else")
    return (step.then if taken else step.else_) or run.state_.default_next(step)


@handles(SwitchStep)
async def switch(run: EnrollmentWorkflow, step: SwitchStep) -> str | None:
    for number, case in enumerate(step.cases):
        if await holds(run, case.condition):
            run.state_.note(workflow.now(), "branch", step_id=step.id, detail=case.name or f"case {number + 1}")
            return case.goto
    run.state_.note(workflow.now(), "branch", step_id=step.id, detail="default")
    return step.default or run.state_.default_next(step)


async def holds(run: EnrollmentWorkflow, condition: Condition) -> bool:
    """Evaluate on the contact the enrollment carries (contact_changed keeps it current), and on
    recent events when the condition looks at them."""
    state = run.state_
    lookback = event_lookback(condition)
    events = None
    if lookback:
        found = await calls.recent_events(
            RecentEventsInput(
                contact_id=run.input.contact_id, types=sorted(lookback), since=workflow.now() - max(lookback.values())
            )
        )
        events = found.events
    return evaluate(condition, state.carried.contact.fields(), state.carried.engagement, events, workflow.now())


@handles(SplitStep)
async def split(run: EnrollmentWorkflow, step: SplitStep) -> str | None:
    path = run.state_.choose(step.id, [(p.name, p.percent) for p in step.paths], workflow.random().random())
    run.state_.note(workflow.now(), "split", step_id=step.id, detail=path)
    return next(p.goto for p in step.paths if p.name == path)


@handles(UpdateContactStep)
async def update_contact(run: EnrollmentWorkflow, step: UpdateContactStep) -> str | None:
    state = run.state_
    contact = await calls.update_contact(
        UpdateContactInput(
            contact_id=run.input.contact_id,
            set=step.set,
            clear=step.clear,
            lifecycle_stage=step.lifecycle_stage,
            add_to_lists=step.add_to_lists,
            remove_from_lists=step.remove_from_lists,
            add_tags=step.add_tags,
            remove_tags=step.remove_tags,
            idempotency_key=run.idempotency_key(step),
        )
    )
    state.hear_contact(contact, workflow.now())
    return state.default_next(step)


@handles(NotifyOwnerStep, CreateTaskStep, WebhookStep, SendSmsStep, EnrollInFlowStep)
async def side_step(
    run: EnrollmentWorkflow, step: NotifyOwnerStep | CreateTaskStep | WebhookStep | SendSmsStep | EnrollInFlowStep
) -> str | None:
    """A step that acts outside the email channel; a failure is recorded and the contact goes on."""
    if isinstance(step, SendSmsStep):
        await run.hold_while_paused()  # a sales pause silences every marketing channel
    common = dict(
        idempotency_key=run.idempotency_key(step),
        workflow_id=workflow.info().workflow_id,
        flow_id=run.input.flow_id,
        step_id=step.id,
        contact_id=run.input.contact_id,
        at=workflow.now(),
    )
    payload: NotifyOwnerInput | CreateTaskInput | WebhookInput | SendSmsInput | EnrollInFlowInput
    if isinstance(step, NotifyOwnerStep):
        payload = NotifyOwnerInput(**common, subject=step.subject, message=step.message, fallback_to=step.fallback_to)
    elif isinstance(step, CreateTaskStep):
        payload = CreateTaskInput(
            **common,
            kind=step.kind,
            title=step.title,
            description=step.description,
            assignee=step.assignee,
            due_at=workflow.now() + step.due_in if step.due_in else None,
            priority=step.priority,
        )
    elif isinstance(step, WebhookStep):
        payload = WebhookInput(**common, url=step.url, method=step.method, body=step.body, headers=step.headers)
    elif isinstance(step, SendSmsStep):
        payload = SendSmsInput(**common, text=step.text)
    else:
        payload = EnrollInFlowInput(**common, target_flow_id=step.flow_id)
    try:
        result = await calls.side_step(payload, run.input.timeouts)
    except ActivityError as err:
        result = ActionResult(status="failed", detail=err.cause.message if err.cause else str(err))
    run.state_.note(workflow.now(), "action", step_id=step.id, detail=f"{step.type} {result.status}: {result.detail}")
    return run.state_.default_next(step)


@handles(HandoffToSalesStep)
async def handoff(run: EnrollmentWorkflow, step: HandoffToSalesStep) -> str | None:
    """Notify the owner, go quiet in every flow, and wait for the sales outcome."""
    state = run.state_
    limit = step.silence_limit or state.flow.silence_limit
    if state.carried.step_deadline is None:
        state.carried.step_deadline = workflow.now() + limit
        await calls.side_step(
            NotifyOwnerInput(
                idempotency_key=run.idempotency_key(step),
                workflow_id=workflow.info().workflow_id,
                flow_id=run.input.flow_id,
                step_id=step.id,
                contact_id=run.input.contact_id,
                at=workflow.now(),
                subject=step.subject,
                message=step.message,
            ),
            run.input.timeouts,
        )
        await quiet(run, True, state.carried.step_deadline, "sales handoff")
    arrived = await run.wait(step, limit, "sales outcome", lambda: state.sales_outcome() is not None)
    outcome = (state.sales_outcome() if arrived else None) or "silence"
    await quiet(run, False, workflow.now(), f"sales outcome: {outcome}")
    state.note(workflow.now(), "handoff_outcome", step_id=step.id, detail=outcome)
    target = {"won": step.on_won, "lost": step.on_lost, "returned": step.on_returned, "silence": step.on_silence}
    return target[outcome] or state.default_next(step)


async def quiet(run: EnrollmentWorkflow, start: bool, until, reason: str) -> None:
    await calls.quiet_period(
        QuietPeriodInput(
            contact_id=run.input.contact_id,
            workflow_id=workflow.info().workflow_id,
            until=until,
            reason=reason,
            start=start,
        )
    )


@handles(GotoStep)
async def goto(run: EnrollmentWorkflow, step: GotoStep) -> str | None:
    state = run.state_
    if state.carried.visits.get(step.id, 0) <= step.max_loops:
        return step.target
    state.note(workflow.now(), "loop_done", step_id=step.id, detail=f"looped {step.max_loops} times")
    return state.default_next(step)


@handles(ExitStep)
async def exit_step(run: EnrollmentWorkflow, step: ExitStep) -> str | None:
    run.state_.request_exit(step.reason, workflow.now())
    run.raise_if_exiting()
    return None
