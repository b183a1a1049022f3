"""Contact import: a CSV or JSON-lines file upserted by email, chunk by chunk, as POST /contacts would.

Rows are read as the body streams in (nurture/import_formats.py) and validated with the model
POST /contacts takes (handed in by the API: nothing here imports it). A bad row is reported and
skipped; the good ones are written ``import_chunk_rows`` at a time, one upsert statement and one
transaction per chunk, with the rules of POST /contacts (nurture/contact_changes.py).

Once a chunk is committed, the contacts it changed that have running enrollments, or that a
property trigger may enroll, go through ``Enroller.contact_changed`` like a change made through
the API. The others cost nothing more: one query per chunk finds who has running enrollments,
and the property-trigger flows are loaded once per import.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ValidationError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from nurture import import_formats
from nurture.contact_changes import apply_contact_changes
from nurture.crm.writes import UPSERT, queue_upserts
from nurture.db import Database
from nurture.enrolling import Enroller, TemporalUnavailable
from nurture.import_formats import FileRefused, Format, RawRow, RowLimits
from nurture.logging import get_logger
from nurture.models import Contact, CrmWrite, Enrollment, EnrollmentStatus, SubscriptionStatus, utcnow
from nurture.settings import Settings
from nurture.snapshots import contact_snapshot

__all__ = ["ContactImporter", "FileRefused", "ImportReport", "ImportStopped", "RowError"]

CONTACTS = Contact.__table__


@dataclass
class RowError:
    row: int
    line: int
    field: str | None
    reason: str


@dataclass
class ImportReport:
    max_errors: int
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    errors: list[RowError] = field(default_factory=list)
    truncated: bool = False

    def fail(self, row: int, line: int, problems: Iterable[tuple[str | None, str]]) -> None:
        self.failed += 1
        for field_name, reason in problems:
            if len(self.errors) < self.max_errors:
                self.errors.append(RowError(row, line, field_name, reason))
            else:
                self.truncated = True

    def summary(self) -> str:
        return (
            f"{self.rows} rows read: {self.created} created, {self.updated} updated, "
            f"{self.unchanged} unchanged, {self.failed} failed"
        )


class ImportStopped(Exception):
    """The import stopped part-way (``status`` is the HTTP answer); the chunks before are stored."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class _Row:
    number: int
    line: int
    email: str
    changes: dict[str, Any]


@dataclass
class _Target:
    """One contact a chunk touches, worked on as a plain copy of its row (a Contact instance costs
    far more to make than the rest of the row's work) and written in one statement."""

    contact: SimpleNamespace
    previous: dict[str, Any] | None  # the row as read; None for a contact the chunk creates
    changed: bool = False
    stored: bool = False

    @property
    def created(self) -> bool:
        return self.previous is None


class _FlowsLoadedOnce(Enroller):
    """The enroller with the property-trigger flows read when the import began (Enroller reads
    them again for every contact it is told about)."""

    def __init__(self, enroller: Enroller, flows: list):
        super().__init__(enroller.client, enroller.settings)
        self._flows = flows

    async def property_trigger_flows(self, session: AsyncSession) -> list:
        return self._flows


class ContactImporter:
    def __init__(self, db: Database, enroller: Enroller, settings: Settings, row_model: type[BaseModel], kind: Format):
        self.db = db
        self.enroller = enroller
        self.settings = settings
        self.row_model = row_model
        # Every field POST /contacts takes is written; the rest of the row (pauses, activity) is left alone.
        self.written = [name for name in row_model.model_fields if name != "email"] + ["updated_at"]
        limits = RowLimits(settings.import_max_row_bytes, settings.import_max_columns, settings.max_nesting_depth)
        self.reader = import_formats.reader(kind, limits, row_model.model_fields)
        self.report = ImportReport(settings.import_max_errors)
        self.pending: list[_Row] = []
        self.trigger_flows = False
        self.statements = _Statements(db.engine.dialect.name, self.written)

    async def run(self, body: AsyncIterator[bytes]) -> ImportReport:
        """Read ``body`` to its end, storing as it goes; ImportStopped (or a database error) stops it."""
        async with self.db.session() as session:
            flows = await self.enroller.property_trigger_flows(session)
        self.enroller = _FlowsLoadedOnce(self.enroller, flows)
        self.trigger_flows = bool(flows)
        chunks = _paced(body, self.settings.import_idle_timeout_seconds)
        while True:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except Exception:
                # The body failed (too large, too slow, the client left): the rows read in full still go in.
                await self._flush()
                raise
            await self._take(self.reader.feed(chunk))
        await self._take(self.reader.close())
        await self._flush()
        return self.report

    async def _take(self, rows: list[RawRow]) -> None:
        for raw in rows:
            if raw.number > self.settings.import_max_rows:
                await self._flush()
                raise ImportStopped(
                    413, f"the file has more than {self.settings.import_max_rows} rows (the import_max_rows limit)"
                )
            self.report.rows += 1
            row = self._validated(raw)
            if row is not None:
                self.pending.append(row)
                if len(self.pending) >= self.settings.import_chunk_rows:
                    await self._flush()

    def _validated(self, raw: RawRow) -> _Row | None:
        if raw.values is None:
            self.report.fail(raw.number, raw.line, [(raw.field, raw.problem or "the row cannot be read")])
            return None
        try:
            body = self.row_model.model_validate(raw.values)
        except ValidationError as exc:
            self.report.fail(
                raw.number, raw.line, [(".".join(str(part) for part in e["loc"]) or None, e["msg"]) for e in exc.errors()]
            )
            return None
        changes = body.model_dump(exclude_unset=True, exclude={"email"})
        return _Row(raw.number, raw.line, body.email, changes)  # type: ignore[attr-defined]

    async def _flush(self) -> None:
        rows, self.pending = self.pending, []
        if not rows:
            return
        try:
            await self._store(rows)
        except DataError as exc:
            # The checks above let through nothing the database is known to refuse; should it still
            # refuse a value, the chunk is reported rather than the whole import stopped.
            get_logger().warning("contact_import_chunk_refused", first_row=rows[0].number, error=str(exc.orig))
            for row in rows:
                reason = f"rows {rows[0].number}-{rows[-1].number} cannot be stored together: {exc.orig}"
                self.report.fail(row.number, row.line, [(None, reason)])

    # --- one chunk ---------------------------------------------------------------

    async def _store(self, rows: list[_Row]) -> None:
        outcomes: list[tuple[_Row, _Target, str]] = []
        async with self.db.session() as session:
            targets = await self._read(session, {row.email for row in rows})
            for row in rows:
                target = targets.get(row.email)
                if target is None:
                    target = targets[row.email] = _Target(_new_contact(row.email), previous=None, changed=True)
                    outcome = "created"
                else:
                    outcome = "unchanged"
                if apply_contact_changes(target.contact, row.changes, explicit_edit=False):  # type: ignore[arg-type]
                    target.changed = True
                    outcome = "updated" if outcome == "unchanged" else outcome
                outcomes.append((row, target, outcome))
            written = [target for target in targets.values() if target.changed]
            running: set[int] = set()
            if written:
                await self._upsert(session, written)
                running = await self._with_running_enrollments(
                    session, [t.contact.id for t in written if t.stored and not t.created]
                )
                # With a CRM connected, the contacts created here are upserted there (one insert per chunk).
                await queue_upserts(
                    session, self.settings, self.db.engine.dialect.name,
                    [(t.contact.id, t.contact.email) for t in written if t.stored and t.created],
                )
            await session.commit()

        told = [t for t in written if t.stored and (self.trigger_flows or t.contact.id in running)]
        try:
            await self._tell_engine(told)
        except _Untold as untold:
            self._count(outcomes, untold.targets, untold.reason)
            raise ImportStopped(503, untold.reason) from untold.__cause__
        self._count(outcomes, [], "")

    def _count(self, outcomes: list[tuple[_Row, _Target, str]], untold: list[_Target], reason: str) -> None:
        lost = "another request created this contact while the row was written: import the row again"
        untold_ids = {id(target) for target in untold}
        for row, target, outcome in outcomes:
            if target.changed and not target.stored:
                self.report.fail(row.number, row.line, [("email", lost)])
            elif id(target) in untold_ids:
                self.report.fail(row.number, row.line, [(None, reason)])
            else:
                setattr(self.report, outcome, getattr(self.report, outcome) + 1)

    async def _read(self, session: AsyncSession, emails: set[str]) -> dict[str, _Target]:
        found = (await session.exec(self.statements.read, params={"emails": sorted(emails)})).mappings().all()
        return {row["email"]: _Target(SimpleNamespace(**row), previous=dict(row)) for row in found}

    async def _upsert(self, session: AsyncSession, targets: list[_Target]) -> None:
        targets = sorted(targets, key=lambda t: t.contact.email)  # rows locked in the order of the read
        params = self.statements.upsert_params([t.contact for t in targets])
        stored = dict((email, contact_id) for contact_id, email in (await session.exec(self.statements.upsert, params=params)).all())
        for target in targets:
            target.contact.id = stored.get(target.contact.email, target.contact.id)
            target.stored = target.contact.email in stored

    async def _with_running_enrollments(self, session: AsyncSession, contact_ids: list[int]) -> set[int]:
        if not contact_ids:
            return set()
        query = select(Enrollment.contact_id).where(
            col(Enrollment.contact_id).in_(contact_ids), Enrollment.status == EnrollmentStatus.active
        ).distinct()
        return set((await session.exec(query)).all())

    # --- the engine ----------------------------------------------------------------

    async def _tell_engine(self, targets: list[_Target]) -> None:
        """Each changed contact, as POST /contacts does it: property triggers, then running enrollments.

        Runs after the chunk's commit, so no transaction waits on Temporal. Should Temporal fail,
        the contacts not told yet are put back as they were (so importing the file again tells
        them) and _Untold says so.
        """
        if not targets:
            return
        async with self.db.session() as session:
            ids = [t.contact.id for t in targets]
            contacts = {c.id: c for c in (await session.exec(select(Contact).where(col(Contact.id).in_(ids)))).all()}
            for done, target in enumerate(targets):
                contact = contacts.get(target.contact.id)
                if contact is None:
                    continue  # deleted meanwhile: nobody to tell
                previous = None if target.previous is None else contact_snapshot(Contact(**target.previous))
                try:
                    await self.enroller.contact_changed(session, contact, previous, created=target.created)
                    await session.commit()
                except Exception as exc:
                    await session.rollback()
                    await self._put_back(targets[done:])
                    if isinstance(exc, TemporalUnavailable):
                        raise _Untold(targets[done:], f"Temporal is unavailable ({exc}): these rows were not imported") from exc
                    raise

    async def _put_back(self, targets: list[_Target]) -> None:
        try:
            async with self.db.session() as session:
                for target in targets:
                    where = CONTACTS.c.id == target.contact.id
                    if target.previous is None:
                        try:
                            async with session.begin_nested():
                                await session.exec(sa.delete(CrmWrite.__table__).where(  # type: ignore[attr-defined]
                                    CrmWrite.contact_id == target.contact.id, CrmWrite.kind == UPSERT
                                ))
                                await session.exec(sa.delete(CONTACTS).where(where))
                        except IntegrityError:
                            pass  # an enrollment started for it already: it stays
                    else:
                        await session.exec(sa.update(CONTACTS).where(where).values({n: target.previous[n] for n in self.written}))
                await session.commit()
        except Exception as exc:  # the failure that got us here is the one to report
            get_logger().warning("contact_import_put_back_failed", contacts=len(targets), error=str(exc))


class _Statements:
    """The chunk's read and upsert, as each database takes them fastest.

    PostgreSQL gets one array per column (the emails to read; the rows to write, unnested): a
    statement of a dozen parameters that the driver parses once, where one parameter per value
    would have it parse a statement of thousands for every chunk. SQLite takes the rows as they are.
    """

    def __init__(self, dialect: str, written: list[str]):
        self.on_postgresql = dialect == "postgresql"
        self.columns = ["email", "created_at", *written]
        if self.on_postgresql:
            emails = sa.cast(sa.bindparam("emails"), postgresql.ARRAY(CONTACTS.c.email.type))
            self.read_where = CONTACTS.c.email == sa.any_(emails)
            # JSON values travel as text (the driver adapts no array of JSON) and are cast back.
            self.json_columns = {name for name in self.columns if isinstance(CONTACTS.c[name].type, sa.JSON)}
            arrays = [
                sa.cast(sa.bindparam(name), postgresql.ARRAY(sa.Text if name in self.json_columns else CONTACTS.c[name].type))
                for name in self.columns
            ]
            rows = sa.func.unnest(*arrays).table_valued(*self.columns).render_derived(name="row")
            values = [sa.cast(rows.c[name], sa.JSON) if name in self.json_columns else rows.c[name] for name in self.columns]
            insert = postgresql.insert(CONTACTS).from_select(self.columns, sa.select(*values))
        else:
            self.read_where = CONTACTS.c.email.in_(sa.bindparam("emails", expanding=True))
            insert = sqlite.insert(CONTACTS)
        # Emails are stored lowercase, as the model hands them over: the unique index finds them.
        # The rows are locked in a stable order (PostgreSQL; SQLite's transaction holds the write lock).
        self.read = sa.select(CONTACTS).where(self.read_where).order_by(CONTACTS.c.email).with_for_update()
        self.upsert = insert.on_conflict_do_update(
            index_elements=[CONTACTS.c.email],
            set_={name: insert.excluded[name] for name in written},
            # Only the contact that was read (and locked): the row that was there then has the
            # creation time it had. One that another request created since was not merged with:
            # it is left as it is, not returned, and its rows are reported.
            where=CONTACTS.c.created_at == insert.excluded.created_at,
        ).returning(CONTACTS.c.id, CONTACTS.c.email)

    def upsert_params(self, contacts: list[SimpleNamespace]) -> dict[str, list] | list[dict[str, Any]]:
        if self.on_postgresql:
            return {
                name: [json.dumps(getattr(c, name)) if name in self.json_columns else getattr(c, name) for c in contacts]
                for name in self.columns
            }
        return [{name: getattr(contact, name) for name in self.columns} for contact in contacts]


def _new_contact(email: str) -> SimpleNamespace:
    """What ``Contact(email=email)`` holds before its first write."""
    now = utcnow()
    fields = {column.name: None for column in CONTACTS.c}
    return SimpleNamespace(**fields | {
        "email": email, "properties": {}, "lists": [], "tags": [],
        "subscription_status": SubscriptionStatus.subscribed.value, "created_at": now, "updated_at": now,
    })


class _Untold(Exception):
    def __init__(self, targets: list[_Target], reason: str):
        super().__init__(reason)
        self.targets = targets
        self.reason = reason


async def _paced(body: AsyncIterator[bytes], idle_seconds: float) -> AsyncIterator[bytes]:
    """The body's chunks; a client that goes quiet for ``idle_seconds`` is cut off."""
    chunks = aiter(body)
    while True:
        try:
            chunk = await asyncio.wait_for(anext(chunks), idle_seconds)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ImportStopped(
                408, f"nothing arrived for {idle_seconds:g} seconds (the import_idle_timeout_seconds limit)"
            ) from None
        if chunk:
            yield chunk
