"""The event inbox: accepting an event is one durable insert; routing it follows, off the request.

``POST /events`` (and ``/events/batch``) store each event with ``inbox_status = "pending"`` in the
same transaction as the contact's own changes (created, last activity, unsubscribed) and answer.
Routing (the running enrollments it concerns, the flows it triggers) is ``route_contact``: it takes
the contact's pending events in the order they were accepted (by row id), routes each, and marks it
``routed`` with what it did, one commit per event. Who calls it:

- the request itself, after its commit, when it waits for the outcome (``?wait=true``);
- a task started by the request that did not wait, right after answering;
- the sweep (``EventInbox.sweep``, every ``event_sweep_interval_seconds`` in each API process), for
  events still pending after ``event_sweep_after_seconds``: the process that accepted them died
  before routing them, or Temporal was unreachable. An event answered 2xx is never lost.

Only one router works on a contact at a time (an asyncio lock per contact in the process; on
PostgreSQL also a session advisory lock, so several API processes take turns), and it stops at the
first event whose routing fails: the events of one contact reach an enrollment in the order they
were accepted. An event whose routing was cut short after a signal went out is routed again later;
the enrollment ignores an event id it already heard, and an enrollment it started is found by its
unique (flow, contact, sequence) row instead of started twice.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from nurture.db import Database
from nurture.enrolling import Enroller, RouteOutcome
from nurture.event_types import UNSUBSCRIBE_EVENTS
from nurture.logging import get_logger
from nurture.models import Contact, Event, utcnow
from nurture.settings import Settings

PENDING = "pending"
ROUTED = "routed"

# The advisory lock space of event routing (PostgreSQL's two-key form: this, then the contact id).
_LOCK_SPACE = zlib.crc32(b"nurture-event-routing") & 0x7FFFFFFF


_LOCK = sa.text("SELECT pg_advisory_lock(:space, :contact)")
_UNLOCK = sa.text("SELECT pg_advisory_unlock(:space, :contact)")


@dataclass
class _ContactLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass
class Routed:
    """What routing did with one event (the ``routing`` column)."""

    enrolled: list[int] = field(default_factory=list)
    signalled: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, outcome: RouteOutcome) -> Routed:
        return cls(
            enrolled=[e.id for e in outcome.enrolled if e.id is not None],
            signalled=[e.id for e in outcome.signalled if e.id is not None],
        )

    @classmethod
    def stored(cls, event: Event) -> Routed | None:
        if event.inbox_status == PENDING:
            return None
        routing = event.routing or {}
        return cls(enrolled=list(routing.get("enrolled", [])), signalled=list(routing.get("signalled", [])))

    def as_json(self) -> dict[str, list[int]]:
        return {"enrolled": self.enrolled, "signalled": self.signalled}


class EventInbox:
    """Routes the stored pending events; one per API process (``app.state``)."""

    def __init__(self, db: Database, settings: Settings):
        self.db = db
        self.settings = settings
        self._locks: dict[int, _ContactLock] = {}
        self._gate = asyncio.Semaphore(settings.event_route_concurrency)
        self._tasks: set[asyncio.Task] = set()

    # --- routing one contact's pending events --------------------------------------------

    async def route_contact(self, enroller: Enroller, contact_id: int) -> dict[str, Routed]:
        """Route the contact's pending events, oldest first; answer what each did (by event_id).

        Raises what routing raised (TemporalUnavailable, a database error): the failed event and
        the ones after it stay pending, for the next call or the sweep.
        """
        async with self._contact_session(contact_id) as session:
            events = list(
                (
                    await session.exec(
                        select(Event)
                        .where(Event.contact_id == contact_id, Event.inbox_status == PENDING)
                        .order_by(col(Event.id))
                    )
                ).all()
            )
            if not events:
                return {}
            contact = await session.get(Contact, contact_id)
            if contact is None:  # cannot happen while events refer to it; nothing to route to
                return {}
            triggers = await enroller.event_triggers(session)
            done: dict[str, Routed] = {}
            for event in events:
                if event.type in UNSUBSCRIBE_EVENTS:
                    await enroller.contact_changed(session, contact)
                routed = Routed.of(await enroller.route_event(session, contact, event, triggers))
                event.inbox_status = ROUTED
                event.routing = routed.as_json()
                session.add(event)
                await session.commit()
                done[event.event_id] = routed
                get_logger(contact_id=contact_id, event_id=event.event_id).info(
                    "event_routed", type=event.type, enrolled=routed.enrolled, signalled=routed.signalled
                )
            return done

    @asynccontextmanager
    async def _contact_session(self, contact_id: int) -> AsyncIterator[AsyncSession]:
        """A session that alone routes this contact: one per contact in this process (a lock), and on
        PostgreSQL across processes (a session advisory lock on the session's own connection: a
        transaction lock would end at the first commit, and routing commits per event)."""
        entry = self._locks.setdefault(contact_id, _ContactLock())
        entry.users += 1
        try:
            async with entry.lock, self._gate, self.db.engine.connect() as conn:
                session = AsyncSession(bind=conn, expire_on_commit=False)
                locked = conn.dialect.name == "postgresql"
                try:
                    if locked:
                        await conn.execute(_LOCK, {"space": _LOCK_SPACE, "contact": contact_id})
                        await conn.commit()
                    yield session
                finally:
                    await session.close()
                    if locked:
                        try:
                            await conn.execute(_UNLOCK, {"space": _LOCK_SPACE, "contact": contact_id})
                            await conn.commit()
                        except Exception:
                            # Never hand a connection that may still hold the lock back to the pool.
                            await conn.invalidate()
        finally:
            entry.users -= 1
            if entry.users == 0:
                self._locks.pop(contact_id, None)

    # --- routing without the request waiting -----------------------------------------------

    def route_soon(self, get_enroller: Callable[[], Awaitable[Enroller]], contact_ids: list[int]) -> None:
        """Route these contacts' pending events in the background; a failure leaves them to the sweep."""
        for contact_id in dict.fromkeys(contact_ids):
            task = asyncio.create_task(self._route_quietly(get_enroller, contact_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _route_quietly(self, get_enroller: Callable[[], Awaitable[Enroller]], contact_id: int) -> None:
        try:
            await self.route_contact(await get_enroller(), contact_id)
        except Exception as exc:  # stays pending: the sweep routes it
            get_logger(contact_id=contact_id).warning("event_routing_deferred", error=str(exc) or type(exc).__name__)

    async def drain(self) -> None:
        """Wait for the background routing started so far (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- the sweep --------------------------------------------------------------------------

    async def sweep(self, enroller: Enroller, older_than: timedelta | None = None) -> int:
        """Route the contacts with events pending for longer than ``older_than``; answer how many
        events were routed. Contacts one after another, ``event_route_concurrency`` at a time."""
        if older_than is None:
            older_than = timedelta(seconds=self.settings.event_sweep_after_seconds)
        async with self.db.session() as session:
            contact_ids = list(
                (
                    await session.exec(
                        select(Event.contact_id)
                        .where(Event.inbox_status == PENDING, Event.received_at <= utcnow() - older_than)
                        .group_by(Event.contact_id)
                        .order_by(sa.func.min(Event.id))
                        .limit(self.settings.event_sweep_batch)
                    )
                ).all()
            )
        routed = 0
        for result in await asyncio.gather(
            *(self.route_contact(enroller, c) for c in contact_ids), return_exceptions=True
        ):
            if isinstance(result, BaseException):
                get_logger(component="event_inbox").warning("event_sweep_failed", error=str(result) or type(result).__name__)
            else:
                routed += len(result)
        return routed

    async def run_sweeps(self, get_enroller: Callable[[], Awaitable[Enroller]]) -> None:
        """The API process's sweep loop (its lifespan runs it until shutdown)."""
        log = get_logger(component="event_inbox")
        while True:
            await asyncio.sleep(self.settings.event_sweep_interval_seconds)
            try:
                routed = await self.sweep(await get_enroller())
                if routed:
                    log.info("event_sweep_routed", events=routed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Temporal or the database away: the next sweep tries again
                log.warning("event_sweep_failed", error=str(exc) or type(exc).__name__)
