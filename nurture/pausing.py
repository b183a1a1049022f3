"""Sales pauses as a rep sees them: confirmed per enrollment through Temporal updates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from nurture.contracts import EnrollmentState, PauseUpdate, ResumeUpdate
from nurture.enrolling import TemporalUnavailable
from nurture.models import Contact, Enrollment, EnrollmentStatus, PauseLog, utcnow


@dataclass(frozen=True)
class Actor:
    """Whom a pause or resume is recorded for, and who asked.

    ``rep`` is the rep the pause belongs to (the contact's ``paused_by``, what ``/pauses?rep=``
    lists and what the enrollments are told). ``requested_by`` is the API key that asked (its name)
    and ``authenticated`` is False when the API ran without keys, so the rep is only a claim.
    """

    rep: str
    requested_by: str | None = None
    api_key_id: int | None = None
    user_id: int | None = None  # a person signed in to the console
    authenticated: bool = False


@dataclass
class Confirmed:
    enrollment: Enrollment
    state: EnrollmentState


class Pauser:
    def __init__(self, client: Client):
        self.client = client

    async def pause(
        self,
        session: AsyncSession,
        contact: Contact,
        until: datetime,
        reason: str,
        actor: Actor,
        flow_ids: list[int] | None = None,
    ) -> list[Confirmed]:
        """Pause (or extend) in every flow, or in the named ones; nothing is committed here."""
        extending = contact.paused_until is not None and contact.paused_until > utcnow()
        confirmed = await self._update_all(
            session, contact, flow_ids, "pause_enrollment", PauseUpdate(until=until, reason=reason, paused_by=actor.rep)
        )
        if flow_ids is None:
            # A contact-wide pause also holds flows the contact enters later.
            contact.paused_until, contact.pause_reason, contact.paused_by = until, reason, actor.rep
            contact.updated_at = utcnow()
            session.add(contact)
        self._log(session, contact, "extend" if extending else "pause", until, reason, actor, flow_ids, confirmed)
        return confirmed

    async def resume(
        self, session: AsyncSession, contact: Contact, actor: Actor, reason: str | None, flow_ids: list[int] | None = None
    ) -> list[Confirmed]:
        confirmed = await self._update_all(
            session, contact, flow_ids, "resume_enrollment", ResumeUpdate(resumed_by=actor.rep, reason=reason)
        )
        if flow_ids is None:
            contact.paused_until = contact.pause_reason = contact.paused_by = None
            contact.updated_at = utcnow()
            session.add(contact)
        self._log(session, contact, "resume", None, reason, actor, flow_ids, confirmed)
        return confirmed

    async def _update_all(self, session, contact, flow_ids, name, payload) -> list[Confirmed]:
        query = select(Enrollment).where(
            Enrollment.contact_id == contact.id, Enrollment.status == EnrollmentStatus.active
        )
        if flow_ids is not None:
            query = query.where(Enrollment.flow_id.in_(flow_ids))
        enrollments = (await session.exec(query.order_by(Enrollment.id))).all()
        # End the read before waiting on the workflows: an update may wait for the enrollment's
        # own activities, which write to the database, and on SQLite our open transaction holds
        # the write lock (BEGIN IMMEDIATE). Nothing was written yet, so nothing is committed.
        await session.commit()
        confirmed = []
        for enrollment in enrollments:
            try:
                state = await self.client.get_workflow_handle(enrollment.workflow_id).execute_update(
                    name, payload, result_type=EnrollmentState
                )
            except WorkflowUpdateFailedError:
                continue  # it ended between our read and the update: nothing left to pause
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    continue
                raise TemporalUnavailable(str(exc)) from exc
            # The workflow wrote its row's paused flag before answering (the row is its own): the
            # copy here only shows it, detached so that it is never written back.
            session.expunge(enrollment)
            enrollment.paused = state.paused is not None
            confirmed.append(Confirmed(enrollment, state))
        return confirmed

    @staticmethod
    def _log(session, contact, action, until, reason, actor, flow_ids, confirmed) -> None:
        session.add(
            PauseLog(
                contact_id=contact.id,
                action=action,
                until=until,
                reason=reason,
                actor=actor.rep,
                requested_by=actor.requested_by,
                api_key_id=actor.api_key_id,
                user_id=actor.user_id,
                authenticated=actor.authenticated,
                flow_ids=flow_ids or [],
                enrollment_ids=[c.enrollment.id for c in confirmed],
                at=utcnow(),
            )
        )


async def paused_by(session: AsyncSession, rep: str) -> list[Contact]:
    """The contacts a rep has paused now, the soonest to resume first."""
    rows = await session.exec(
        select(Contact)
        .where(Contact.paused_by == rep, Contact.paused_until > utcnow())
        .order_by(Contact.paused_until)
    )
    return list(rows.all())
