"""Send governance: windows, quiet hours, holidays and the cross-flow frequency cap.

A send is deferred to the next allowed moment, never dropped. The cap is enforced
in one database transaction that locks the contact row, so two flows sending at
the same instant cannot both pass; without a cap (or for a transactional send)
nothing is counted and the contact row is not locked.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlmodel import select
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.common import require_contact
from activities.scheduling import local_instant, parse_clock, zone_for
from nurture.contracts import QuietPeriodInput, SendEmailInput
from nurture.db import Database
from nurture.enrolling import Enroller
from nurture.flow.language import WEEKDAYS, SendWindow
from nurture.logging import get_logger
from nurture.models import Contact, Message, MessageStatus, PauseLog, utcnow
from nurture.settings import Settings

COUNTED = (MessageStatus.reserved, MessageStatus.sending, MessageStatus.sent)


def _in_interval(clock: time, start: time, end: time) -> bool:
    """Whether a local time lies in [start, end), for intervals that may wrap midnight."""
    return start <= clock < end if start < end else clock >= start or clock < end


def next_open_slot(
    now: datetime,
    zone: ZoneInfo,
    window: SendWindow | None,
    quiet: tuple[time, time] | None,
    holidays: set,
) -> datetime:
    """The first moment at or after ``now`` when this contact may receive a message."""

    def allowed(moment: datetime) -> bool:
        local = moment.astimezone(zone)
        if local.date() in holidays:
            return False
        if window is not None:
            if WEEKDAYS[local.weekday()] not in window.days:
                return False
            if not _in_interval(local.time(), parse_clock(window.start), parse_clock(window.end)):
                return False
        return not (quiet and _in_interval(local.time(), *quiet))

    if allowed(now):
        return now
    # An open stretch always begins at midnight, a window start or the end of quiet hours.
    today = now.astimezone(zone).date()
    starts = [time(0, 0)]
    if window is not None:
        starts.append(parse_clock(window.start))
    if quiet:
        starts.append(quiet[1])
    for ahead in range(0, 370):
        day = today + timedelta(days=ahead)
        for start in sorted(starts):
            candidate = local_instant(day, start, zone)
            if candidate > now and allowed(candidate):
                return candidate
    raise ApplicationError("no send slot in the next year: check the window and holidays", type="NoSendSlot",
                           non_retryable=True)


class SendGate:
    """Decides, inside the send activity's first transaction, whether a message may go now.

    A decision to send reserves the message row (it counts against the cap from then on), so a
    send is one activity: the gate, then delivery. When the cap counts the send (``counts``), the
    contact row is locked for the decision, which serialises every reservation for one contact
    (SQLite's BEGIN IMMEDIATE does the same).
    """

    def __init__(self, settings: Settings):
        self.settings = settings

    def counts(self, input: SendEmailInput) -> bool:
        """Whether the frequency cap applies to this send: its decision then needs the contact row locked."""
        return bool(self.settings.frequency_cap) and not input.transactional

    def _quiet_hours(self, transactional: bool) -> tuple[time, time] | None:
        s = self.settings
        if transactional or not (s.quiet_hours_start and s.quiet_hours_end):
            return None
        return parse_clock(s.quiet_hours_start), parse_clock(s.quiet_hours_end)

    async def defer(self, session, contact: Contact, input: SendEmailInput) -> tuple[datetime, str] | None:
        """When the send must wait, until when and why; None when it may go now."""
        log = get_logger(flow_id=input.flow_id, enrollment_id=input.workflow_id, contact_id=input.contact_id)
        now = input.scheduled_at
        zone = zone_for(contact.timezone, input.flow_timezone)
        holidays = set() if input.transactional else set(self.settings.holidays)
        slot = next_open_slot(now, zone, input.window, self._quiet_hours(input.transactional), holidays)
        if slot > now:
            reason = "outside the send window" if input.window else "quiet hours or a holiday"
            log.info("send_deferred", until=slot.isoformat(), reason=reason)
            return slot, reason

        cap = self.settings.frequency_cap
        if self.counts(input):
            window = timedelta(hours=self.settings.frequency_cap_window_hours)
            recent = (
                await session.exec(
                    select(Message.scheduled_at)
                    .where(
                        Message.contact_id == contact.id,
                        Message.kind == "marketing",
                        Message.status.in_(COUNTED),
                        Message.scheduled_at > now - window,
                    )
                    .order_by(Message.scheduled_at)
                )
            ).all()
            if len(recent) >= cap:
                until = recent[len(recent) - cap] + window
                reason = f"frequency cap: {cap} in {self.settings.frequency_cap_window_hours}h"
                log.info("send_deferred", until=until.isoformat(), reason=reason)
                return until, reason
        return None


class GovernanceActivities:
    def __init__(self, db: Database, settings: Settings, client: Client | None = None):
        self.db = db
        self.settings = settings
        self.client = client

    @activity.defn(name="quiet_period")
    async def quiet_period(self, input: QuietPeriodInput) -> None:
        """Start or end a handoff's quiet period: the contact is paused in every flow."""
        if self.client is None:
            raise ApplicationError("this worker has no Temporal client", non_retryable=True)
        enroller = Enroller(self.client, self.settings)
        by = f"handoff:{input.workflow_id}"
        async with self.db.session() as session:
            contact = await require_contact(session, input.contact_id)
            if input.start:
                contact.paused_until, contact.pause_reason, contact.paused_by = input.until, input.reason, by
                await enroller.pause(session, contact, input.until, input.reason, by, exclude=input.workflow_id)
                action = "pause"
            elif contact.paused_by == by:  # a rep's own pause since then is theirs to end
                contact.paused_until = contact.pause_reason = contact.paused_by = None
                await enroller.resume(session, contact, by, input.reason, exclude=input.workflow_id)
                action = "resume"
            else:
                return
            session.add(PauseLog(contact_id=contact.id, action=action, until=input.until if input.start else None,
                                 reason=input.reason, actor=by, at=utcnow()))
            contact.updated_at = utcnow()
            session.add(contact)
            await session.commit()
