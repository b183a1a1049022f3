"""Every number the statistics endpoints show, computed in one place.

Sources (all in the service database; Temporal histories are too slow for aggregates):

* ``enrollments``: who entered, who is active and at which step, how each ended.
* ``step_visits``: every step entry (written by record_progress), with the contact's
  lifecycle stage at that moment.
* ``messages``: every marketing send with its step, variant and outcome.
* ``events``: engagement and delivery (``email_opened``, ``email_clicked``,
  ``email_delivered``, ``email_bounced``, ``email_complained``, whether from the
  tracking endpoints, the provider webhooks or ``POST /events``), unsubscribes and
  deal stages (``deal_stage_changed`` with ``properties.stage``).

Definitions (docs/observability.md has the full list): opens and clicks are unique
contacts per email step, bot opens excluded; an unsubscribe (or complaint) counts for
the last marketing email the contact received before it, from any flow; a contact
moved to the next lifecycle stage when its stage now ranks above the stage it had on
entering (the flow, or the step); closed won/lost is the latest ``deal_stage_changed``
after the enrollment started.

The rows of one flow are read with narrow selects and aggregated here, so the per-step
numbers, the totals and each breakdown segment are the same computation on different
subsets; they agree by construction, and a test checks it.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from nurture.event_types import (
    DEAL_STAGE_CHANGED,
    EMAIL_BOUNCED,
    EMAIL_CLICKED,
    EMAIL_COMPLAINED,
    EMAIL_DELIVERED,
    EMAIL_OPENED,
    MESSAGE_EVENTS,
    UNSUBSCRIBE_EVENTS,
)
from nurture.flow.language import LIFECYCLE_STAGES
from nurture.logging import get_logger
from nurture.metrics import FLOW_ANOMALIES
from nurture.models import Contact, Enrollment, Event, FlowVersion, Message, MessageStatus, StepVisit, utcnow
from nurture.settings import Settings

CLOSED = {"closedwon": "won", "closedlost": "lost"}
GOAL_EXIT_REASON = "goal_met"
TRACKED_TYPES = MESSAGE_EVENTS | UNSUBSCRIBE_EVENTS | {DEAL_STAGE_CHANGED}
# Contact fields a breakdown may name besides custom properties and "tag".
BUILTIN_FIELDS = ("lifecycle_stage", "owner", "company", "timezone", "subscription_status")
NONE_VALUE = "(none)"
_RANK = {stage: rank for rank, stage in enumerate(s for s in LIFECYCLE_STAGES if s != "other")}


# --- what the endpoints answer ------------------------------------------------------------


class EmailStats(BaseModel):
    sent: int = 0
    failed: int = 0
    refused: int = 0
    delivered: int = 0
    opened: int = Field(0, description="Unique contacts who opened (bot and prefetch opens excluded).")
    clicked: int = Field(0, description="Unique contacts who clicked.")
    bounced: int = 0
    hard_bounced: int = 0
    complained: int = 0
    unsubscribed: int = Field(0, description="Unsubscribes and complaints after this email (last touch).")
    bot_opens: int = Field(0, description="Opens flagged as bots or prefetch, counted apart.")
    open_rate: float | None = Field(None, description="opened / sent")
    click_rate: float | None = Field(None, description="clicked / sent")

    def finish(self) -> EmailStats:
        self.open_rate = _rate(self.opened, self.sent)
        self.click_rate = _rate(self.clicked, self.sent)
        return self


class VariantStats(EmailStats):
    variant: str | None
    template: str


class StepStats(BaseModel):
    step_id: str
    type: str | None = Field(description="From the flow definition; null for a step no longer in it.")
    entered: int = Field(description="Enrollments that entered the step (once each, however often).")
    visits: int = Field(description="Step entries, loops included.")
    waiting_now: int = Field(description="Active enrollments at this step now.")
    exited_here: dict[str, int] = Field(description="Enrollments that exited at this step, by reason.")
    moved_to_next_stage: int = Field(
        description="Enrollments whose contact's lifecycle stage now ranks above the one it had on entering this step."
    )
    email: EmailStats | None = Field(None, description="For send_email steps (and any step that sent email).")
    variants: list[VariantStats] = Field(default_factory=list)


class FlowTotals(BaseModel):
    entered: int
    active: int
    completed: int
    exited: int
    exit_reasons: dict[str, int]
    goal_reached: int
    conversion_to_goal: float | None = Field(description="goal_reached / entered")
    moved_to_next_stage: int
    conversion_to_next_stage: float | None = Field(description="moved_to_next_stage / entered")
    closed_won: int
    closed_lost: int
    closed_won_rate: float | None = Field(description="closed_won / entered")
    closed_lost_rate: float | None = Field(description="closed_lost / entered")
    median_time_to_goal_seconds: float | None
    waiting_now: dict[str, int] = Field(description="Active enrollments per current step.")
    emails: EmailStats = Field(description="The email steps added up (opens and clicks: unique per step).")


class Anomaly(BaseModel):
    kind: Literal["send_failure_rate", "bounce_rate", "unsubscribe_rate"]
    rate: float
    threshold: float
    sample: int
    message: str


class Segment(BaseModel):
    value: str
    totals: FlowTotals
    steps: list[StepStats]


class FlowStats(BaseModel):
    flow_id: int
    version: int | None = Field(description="The version asked for; null means all versions.")
    totals: FlowTotals
    steps: list[StepStats]
    anomalies: list[Anomaly]
    breakdown: str | None = None
    segments: list[Segment] | None = Field(None, description="The same numbers per value of `breakdown`.")


class MessageActivity(BaseModel):
    message_id: int
    flow_id: int | None
    flow_version: int | None
    step_id: str | None
    template_key: str
    variant: str | None
    subject: str
    status: str
    error: str | None
    sent_at: datetime | None
    delivered_at: datetime | None
    opened_at: datetime | None = Field(description="The first open that was not a bot.")
    clicked_at: datetime | None
    bounced_at: datetime | None
    bounce_type: str | None
    complained_at: datetime | None
    unsubscribed_at: datetime | None = Field(description="When an unsubscribe was attributed to this email.")
    opens: int
    bot_opens: int
    clicks: int
    clicked_urls: list[str]


class ContactActivity(BaseModel):
    contact_id: int
    email: str
    first_activity_at: datetime | None = Field(description="The contact's first event (bot opens and delivery reports aside).")
    last_activity_at: datetime | None
    first_email_at: datetime | None
    last_email_at: datetime | None
    emails: EmailStats
    messages: list[MessageActivity]


# --- loading --------------------------------------------------------------------------------


@dataclass
class _Facts:
    """The rows one computation needs; a segment is the same facts for fewer contacts."""

    enrollments: list[Enrollment]
    visits: list[StepVisit]
    messages: list[Message]
    events: list[Event]  # TRACKED_TYPES events of these contacts
    contacts: dict[int, Contact]
    step_types: dict[str, str] = field(default_factory=dict)
    step_order: list[str] = field(default_factory=list)
    # Unsubscribe event id -> the message it is attributed to (any flow).
    unsubscribe_message: dict[int, int] = field(default_factory=dict)

    def only(self, contact_ids: set[int]) -> _Facts:
        return _Facts(
            enrollments=[e for e in self.enrollments if e.contact_id in contact_ids],
            visits=[v for v in self.visits if v.contact_id in contact_ids],
            messages=[m for m in self.messages if m.contact_id in contact_ids],
            events=[e for e in self.events if e.contact_id in contact_ids],
            contacts={i: c for i, c in self.contacts.items() if i in contact_ids},
            step_types=self.step_types,
            step_order=self.step_order,
            unsubscribe_message=self.unsubscribe_message,
        )


async def _load(session: AsyncSession, flow_id: int, version: int | None) -> _Facts:
    enrollments_q = select(Enrollment).where(Enrollment.flow_id == flow_id)
    visits_q = select(StepVisit).where(StepVisit.flow_id == flow_id)
    messages_q = select(Message).where(Message.flow_id == flow_id, Message.kind == "marketing")
    if version is not None:
        enrollments_q = enrollments_q.where(Enrollment.flow_version == version)
        visits_q = visits_q.where(StepVisit.flow_version == version)
        messages_q = messages_q.where(Message.flow_version == version)
    enrollments = list((await session.exec(enrollments_q.order_by(col(Enrollment.id)))).all())
    visits = list((await session.exec(visits_q.order_by(col(StepVisit.id)))).all())
    messages = list((await session.exec(messages_q.order_by(col(Message.id)))).all())
    contact_ids = select(Enrollment.contact_id).where(Enrollment.flow_id == flow_id).distinct()
    contacts = {c.id: c for c in (await session.exec(select(Contact).where(col(Contact.id).in_(contact_ids)))).all()}
    events = list(
        (
            await session.exec(
                select(Event)
                .where(col(Event.contact_id).in_(contact_ids), col(Event.type).in_(TRACKED_TYPES))
                .order_by(col(Event.occurred_at), col(Event.id))
            )
        ).all()
    )
    facts = _Facts(enrollments, visits, messages, events, contacts)  # type: ignore[arg-type]
    await _read_definitions(session, flow_id, version, facts)
    facts.unsubscribe_message = await _attribute_unsubscribes(session, events)
    return facts


async def _read_definitions(session: AsyncSession, flow_id: int, version: int | None, facts: _Facts) -> None:
    """Step order and types: the version asked for, else every version (newest wins a type)."""
    query = select(FlowVersion).where(FlowVersion.flow_id == flow_id)
    if version is not None:
        query = query.where(FlowVersion.version == version)
    for row in (await session.exec(query.order_by(col(FlowVersion.version)))).all():
        for step in (row.definition or {}).get("steps", []):
            if isinstance(step, dict) and isinstance(step.get("id"), str):
                if step["id"] not in facts.step_types:
                    facts.step_order.append(step["id"])
                facts.step_types[step["id"]] = str(step.get("type"))


async def flow_steps(session: AsyncSession, flow_id: int, version: int | None = None) -> list[str]:
    """The step ids of the version (all versions when None), in definition order."""
    facts = _Facts([], [], [], [], {})
    await _read_definitions(session, flow_id, version, facts)
    return facts.step_order


async def _attribute_unsubscribes(session: AsyncSession, events: list[Event]) -> dict[int, int]:
    """Each unsubscribe goes to the email it names, else to the last marketing email (any flow)
    the contact was sent before it."""
    attributed: dict[int, int] = {}
    pending = [e for e in events if e.type in UNSUBSCRIBE_EVENTS]
    for event in pending:
        named = _message_id(event)
        if named is not None:
            attributed[event.id] = named  # type: ignore[index]
    unnamed = [e for e in pending if e.id not in attributed]
    if not unnamed:
        return attributed
    contact_ids = {e.contact_id for e in unnamed}
    sent = (
        await session.exec(
            select(Message.id, Message.contact_id, Message.sent_at).where(
                col(Message.contact_id).in_(contact_ids),
                Message.kind == "marketing",
                Message.status == MessageStatus.sent,
            )
        )
    ).all()
    by_contact: dict[int, list[tuple[datetime, int]]] = defaultdict(list)
    for message_id, contact_id, sent_at in sent:
        if sent_at is not None:
            by_contact[contact_id].append((sent_at, message_id))
    for event in unnamed:
        before = [m for m in by_contact[event.contact_id] if m[0] <= event.occurred_at]
        if before:
            attributed[event.id] = max(before)[1]  # type: ignore[index]
    return attributed


# --- computing ------------------------------------------------------------------------------


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _message_id(event: Event) -> int | None:
    try:
        return int((event.properties or {}).get("message_id"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _is_bot(event: Event) -> bool:
    return bool((event.properties or {}).get("bot"))


def _rank(stage: str | None) -> int | None:
    if stage is None:
        return -1
    return _RANK.get(stage)  # "other" and unknown stages have no rank


def _moved(entry_stage: str | None, contact: Contact | None) -> bool:
    if contact is None:
        return False
    before, now = _rank(entry_stage), _rank(contact.lifecycle_stage)
    return before is not None and now is not None and now > before


def _email_stats(messages: Iterable[Message], facts: _Facts, stats: EmailStats) -> EmailStats:
    """Add the outcome and engagement of these messages to ``stats``; opens/clicks are unique contacts."""
    messages = list(messages)
    by_id = {m.id: m for m in messages}
    openers: set[int] = set()
    clickers: set[int] = set()
    delivered: set[int] = set()
    bounced: dict[int, str] = {}
    complained: set[int] = set()
    unsubscribed: set[int] = set()
    for m in messages:
        if m.status == MessageStatus.sent:
            stats.sent += 1
        elif m.status == MessageStatus.failed:
            stats.failed += 1
        elif m.status == MessageStatus.refused:
            stats.refused += 1
    for event in facts.events:
        message_id = facts.unsubscribe_message.get(event.id) if event.type in UNSUBSCRIBE_EVENTS else _message_id(event)  # type: ignore[arg-type]
        message = by_id.get(message_id)
        if message is None:
            continue
        if event.type == EMAIL_OPENED:
            if _is_bot(event):
                stats.bot_opens += 1
            else:
                openers.add(message.contact_id)
        elif event.type == EMAIL_CLICKED:
            clickers.add(message.contact_id)
        elif event.type == EMAIL_DELIVERED:
            delivered.add(message.id)  # type: ignore[arg-type]
        elif event.type == EMAIL_BOUNCED:
            bounced[message.id] = str((event.properties or {}).get("bounce_type", "hard"))  # type: ignore[index]
        elif event.type == EMAIL_COMPLAINED:
            complained.add(message.id)  # type: ignore[arg-type]
            unsubscribed.add(message.contact_id)  # a complaint unsubscribes the contact
        elif event.type in UNSUBSCRIBE_EVENTS:
            unsubscribed.add(message.contact_id)
    stats.opened += len(openers)
    stats.clicked += len(clickers)
    stats.delivered += len(delivered)
    stats.bounced += len(bounced)
    stats.hard_bounced += sum(1 for kind in bounced.values() if kind == "hard")
    stats.complained += len(complained)
    stats.unsubscribed += len(unsubscribed)
    return stats


def _steps(facts: _Facts) -> list[StepStats]:
    enrollment_of = {e.id: e for e in facts.enrollments}
    visits_by_step: dict[str, list[StepVisit]] = defaultdict(list)
    for visit in facts.visits:
        visits_by_step[visit.step_id].append(visit)
    messages_by_step: dict[str, list[Message]] = defaultdict(list)
    for message in facts.messages:
        messages_by_step[message.step_id or "?"].append(message)
    at_step: dict[str, list[Enrollment]] = defaultdict(list)
    for e in facts.enrollments:
        if e.current_step:
            at_step[e.current_step].append(e)
    seen = list(facts.step_order)
    for step_id in [*visits_by_step, *messages_by_step, *(e.current_step for e in facts.enrollments if e.current_step)]:
        if step_id not in seen:
            seen.append(step_id)

    result = []
    for step_id in seen:
        visits = visits_by_step.get(step_id, [])
        first_visits: dict[int, StepVisit] = {}
        for visit in visits:
            first_visits.setdefault(visit.enrollment_id, visit)
        moved = sum(
            1
            for enrollment_id, visit in first_visits.items()
            if enrollment_id in enrollment_of and _moved(visit.lifecycle_stage, facts.contacts.get(visit.contact_id))
        )
        here = at_step.get(step_id, [])
        exits: dict[str, int] = defaultdict(int)
        for e in here:
            if e.status == "exited":
                exits[e.exit_reason or "unknown"] += 1
        messages = messages_by_step.get(step_id, [])
        email = variants = None
        if messages or facts.step_types.get(step_id) == "send_email":
            email = _email_stats(messages, facts, EmailStats()).finish()
            by_variant: dict[tuple[str | None, str], list[Message]] = defaultdict(list)
            for m in messages:
                by_variant[(m.variant, m.template_key)].append(m)
            variants = [
                VariantStats(variant=variant, template=template, **_email_stats(group, facts, EmailStats()).model_dump())
                for (variant, template), group in sorted(by_variant.items(), key=lambda kv: (kv[0][0] or "", kv[0][1]))
            ]
            for v in variants:
                v.finish()
        result.append(
            StepStats(
                step_id=step_id,
                type=facts.step_types.get(step_id),
                entered=len(first_visits),
                visits=len(visits),
                waiting_now=sum(1 for e in here if e.status == "active"),
                exited_here=dict(exits),
                moved_to_next_stage=moved,
                email=email,
                variants=variants or [],
            )
        )
    return result


def _totals(facts: _Facts, steps: list[StepStats]) -> FlowTotals:
    entered = len(facts.enrollments)
    by_status: dict[str, int] = defaultdict(int)
    reasons: dict[str, int] = defaultdict(int)
    waiting: dict[str, int] = defaultdict(int)
    for e in facts.enrollments:
        by_status[e.status] += 1
        if e.status == "exited":
            reasons[e.exit_reason or "unknown"] += 1
        if e.status == "active" and e.current_step:
            waiting[e.current_step] += 1
    goal = [e for e in facts.enrollments if e.status == "exited" and e.exit_reason == GOAL_EXIT_REASON]
    durations = [(e.ended_at - e.started_at).total_seconds() for e in goal if e.ended_at and e.started_at]

    first_visit: dict[int, StepVisit] = {}
    for visit in facts.visits:
        first_visit.setdefault(visit.enrollment_id, visit)
    moved = sum(
        1
        for e in facts.enrollments
        if e.id in first_visit and _moved(first_visit[e.id].lifecycle_stage, facts.contacts.get(e.contact_id))
    )

    deals: dict[int, list[tuple[datetime, str]]] = defaultdict(list)
    for event in facts.events:
        if event.type == DEAL_STAGE_CHANGED:
            stage = str((event.properties or {}).get("stage", "")).lower().replace("_", "").replace(" ", "")
            if stage in CLOSED:
                deals[event.contact_id].append((event.occurred_at, CLOSED[stage]))
    outcomes: dict[str, int] = defaultdict(int)
    for e in facts.enrollments:
        after = [d for d in deals.get(e.contact_id, []) if d[0] >= e.started_at]
        if after:
            outcomes[max(after)[1]] += 1

    emails = EmailStats()
    for step in steps:
        if step.email is not None:
            for name in ("sent", "failed", "refused", "delivered", "opened", "clicked", "bounced",
                         "hard_bounced", "complained", "unsubscribed", "bot_opens"):
                setattr(emails, name, getattr(emails, name) + getattr(step.email, name))
    return FlowTotals(
        entered=entered,
        active=by_status["active"],
        completed=by_status["completed"],
        exited=by_status["exited"],
        exit_reasons=dict(reasons),
        goal_reached=len(goal),
        conversion_to_goal=_rate(len(goal), entered),
        moved_to_next_stage=moved,
        conversion_to_next_stage=_rate(moved, entered),
        closed_won=outcomes["won"],
        closed_lost=outcomes["lost"],
        closed_won_rate=_rate(outcomes["won"], entered),
        closed_lost_rate=_rate(outcomes["lost"], entered),
        median_time_to_goal_seconds=statistics.median(durations) if durations else None,
        waiting_now=dict(waiting),
        emails=emails.finish(),
    )


def anomalies(totals: FlowTotals, settings: Settings) -> list[Anomaly]:
    return email_anomalies(totals.emails, settings)


def email_anomalies(emails: EmailStats, settings: Settings) -> list[Anomaly]:
    """The rates of these emails past their thresholds (``anomaly_*`` settings), once the sample is large enough."""
    attempted = emails.sent + emails.failed
    checks = [
        ("send_failure_rate", emails.failed, attempted, settings.anomaly_send_failure_rate, "of send attempts failed"),
        ("bounce_rate", emails.bounced, emails.sent, settings.anomaly_bounce_rate, "of sent emails bounced"),
        ("unsubscribe_rate", emails.unsubscribed, emails.sent, settings.anomaly_unsubscribe_rate, "of recipients unsubscribed"),
    ]
    found = []
    for kind, part, whole, threshold, what in checks:
        if whole >= settings.anomaly_min_sample and part / whole > threshold:
            rate = round(part / whole, 4)
            found.append(
                Anomaly(
                    kind=kind,  # type: ignore[arg-type]
                    rate=rate,
                    threshold=threshold,
                    sample=whole,
                    message=f"{rate:.1%} {what} ({part} of {whole}), above the {threshold:.1%} threshold",
                )
            )
    return found


def _segment_values(contact: Contact, breakdown: str) -> list[str]:
    if breakdown == "tag":
        return sorted(set(contact.tags or [])) or [NONE_VALUE]
    value: Any = getattr(contact, breakdown) if breakdown in BUILTIN_FIELDS else (contact.properties or {}).get(breakdown)
    return [NONE_VALUE if value in (None, "") else str(value)]


def _compute(facts: _Facts) -> tuple[FlowTotals, list[StepStats]]:
    steps = _steps(facts)
    return _totals(facts, steps), steps


async def flow_stats(
    session: AsyncSession, settings: Settings, flow_id: int, version: int | None = None, breakdown: str | None = None
) -> FlowStats:
    facts = await _load(session, flow_id, version)
    totals, steps = _compute(facts)
    found = anomalies(totals, settings)
    for anomaly in found:
        FLOW_ANOMALIES.labels(anomaly.kind).inc()
        get_logger(flow_id=flow_id).warning(
            "flow_anomaly", kind=anomaly.kind, rate=anomaly.rate, threshold=anomaly.threshold, sample=anomaly.sample,
            version=version,
        )
    segments = None
    if breakdown is not None:
        members: dict[str, set[int]] = defaultdict(set)
        for contact_id in {e.contact_id for e in facts.enrollments}:
            contact = facts.contacts.get(contact_id)
            for value in _segment_values(contact, breakdown) if contact else [NONE_VALUE]:
                members[value].add(contact_id)
        segments = []
        for value in sorted(members, key=lambda v: (v == NONE_VALUE, v)):
            seg_totals, seg_steps = _compute(facts.only(members[value]))
            segments.append(Segment(value=value, totals=seg_totals, steps=seg_steps))
    return FlowStats(
        flow_id=flow_id, version=version, totals=totals, steps=steps, anomalies=found, breakdown=breakdown, segments=segments
    )


async def contact_activity(session: AsyncSession, contact: Contact) -> ContactActivity:
    assert contact.id is not None
    messages = list(
        (
            await session.exec(
                select(Message)
                .where(Message.contact_id == contact.id, Message.kind == "marketing")
                .order_by(col(Message.created_at), col(Message.id))
            )
        ).all()
    )
    events = list(
        (
            await session.exec(
                select(Event).where(Event.contact_id == contact.id).order_by(col(Event.occurred_at), col(Event.id))
            )
        ).all()
    )
    tracked = [e for e in events if e.type in TRACKED_TYPES]
    facts = _Facts([], [], messages, tracked, {contact.id: contact})
    facts.unsubscribe_message = await _attribute_unsubscribes(session, tracked)
    per_message: dict[int, MessageActivity] = {}
    for m in messages:
        per_message[m.id] = MessageActivity(  # type: ignore[index]
            message_id=m.id,  # type: ignore[arg-type]
            flow_id=m.flow_id,
            flow_version=m.flow_version,
            step_id=m.step_id,
            template_key=m.template_key,
            variant=m.variant,
            subject=m.subject,
            status=m.status,
            error=m.error,
            sent_at=m.sent_at,
            delivered_at=None,
            opened_at=None,
            clicked_at=None,
            bounced_at=None,
            bounce_type=None,
            complained_at=None,
            unsubscribed_at=None,
            opens=0,
            bot_opens=0,
            clicks=0,
            clicked_urls=[],
        )
    for event in tracked:
        attributed = facts.unsubscribe_message.get(event.id) if event.type in UNSUBSCRIBE_EVENTS else _message_id(event)  # type: ignore[arg-type]
        row = per_message.get(attributed)  # type: ignore[arg-type]
        if row is None:
            continue
        at = event.occurred_at
        if event.type == EMAIL_OPENED:
            if _is_bot(event):
                row.bot_opens += 1
            else:
                row.opens += 1
                row.opened_at = row.opened_at or at
        elif event.type == EMAIL_CLICKED:
            row.clicks += 1
            row.clicked_at = row.clicked_at or at
            url = (event.properties or {}).get("url")
            if url and url not in row.clicked_urls:
                row.clicked_urls.append(str(url))
        elif event.type == EMAIL_DELIVERED:
            row.delivered_at = row.delivered_at or at
        elif event.type == EMAIL_BOUNCED:
            row.bounced_at = row.bounced_at or at
            row.bounce_type = str((event.properties or {}).get("bounce_type", "hard"))
        elif event.type == EMAIL_COMPLAINED:
            row.complained_at = row.complained_at or at
        elif event.type in UNSUBSCRIBE_EVENTS:
            row.unsubscribed_at = row.unsubscribed_at or at
    own = [e for e in events if not (e.type == EMAIL_OPENED and _is_bot(e)) and e.type not in {EMAIL_DELIVERED, EMAIL_BOUNCED}]
    sent = [m.sent_at for m in messages if m.sent_at is not None]
    return ContactActivity(
        contact_id=contact.id,
        email=contact.email,
        first_activity_at=own[0].occurred_at if own else None,
        last_activity_at=max(e.occurred_at for e in own) if own else None,
        first_email_at=min(sent) if sent else None,
        last_email_at=max(sent) if sent else None,
        emails=_email_stats(messages, facts, EmailStats()).finish(),
        messages=list(per_message.values()),
    )


# --- the flows list: a few numbers for every flow, in one query ---------------------------



class FlowOverview(BaseModel):
    flow_id: int
    entered: int = 0
    active: int = 0
    entered_recently: int = Field(0, description="Enrollments started since the given moment.")
    goal_reached: int = 0
    conversion_to_goal: float | None = Field(None, description="goal_reached / entered, as in FlowTotals")


async def flow_overviews(session: AsyncSession, since: datetime) -> dict[int, FlowOverview]:
    """Per flow: entered, active now, entered since ``since``, reached the goal (one grouped query,
    with FlowTotals' definitions: a goal is an exit for ``goal_met``)."""
    def counted(condition) -> Any:
        return sa.func.sum(sa.case((condition, 1), else_=0))

    rows = await session.exec(
        select(  # type: ignore[call-overload]
            Enrollment.flow_id,
            sa.func.count(),
            counted(Enrollment.status == "active"),
            counted(Enrollment.started_at >= since),
            counted(sa.and_(Enrollment.status == "exited", Enrollment.exit_reason == GOAL_EXIT_REASON)),
        ).group_by(Enrollment.flow_id)
    )
    found = {}
    for flow_id, entered, active, recent, goal in rows.all():
        found[flow_id] = FlowOverview(
            flow_id=flow_id, entered=entered, active=active or 0, entered_recently=recent or 0,
            goal_reached=goal or 0, conversion_to_goal=_rate(goal or 0, entered),
        )
    return found


# --- the console's flow page: counts per step in a few grouped queries -----------------------


class LiveStepCounts(BaseModel):
    step_id: str
    waiting_now: int = 0
    entered: int = 0
    exited_here: dict[str, int] = Field(default_factory=dict)
    sent: int | None = None
    opened: int | None = None
    clicked: int | None = None
    variants: dict[str, tuple[int, int, int]] = Field(
        default_factory=dict, description="Per A/B variant: sent, opened, clicked."
    )


class LiveFlowCounts(BaseModel):
    entered: int = 0
    active: int = 0
    completed: int = 0
    exit_reasons: dict[str, int] = Field(default_factory=dict)
    goal_reached: int = 0
    conversion_to_goal: float | None = None
    steps: dict[str, LiveStepCounts] = Field(default_factory=dict)


async def live_flow_counts(session: AsyncSession, flow_id: int) -> LiveFlowCounts:
    """What the flow page draws, from grouped queries (no row is loaded): enrollments by step and
    outcome (FlowStats' definitions), step entries (unique enrollments), and per email step the
    sends and the unique contacts who opened (bots excluded) or clicked, as the tracking links
    and pixel record them on the message. ``flow_stats`` also counts engagement reported only
    as posted events, and unsubscribes and stages: it reads every row, so it is for the API."""
    counts = LiveFlowCounts()

    def step(step_id: str) -> LiveStepCounts:
        return counts.steps.setdefault(step_id, LiveStepCounts(step_id=step_id))

    grouped = await session.exec(
        select(Enrollment.current_step, Enrollment.status, Enrollment.exit_reason, sa.func.count())  # type: ignore[call-overload]
        .where(Enrollment.flow_id == flow_id)
        .group_by(Enrollment.current_step, Enrollment.status, Enrollment.exit_reason)
    )
    for current, status, reason, n in grouped.all():
        counts.entered += n
        if status == "active":
            counts.active += n
            if current:
                step(current).waiting_now += n
        elif status == "completed":
            counts.completed += n
        elif status == "exited":
            counts.exit_reasons[reason or "unknown"] = counts.exit_reasons.get(reason or "unknown", 0) + n
            if reason == GOAL_EXIT_REASON:
                counts.goal_reached += n
            if current:
                here = step(current).exited_here
                here[reason or "unknown"] = here.get(reason or "unknown", 0) + n
    counts.conversion_to_goal = _rate(counts.goal_reached, counts.entered)
    entered = await session.exec(
        select(StepVisit.step_id, sa.func.count(sa.distinct(StepVisit.enrollment_id)))  # type: ignore[call-overload]
        .where(StepVisit.flow_id == flow_id)
        .group_by(StepVisit.step_id)
    )
    for step_id, n in entered.all():
        step(step_id).entered = n
    unique = sa.func.count(sa.distinct(Message.contact_id))
    emails = await session.exec(
        select(  # type: ignore[call-overload]
            Message.step_id,
            Message.variant,
            sa.func.sum(sa.case((Message.status == MessageStatus.sent, 1), else_=0)),
            unique.filter(Message.opened_at.is_not(None)),  # type: ignore[union-attr]
            unique.filter(Message.clicked_at.is_not(None)),  # type: ignore[union-attr]
        )
        .where(Message.flow_id == flow_id, Message.kind == "marketing")
        .group_by(Message.step_id, Message.variant)
    )
    for step_id, variant, sent, opened, clicked in emails.all():
        here = step(step_id or "?")
        here.sent = (here.sent or 0) + (sent or 0)
        here.opened = (here.opened or 0) + opened
        here.clicked = (here.clicked or 0) + clicked
        if variant:
            here.variants[variant] = (sent or 0, opened, clicked)
    return counts


# --- the console's dashboard ---------------------------------------------------------------


class Funnel(BaseModel):
    """Unique contacts at each stage of one flow: entered, were sent, opened, clicked, reached the goal."""

    flow_id: int
    entered: int = 0
    sent: int = 0
    opened: int = 0
    clicked: int = 0
    goal: int = 0


async def funnels(session: AsyncSession) -> dict[int, Funnel]:
    """Every flow's funnel in two grouped queries (opens and clicks as the tracking records them
    on the messages, as on the flow page)."""
    found = {
        flow_id: Funnel(flow_id=flow_id, entered=o.entered, goal=o.goal_reached)
        for flow_id, o in (await flow_overviews(session, utcnow())).items()
    }
    unique = sa.func.count(sa.distinct(Message.contact_id))
    rows = await session.exec(
        select(  # type: ignore[call-overload]
            Message.flow_id,
            unique.filter(Message.status == MessageStatus.sent),
            unique.filter(Message.opened_at.is_not(None)),  # type: ignore[union-attr]
            unique.filter(Message.clicked_at.is_not(None)),  # type: ignore[union-attr]
        )
        .where(Message.kind == "marketing", Message.flow_id.is_not(None))  # type: ignore[union-attr]
        .group_by(Message.flow_id)
    )
    for flow_id, sent, opened, clicked in rows.all():
        funnel = found.setdefault(flow_id, Funnel(flow_id=flow_id))
        funnel.sent, funnel.opened, funnel.clicked = sent, opened, clicked
    return found


async def sends_per_day(session: AsyncSession, since: datetime) -> list[tuple[str, int]]:
    """Marketing emails sent per UTC day since ``since``, oldest first."""
    day = sa.func.date(Message.sent_at)
    rows = await session.exec(
        select(day, sa.func.count())  # type: ignore[call-overload]
        .where(Message.kind == "marketing", Message.status == MessageStatus.sent, Message.sent_at >= since)
        .group_by(day)
        .order_by(day)
    )
    return [(str(d), n) for d, n in rows.all()]


async def flows_email_anomalies(session: AsyncSession, settings: Settings) -> dict[int, list[Anomaly]]:
    """Each flow's anomalies for the dashboard, from two grouped queries (no row is loaded):
    failed sends, bounces and complaints as the provider's reports record them on the messages,
    and unsubscribes as the flow's contacts who complained or whose enrollment exited as
    ``unsubscribed``. ``flow_stats`` attributes every unsubscribe event to an email (last touch),
    so its unsubscribe rate can be higher; its failure and bounce rates read the same facts."""
    per_flow: dict[int, EmailStats] = {}
    rows = await session.exec(
        select(  # type: ignore[call-overload]
            Message.flow_id,
            sa.func.sum(sa.case((Message.status == MessageStatus.sent, 1), else_=0)),
            sa.func.sum(sa.case((Message.status == MessageStatus.failed, 1), else_=0)),
            sa.func.sum(sa.case((col(Message.bounced_at).is_not(None), 1), else_=0)),
        )
        .where(Message.kind == "marketing", col(Message.flow_id).is_not(None))
        .group_by(Message.flow_id)
    )
    for flow_id, sent, failed, bounced in rows.all():
        per_flow[flow_id] = EmailStats(sent=sent or 0, failed=failed or 0, bounced=bounced or 0)
    left = sa.union(
        select(Message.flow_id, Message.contact_id).where(  # type: ignore[call-overload]
            Message.kind == "marketing", col(Message.flow_id).is_not(None), col(Message.complained_at).is_not(None)
        ),
        select(Enrollment.flow_id, Enrollment.contact_id).where(  # type: ignore[call-overload]
            Enrollment.status == "exited", Enrollment.exit_reason == "unsubscribed"
        ),
    ).subquery()
    gone = await session.exec(select(left.c.flow_id, sa.func.count()).group_by(left.c.flow_id))  # type: ignore[call-overload]
    for flow_id, n in gone.all():
        if flow_id in per_flow:
            per_flow[flow_id].unsubscribed = n
    return {flow_id: found for flow_id, emails in per_flow.items() if (found := email_anomalies(emails, settings))}
