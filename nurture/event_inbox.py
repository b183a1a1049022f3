"""The event inbox: accepting an event is one durable insert; routing it follows, off the request.

``POST /events`` (and ``/events/batch``) store each event with ``inbox_status = "pending"`` in the
same transaction as the contact's own changes (created, last activity, unsubscribed). The router
(``EventInbox``, one per API process) drains the pending events in the order they were accepted
(row id), in batches of up to ``event_route_batch``:

- most events only tell running enrollments (a goal, a wait, engagement): for the whole batch the
  contacts, their running enrollments and the messages opens and clicks name are read in a few
  queries, the signals go out concurrently (each contact's events one after another, in order),
  and the batch is marked ``routed`` in one statement;
- a contact with an event that triggers a flow, or unsubscribes, is routed event by event
  (``Enroller.route_event``): an enrollment its event starts then hears its next events.

Who drains: a request kicks the router once its event is committed. ``?wait=true`` then waits for
its event's outcome; the others are answered at once. Every ``event_sweep_interval_seconds`` each
API process drains as well, so an event whose process died before routing it, or that Temporal
was away for, is routed then: an event answered 2xx is never lost.

One router at a time (on PostgreSQL a session advisory lock held on the router's own connection,
so several API processes take turns; a process that finds it taken waits and reads its waiting
requests' outcomes from the rows): the events of one contact reach an enrollment in the order they
were accepted, and a contact whose event fails keeps that event and the ones after it pending. An
event routed again after a crash between its signal and its mark is ignored by the enrollments
that heard it (their seen-event ids), and an enrollment it started is found by its unique (flow,
contact, sequence) row instead of started twice.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlmodel import col, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from nurture.db import Database
from nurture.enrolling import (
    Enroller,
    EventTriggers,
    RouteOutcome,
    TemporalUnavailable,
    event_recipients,
    inactivity_leavers,
    message_of,
    triggered_by,
)
from nurture.event_types import UNSUBSCRIBE_EVENTS
from nurture.logging import get_logger
from nurture.models import Contact, Event, Message
from nurture.settings import Settings

PENDING = "pending"
ROUTED = "routed"

# The advisory lock of event routing (PostgreSQL), one for the whole database.
_LOCK_KEY = zlib.crc32(b"nurture-event-routing") & 0x7FFFFFFF
_TRY_LOCK = sa.text("SELECT pg_try_advisory_lock(:key)")
_UNLOCK = sa.text("SELECT pg_advisory_unlock(:key)")
# A process that finds another routing looks again this often.
_BUSY_POLL_SECONDS = 0.02

EnrollerFactory = Callable[[], Awaitable[Enroller]]


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
        self._waiters: dict[int, asyncio.Future[Routed]] = {}
        self._wanted = False
        self._drainer: asyncio.Task | None = None

    # --- asking for routing -----------------------------------------------------------------

    def kick(self, get_enroller: EnrollerFactory) -> None:
        """Route what is pending, soon; a failure leaves it pending for the next kick or sweep."""
        self._wanted = True
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain_while_wanted(get_enroller))

    async def routed(self, get_enroller: EnrollerFactory, event_row: int) -> Routed:
        """Kick the router and wait for this event's outcome; raises what its routing raised."""
        waiter = self._waiters.get(event_row)
        if waiter is None:
            waiter = self._waiters[event_row] = asyncio.get_running_loop().create_future()
        self.kick(get_enroller)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), self.settings.event_wait_timeout_seconds)
        except TimeoutError as exc:
            raise TemporalUnavailable(
                f"the event was not routed within {self.settings.event_wait_timeout_seconds:g}s "
                "(setting event_wait_timeout_seconds)"
            ) from exc
        finally:
            self._waiters.pop(event_row, None)

    async def drain(self) -> None:
        """Wait until the router of this process has nothing left to do (shutdown, tests)."""
        while self._drainer is not None and not self._drainer.done():
            await asyncio.gather(self._drainer, return_exceptions=True)

    async def sweep(self, enroller: Enroller) -> int:
        """Route everything pending now; answer how many events were routed (tests, tools)."""
        routed = 0
        while True:
            async with self._router_session() as session:
                if session is None:
                    await asyncio.sleep(_BUSY_POLL_SECONDS)
                    continue
                while (done := await self._route_batch(session, enroller)) > 0:
                    routed += done
                return routed

    async def run_sweeps(self, get_enroller: EnrollerFactory) -> None:
        """The API process's sweep (its lifespan runs it until shutdown)."""
        while True:
            await asyncio.sleep(self.settings.event_sweep_interval_seconds)
            self.kick(get_enroller)

    # --- the router ---------------------------------------------------------------------------

    async def _drain_while_wanted(self, get_enroller: EnrollerFactory) -> None:
        log = get_logger(component="event_inbox")
        while self._wanted or self._waiters:
            self._wanted = False
            try:
                enroller = await get_enroller()
                async with self._router_session() as session:
                    if session is None:  # another process routes: it will take ours too
                        self._wanted = True
                        await self._outcomes_from_rows()
                        await asyncio.sleep(_BUSY_POLL_SECONDS)
                        continue
                    while await self._route_batch(session, enroller) > 0:
                        pass
                # Awaited events not routed by this pass: routed by another process meanwhile, or
                # stuck behind an event that failed; unless more was asked for since, say so.
                await self._outcomes_from_rows()
                if not self._wanted:
                    for waiter in self._waiters.values():
                        if not waiter.done():
                            waiter.set_exception(
                                TemporalUnavailable("the event is stored but could not be routed yet; it is retried")
                            )
            except Exception as exc:  # Temporal or the database away: the next kick or sweep retries
                log.warning("event_routing_deferred", error=str(exc) or type(exc).__name__)
                for waiter in self._waiters.values():
                    if not waiter.done():
                        waiter.set_exception(exc)
                return

    @asynccontextmanager
    async def _router_session(self) -> AsyncIterator[AsyncSession | None]:
        """The router's session on a connection of its own, or None while another process routes.

        On PostgreSQL the session advisory lock is held on that connection (a transaction lock would
        end at the first commit, and routing commits per batch)."""
        async with self.db.engine.connect() as conn:
            locking = conn.dialect.name == "postgresql"
            if locking:
                got = (await conn.execute(_TRY_LOCK, {"key": _LOCK_KEY})).scalar()
                await conn.commit()
                if not got:
                    yield None
                    return
            session = AsyncSession(bind=conn, expire_on_commit=False)
            try:
                yield session
            finally:
                await session.close()
                if locking:
                    try:
                        await conn.execute(_UNLOCK, {"key": _LOCK_KEY})
                        await conn.commit()
                    except Exception:
                        # Never hand a connection that may still hold the lock back to the pool.
                        await conn.invalidate()

    async def _route_batch(self, session: AsyncSession, enroller: Enroller) -> int:
        """Route the oldest pending events (up to ``event_route_batch``); answer how many were routed."""
        events = list(
            (
                await session.exec(
                    select(Event).where(Event.inbox_status == PENDING).order_by(col(Event.id)).limit(self.settings.event_route_batch)
                )
            ).all()
        )
        if not events:
            return 0
        by_contact: dict[int, list[Event]] = {}
        for event in events:
            by_contact.setdefault(event.contact_id, []).append(event)
        contacts = {
            c.id: c for c in (await session.exec(select(Contact).where(col(Contact.id).in_(list(by_contact))))).all()
        }
        triggers = await enroller.event_triggers(session)
        one_by_one = [
            contact_id for contact_id, own in by_contact.items() if _needs_one_by_one(own, contacts.get(contact_id), triggers)
        ]
        quick = [contact_id for contact_id in by_contact if contact_id not in set(one_by_one)]
        routed = await self._tell_quickly(session, enroller, {c: by_contact[c] for c in quick})
        for contact_id in one_by_one:
            routed += await self._route_one_by_one(session, enroller, contacts[contact_id], by_contact[contact_id], triggers)
        return routed

    async def _tell_quickly(self, session: AsyncSession, enroller: Enroller, by_contact: dict[int, list[Event]]) -> int:
        """Events that only tell running enrollments: signals for the whole batch at once, each
        contact's in order, then one statement marks them routed."""
        if not by_contact:
            return 0
        active = await enroller.active_enrollments_of(session, list(by_contact))
        definitions = await enroller.definitions_of(session, {key for rows in active.values() for _, key in rows})
        message_ids = {m for events in by_contact.values() for e in events if (m := message_of(e)) is not None}
        messages = (
            {m.id: m for m in (await session.exec(select(Message).where(col(Message.id).in_(sorted(message_ids))))).all()}
            if message_ids
            else {}
        )
        # End the reading transaction before the signals: on SQLite it holds the write lock, and the
        # requests accepting new events must not wait for Temporal.
        await session.commit()
        done: dict[int, Routed] = {}
        failures: dict[int, BaseException] = {}
        gate = asyncio.Semaphore(self.settings.event_route_concurrency)

        async def tell(contact_id: int, events: Sequence[Event]) -> None:
            rows = active.get(contact_id, [])
            async with gate:
                for event in events:
                    message_id = message_of(event)
                    recipients = event_recipients(
                        event, contact_id, [e for e, _ in rows], messages.get(message_id) if message_id else None
                    )
                    try:
                        await enroller.tell_event(event, recipients, inactivity_leavers(event, rows, definitions))
                    except Exception as exc:  # this contact's later events wait behind this one
                        for later in events[events.index(event):]:
                            failures[later.id] = exc  # type: ignore[index]
                        return
                    done[event.id] = Routed(signalled=[e.id for e in recipients if e.id is not None])  # type: ignore[index]

        await asyncio.gather(*(tell(c, events) for c, events in by_contact.items()))
        if done:
            await session.execute(
                update(Event),
                [{"id": row, "inbox_status": ROUTED, "routing": routed.as_json()} for row, routed in done.items()],
            )
            await session.commit()
        for row, routed in done.items():
            self._resolve(row, routed)
        for row, exc in failures.items():
            self._fail(row, exc)
        if failures:
            get_logger(component="event_inbox").warning(
                "event_routing_deferred", events=len(failures), error=str(next(iter(failures.values())))
            )
        return len(done)

    async def _route_one_by_one(
        self, session: AsyncSession, enroller: Enroller, contact: Contact, events: Sequence[Event], triggers: EventTriggers
    ) -> int:
        routed = 0
        for event in events:
            try:
                # The event first: the enrollments it concerns hear it (and are reported) before the
                # unsubscribed contact makes them exit.
                outcome = Routed.of(await enroller.route_event(session, contact, event, triggers))
                if event.type in UNSUBSCRIBE_EVENTS:
                    await enroller.contact_changed(session, contact)
                event.inbox_status = ROUTED
                event.routing = outcome.as_json()
                session.add(event)
                await session.commit()
            except Exception as exc:  # stays pending, and so do the contact's events after it
                await session.rollback()
                for later in events[events.index(event):]:
                    self._fail(later.id, exc)  # type: ignore[arg-type]
                get_logger(contact_id=contact.id, event_id=event.event_id).warning(
                    "event_routing_deferred", error=str(exc) or type(exc).__name__
                )
                return routed
            routed += 1
            self._resolve(event.id, outcome)  # type: ignore[arg-type]
            get_logger(contact_id=contact.id, event_id=event.event_id).info(
                "event_routed", type=event.type, enrolled=outcome.enrolled, signalled=outcome.signalled
            )
        return routed

    # --- answering the requests that wait ---------------------------------------------------------

    def _resolve(self, event_row: int, routed: Routed) -> None:
        waiter = self._waiters.get(event_row)
        if waiter is not None and not waiter.done():
            waiter.set_result(routed)

    def _fail(self, event_row: int, exc: BaseException) -> None:
        waiter = self._waiters.get(event_row)
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def _outcomes_from_rows(self) -> None:
        """Outcomes of awaited events routed by another process (read from their rows)."""
        open_rows = [row for row, waiter in self._waiters.items() if not waiter.done()]
        if not open_rows:
            return
        async with self.db.session() as session:
            for event in (await session.exec(select(Event).where(col(Event.id).in_(open_rows)))).all():
                outcome = Routed.stored(event)
                if outcome is not None:
                    self._resolve(event.id, outcome)  # type: ignore[arg-type]


def _needs_one_by_one(events: Sequence[Event], contact: Contact | None, triggers: EventTriggers) -> bool:
    """Whether an event of these may start an enrollment (or unsubscribes the contact): then each is
    routed on its own, so that the enrollment one starts hears the next."""
    if contact is None:
        return False
    return any(event.type in UNSUBSCRIBE_EVENTS or triggered_by(triggers, event) for event in events)
