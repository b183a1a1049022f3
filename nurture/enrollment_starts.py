"""Starting the workflow of an enrollments row already written: idempotent, retried, many at once.

Every row owns one workflow id (``enrollment_workflow_id`` with the row's sequence) and every start
rejects a duplicate, so starting a row's workflow again (a retried page or request) meets the one
an earlier try started, whether it still runs or has closed, and that counts as started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from nurture.contracts import ENROLLMENT_WORKFLOW, ActivityTimeouts, EnrollmentInput, PauseState
from nurture.flow.language import FlowDefinition
from nurture.logging import get_logger
from nurture.search_attributes import start_attributes
from nurture.models import Contact, Enrollment, utcnow
from nurture.settings import Settings
from nurture.snapshots import contact_snapshot

# Worth another try: the server was unreachable, busy or timed out. Anything else (a bad
# request, a missing namespace) fails the same way again.
TRANSIENT = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.ABORTED,
        RPCStatusCode.INTERNAL,
        RPCStatusCode.UNKNOWN,
        RPCStatusCode.CANCELLED,
    }
)


@dataclass
class PendingStart:
    """A row written and committed, and the input its workflow starts with."""

    enrollment: Enrollment
    input: EnrollmentInput


@dataclass
class StartFailure:
    pending: PendingStart
    error: BaseException

    @property
    def detail(self) -> str:
        return str(self.error) or type(self.error).__name__


class Starter:
    def __init__(self, client: Client, settings: Settings):
        self.client = client
        self.settings = settings

    def input_for(self, enrollment: Enrollment, definition: FlowDefinition, contact: Contact) -> EnrollmentInput:
        assert enrollment.id is not None, "the row is written before its workflow starts"
        pause = None
        if contact.paused_until is not None and contact.paused_until > utcnow():
            pause = PauseState(
                until=contact.paused_until, reason=contact.pause_reason or "", paused_by=contact.paused_by or ""
            )
        return EnrollmentInput(
            flow_id=enrollment.flow_id,
            flow_version=enrollment.flow_version,
            contact_id=enrollment.contact_id,
            flow=definition,
            enrollment_id=enrollment.id,
            contact=contact_snapshot(contact),
            paused=pause,
            search_attributes=self.settings.temporal_search_attributes,
            step_search_attributes=self.settings.temporal_step_search_attributes,
            timeouts=ActivityTimeouts(
                send=self.settings.send_activity_timeout, heartbeat=self.settings.activity_heartbeat_timeout
            ),
            send_task_queue=self.settings.send_task_queue if self.settings.send_rate_per_second else None,
        )

    async def start(self, pending: PendingStart) -> None:
        """Start the row's workflow, trying again on transient errors; raises the last RPCError."""
        attempts = self.settings.enrollment_start_attempts
        for attempt in range(1, attempts + 1):
            try:
                await self.client.start_workflow(
                    ENROLLMENT_WORKFLOW,
                    pending.input,
                    id=pending.enrollment.workflow_id,
                    task_queue=self.settings.temporal_task_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    # Flow, version and contact are known at start: set now, never upserted (free).
                    search_attributes=(
                        start_attributes(pending.input.flow_id, pending.input.flow_version, pending.input.contact_id)
                        if pending.input.search_attributes else None
                    ),
                )
                return
            except WorkflowAlreadyStartedError:
                return  # this row's workflow exists: an earlier try started it
            except RPCError as exc:
                if exc.status not in TRANSIENT or attempt == attempts:
                    raise
                get_logger(
                    flow_id=pending.enrollment.flow_id,
                    enrollment_id=pending.enrollment.workflow_id,
                    contact_id=pending.enrollment.contact_id,
                ).info("enrollment_start_retried", attempt=attempt, error=str(exc))
                await asyncio.sleep(self.settings.enrollment_start_backoff_seconds * 2 ** (attempt - 1))

    async def start_all(
        self, pendings: Sequence[PendingStart], on_done: Callable[[PendingStart], None] | None = None
    ) -> list[StartFailure]:
        """Start every row's workflow, ``enrollment_start_concurrency`` at a time; the ones that failed."""
        if len(pendings) == 1:  # the common case of one API request: no task, no semaphore
            return [failure for failure in [await self._try(pendings[0], on_done)] if failure is not None]
        gate = asyncio.Semaphore(self.settings.enrollment_start_concurrency)

        async def one(pending: PendingStart) -> StartFailure | None:
            async with gate:
                return await self._try(pending, on_done)

        results = await asyncio.gather(*(one(p) for p in pendings))
        return [failure for failure in results if failure is not None]

    async def _try(self, pending: PendingStart, on_done: Callable[[PendingStart], None] | None) -> StartFailure | None:
        try:
            await self.start(pending)
        except Exception as exc:  # reported per row; the caller decides (undo, or leave for a retry)
            get_logger(
                flow_id=pending.enrollment.flow_id,
                enrollment_id=pending.enrollment.workflow_id,
                contact_id=pending.enrollment.contact_id,
            ).warning("enrollment_start_failed", error=str(exc) or type(exc).__name__)
            return StartFailure(pending, exc)
        finally:
            if on_done is not None:
                on_done(pending)
        return None
