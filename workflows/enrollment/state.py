"""What an enrollment knows, and how each thing that happens to it changes that: no Temporal calls.

Every function takes the moment it happens at as an argument, so the whole reducer runs in a
plain unit test (tests/test_enrollment_state.py). The workflow class owns one ``RunState`` and
feeds it its signals, updates and activity results; the step handlers read and change it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from temporalio import workflow

# Shared with the rest of the process, not re-imported in the sandbox: flows and models from
# the input must be instances of these very classes.
with workflow.unsafe.imports_passed_through():
    from nurture.contracts import (
        CarriedState,
        ContactEventSignal,
        ContactSnapshot,
        EnrollmentState,
        PauseState,
        ProgressReport,
        SendEmailResult,
        SentEmail,
        StepEntry,
        TimelineEntry,
    )
    from nurture.event_types import DEAL_STAGE_CHANGED, ENGAGEMENT_KINDS, RETURNED_TO_MARKETING, UNSUBSCRIBE_EVENTS
    from nurture.flow.conditions import evaluate, matches_properties
    from nurture.flow.language import FlowDefinition, HandoffToSalesStep, Step, WaitForEventStep

MAX_VISITS_PER_STEP = 100
TIMELINE_LIMIT = 200
SEEN_EVENTS_LIMIT = 500
SALES_OUTCOMES = {"closedwon": "won", "won": "won", "closedlost": "lost", "lost": "lost"}


@dataclass
class RunState:
    flow: FlowDefinition
    carried: CarriedState
    status: str = "active"
    exit_reason: str | None = None
    # The event that ended the current wait_for_event or handoff step.
    matched_event: ContactEventSignal | None = None
    waiting_for: str | None = None
    send_held: bool = False
    deferred_until: datetime | None = None
    deferred_reason: str | None = None
    steps_run: int = 0
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {step.id: i for i, step in enumerate(self.flow.steps)}

    @classmethod
    def enter_flow(
        cls, flow: FlowDefinition, contact: ContactSnapshot, paused: PauseState | None, now: datetime, detail: str
    ) -> RunState:
        state = cls(flow, CarriedState(entered_at=now, contact=contact, current_step=flow.steps[0].id, paused=paused))
        state.note(now, "entered", detail=detail)
        return state

    # --- where the enrollment is -------------------------------------------

    def step(self, step_id: str) -> Step:
        return self.flow.steps[self.index[step_id]]

    def current(self) -> Step | None:
        step_id = self.carried.current_step
        return None if step_id is None else self.step(step_id)

    def default_next(self, step: Step) -> str | None:
        return step.next or self.flow.following(self.index[step.id])

    def enter(self, step: Step, now: datetime) -> None:
        """Count the visit (the loop guard) and queue the entry for the statistics."""
        visits = self.carried.visits.get(step.id, 0) + 1
        if visits > MAX_VISITS_PER_STEP:
            self.request_exit("loop_limit", now, detail=f"step {step.id} ran {MAX_VISITS_PER_STEP} times")
            return
        self.carried.visits[step.id] = visits
        self.steps_run += 1
        self.note(now, "step", step_id=step.id, detail=step.type)
        self.carried.unreported.append(
            StepEntry(step_id=step.id, at=now, lifecycle_stage=self.carried.contact.lifecycle_stage)
        )

    def note(self, now: datetime, kind: str, step_id: str | None = None, detail: str | None = None) -> None:
        entry = TimelineEntry(at=now, kind=kind, step_id=step_id or self.carried.current_step, detail=detail)
        self.carried.timeline = (self.carried.timeline + [entry])[-TIMELINE_LIMIT:]

    # --- exits -----------------------------------------------------------------

    @property
    def exiting(self) -> bool:
        return self.exit_reason is not None

    def request_exit(self, reason: str, now: datetime, detail: str | None = None) -> None:
        if self.exit_reason is None and self.status == "active":
            self.exit_reason = reason
            if detail:
                self.note(now, "exit_requested", detail=f"{reason} {detail}")

    def check_contact(self, now: datetime) -> None:
        """An unreachable contact leaves; a goal met by the contact's data ends the enrollment."""
        contact = self.carried.contact
        if not contact.reachable:
            reason = "unsubscribed" if contact.subscription_status == "unsubscribed" else contact.subscription_status
            self.request_exit(reason, now)
        goal = self.flow.goal
        if goal and goal.condition is not None and evaluate(goal.condition, contact.fields(), self.carried.engagement):
            self.request_exit("goal_met", now)

    # --- what the enrollment hears -------------------------------------------

    def hear_event(self, event: ContactEventSignal, now: datetime) -> None:
        if event.event_id in self.carried.seen_event_ids:
            return  # routed twice (a retried request, a replayed fan-out): heard once
        self.carried.seen_event_ids = (self.carried.seen_event_ids + [event.event_id])[-SEEN_EVENTS_LIMIT:]
        self.note(now, "event", detail=event.type)
        if event.type in ENGAGEMENT_KINDS:
            self._record_engagement(event)
        if event.type in UNSUBSCRIBE_EVENTS:
            self.request_exit("unsubscribed", now)
        goal = self.flow.goal
        if goal and goal.event == event.type and matches_properties(goal.where, event.properties):
            self.request_exit("goal_met", now)
        step = self.current()
        if self.matched_event is not None:
            return
        if isinstance(step, HandoffToSalesStep) and sales_outcome(event) is not None:
            self.matched_event = event
        elif (
            isinstance(step, WaitForEventStep)
            and step.event == event.type
            and matches_properties(step.where, event.properties)
        ):
            self.matched_event = event

    def hear_contact(self, contact: ContactSnapshot, now: datetime) -> None:
        self.carried.contact = contact
        self.check_contact(now)

    def pause(self, pause: PauseState, now: datetime) -> None:
        self.carried.paused = pause
        self.note(now, "paused", detail=f"until {pause.until.isoformat()} by {pause.paused_by}: {pause.reason}")

    def resume(self, resumed_by: str, reason: str | None, now: datetime) -> None:
        if self.carried.paused is not None:
            self.carried.paused = None
            self.note(now, "resumed", detail=f"by {resumed_by}" + (f": {reason}" if reason else ""))

    def pause_lapsed(self, pause: PauseState, now: datetime) -> None:
        if self.carried.paused == pause:
            self.carried.paused = None
            self.note(now, "pause_ended")

    def active_pause(self, now: datetime) -> PauseState | None:
        paused = self.carried.paused
        return paused if paused is not None and paused.until > now else None

    def sales_outcome(self) -> str | None:
        return None if self.matched_event is None else sales_outcome(self.matched_event)

    # --- choices and sends -----------------------------------------------------

    def choose(self, step_id: str, weighted: list[tuple[str, int]], draw: float) -> str:
        """A weighted pick made once per enrollment and step (``draw`` in [0, 1)): loops pick the same."""
        if step_id not in self.carried.choices:
            point = draw * sum(weight for _, weight in weighted)
            for name, weight in weighted:
                point -= weight
                if point < 0:
                    break
            self.carried.choices[step_id] = name
        return self.carried.choices[step_id]

    def defer_send(self, step_id: str, until: datetime, reason: str, now: datetime) -> None:
        self.note(now, "send_deferred", step_id=step_id, detail=f"{reason} until {until.isoformat()}")
        self.send_held, self.deferred_until, self.deferred_reason = True, until, reason
        self.waiting_for = reason

    def release_send(self) -> None:
        self.send_held, self.deferred_until, self.deferred_reason = False, None, None
        self.waiting_for = None

    def record_send(self, step_id: str, result: SendEmailResult, now: datetime) -> None:
        self.carried.sends.append(SentEmail(step_id=step_id, message_id=result.message_id, status=result.status, at=now))
        for kind in self.carried.early_engagement.pop(str(result.message_id), []):
            self._engage(step_id, kind)
        detail = result.status + (f": {result.detail}" if result.detail else "")
        self.note(now, "email", step_id=step_id, detail=detail)
        if result.status == "refused":
            self.request_exit("unsubscribed", now)

    def _record_engagement(self, event: ContactEventSignal) -> None:
        message_id = str(event.properties.get("message_id"))
        kind = ENGAGEMENT_KINDS[event.type]
        for send in self.carried.sends:
            if send.message_id is not None and str(send.message_id) == message_id:
                self._engage(send.step_id, kind)
                return
        # The provider can report an open before the send activity's result reaches us.
        early = self.carried.early_engagement.setdefault(message_id, [])
        if kind not in early:
            early.append(kind)

    def _engage(self, step_id: str, kind: str) -> None:
        seen = self.carried.engagement.setdefault(step_id, [])
        if kind not in seen:
            seen.append(kind)

    # --- the row and the query ---------------------------------------------------

    def row_summary(self, now: datetime) -> str:
        """What the enrollments row shows; a report is due when this changes or steps were entered."""
        paused = self.active_pause(now) is not None
        return f"{self.status}|{self.carried.current_step}|{paused}|{self.exit_reason}"

    def progress_report(
        self, now: datetime, *, enrollment_id: int, workflow_id: str, run_id: str, flow_id: int, flow_version: int,
        contact_id: int, with_entries: bool = True,
    ) -> ProgressReport | None:
        """The next report for the row, or None when the row already says all this."""
        summary = self.row_summary(now)
        entries = self.carried.unreported if with_entries else []
        if summary == self.carried.reported and not entries:
            return None
        self.carried.progress_seq += 1
        self.carried.reported = summary
        if with_entries:
            self.carried.unreported = []
        return ProgressReport(
            enrollment_id=enrollment_id,
            workflow_id=workflow_id,
            run_id=run_id,
            flow_id=flow_id,
            flow_version=flow_version,
            contact_id=contact_id,
            seq=self.carried.progress_seq,
            status=self.status,  # type: ignore[arg-type]
            current_step=self.carried.current_step,
            paused=self.active_pause(now) is not None,
            exit_reason=self.exit_reason,
            entered=entries,
            at=now,
        )

    def query(self, now: datetime, *, workflow_id: str, flow_id: int, flow_version: int, contact_id: int) -> EnrollmentState:
        c = self.carried
        step = self.current()
        return EnrollmentState(
            workflow_id=workflow_id,
            flow_id=flow_id,
            flow_version=flow_version,
            contact_id=contact_id,
            status=self.status,  # type: ignore[arg-type]
            current_step=c.current_step,
            current_step_type=step.type if step else None,
            waiting_until=c.step_deadline,
            waiting_for=self.waiting_for,
            paused=self.active_pause(now),
            send_deferred=self.send_held,
            deferred_until=self.deferred_until,
            deferred_reason=self.deferred_reason,
            exit_reason=self.exit_reason,
            entered_at=c.entered_at,
            visits=dict(c.visits),
            engagement=dict(c.engagement),
            choices=dict(c.choices),
            sends=list(c.sends),
            timeline=list(c.timeline),
            runs=c.runs,
        )


def sales_outcome(event: ContactEventSignal) -> str | None:
    """What a CRM event says about a handoff: won, lost, returned, or None for a stage on the way."""
    if event.type == RETURNED_TO_MARKETING:
        return "returned"
    if event.type != DEAL_STAGE_CHANGED or "stage" not in event.properties:
        return None
    stage = str(event.properties.get("stage", "")).lower().replace("_", "").replace(" ", "")
    return SALES_OUTCOMES.get(stage)
