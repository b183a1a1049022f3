"""The activities an enrollment runs, called by method (a rename is a type error, not a runtime
"activity not found"), each with the timeouts and retries its side effect needs."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.actions import ActionActivities
    from activities.contacts import ContactActivities
    from activities.email.activities import EmailActivities
    from activities.governance import GovernanceActivities
    from activities.progress import ProgressActivities
    from activities.scheduling import SchedulingActivities
    from activities.sms import SmsActivities
    from activities.webhooks import WebhookActivities
    from nurture.contracts import (
        ActionResult,
        ActivityTimeouts,
        ContactSnapshot,
        CreateTaskInput,
        EnrollInFlowInput,
        NotifyOwnerInput,
        ProgressReport,
        QuietPeriodInput,
        RecentEvents,
        RecentEventsInput,
        ResolvedTime,
        ResolveTimeInput,
        SendEmailInput,
        SendEmailResult,
        SendSmsInput,
        UpdateContactInput,
        WebhookInput,
    )

QUICK = timedelta(seconds=30)
DB_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))
ACTION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    maximum_interval=timedelta(minutes=5),
    maximum_attempts=6,
    non_retryable_error_types=["WebhookRefused", "WebhookRejected", "ContactMissing"],
)
SEND_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=10),
    maximum_attempts=12,
    non_retryable_error_types=["PermanentDeliveryFailure", "TemplateError", "ContactMissing"],
)
SIDE_STEP_ACTIVITIES = {
    NotifyOwnerInput: ActionActivities.notify_owner,
    CreateTaskInput: ActionActivities.create_task,
    WebhookInput: WebhookActivities.call_webhook,
    SendSmsInput: SmsActivities.send_sms,
    EnrollInFlowInput: ActionActivities.enroll_in_flow,
}


async def record_progress(report: ProgressReport) -> None:
    """A local activity: one marker in the history, no activity task, no extra workflow task."""
    await workflow.execute_local_activity_method(
        ProgressActivities.record_progress, report, start_to_close_timeout=QUICK, retry_policy=DB_RETRY
    )


async def send_email(input: SendEmailInput, timeouts: ActivityTimeouts, task_queue: str | None = None) -> SendEmailResult:
    return await workflow.execute_activity_method(
        EmailActivities.send_email,
        input,
        # The provider's rate-limited queue when the enrollment was started with one; the command
        # is the same either way (a task queue is not part of replay's comparison), and an
        # enrollment started without one keeps its own queue for life.
        task_queue=task_queue,
        # Sized from the SMTP timeout; the heartbeat moves a dead worker's send within seconds.
        start_to_close_timeout=timeouts.send,
        heartbeat_timeout=timeouts.heartbeat,
        retry_policy=SEND_RETRY,
    )


async def side_step(
    input: NotifyOwnerInput | CreateTaskInput | WebhookInput | SendSmsInput | EnrollInFlowInput,
    timeouts: ActivityTimeouts,
) -> ActionResult:
    return await workflow.execute_activity_method(
        SIDE_STEP_ACTIVITIES[type(input)],  # type: ignore[arg-type]
        input,
        start_to_close_timeout=timedelta(minutes=1),
        heartbeat_timeout=timeouts.heartbeat,
        retry_policy=ACTION_RETRY,
    )


async def quiet_period(input: QuietPeriodInput) -> None:
    await workflow.execute_activity_method(
        GovernanceActivities.quiet_period, input, start_to_close_timeout=QUICK, retry_policy=DB_RETRY
    )


async def update_contact(input: UpdateContactInput) -> ContactSnapshot:
    return await workflow.execute_activity_method(
        ContactActivities.update_contact, input, start_to_close_timeout=QUICK, retry_policy=DB_RETRY
    )


async def resolve_time(input: ResolveTimeInput) -> ResolvedTime:
    """Pure time zone arithmetic outside the sandbox: a local activity, recorded once in the history."""
    return await workflow.execute_local_activity_method(
        SchedulingActivities.resolve_time, input, start_to_close_timeout=QUICK, retry_policy=DB_RETRY
    )


async def recent_events(input: RecentEventsInput) -> RecentEvents:
    return await workflow.execute_activity_method(
        SchedulingActivities.recent_events, input, start_to_close_timeout=QUICK, retry_policy=DB_RETRY
    )
