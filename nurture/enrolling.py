"""Starting enrollments and telling running ones about a contact.

Used by the API and by the batch and scheduled enrollment activities.

An enrollment is an ``enrollments`` row and the workflow that owns it. The row comes first:
written (active, no run id yet) and committed, then its workflow starts with the row's id and
the contact's snapshot in its input; from then on the workflow alone writes the row. Each row has
its own workflow id: ``<prefix>-<flow>-<contact>`` for a contact's first enrollment in a flow,
``<prefix>-<flow>-<contact>-<n>`` for its n-th (a re-enrollment). Starts reject a duplicate id,
so starting a row's workflow again (a retried request or page) finds the one already there. Two
requests enrolling one contact at once meet at the unique (flow, contact, sequence) key: one row,
one workflow.

When Temporal cannot be reached, ``enroll`` (and the event and property triggers) remove the rows
whose workflow did not start and raise TemporalUnavailable (503 in the API). ``admit_many`` (bulk
pages and trigger scans) keeps them and reports the failed starts instead: the page is retried,
finds the rows it wrote and starts them again (activities/enrolling.py).

Enrolling commits the caller's session: the row must be visible to its workflow before it starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from nurture import audience
from nurture.contracts import (
    ContactChangedSignal,
    ContactEventSignal,
    ContactSnapshot,
    ExitSignal,
    PauseSignal,
    ResumeSignal,
    enrollment_workflow_id,
)
from nurture.enrollment_starts import PendingStart, Starter, StartFailure
from nurture.flow.conditions import matches_properties
from nurture.flow.language import EventTrigger, FlowDefinition
from nurture.flow.triggers import EnrollmentPolicy, InactivityTrigger, PropertyTrigger
from nurture.event_types import MESSAGE_EVENTS
from nurture.flow_definitions import cached_definition, parsed_definition, version_key
from nurture.logging import get_logger
from nurture.models import (
    Contact,
    Enrollment,
    EnrollmentStatus,
    Event,
    Flow,
    FlowStatus,
    FlowVersion,
    Message,
    SubscriptionStatus,
    utcnow,
)
from nurture.settings import Settings
from nurture.snapshots import contact_snapshot

# The exit reason when a flow's trigger no longer matches a contact it enrolled.
CRITERIA_NO_LONGER_MATCH = "criteria_no_longer_match"


class TemporalUnavailable(Exception):
    """Temporal could not be reached; enrollment rows whose workflow did not start were removed again."""


@dataclass
class EnrollOutcome:
    enrollment: Enrollment
    created: bool


@dataclass
class Admission:
    """What an automatic enrollment (trigger, scan, bulk) did: enrolled, or why not."""

    enrollment: Enrollment | None = None
    skipped: str | None = None  # "unsubscribed", "bounced", "suppressed", "already_enrolled"
    # admit_many only: the row is written but its workflow did not start (why); a retry starts it.
    start_failed: str | None = None

    @property
    def created(self) -> bool:
        return self.skipped is None and self.enrollment is not None


@dataclass
class PageAdmissions:
    """``admit_many``'s answer: one admission per contact considered, in order."""

    admissions: list[Admission] = field(default_factory=list)
    # Rows an earlier attempt wrote whose workflows were started again (idempotently).
    restarted: int = 0

    @property
    def failed(self) -> list[Admission]:
        return [a for a in self.admissions if a.start_failed is not None]


@dataclass(frozen=True)
class EventTriggers:
    """The active flows' event triggers by event type, with the flow and version rows to enroll in."""

    by_type: Mapping[str, Sequence[tuple[Flow, FlowVersion, EventTrigger]]]


# Compiled event triggers per set of active versions (rows id and creation instant: immutable), per process.
_compiled_triggers: dict[tuple, EventTriggers] = {}


@dataclass
class RouteOutcome:
    enrolled: list[Enrollment] = field(default_factory=list)
    signalled: list[Enrollment] = field(default_factory=list)


@dataclass
class _Candidate:
    """A contact admitted to a flow version, its row not written yet."""

    flow: Flow
    version: FlowVersion
    contact: Contact
    latest: Enrollment | None


def may_reenroll(policy: EnrollmentPolicy | None, latest: Enrollment, now: datetime) -> bool:
    """Whether the flow's policy lets a contact whose latest enrollment is ``latest`` enroll again."""
    if latest.status == EnrollmentStatus.active or policy is None or policy.reenroll == "never":
        return False
    if policy.reenroll == "after_days":
        return now >= latest.started_at + timedelta(days=policy.reenroll_after_days or 0)
    return True


async def active_version(session: AsyncSession, flow: Flow) -> FlowVersion:
    return (
        await session.exec(
            select(FlowVersion).where(FlowVersion.flow_id == flow.id, FlowVersion.version == flow.active_version)
        )
    ).one()


async def latest_enrollment(session: AsyncSession, flow_id: int, contact_id: int) -> Enrollment | None:
    return (
        await session.exec(
            select(Enrollment)
            .where(Enrollment.flow_id == flow_id, Enrollment.contact_id == contact_id)
            .order_by(col(Enrollment.sequence).desc())
        )
    ).first()


async def latest_enrollments(
    session: AsyncSession, *, flow_ids: Iterable[int], contact_ids: Iterable[int]
) -> dict[tuple[int, int], Enrollment]:
    """The latest enrollment per (flow, contact) among the given ones, in one query."""
    flows, contacts = sorted(set(flow_ids)), sorted(set(contact_ids))
    if not flows or not contacts:
        return {}
    rows = await session.exec(
        select(Enrollment)
        .where(col(Enrollment.flow_id).in_(flows), col(Enrollment.contact_id).in_(contacts))
        .order_by(col(Enrollment.sequence))
    )
    return {(row.flow_id, row.contact_id): row for row in rows.all()}  # the highest sequence wins


def _new_row(settings: Settings, candidate: _Candidate, now: datetime) -> Enrollment:
    flow_id, contact_id = candidate.flow.id, candidate.contact.id
    assert flow_id is not None and contact_id is not None
    sequence = candidate.latest.sequence + 1 if candidate.latest is not None else 1
    return Enrollment(
        flow_id=flow_id,
        flow_version=candidate.version.version,
        contact_id=contact_id,
        sequence=sequence,
        workflow_id=enrollment_workflow_id(settings.workflow_id_prefix, flow_id, contact_id, sequence),
        run_id=None,
        status=EnrollmentStatus.active,
        started_at=now,
        updated_at=now,
    )


ENROLLMENTS = Enrollment.__table__
_INSERT_ROWS = sa.insert(ENROLLMENTS).returning(ENROLLMENTS.c.id, sort_by_parameter_order=True)
_INSERT_ONE = sa.insert(ENROLLMENTS)
_ROW_COLUMNS = ("flow_id", "flow_version", "contact_id", "sequence", "workflow_id", "run_id", "status",
                "current_step", "paused", "exit_reason", "progress_seq", "started_at", "updated_at")


def _unnest_insert() -> sa.TextClause:
    """PostgreSQL: a page's rows as one array per column, unnested into the table.

    A multi-row VALUES list has 13 placeholders per row: 13,000 for a bulk page, and psycopg
    splits a statement that long anew at every execution (too long for its cache), which was
    most of a page's CPU before its starts. Thirteen arrays are thirteen placeholders."""
    dialect = postgresql.dialect()
    quote = dialect.identifier_preparer.quote
    columns = ", ".join(quote(column) for column in _ROW_COLUMNS)
    arrays = ", ".join(
        f"CAST(:{column} AS {ENROLLMENTS.c[column].type.compile(dialect=dialect)}[])" for column in _ROW_COLUMNS
    )
    return sa.text(
        f"INSERT INTO {quote(ENROLLMENTS.name)} ({columns}) SELECT * FROM unnest({arrays}) RETURNING id, workflow_id"
    )


_UNNEST_INSERT = _unnest_insert()


def _plain(value):
    return value.value if isinstance(value, Enum) else value


async def _insert(session: AsyncSession, rows: Sequence[Enrollment]) -> None:
    """The rows in one statement, ids set (on SQLite, executemany with RETURNING, which
    SQLAlchemy batches into multi-row INSERTs)."""
    if len(rows) > 1 and session.get_bind().dialect.name == "postgresql":
        arrays = {column: [_plain(getattr(row, column)) for row in rows] for column in _ROW_COLUMNS}
        # Matched by workflow id (unique): RETURNING's order is not a promise of INSERT ... SELECT.
        ids = {workflow_id: row_id for row_id, workflow_id in (await session.execute(_UNNEST_INSERT, arrays)).all()}
        for row in rows:
            row.id = ids[row.workflow_id]
        return
    params = [{column: getattr(row, column) for column in _ROW_COLUMNS} for row in rows]
    if len(params) == 1:
        # One row (an API request): the dialect's own way to the new id (SQLite's lastrowid, no
        # RETURNING rows to fetch across aiosqlite's thread), not executemany's batching.
        rows[0].id = (await session.execute(_INSERT_ONE, params[0])).inserted_primary_key[0]
        return
    result = await session.execute(_INSERT_ROWS, params)
    for row, (row_id,) in zip(rows, result.all()):
        row.id = row_id


# PostgreSQL: a row whose key a concurrent enrollment holds is skipped, not an error, so no
# savepoint is needed around it (SAVEPOINT and RELEASE were two of an API enrollment's seven statements).
_INSERT_ONE_UNLESS_TAKEN = pg_insert(ENROLLMENTS).on_conflict_do_nothing().returning(ENROLLMENTS.c.id)


async def _insert_unless_taken(session: AsyncSession, row: Enrollment) -> bool:
    """Insert one row, its id set; False (nothing written) when a concurrent enrollment of the
    same contact holds its key. The transaction stays usable either way."""
    if session.get_bind().dialect.name == "postgresql":
        params = {column: getattr(row, column) for column in _ROW_COLUMNS}
        row_id = (await session.execute(_INSERT_ONE_UNLESS_TAKEN, params)).scalar_one_or_none()
        if row_id is None:
            return False
        row.id = row_id
        return True
    try:
        async with session.begin_nested():
            await _insert(session, [row])
        return True
    except IntegrityError:
        return False


# A page's starts report progress (its activity's heartbeat) at most this often: a heartbeat per
# start was a task, an encoding and a call into the SDK's core for each of a page's 1,000 starts,
# on the loop the starts share, while the core sends one heartbeat in a while to the server anyway.
PROGRESS_EVERY = 1.0


def _at_most_every(seconds: float, report: Callable[[], None] | None) -> Callable[[object], None] | None:
    """``report`` as a per-start callback, called on the first start done and then at most once per ``seconds``."""
    if report is None:
        return None
    last: float | None = None

    def done(_: object) -> None:
        nonlocal last
        now = time.monotonic()
        if last is None or now - last >= seconds:
            last = now
            report()

    return done


class Enroller:
    def __init__(self, client: Client, settings: Settings):
        self.client = client
        self.settings = settings
        self.starter = Starter(client, settings)

    def definition(self, version: FlowVersion) -> FlowDefinition:
        return parsed_definition(version, self.settings.flow_definition_cache_size)

    # --- enrolling ---------------------------------------------------------

    async def enroll(
        self,
        session: AsyncSession,
        flow: Flow,
        contact: Contact,
        *,
        now: datetime | None = None,
        version: FlowVersion | None = None,
    ) -> EnrollOutcome:
        """Enroll a contact in the flow's active version; commits the session.

        While an enrollment runs, or when the flow's re-enrollment policy does not allow
        another, the latest enrollment is returned (``created`` False). Temporal unreachable:
        the row is removed again and TemporalUnavailable raised.
        """
        assert flow.id is not None and contact.id is not None and flow.active_version is not None
        now = now or utcnow()
        version = version or await active_version(session, flow)
        latest = await latest_enrollment(session, flow.id, contact.id)
        if latest is not None and not may_reenroll(self.definition(version).enrollment, latest, now):
            return EnrollOutcome(latest, created=False)
        [outcome] = await self._enroll_now(session, [_Candidate(flow, version, contact, latest)], now)
        return outcome

    async def admit(
        self,
        session: AsyncSession,
        flow: Flow,
        contact: Contact,
        *,
        version: FlowVersion | None = None,
        now: datetime | None = None,
        since: datetime | None = None,
    ) -> Admission:
        """Enroll automatically (a trigger, a scan, a bulk run) unless the contact may not be.

        Never: a contact that is not subscribed, one that matches the flow's suppression
        criteria, one enrolled already (per the re-enrollment policy) or, with ``since``, one
        whose latest enrollment began at or after ``since`` (this date or inactivity spell).
        """
        assert flow.id is not None and contact.id is not None
        now = now or utcnow()
        version = version or await active_version(session, flow)
        [admission] = await self._admit_flows(session, contact, [(flow, version)], now, since)
        return admission

    async def admit_many(
        self,
        session: AsyncSession,
        flow: Flow,
        version: FlowVersion,
        contacts: Sequence[Contact],
        *,
        at: datetime,
        since: Mapping[int, datetime] | None = None,
        limit: int | None = None,
        on_progress: Callable[[], None] | None = None,
    ) -> PageAdmissions:
        """``admit`` for a page of contacts (in order), at most ``limit`` of them enrolled; commits.

        The page's rows are written in one transaction, then their workflows start at most
        ``enrollment_start_concurrency`` at a time. A start that still fails keeps its row and
        is reported (``start_failed``): the caller fails the page so that it is retried. Rows
        that began at or after ``at`` were written by an earlier attempt of this page: they
        count as enrolled (``already_enrolled`` with that row, never a second enrollment) and
        the workflows of those the workflow has not written to yet are started again.
        ``since`` gives, per contact, the instant its trigger fell (see ``admit``). ``on_progress``
        is called as the starts complete, at most once per ``PROGRESS_EVERY`` seconds.
        """
        assert flow.id is not None
        definition = self.definition(version)
        policy = definition.enrollment
        ids = [c.id for c in contacts if c.id is not None]
        latest = await latest_enrollments(session, flow_ids=[flow.id], contact_ids=ids)
        events = await audience.recent_events_of(session, ids, policy.suppress if policy else [], at)

        page = PageAdmissions()
        candidates: list[tuple[int, _Candidate]] = []
        again: list[tuple[int, Contact, Enrollment]] = []
        enrolled = 0
        for contact in contacts:
            if limit is not None and enrolled >= limit:
                break
            assert contact.id is not None
            last = latest.get((flow.id, contact.id))
            if last is not None and last.started_at >= at:
                # This page's own row (an earlier attempt): whatever changed since, it stays enrolled.
                if last.status == EnrollmentStatus.active and last.run_id is None:
                    again.append((len(page.admissions), contact, last))
                page.admissions.append(Admission(last, skipped="already_enrolled"))
                enrolled += 1
                continue
            skipped = self._refusal(
                contact, policy, last, at, since.get(contact.id) if since is not None else None, events
            )
            if skipped is not None:
                page.admissions.append(Admission(last if skipped == "already_enrolled" else None, skipped=skipped))
                continue
            candidates.append((len(page.admissions), _Candidate(flow, version, contact, last)))
            page.admissions.append(Admission())
            enrolled += 1

        written = await self._write_rows(session, [c for _, c in candidates], at)
        definitions = await self._definitions_of(session, flow, {row.flow_version for _, _, row in again}, version)
        await session.commit()  # before any start: the rows must be visible, and SQLite's lock free

        pendings: list[tuple[int, PendingStart]] = []
        for (index, candidate), (row, created) in zip(candidates, written):
            page.admissions[index] = Admission(row, skipped=None if created else "already_enrolled")
            if created:
                pendings.append((index, PendingStart(row, self.starter.input_for(row, definition, candidate.contact))))
        for index, contact, row in again:
            pendings.append((index, PendingStart(row, self.starter.input_for(row, definitions[row.flow_version], contact))))
        page.restarted = len(again)

        by_row = {id(p.enrollment): index for index, p in pendings}
        failures = await self.starter.start_all([p for _, p in pendings], _at_most_every(PROGRESS_EVERY, on_progress))
        for failure in failures:
            page.admissions[by_row[id(failure.pending.enrollment)]].start_failed = failure.detail
        return page

    async def suppressed(
        self, session: AsyncSession, flow: Flow, contact: Contact, *, version: FlowVersion | None = None
    ) -> int | None:
        """The index of the flow's suppression condition the contact matches, or None."""
        assert contact.id is not None
        definition = self.definition(version or await active_version(session, flow))
        fields = contact_snapshot(contact).fields()
        return await audience.suppressing(session, contact.id, fields, definition.enrollment, utcnow())

    @staticmethod
    def _refusal(
        contact: Contact,
        policy: EnrollmentPolicy | None,
        latest: Enrollment | None,
        now: datetime,
        since: datetime | None,
        events,
    ) -> str | None:
        """Why an automatic enrollment may not happen (the rules of ``admit``), or None."""
        assert contact.id is not None
        if contact.subscription_status != SubscriptionStatus.subscribed:
            return str(contact.subscription_status)
        # The snapshot only when a suppression condition reads it: a page builds one per contact otherwise.
        if policy is not None and policy.suppress:
            fields = contact_snapshot(contact).fields()
            if audience.suppressing_on(contact.id, fields, policy, events, now) is not None:
                return "suppressed"
        if latest is not None and since is not None and latest.started_at >= since:
            return "already_enrolled"
        if latest is not None and not may_reenroll(policy, latest, now):
            return "already_enrolled"
        return None

    async def _admit_flows(
        self,
        session: AsyncSession,
        contact: Contact,
        flows: Sequence[tuple[Flow, FlowVersion]],
        now: datetime,
        since: datetime | None = None,
    ) -> list[Admission]:
        """``admit`` one contact to several flows: read what the rules need in a few queries,
        write the admitted rows, commit and start their workflows together (undone on failure)."""
        assert contact.id is not None
        if contact.subscription_status != SubscriptionStatus.subscribed:
            return [Admission(skipped=str(contact.subscription_status)) for _ in flows]
        policies = [self.definition(version).enrollment for _, version in flows]
        latest = await latest_enrollments(session, flow_ids=[f.id for f, _ in flows], contact_ids=[contact.id])  # type: ignore[misc]
        events = await audience.recent_events_of(
            session, [contact.id], [c for p in policies if p is not None for c in p.suppress], now
        )
        admissions: list[Admission] = []
        candidates: list[tuple[int, _Candidate]] = []
        for (flow, version), policy in zip(flows, policies):
            last = latest.get((flow.id, contact.id))  # type: ignore[arg-type]
            skipped = self._refusal(contact, policy, last, now, since, events)
            if skipped is not None:
                admissions.append(Admission(last if skipped == "already_enrolled" else None, skipped=skipped))
            else:
                candidates.append((len(admissions), _Candidate(flow, version, contact, last)))
                admissions.append(Admission())
        outcomes = await self._enroll_now(session, [c for _, c in candidates], now)
        for (index, _), outcome in zip(candidates, outcomes):
            admissions[index] = Admission(outcome.enrollment, skipped=None if outcome.created else "already_enrolled")
        return admissions

    async def _enroll_now(self, session: AsyncSession, candidates: Sequence[_Candidate], now: datetime) -> list[EnrollOutcome]:
        """Write the rows, commit, start their workflows; on a failed start remove the rows whose
        workflow did not start and raise TemporalUnavailable."""
        if not candidates:
            return []
        written = await self._write_rows(session, candidates, now, one_by_one=True)
        await session.commit()
        pendings = [
            PendingStart(row, self.starter.input_for(row, self.definition(candidate.version), candidate.contact))
            for candidate, (row, created) in zip(candidates, written)
            if created
        ]
        failures = await self.starter.start_all(pendings)
        if failures:
            await self._undo(session, failures)
            raise TemporalUnavailable(failures[0].detail) from failures[0].error
        for row, created in written:
            if created:
                get_logger(flow_id=row.flow_id, enrollment_id=row.workflow_id, contact_id=row.contact_id).info(
                    "enrolled", version=row.flow_version, sequence=row.sequence, row=row.id
                )
        return [EnrollOutcome(row, created) for row, created in written]

    async def _write_rows(
        self, session: AsyncSession, candidates: Sequence[_Candidate], now: datetime, *, one_by_one: bool = False
    ) -> list[tuple[Enrollment, bool]]:
        """Insert the candidates' rows (not committed): each the new row, or (created False)
        the row a concurrent enrollment of the same contact wrote first.

        Written with Core, not the ORM's unit of work: one INSERT ... RETURNING id for the whole
        page (or for the one row), each id set on its Enrollment, which stays out of the session.
        The ORM's per-object bookkeeping was most of the enrolling CPU of a bulk page."""
        rows = [_new_row(self.settings, candidate, now) for candidate in candidates]
        if not rows:
            return []
        if len(rows) == 1:
            if await _insert_unless_taken(session, rows[0]):
                return [(rows[0], True)]
            return [(await self._winner(session, rows[0]), False)]
        if not one_by_one:
            try:
                async with session.begin_nested():
                    await _insert(session, rows)
                return [(row, True) for row in rows]
            except IntegrityError:
                pass  # someone enrolled one of them meanwhile: row by row, to find which
        written: list[tuple[Enrollment, bool]] = []
        for candidate in candidates:
            row = _new_row(self.settings, candidate, now)
            if await _insert_unless_taken(session, row):
                written.append((row, True))
            else:
                written.append((await self._winner(session, row), False))
        return written

    @staticmethod
    async def _winner(session: AsyncSession, row: Enrollment) -> Enrollment:
        winner = await latest_enrollment(session, row.flow_id, row.contact_id)
        assert winner is not None
        return winner

    async def _undo(self, session: AsyncSession, failures: Sequence[StartFailure]) -> None:
        """Remove the rows whose workflow did not start: nothing half-written."""
        ids = [failure.pending.enrollment.id for failure in failures]
        await session.exec(sa.delete(ENROLLMENTS).where(ENROLLMENTS.c.id.in_(ids)))  # type: ignore[call-overload]
        await session.commit()

    async def _definitions_of(
        self, session: AsyncSession, flow: Flow, versions: set[int], known: FlowVersion
    ) -> dict[int, FlowDefinition]:
        found = {known.version: self.definition(known)}
        missing = versions - found.keys()
        if missing:
            rows = await session.exec(
                select(FlowVersion).where(FlowVersion.flow_id == flow.id, col(FlowVersion.version).in_(sorted(missing)))
            )
            found.update({row.version: self.definition(row) for row in rows.all()})
        return found

    # --- events --------------------------------------------------------------

    async def route_event(
        self, session: AsyncSession, contact: Contact, event: Event, triggers: EventTriggers | None = None
    ) -> RouteOutcome:
        """Forward the event to the enrollments it concerns, then enroll per matching triggers.

        ``triggers``: the active flows' event triggers, compiled once per set of active versions
        (``event_triggers``); read here when not given.
        """
        outcome = RouteOutcome()
        signal = ContactEventSignal(
            event_id=event.event_id, type=event.type, properties=event.properties, occurred_at=event.occurred_at
        )
        active = await self._active_enrollments(session, contact)
        recipients = await self._event_recipients(session, contact, event, [e for e, _ in active])
        await self._signal_all([e.workflow_id for e in recipients], "contact_event", signal)
        outcome.signalled.extend(recipients)

        await self._unenroll_active_again(session, event, active)
        if contact.subscription_status != SubscriptionStatus.subscribed:
            return outcome
        if triggers is None:
            triggers = await self.event_triggers(session)
        triggered = triggered_by(triggers, event)
        if triggered:
            for admission in await self._admit_flows(session, contact, triggered, utcnow()):
                if admission.created and admission.enrollment is not None:
                    outcome.enrolled.append(admission.enrollment)
        return outcome

    async def event_triggers(self, session: AsyncSession) -> EventTriggers:
        """The active flows' event triggers by event type: one small query to learn which versions
        are active, compiled (definitions parsed, rows loaded) only when that set changed."""
        keys = (
            await session.exec(
                select(Flow.id, FlowVersion.id, FlowVersion.created_at)
                .join(FlowVersion, (FlowVersion.flow_id == Flow.id) & (FlowVersion.version == Flow.active_version))
                .where(Flow.status == FlowStatus.active, col(Flow.trigger_event).is_not(None))
                .order_by(Flow.id)
            )
        ).all()
        fingerprint = tuple(tuple(k) for k in keys)
        found = _compiled_triggers.get(fingerprint)
        if found is not None:
            return found
        rows = await session.exec(
            select(Flow, FlowVersion)
            .join(FlowVersion, (FlowVersion.flow_id == Flow.id) & (FlowVersion.version == Flow.active_version))
            .where(Flow.status == FlowStatus.active, col(Flow.trigger_event).is_not(None))
            .order_by(Flow.id)
        )
        by_type: dict[str, list[tuple[Flow, FlowVersion, EventTrigger]]] = {}
        for flow, version in rows.all():
            trigger = self.definition(version).trigger
            if isinstance(trigger, EventTrigger):
                by_type.setdefault(trigger.event, []).append((flow, version, trigger))
        compiled = EventTriggers(by_type)
        _compiled_triggers[fingerprint] = compiled
        while len(_compiled_triggers) > 8:
            _compiled_triggers.pop(next(iter(_compiled_triggers)))
        return compiled

    async def forward_event(self, session: AsyncSession, contact: Contact, event: Event) -> list[Enrollment]:
        """Tell the running enrollments only, no trigger: for an event routed before whose signals
        may have been lost (the workflows ignore an event id they already heard)."""
        signal = ContactEventSignal(
            event_id=event.event_id, type=event.type, properties=event.properties, occurred_at=event.occurred_at
        )
        active = await self._active_enrollments(session, contact)
        recipients = await self._event_recipients(session, contact, event, [e for e, _ in active])
        await self._signal_all([e.workflow_id for e in recipients], "contact_event", signal)
        return recipients

    async def _active_enrollments(
        self, session: AsyncSession, contact: Contact
    ) -> list[tuple[Enrollment, tuple]]:
        assert contact.id is not None
        return (await self.active_enrollments_of(session, [contact.id])).get(contact.id, [])

    async def active_enrollments_of(
        self, session: AsyncSession, contact_ids: Sequence[int]
    ) -> dict[int, list[tuple[Enrollment, tuple]]]:
        """The contacts' running enrollments (by id), each with its version's key in the
        parsed-definition cache; one query."""
        if not contact_ids:
            return {}
        rows = await session.exec(
            select(Enrollment, FlowVersion.id, FlowVersion.created_at)
            .join(
                FlowVersion,
                (FlowVersion.flow_id == Enrollment.flow_id) & (FlowVersion.version == Enrollment.flow_version),
            )
            .where(col(Enrollment.contact_id).in_(sorted(set(contact_ids))), Enrollment.status == EnrollmentStatus.active)
            .order_by(Enrollment.id)
        )
        found: dict[int, list[tuple[Enrollment, tuple]]] = {}
        for row, version_id, created_at in rows.all():
            found.setdefault(row.contact_id, []).append(
                (row, version_key(row.flow_id, row.flow_version, version_id, created_at))
            )
        return found

    async def definitions_of(self, session: AsyncSession, keys: Iterable[tuple]) -> dict[tuple, FlowDefinition]:
        """Parsed definitions by version key: from the per-process cache, the missing ones in one query."""
        definitions = {key: cached_definition(key) for key in keys}
        missing = [key for key, found in definitions.items() if found is None]
        if missing:
            loaded = await session.exec(select(FlowVersion).where(col(FlowVersion.id).in_([k[2] for k in missing])))
            for version in loaded.all():
                definitions[version_key(version.flow_id, version.version, version.id, version.created_at)] = (  # type: ignore[arg-type]
                    self.definition(version)
                )
        return {key: found for key, found in definitions.items() if found is not None}

    async def _unenroll_active_again(
        self, session: AsyncSession, event: Event, active: Sequence[tuple[Enrollment, tuple]]
    ) -> None:
        definitions = await self.definitions_of(session, [key for _, key in active])
        await self.exit_all(inactivity_leavers(event, active, definitions), CRITERIA_NO_LONGER_MATCH, "trigger")

    async def _event_recipients(
        self, session: AsyncSession, contact: Contact, event: Event, active: Sequence[Enrollment]
    ) -> list[Enrollment]:
        message_id = event.properties.get("message_id")
        message = None
        if event.type in MESSAGE_EVENTS and message_id is not None:
            message = await session.get(Message, _as_int(message_id))
        return event_recipients(event, contact.id, active, message)  # type: ignore[arg-type]

    async def tell_event(
        self, event: Event, recipients: Sequence[Enrollment], leaving: Sequence[Enrollment]
    ) -> None:
        """Signal the event to its recipients, then let go of the enrollments it ends (inactivity)."""
        signal = ContactEventSignal(
            event_id=event.event_id, type=event.type, properties=event.properties, occurred_at=event.occurred_at
        )
        await self._signal_all([e.workflow_id for e in recipients], "contact_event", signal)
        await self.exit_all(leaving, CRITERIA_NO_LONGER_MATCH, "trigger")

    # --- telling running enrollments ----------------------------------------

    async def contact_changed(
        self,
        session: AsyncSession,
        contact: Contact,
        previous: ContactSnapshot | None = None,
        *,
        created: bool = False,
    ) -> list[Enrollment]:
        """Tell running enrollments; with the contact as it was before (or ``created``), run property triggers.

        Property triggers go first, so an enrollment they start hears the new data too.
        """
        if previous is not None or created:
            await self.apply_property_triggers(session, contact, previous)
        return await self._signal_active(
            session, contact, "contact_changed", ContactChangedSignal(contact=contact_snapshot(contact))
        )

    async def property_trigger_flows(self, session: AsyncSession) -> list[tuple[Flow, FlowVersion, FlowDefinition]]:
        rows = await session.exec(
            select(Flow, FlowVersion)
            .join(FlowVersion, (FlowVersion.flow_id == Flow.id) & (FlowVersion.version == Flow.active_version))
            .where(Flow.status == FlowStatus.active, col(Flow.trigger_event).is_(None))
            .order_by(Flow.id)
        )
        found = []
        for flow, version in rows.all():
            definition = self.definition(version)
            if isinstance(definition.trigger, PropertyTrigger):
                found.append((flow, version, definition))
        return found

    async def apply_property_triggers(
        self, session: AsyncSession, contact: Contact, previous: ContactSnapshot | None
    ) -> list[Enrollment]:
        """Enroll where the contact starts to match a property trigger; unenroll where it stopped, if asked.

        Only the change counts: a contact that matched before and still does is left alone.
        """
        assert contact.id is not None
        now = utcnow()
        flows = await self.property_trigger_flows(session)
        if not flows:
            return []
        current = contact_snapshot(contact).fields()
        before = previous.fields() if previous is not None else None
        conditions = [definition.trigger.condition for _, _, definition in flows]  # type: ignore[union-attr]
        events = await audience.recent_events_of(session, [contact.id], conditions, now)
        starting: list[tuple[Flow, FlowVersion]] = []
        stopping: list[Flow] = []
        for (flow, version, definition), condition in zip(flows, conditions):
            matched = before is not None and audience.evaluate_on(condition, contact.id, before, events, now)
            matching = audience.evaluate_on(condition, contact.id, current, events, now)
            if matching and not matched:
                starting.append((flow, version))
            elif matched and not matching and definition.enrollment and definition.enrollment.unenroll_when_trigger_stops_matching:
                stopping.append(flow)

        enrolled: list[Enrollment] = []
        if starting:
            for (flow, _), admission in zip(starting, await self._admit_flows(session, contact, starting, now)):
                get_logger(flow_id=flow.id, contact_id=contact.id).info(
                    "property_trigger_matched", enrolled=admission.created, skipped=admission.skipped
                )
                if admission.created and admission.enrollment is not None:
                    enrolled.append(admission.enrollment)
        if stopping:
            latest = await latest_enrollments(session, flow_ids=[f.id for f in stopping], contact_ids=[contact.id])  # type: ignore[misc]
            leaving = [
                row for flow in stopping
                if (row := latest.get((flow.id, contact.id))) is not None and row.status == EnrollmentStatus.active  # type: ignore[arg-type]
            ]
            await self.exit_all(leaving, CRITERIA_NO_LONGER_MATCH, "trigger")
            for row in leaving:
                get_logger(flow_id=row.flow_id, contact_id=contact.id).info(
                    "property_trigger_unmatched", enrollment_id=row.workflow_id
                )
        return enrolled

    async def pause(
        self, session: AsyncSession, contact: Contact, until: datetime, reason: str, paused_by: str,
        exclude: str | None = None,
    ) -> list[Enrollment]:
        return await self._signal_active(
            session, contact, "pause", PauseSignal(until=until, reason=reason, paused_by=paused_by), exclude
        )

    async def resume(
        self, session: AsyncSession, contact: Contact, resumed_by: str, reason: str | None, exclude: str | None = None
    ) -> list[Enrollment]:
        return await self._signal_active(
            session, contact, "resume", ResumeSignal(resumed_by=resumed_by, reason=reason), exclude
        )

    async def exit(self, enrollment: Enrollment, reason: str, requested_by: str) -> None:
        await self._signal(enrollment.workflow_id, "exit", ExitSignal(reason=reason, requested_by=requested_by))

    async def exit_all(self, enrollments: Sequence[Enrollment], reason: str, requested_by: str) -> None:
        """``exit`` for many, ``enrollment_signal_concurrency`` at a time."""
        await self._signal_all(
            [e.workflow_id for e in enrollments], "exit", ExitSignal(reason=reason, requested_by=requested_by)
        )

    async def _signal_active(
        self, session: AsyncSession, contact: Contact, name: str, payload, exclude: str | None = None
    ) -> list[Enrollment]:
        enrollments = [
            e
            for e in (
                await session.exec(
                    select(Enrollment)
                    .where(Enrollment.contact_id == contact.id, Enrollment.status == EnrollmentStatus.active)
                    .order_by(Enrollment.id)
                )
            ).all()
            if e.workflow_id != exclude
        ]
        await self._signal_all([e.workflow_id for e in enrollments], name, payload)
        return enrollments

    async def _signal_all(self, workflow_ids: Sequence[str], name: str, payload) -> None:
        """Signal every workflow, ``enrollment_signal_concurrency`` at a time; all are tried even
        when one fails (TemporalUnavailable then, once they are done)."""
        if len(workflow_ids) <= 1:
            for workflow_id in workflow_ids:
                await self._signal(workflow_id, name, payload)
            return
        gate = asyncio.Semaphore(self.settings.enrollment_signal_concurrency)

        async def one(workflow_id: str) -> None:
            async with gate:
                await self._signal(workflow_id, name, payload)

        await _all_or_first_error([one(w) for w in workflow_ids])

    async def _signal(self, workflow_id: str, name: str, payload) -> None:
        try:
            await self.client.get_workflow_handle(workflow_id).signal(name, payload)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return  # finished between our read and the signal: nothing left to tell
            raise TemporalUnavailable(str(exc)) from exc


def message_of(event: Event) -> int | None:
    """The message an open or click is about (its ``message_id`` property), or None."""
    message_id = event.properties.get("message_id")
    if event.type in MESSAGE_EVENTS and message_id is not None:
        return _as_int(message_id)
    return None


def event_recipients(
    event: Event, contact_id: int, active: Sequence[Enrollment], message: Message | None
) -> list[Enrollment]:
    """The running enrollments an event concerns: all of the contact's, but an open or click only
    the enrollment that sent that email (``message``, looked up by ``message_of``)."""
    if message_of(event) is not None:
        if message is None or message.contact_id != contact_id or message.workflow_id is None:
            return []
        return [e for e in active if e.workflow_id == message.workflow_id]
    return list(active)


def inactivity_leavers(
    event: Event, active: Sequence[tuple[Enrollment, tuple]], definitions: Mapping[tuple, FlowDefinition]
) -> list[Enrollment]:
    """Any event since the enrollment began is activity: inactivity flows that unenroll when their
    trigger stops matching let the contact go."""
    leaving = []
    for enrollment, key in active:
        definition = definitions.get(key)
        if definition is None:
            continue
        policy = definition.enrollment
        if (
            isinstance(definition.trigger, InactivityTrigger)
            and policy is not None
            and policy.unenroll_when_trigger_stops_matching
            and event.occurred_at > enrollment.started_at
        ):
            leaving.append(enrollment)
    return leaving


def triggered_by(triggers: EventTriggers, event: Event) -> list[tuple[Flow, FlowVersion]]:
    return [
        (flow, version)
        for flow, version, trigger in triggers.by_type.get(event.type, ())
        if matches_properties(trigger.where, event.properties)
    ]


async def _all_or_first_error(calls: Sequence[Awaitable[None]]) -> None:
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _as_int(value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return -1
    # Ids are 32-bit columns on PostgreSQL: a bigger number matches no row (and must not reach the query).
    return number if 0 < number < 2**31 else -1
