"""The HubSpot connector, on HubSpot's own client (``hubspot-api-client``) with a private app token.

The client is synchronous (urllib3): each call runs in a thread. Calls are paced to the private
app's burst limit (``crm_burst_per_10s`` per 10 seconds, per process) and batch calls carry at most
``crm_batch_size`` (HubSpot's 100) records. A 429 or 5xx becomes ``CrmUnavailable`` with HubSpot's
``Retry-After``; the caller (an activity) retries, so the client's own status retries stay off.

Every write goes in HubSpot's batch calls: contacts upserted by email (``batch/upsert``), field
updates by id (``batch/update``), tasks and notes created (``batch/create``) with our idempotency key
as each input's ``objectWriteTraceId``. A batch answers 200/201 when all went, or 207 naming the
records refused; HubSpot refuses a whole batch (400) for one bad property or id, and then the batch
is asked again record by record, so that only the bad record fails.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import hubspot
from urllib3.util.retry import Retry
from hubspot.crm.contacts import (
    BatchInputSimplePublicObjectBatchInput,
    BatchInputSimplePublicObjectBatchInputUpsert,
    BatchReadInputSimplePublicObjectId,
    Filter,
    FilterGroup,
    PublicObjectSearchRequest,
    SimplePublicObjectBatchInput,
    SimplePublicObjectBatchInputUpsert,
    SimplePublicObjectId,
    SimplePublicObjectInput,
)
from hubspot.crm.deals import (
    Filter as DealFilter,
    FilterGroup as DealFilterGroup,
    PublicObjectSearchRequest as DealSearchRequest,
)
from hubspot.crm.objects.notes import (
    BatchInputSimplePublicObjectBatchInputForCreate as NoteBatch,
    SimplePublicObjectBatchInputForCreate as NoteBatchInput,
    SimplePublicObjectInputForCreate as NoteInput,
)
from hubspot.crm.objects.tasks import (
    AssociationSpec,
    BatchInputSimplePublicObjectBatchInputForCreate as TaskBatch,
    PublicAssociationsForObject,
    PublicObjectId,
    SimplePublicObjectBatchInputForCreate as TaskBatchInput,
    SimplePublicObjectInputForCreate as TaskInput,
)

from nurture.crm.connector import (
    ContactPage,
    CrmActivity,
    CrmAuthFailed,
    CrmContact,
    CrmDeal,
    CrmError,
    CrmRejected,
    CrmUnavailable,
)
from nurture.crm.pacing import BurstLimit, paced
from nurture.settings import Settings

# HubSpot-defined association type ids (v4 "associationTypeId"): task -> contact, note -> contact.
TASK_TO_CONTACT = 204
NOTE_TO_CONTACT = 202
DEAL_PROPERTIES = ["dealstage", "pipeline", "dealname", "amount", "hs_lastmodifieddate"]
# Our idempotency key is written into the body of each task and note, and searched before a create.
KEY_MARK = "nurturekey"


class HubSpotConnector:
    provider = "hubspot"

    def __init__(self, settings: Settings):
        if not settings.crm_hubspot_token:
            raise CrmAuthFailed("NURTURE_CRM_HUBSPOT_TOKEN is not set")
        # Connection failures are retried here; answers (429, 5xx) go to our caller, who waits Retry-After.
        retry = Retry(total=3, connect=3, read=0, status=0, redirect=0, respect_retry_after_header=False)
        self.client = hubspot.Client.create(
            access_token=settings.crm_hubspot_token, host=settings.crm_hubspot_base_url, retry=retry
        )
        self.timeout = settings.crm_request_timeout_seconds
        self.batch_size = settings.crm_batch_size
        # Every write goes in HubSpot's batches of at most crm_batch_size; a search for tasks and notes
        # that may already be there asks for up to crm_hubspot_search_keys keys (one filter group each).
        self.upsert_batch = self.update_batch = self.activity_batch = self.batch_size
        self.search_keys = settings.crm_hubspot_search_keys
        self.search_cap = settings.crm_hubspot_search_cap
        self.limit = BurstLimit.from_settings(settings)
        self.owner_cache: tuple[float, dict[str, str]] | None = None  # nurture.crm.mapping_with_owners

    # --- contacts ------------------------------------------------------------

    async def get_contact(self, crm_id: str, properties: list[str]) -> CrmContact | None:
        found = await self._call(self.client.crm.contacts.basic_api.get_by_id, crm_id, properties=properties, missing_ok=True)
        return _contact(found) if found is not None else None

    async def get_contacts(self, crm_ids: list[str], properties: list[str]) -> list[CrmContact]:
        """Several contacts in batch reads of at most ``crm_batch_size``; ids HubSpot does not have are left out."""
        found: list[CrmContact] = []
        for start in range(0, len(crm_ids), self.batch_size):
            request = BatchReadInputSimplePublicObjectId(
                inputs=[SimplePublicObjectId(id=i) for i in crm_ids[start : start + self.batch_size]],
                properties=properties,
                properties_with_history=[],
            )
            answer = await self._call(self.client.crm.contacts.batch_api.read, request)
            found.extend(_contact(r) for r in answer.results)
        return found

    async def changed_contacts(self, since: datetime, properties: list[str], after: str | None, limit: int) -> ContactPage:
        """Contacts modified at or after ``since``, oldest first; ``after`` continues a page run.

        A search reaches at most 10,000 results: the caller starts a new search from the last
        modification it saw before the cap (activities/crm.py does).
        """
        request = PublicObjectSearchRequest(
            filter_groups=[
                FilterGroup(filters=[Filter(property_name="lastmodifieddate", operator="GTE", value=str(_millis(since)))])
            ],
            sorts=["lastmodifieddate"],
            properties=properties,
            limit=min(limit, self.batch_size),
            after=after,
        )
        answer = await self._call(self.client.crm.contacts.search_api.do_search, request)
        paging = answer.paging.next.after if answer.paging and answer.paging.next else None
        capped = paging is not None and paging.isdigit() and int(paging) + request.limit > self.search_cap
        if capped:
            paging = None  # past the cap HubSpot answers 400: the caller restarts from the newest seen
        return ContactPage([_contact(r) for r in answer.results], paging, capped)

    async def upsert_contacts(self, records: list[tuple[str, dict[str, str]]]) -> dict[str, str | CrmRejected]:
        """Batch upserts by ``email`` of at most ``crm_batch_size``. HubSpot refuses a whole batch (400)
        for one bad record: that batch is asked again record by record, to know which one it is."""
        answered: dict[str, str | CrmRejected] = {}
        for start in range(0, len(records), self.batch_size):
            chunk = records[start : start + self.batch_size]
            try:
                answered.update(await self._upsert_batch(chunk))
            except CrmRejected as refused:
                if len(chunk) == 1:
                    answered[chunk[0][0]] = refused
                    continue
                for record in chunk:
                    try:
                        answered.update(await self._upsert_batch([record]))
                    except CrmRejected as exc:
                        answered[record[0]] = exc
        for email, _ in records:
            answered.setdefault(email, CrmRejected(f"HubSpot answered no id for {email}"))
        return answered

    async def _upsert_batch(self, chunk: list[tuple[str, dict[str, str]]]) -> dict[str, str]:
        batch = BatchInputSimplePublicObjectBatchInputUpsert(
            inputs=[
                SimplePublicObjectBatchInputUpsert(id_property="email", id=email, properties={**props, "email": email})
                for email, props in chunk
            ]
        )
        answer = await self._call(self.client.crm.contacts.batch_api.upsert, batch)
        ids: dict[str, str] = {}
        for result in answer.results:
            email = str((result.properties or {}).get("email") or "").lower()
            if email:
                ids[email] = str(result.id)
        return ids

    async def update_contacts(self, updates: list[tuple[str, dict[str, str]]]) -> dict[str, CrmRejected | None]:
        """Batch updates by id of at most ``crm_batch_size``. One id given twice is one input (the later
        value of a property wins: HubSpot refuses a batch naming an id twice). A 207 names the records
        refused; a 400 refuses the whole batch for one bad record, and that batch is written record by
        record, so that the bad one fails alone and the others are written."""
        merged: dict[str, dict[str, str]] = {}
        for crm_id, properties in updates:
            merged.setdefault(crm_id, {}).update(properties)
        items = list(merged.items())
        answered: dict[str, CrmRejected | None] = {}
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            try:
                answered.update(await self._update_batch(chunk))
            except CrmRejected as refused:
                if len(chunk) == 1:
                    answered[chunk[0][0]] = refused
                    continue
                for crm_id, properties in chunk:
                    try:
                        await self._call(self.client.crm.contacts.basic_api.update, crm_id, SimplePublicObjectInput(properties=properties))
                        answered[crm_id] = None
                    except CrmRejected as exc:
                        answered[crm_id] = exc
        return answered

    async def _update_batch(self, chunk: list[tuple[str, dict[str, str]]]) -> dict[str, CrmRejected | None]:
        batch = BatchInputSimplePublicObjectBatchInput(
            inputs=[SimplePublicObjectBatchInput(id=crm_id, properties=properties, object_write_trace_id=crm_id)
                    for crm_id, properties in chunk]
        )
        answer = await self._call(self.client.crm.contacts.batch_api.update, batch)
        if not getattr(answer, "errors", None):
            return {crm_id: None for crm_id, _ in chunk}
        refused = _refused(answer)
        # A 207: those named are refused; of the others, those answered were written.
        written = {str(r.id) for r in answer.results or []}
        unnamed = CrmRejected(f"HubSpot refused part of the batch: {_first_error(answer)}")
        return {crm_id: refused.get(crm_id) or (None if crm_id in written else unnamed) for crm_id, _ in chunk}

    # --- deals ---------------------------------------------------------------

    async def get_deal(self, deal_id: str) -> CrmDeal | None:
        found = await self._call(
            self.client.crm.deals.basic_api.get_by_id, deal_id,
            properties=DEAL_PROPERTIES, associations=["contacts"], missing_ok=True,
        )
        if found is None:
            return None
        contacts: list[str] = []
        associations = found.associations or {}
        if "contacts" in associations and associations["contacts"].results:
            contacts = [str(a.id) for a in associations["contacts"].results]
        properties = dict(found.properties or {})
        return CrmDeal(id=str(found.id), stage=str(properties.get("dealstage") or ""), contact_ids=contacts,
                       properties=properties, updated_at=_updated(found))

    async def changed_deals(self, since: datetime, after: str | None, limit: int) -> tuple[list[CrmDeal], str | None]:
        """Deals modified at or after ``since``, oldest first (``after`` continues a page run), so a
        deal webhook that never arrived is caught by the next sync.

        Search answers no associations: each deal is read with its contacts (a sync reads few deals).
        Past HubSpot's search cap the page run ends; the cursor (the newest change read) goes on from there.
        """
        request = DealSearchRequest(
            filter_groups=[DealFilterGroup(filters=[
                DealFilter(property_name="hs_lastmodifieddate", operator="GTE", value=str(_millis(since)))
            ])],
            sorts=["hs_lastmodifieddate"],
            properties=DEAL_PROPERTIES,
            limit=min(limit, self.batch_size),
            after=after,
        )
        answer = await self._call(self.client.crm.deals.search_api.do_search, request)
        paging = answer.paging.next.after if answer.paging and answer.paging.next else None
        if paging is not None and paging.isdigit() and int(paging) + request.limit > self.search_cap:
            paging = None
        deals = []
        for found in answer.results:
            deal = await self.get_deal(str(found.id))
            if deal is not None:
                deals.append(deal)
        return deals, paging

    # --- tasks and notes -----------------------------------------------------

    async def create_activities(self, activities: list[CrmActivity]) -> dict[str, str | CrmRejected]:
        """Batch creates of at most ``crm_batch_size`` tasks, then notes, each input's
        ``objectWriteTraceId`` the row's key, so each result and each refusal (207) names its row.

        One that an earlier call may have made (``maybe_created``: that call's answer was lost) is
        searched for first by its key's token, up to ``crm_hubspot_search_keys`` keys a search, and
        created only if not found. A key HubSpot's answer does not name is left out of the answer: it
        stays queued, and is searched for next time."""
        answered: dict[str, str | CrmRejected] = {}
        for kind in ("task", "note"):
            planned = [a for a in activities if a.kind == kind]
            maybe = [a for a in planned if a.maybe_created]
            for start in range(0, len(maybe), self.search_keys):
                answered.update(await self._find_activities(kind, maybe[start : start + self.search_keys]))
            new = [a for a in planned if a.key not in answered]
            for start in range(0, len(new), self.batch_size):
                chunk = new[start : start + self.batch_size]
                try:
                    answered.update(await self._create_batch(kind, chunk))
                except CrmRejected as refused:
                    if len(chunk) == 1:
                        answered[chunk[0].key] = refused
                        continue
                    for planned_one in chunk:  # refused whole: one by one, so that only the bad one fails
                        try:
                            answered[planned_one.key] = await self._create_one(planned_one)
                        except CrmRejected as exc:
                            answered[planned_one.key] = exc
        return answered

    async def _find_activities(self, kind: str, chunk: list[CrmActivity]) -> dict[str, str]:
        """Those of ``chunk`` HubSpot has (key -> id): one search, a filter group per key (HubSpot ORs them)."""
        api, body = self._activity_api(kind)
        tokens = {_token(a.key): a.key for a in chunk}
        request = PublicObjectSearchRequest(
            filter_groups=[FilterGroup(filters=[Filter(property_name=body, operator="CONTAINS_TOKEN", value=token)])
                           for token in tokens],
            properties=[body],
            sorts=["hs_createdate"],
            limit=100,
        )
        answer = await self._call(api.search_api.do_search, request)
        found: dict[str, str] = {}
        for result in answer.results or []:
            words = set(str((result.properties or {}).get(body) or "").lower().split())
            for token, key in tokens.items():
                if token in words:
                    found.setdefault(key, str(result.id))
        return found

    async def _create_batch(self, kind: str, chunk: list[CrmActivity]) -> dict[str, str | CrmRejected]:
        api, body = self._activity_api(kind)
        make, batch = (TaskBatchInput, TaskBatch) if kind == "task" else (NoteBatchInput, NoteBatch)
        inputs = []
        for planned in chunk:
            properties, association = _activity_input(planned)
            inputs.append(make(properties=properties, associations=[association], object_write_trace_id=planned.key))
        answer = await self._call(api.batch_api.create, batch(inputs=inputs))
        tokens = {_token(a.key): a.key for a in chunk}
        answered: dict[str, str | CrmRejected] = {}
        for result in answer.results or []:
            key = result.object_write_trace_id
            if key not in tokens.values():  # not echoed: the key's token in the body names it
                words = set(str((result.properties or {}).get(body) or "").lower().split())
                key = next((k for token, k in tokens.items() if token in words), None)
            if key is not None:
                answered[key] = str(result.id)
        for key, refusal in _refused(answer).items():
            if key in tokens.values() and key not in answered:
                answered[key] = refusal
        return answered

    async def _create_one(self, planned: CrmActivity) -> str:
        properties, association = _activity_input(planned)
        if planned.kind == "task":
            created = await self._call(self.client.crm.objects.tasks.basic_api.create,
                                       TaskInput(properties=properties, associations=[association]))
        else:
            created = await self._call(self.client.crm.objects.notes.basic_api.create,
                                       NoteInput(properties=properties, associations=[association]))
        return str(created.id)

    def _activity_api(self, kind: str) -> tuple[Any, str]:
        if kind == "task":
            return self.client.crm.objects.tasks, "hs_task_body"
        return self.client.crm.objects.notes, "hs_note_body"

    # --- owners and health ---------------------------------------------------

    async def owners(self) -> dict[str, str]:
        found: dict[str, str] = {}
        after = None
        while True:
            page = await self._call(self.client.crm.owners.owners_api.get_page, limit=100, after=after)
            for owner in page.results:
                found[str(owner.id)] = owner.email or ""
            if not (page.paging and page.paging.next):
                return found
            after = page.paging.next.after

    async def check(self) -> None:
        await self._call(self.client.crm.owners.owners_api.get_page, limit=1)

    # --- calling -------------------------------------------------------------

    async def _call(self, method, *args, missing_ok: bool = False, **kwargs) -> Any:
        try:
            return await paced(self.limit, lambda: method(*args, _request_timeout=self.timeout, **kwargs))
        except Exception as exc:  # the client raises one ApiException class per API package
            status = getattr(exc, "status", None)
            if status == 404 and missing_ok:
                return None
            raise _translated(exc, status) from exc


def _translated(exc: Exception, status: int | None) -> CrmError:
    if status is None:
        return CrmUnavailable(f"HubSpot unreachable: {type(exc).__name__}: {exc}"[:500])
    message = _message(getattr(exc, "body", None)) or str(getattr(exc, "reason", "")) or f"HTTP {status}"
    if status in (401, 403):
        return CrmAuthFailed(f"HubSpot refused the token ({status}): {message}")
    if status == 429 or status >= 500:
        return CrmUnavailable(
            f"HubSpot answered {status}: {message}", _retry_after(getattr(exc, "headers", None)), rate_limited=status == 429
        )
    return CrmRejected(f"HubSpot answered {status}: {message}")


def _message(body: Any) -> str:
    if not body:
        return ""
    try:
        return str(json.loads(body).get("message", ""))[:300]
    except (ValueError, AttributeError, TypeError):
        return str(body)[:300]


def _retry_after(headers: Any) -> float | None:
    if not headers:
        return None
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


def _updated(found: Any) -> datetime | None:
    updated = found.updated_at
    if isinstance(updated, datetime) and updated.tzinfo is None:
        updated = updated.replace(tzinfo=UTC)
    return updated


def _contact(found: Any) -> CrmContact:
    return CrmContact(
        id=str(found.id), properties=dict(found.properties or {}), updated_at=_updated(found), archived=bool(found.archived)
    )


def _activity_input(activity: CrmActivity) -> tuple[dict[str, str], PublicAssociationsForObject]:
    """A task's or note's properties, its body marked with its key's token, and its contact."""
    marked = f"{activity.body}\n\n{_token(activity.key)}"
    if activity.kind == "task":
        properties = {
            "hs_task_subject": activity.subject[:500],
            "hs_task_body": marked,
            "hs_task_status": "NOT_STARTED",
            "hs_task_priority": "HIGH",
            "hs_timestamp": (activity.due_at or datetime.now(UTC)).isoformat(),
        }
        if activity.owner_crm_id:
            properties["hubspot_owner_id"] = activity.owner_crm_id
        return properties, _association(activity.contact_crm_id, TASK_TO_CONTACT)
    properties = {"hs_note_body": f"{activity.subject}\n{marked}", "hs_timestamp": datetime.now(UTC).isoformat()}
    return properties, _association(activity.contact_crm_id, NOTE_TO_CONTACT)


def _refused(answer: Any) -> dict[str, CrmRejected]:
    """The records a 207 names as refused (by ``objectWriteTraceId`` or id), each with HubSpot's reason."""
    refused: dict[str, CrmRejected] = {}
    for error in getattr(answer, "errors", None) or []:
        context = getattr(error, "context", None) or {}
        reason = CrmRejected(f"HubSpot refused it ({getattr(error, 'category', None) or 'error'}): "
                             f"{getattr(error, 'message', None) or ''}"[:1000])
        for name in [*(context.get("objectWriteTraceId") or []), *(context.get("ids") or [])]:
            refused.setdefault(str(name), reason)
    return refused


def _first_error(answer: Any) -> str:
    errors = getattr(answer, "errors", None) or []
    return str(getattr(errors[0], "message", "") or "")[:500] if errors else ""


def _association(contact_id: str, type_id: int) -> PublicAssociationsForObject:
    return PublicAssociationsForObject(
        to=PublicObjectId(id=contact_id),
        types=[AssociationSpec(association_category="HUBSPOT_DEFINED", association_type_id=type_id)],
    )


def _token(key: str) -> str:
    """The key as one search token: HubSpot splits words on punctuation, so a digest of letters and digits."""
    return KEY_MARK + hashlib.sha256(key.encode()).hexdigest()[:40]


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
