"""A HubSpot CRM v3 emulator on loopback, speaking HubSpot's wire format (developers.hubspot.com reference).

What the connector uses, as HubSpot documents it: contact objects (read, create, update, search with
``after`` paging and its 10,000-result cap and at most 5 filter groups, batch read, upsert by
``email`` and update by id of at most 100 inputs), deals with their contact associations, tasks and
notes created with associations (one by one or in batches, ``objectWriteTraceId`` echoed) and found
again by search, owners, 401 with HubSpot's error body for a wrong token, 429 with ``Retry-After``
and HubSpot's rate-limit body, 503 while "down", and webhook deliveries signed with the v3 signature.

Writes are checked as HubSpot checks them: a read-only property, or a value that is not one of an
enumeration's options (``lifecyclestage``), is refused. A batch update or create that has such a
property refuses the whole batch (400 ``VALIDATION_ERROR``), as does a batch update naming an id
twice or an id that is not a number; a batch update naming a record HubSpot does not have (deleted)
answers 207 with an ``OBJECT_NOT_FOUND`` error naming it and writes the others. A batch create whose
inputs all carry an ``objectWriteTraceId`` answers 207 instead, naming each refused input by it
(HubSpot's "multi-status errors"). Tests drive our
code through HubSpot's own Python client pointed here (``crm_hubspot_base_url``), and act as a rep in
the CRM through the methods of ``HubSpotEmulator``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SEARCH_CAP = 10_000
BATCH_MAX = 100
# HubSpot's search: at most 5 filter groups, 10 filters in a group and 25 in all.
SEARCH_GROUPS_MAX, SEARCH_GROUP_FILTERS_MAX, SEARCH_FILTERS_MAX = 5, 10, 25
READ_ONLY = frozenset({"hs_object_id", "createdate", "lastmodifieddate", "hs_lastmodifieddate", "hs_createdate"})
# Enumeration properties and their options (HubSpot's default lifecycle stages).
OPTIONS = {
    "contacts": {"lifecyclestage": ["subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead",
                                    "opportunity", "customer", "evangelist", "other"]},
    "tasks": {"hs_task_status": ["NOT_STARTED", "IN_PROGRESS", "WAITING", "COMPLETED", "DEFERRED"],
              "hs_task_priority": ["LOW", "MEDIUM", "HIGH"]},
}
DEFAULT_PROPERTIES = {"contacts": ["createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname"]}
TYPE_NAMES = {("deals", "contacts"): "deal_to_contact", ("tasks", "contacts"): "task_to_contact",
              ("notes", "contacts"): "note_to_contact"}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(status: int, message: str, category: str) -> JSONResponse:
    body = {"status": "error", "message": message, "correlationId": str(uuid.uuid4()), "category": category}
    return JSONResponse(body, status_code=status)


def _invalid(kind: str, properties: dict[str, Any]) -> str | None:
    """HubSpot's refusal of these property values ("Property values were not valid: [...]"), or None."""
    problems = []
    for name, value in properties.items():
        options = OPTIONS.get(kind, {}).get(name)
        if name in READ_ONLY:
            problems.append({"isValid": False, "message": f"{name} is a read only property; its value cannot be set.",
                             "error": "READ_ONLY_VALUE", "name": name})
        elif options is not None and value not in (None, "") and str(value) not in options:
            problems.append({"isValid": False, "error": "INVALID_OPTION", "name": name,
                             "message": f"{value} was not one of the allowed options: [{', '.join(options)}]"})
    return f"Property values were not valid: {json.dumps(problems)}" if problems else None


def _batch_error(category: str, message: str, **context: list[str]) -> dict[str, Any]:
    """One record's error in a 207 answer, as HubSpot's StandardError."""
    return {"status": "error", "category": category, "message": message, "context": context, "errors": [], "links": {}}


def _batch_answer(results: list[dict[str, Any]], errors: list[dict[str, Any]], status: int) -> JSONResponse:
    now = _iso(datetime.now(UTC))
    body: dict[str, Any] = {"status": "COMPLETE", "results": results, "startedAt": now, "completedAt": now}
    if errors:
        body.update(numErrors=len(errors), errors=errors)
    return JSONResponse(body, status_code=207 if errors else status)


@dataclass
class Fault:
    status: int
    retry_after: int | None = None
    method: str | None = None
    path_contains: str | None = None
    # The request is carried out, then the answer lost: what a gateway timeout after the write looks like.
    after_applying: bool = False
    # From this answer on, HubSpot is down (503) until ``down`` is cleared: an outage's first moment.
    then_down: bool = False


@dataclass
class CrmObject:
    id: str
    properties: dict[str, str]
    created_at: datetime
    updated_at: datetime
    associations: dict[str, list[str]] = field(default_factory=dict)
    archived: bool = False

    def answer(self, names: list[str] | None, kind: str, with_associations: list[str] | None = None) -> dict[str, Any]:
        wanted = names or DEFAULT_PROPERTIES.get(kind, list(self.properties))
        body: dict[str, Any] = {
            "id": self.id,
            "properties": {name: self.properties.get(name) for name in wanted},
            "createdAt": _iso(self.created_at),
            "updatedAt": _iso(self.updated_at),
            "archived": self.archived,
        }
        if with_associations:
            body["associations"] = {
                other: {"results": [{"id": i, "type": TYPE_NAMES.get((kind, other), f"{kind}_to_{other}")} for i in ids]}
                for other in with_associations
                if (ids := self.associations.get(other))
            }
        return body


class HubSpotEmulator:
    def __init__(self, token: str = "pat-na1-test-token", app_secret: str = "emulator-app-secret",
                 search_cap: int = SEARCH_CAP, burst_limit: int | None = None):
        self.search_cap = search_cap
        # A private app's burst limit: past this many calls in any 10 seconds HubSpot answers 429
        # (TEN_SECONDLY_ROLLING); None leaves it unenforced.
        self.burst_limit = burst_limit
        self.token = token
        self.app_secret = app_secret
        self.objects: dict[str, dict[str, CrmObject]] = {"contacts": {}, "deals": {}, "tasks": {}, "notes": {}}
        self.owners: list[dict[str, Any]] = []
        self.ids = itertools.count(1001)
        self.event_ids = itertools.count(1)
        self.faults: list[Fault] = []
        self.down = False
        self.requests: list[tuple[str, str, int]] = []  # method, path, status
        self.request_times: list[float] = []  # time.monotonic() of each, in order
        self.writes: list[tuple[str, str, dict[str, str]]] = []  # (kind, id, properties) per accepted write
        self._last = datetime.now(UTC)
        self.base_url = ""
        self.app = Starlette(routes=[
            Route("/crm/v3/owners/", self.list_owners, methods=["GET"]),
            Route("/crm/v3/objects/{kind}/search", self.search, methods=["POST"]),
            Route("/crm/v3/objects/{kind}/batch/read", self.batch_read, methods=["POST"]),
            Route("/crm/v3/objects/{kind}/batch/upsert", self.batch_upsert, methods=["POST"]),
            Route("/crm/v3/objects/{kind}/batch/update", self.batch_update, methods=["POST"]),
            Route("/crm/v3/objects/{kind}/batch/create", self.batch_create, methods=["POST"]),
            Route("/crm/v3/objects/{kind}/{object_id}", self.one, methods=["GET", "PATCH", "DELETE"]),
            Route("/crm/v3/objects/{kind}", self.create, methods=["POST"]),
        ])
        self.asgi = self._guard(self.app)

    # --- the rep's side: what happens in the CRM -------------------------------

    def now(self) -> datetime:
        """A clock that never repeats a millisecond, so lastmodifieddate orders changes."""
        moment = max(datetime.now(UTC), self._last + timedelta(milliseconds=1))
        self._last = moment
        return moment

    def add_owner(self, owner_id: str, email: str) -> None:
        now = _iso(self.now())
        self.owners.append({"id": owner_id, "email": email, "firstName": email.split("@")[0], "lastName": "",
                            "userId": int(owner_id), "type": "PERSON", "createdAt": now, "updatedAt": now, "archived": False})

    def put(self, kind: str, properties: dict[str, str], associations: dict[str, list[str]] | None = None) -> CrmObject:
        now = self.now()
        object_id = str(next(self.ids))
        record = CrmObject(object_id, {}, now, now, associations or {})
        self.objects[kind][object_id] = record
        self._set(kind, record, {**properties, "createdate": _iso(now), "hs_object_id": object_id})
        return record

    def change(self, kind: str, object_id: str, properties: dict[str, str], source: str = "CRM_UI") -> list[dict[str, Any]]:
        """Change a record as a rep would; answer the webhook events HubSpot would send for it."""
        record = self.objects[kind][object_id]
        self._set(kind, record, properties)
        singular = kind.removesuffix("s")
        return [
            self.event(f"{singular}.propertyChange", object_id, property_name=name, property_value=value, source=source)
            for name, value in properties.items()
        ]

    def event(self, subscription: str, object_id: str, property_name: str | None = None,
              property_value: str | None = None, source: str = "CRM_UI") -> dict[str, Any]:
        body: dict[str, Any] = {
            "eventId": next(self.event_ids), "subscriptionId": 7, "portalId": 62515, "appId": 4242,
            "occurredAt": int(time.time() * 1000), "subscriptionType": subscription, "attemptNumber": 0,
            "objectId": int(object_id), "changeSource": source, "sourceId": "userId:981",
        }
        if property_name is not None:
            body.update(propertyName=property_name, propertyValue=property_value)
        return body

    def signed(self, url: str, events: list[dict[str, Any]], *, timestamp_ms: int | None = None,
               secret: str | None = None) -> tuple[bytes, dict[str, str]]:
        """A delivery as HubSpot sends it: the body and its v3 signature headers."""
        body = json.dumps(events).encode()
        timestamp = str(timestamp_ms if timestamp_ms is not None else int(time.time() * 1000))
        message = b"POST" + url.encode() + body + timestamp.encode()
        signature = base64.b64encode(hmac.new((secret or self.app_secret).encode(), message, hashlib.sha256).digest()).decode()
        return body, {"Content-Type": "application/json", "X-HubSpot-Signature-v3": signature,
                      "X-HubSpot-Request-Timestamp": timestamp}

    async def deliver(self, http: httpx.AsyncClient, url: str, events: list[dict[str, Any]], **options) -> httpx.Response:
        body, headers = self.signed(url, events, **options)
        return await http.post(url, content=body, headers=headers)

    def fail_next(self, count: int, status: int, retry_after: int | None = None, method: str | None = None,
                  path_contains: str | None = None, after_applying: bool = False, then_down: bool = False) -> None:
        self.faults.extend(Fault(status, retry_after, method, path_contains, after_applying, then_down)
                           for _ in range(count))

    def written(self, kind: str) -> list[tuple[str, dict[str, str]]]:
        return [(object_id, props) for k, object_id, props in self.writes if k == kind]

    def _set(self, kind: str, record: CrmObject, properties: dict[str, str]) -> None:
        now = self.now()
        record.properties.update({k: ("" if v is None else str(v)) for k, v in properties.items()})
        record.properties["lastmodifieddate" if kind == "contacts" else "hs_lastmodifieddate"] = _iso(now)
        record.updated_at = now

    # --- the wire ----------------------------------------------------------------

    def _guard(self, app):
        async def guarded(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            request = Request(scope)
            status = {"code": 0}

            async def recording_send(message):
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                await send(message)

            refusal, fault = self._refusal(request)
            if fault is not None and fault.after_applying:
                async def discard(message):
                    pass

                await app(scope, receive, discard)
            if refusal is not None:
                await refusal(scope, receive, recording_send)
            else:
                await app(scope, receive, recording_send)
            self.requests.append((request.method, request.url.path, status["code"]))
            self.request_times.append(time.monotonic())

        return guarded

    def _refusal(self, request: Request) -> tuple[Response | None, Fault | None]:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _error(401, "Authentication credentials not found. This API supports OAuth 2.0 authentication "
                          "and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                          "INVALID_AUTHENTICATION"), None
        if self.down:
            return JSONResponse({"status": "error", "message": "Service Unavailable", "category": "SERVICE_UNAVAILABLE"},
                                status_code=503), None
        if self.burst_limit is not None:
            now = time.monotonic()
            if sum(1 for t in reversed(self.request_times) if now - t < 10.0) >= self.burst_limit:
                return self._rate_limited(Fault(429, retry_after=1)), None
        for fault in self.faults:
            if (fault.method is None or fault.method == request.method) and (
                fault.path_contains is None or fault.path_contains in request.url.path
            ):
                self.faults.remove(fault)
                self.down = self.down or fault.then_down
                if fault.status == 429:
                    return self._rate_limited(fault), fault
                return JSONResponse({"status": "error", "message": "internal error", "category": "INTERNAL_ERROR"},
                                    status_code=fault.status), fault
        return None, None

    @staticmethod
    def _rate_limited(fault: Fault) -> Response:
        return JSONResponse(
            {"status": "error", "message": "You have reached your ten_secondly_rolling limit.",
             "errorType": "RATE_LIMIT", "correlationId": str(uuid.uuid4()),
             "policyName": "TEN_SECONDLY_ROLLING", "groupName": "publicapi:private-app"},
            status_code=429, headers={"Retry-After": str(fault.retry_after or 1)},
        )

    async def one(self, request: Request) -> Response:
        kind, object_id = request.path_params["kind"], request.path_params["object_id"]
        if kind not in self.objects:
            return _error(404, f"unknown object type {kind}", "OBJECT_NOT_FOUND")
        if request.query_params.get("idProperty") == "email":
            found = next((o for o in self.objects[kind].values() if o.properties.get("email") == object_id.lower()), None)
        else:
            found = self.objects[kind].get(object_id)
        if found is None or found.archived:
            return _error(404, "resource not found", "OBJECT_NOT_FOUND")
        if request.method == "GET":
            return JSONResponse(found.answer(_names(request, "properties"), kind, _names(request, "associations")))
        if request.method == "DELETE":
            found.archived = True
            return Response(status_code=204)
        body = await request.json()
        properties = body.get("properties") or {}
        if (refusal := _invalid(kind, properties)) is not None:
            return _error(400, refusal, "VALIDATION_ERROR")
        self._set(kind, found, properties)
        self.writes.append((kind, found.id, dict(properties)))
        return JSONResponse(found.answer(list(properties), kind))

    async def create(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in self.objects:
            return _error(404, f"unknown object type {kind}", "OBJECT_NOT_FOUND")
        body = await request.json()
        if kind == "contacts" and any(o.properties.get("email") == (body.get("properties") or {}).get("email")
                                      for o in self.objects[kind].values()):
            return _error(409, "Contact already exists", "CONFLICT")
        made = self._create_record(kind, body)
        if isinstance(made, str):
            return _error(400, made, "VALIDATION_ERROR")
        return JSONResponse(made.answer(list(made.properties), kind), status_code=201)

    def _checked_create(self, kind: str, body: dict[str, Any]) -> tuple[dict[str, str], dict[str, list[str]]] | str:
        """The properties and associations of one create, or why HubSpot refuses it."""
        properties = dict(body.get("properties") or {})
        if (refusal := _invalid(kind, properties)) is not None:
            return refusal
        associations: dict[str, list[str]] = {}
        for association in body.get("associations") or []:
            target = str(association["to"]["id"])
            type_ids = [t.get("associationTypeId") for t in association.get("types") or []]
            other = "contacts" if set(type_ids) & {202, 204, 3, 280} or target in self.objects["contacts"] else "unknown"
            associations.setdefault(other, []).append(target)
            if other == "contacts" and target not in self.objects["contacts"]:
                return f"contact {target} does not exist"
        return properties, associations

    def _create_record(self, kind: str, body: dict[str, Any]) -> CrmObject | str:
        checked = self._checked_create(kind, body)
        if isinstance(checked, str):
            return checked
        properties, associations = checked
        record = self.put(kind, properties, associations)
        self.writes.append((kind, record.id, properties))
        return record

    async def search(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        body = await request.json()
        limit = min(int(body.get("limit") or 10), 200)
        after = int(body.get("after") or 0)
        if after + limit > self.search_cap:
            return _error(400, f"The maximum number of results available through search is {self.search_cap}.",
                          "VALIDATION_ERROR")
        groups = body.get("filterGroups") or []
        counts = [len(g.get("filters") or []) for g in groups]
        if len(groups) > SEARCH_GROUPS_MAX or any(c > SEARCH_GROUP_FILTERS_MAX for c in counts) or sum(counts) > SEARCH_FILTERS_MAX:
            return _error(400, f"Too many filters: at most {SEARCH_GROUPS_MAX} filterGroups, {SEARCH_GROUP_FILTERS_MAX} "
                          f"filters in a group and {SEARCH_FILTERS_MAX} in all are allowed (got {len(groups)} groups, "
                          f"{sum(counts)} filters).", "VALIDATION_ERROR")
        found = [o for o in self.objects.get(kind, {}).values() if not o.archived and
                 (not groups or any(all(_matches(o, f) for f in g.get("filters") or []) for g in groups))]
        for sort in reversed(body.get("sorts") or []):
            name, descending = (sort, False) if isinstance(sort, str) else (sort["propertyName"], sort.get("direction") == "DESCENDING")
            found.sort(key=lambda o: _sortable(o.properties.get(name)), reverse=descending)
        page = found[after : after + limit]
        answer: dict[str, Any] = {"total": len(found), "results": [o.answer(body.get("properties"), kind) for o in page]}
        if after + limit < len(found):
            answer["paging"] = {"next": {"after": str(after + limit), "link": ""}}
        return JSONResponse(answer)

    async def batch_read(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        body = await request.json()
        inputs = body.get("inputs") or []
        if len(inputs) > BATCH_MAX:
            return _error(400, f"Batch size limit is {BATCH_MAX}", "VALIDATION_ERROR")
        known = {i["id"]: o for i in inputs if (o := self.objects[kind].get(i["id"])) is not None and not o.archived}
        results = [o.answer(body.get("properties"), kind) for o in known.values()]
        now = _iso(self.now())
        answer: dict[str, Any] = {"status": "COMPLETE", "results": results, "startedAt": now, "completedAt": now}
        missing = [i["id"] for i in inputs if i["id"] not in known]
        if not missing:
            return JSONResponse(answer)
        # Some ids unknown: 207 Multi-Status with an error naming them, as HubSpot answers.
        answer.update(numErrors=1, errors=[{"status": "error", "category": "OBJECT_NOT_FOUND",
                                            "message": "Could not get some CONTACT objects, they may be deleted or not exist.",
                                            "context": {"ids": missing}}])
        return JSONResponse(answer, status_code=207)

    async def batch_upsert(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        body = await request.json()
        inputs = body.get("inputs") or []
        if len(inputs) > BATCH_MAX:
            return _error(400, f"Batch size limit is {BATCH_MAX}", "VALIDATION_ERROR")
        results = []
        for item in inputs:
            if item.get("idProperty") != "email":
                return _error(400, "idProperty must be a unique property such as email", "VALIDATION_ERROR")
            email = str(item["id"]).lower()
            properties = {**(item.get("properties") or {}), "email": email}
            existing = next((o for o in self.objects[kind].values() if o.properties.get("email") == email), None)
            if existing is None:
                record, new = self.put(kind, properties), True
            else:
                self._set(kind, existing, properties)
                record, new = existing, False
            self.writes.append((kind, record.id, properties))
            results.append({**record.answer(list(record.properties), kind), "new": new})
        now = _iso(self.now())
        return JSONResponse({"status": "COMPLETE", "results": results, "startedAt": now, "completedAt": now})

    async def batch_update(self, request: Request) -> Response:
        """Update by id. Checked whole first (HubSpot refuses the batch for one bad property or id: 400),
        then each record written; those HubSpot does not have are named in a 207."""
        kind = request.path_params["kind"]
        if kind not in self.objects:
            return _error(404, f"unknown object type {kind}", "OBJECT_NOT_FOUND")
        inputs = (await request.json()).get("inputs") or []
        if len(inputs) > BATCH_MAX:
            return _error(400, f"Batch size limit is {BATCH_MAX}", "VALIDATION_ERROR")
        ids = [str(item.get("id")) for item in inputs]
        if doubled := sorted({i for i in ids if ids.count(i) > 1}):
            return _error(400, f"Duplicate IDs found in batch input: {doubled}. IDs must be unique", "VALIDATION_ERROR")
        if malformed := [i for i in ids if not i.isdigit()]:
            return _error(400, f"Invalid object ids: {malformed}", "VALIDATION_ERROR")
        for item in inputs:
            if (refusal := _invalid(kind, item.get("properties") or {})) is not None:
                return _error(400, refusal, "VALIDATION_ERROR")
        results, missing = [], []
        for item in inputs:
            found = self.objects[kind].get(str(item["id"]))
            if found is None or found.archived:
                missing.append(str(item["id"]))
                continue
            properties = dict(item.get("properties") or {})
            self._set(kind, found, properties)
            self.writes.append((kind, found.id, properties))
            answer = found.answer(list(properties), kind)
            if item.get("objectWriteTraceId") is not None:
                answer["objectWriteTraceId"] = item["objectWriteTraceId"]
            results.append(answer)
        errors = [_batch_error("OBJECT_NOT_FOUND", f"Could not get some {kind.upper().removesuffix('S')} objects, "
                               "they may be deleted or not exist.", ids=missing)] if missing else []
        return _batch_answer(results, errors, 200)

    async def batch_create(self, request: Request) -> Response:
        """Create; with an ``objectWriteTraceId`` on every input, a refused input is named by it in a 207
        and the others are made; without, one refused input refuses the whole batch (400)."""
        kind = request.path_params["kind"]
        if kind not in self.objects:
            return _error(404, f"unknown object type {kind}", "OBJECT_NOT_FOUND")
        inputs = (await request.json()).get("inputs") or []
        if len(inputs) > BATCH_MAX:
            return _error(400, f"Batch size limit is {BATCH_MAX}", "VALIDATION_ERROR")
        multi_status = bool(inputs) and all(item.get("objectWriteTraceId") for item in inputs)
        if not multi_status:
            for item in inputs:
                if isinstance(refusal := self._checked_create(kind, item), str):
                    return _error(400, refusal, "VALIDATION_ERROR")
        results, errors = [], []
        for item in inputs:
            made = self._create_record(kind, item)
            trace = item.get("objectWriteTraceId")
            if isinstance(made, str):
                errors.append(_batch_error("VALIDATION_ERROR", made, objectWriteTraceId=[trace]))
                continue
            answer = made.answer(list(made.properties), kind)
            if trace is not None:
                answer["objectWriteTraceId"] = trace
            results.append(answer)
        return _batch_answer(results, errors, 201)

    async def list_owners(self, request: Request) -> Response:
        limit = int(request.query_params.get("limit") or 100)
        after = int(request.query_params.get("after") or 0)
        page = self.owners[after : after + limit]
        answer: dict[str, Any] = {"results": page}
        if after + limit < len(self.owners):
            answer["paging"] = {"next": {"after": str(after + limit)}}
        return JSONResponse(answer)


def _names(request: Request, key: str) -> list[str] | None:
    values = [part for value in request.query_params.getlist(key) for part in value.split(",") if part]
    return values or None


def _sortable(value: str | None) -> tuple[int, Any]:
    if value is None or value == "":
        return (0, "")
    moment = _as_time(value)
    return (1, moment.timestamp()) if moment is not None else (2, value)


def _as_time(value: str) -> datetime | None:
    try:
        if value.isdigit():
            return datetime.fromtimestamp(int(value) / 1000, UTC)
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _matches(record: CrmObject, f: dict[str, Any]) -> bool:
    have = record.properties.get(f["propertyName"])
    operator, value = f["operator"], f.get("value")
    if operator == "HAS_PROPERTY":
        return bool(have)
    if operator == "NOT_HAS_PROPERTY":
        return not have
    if have is None:
        return False
    if operator == "EQ":
        return have.lower() == str(value).lower()
    if operator == "NEQ":
        return have.lower() != str(value).lower()
    if operator == "CONTAINS_TOKEN":
        return str(value).lower() in have.lower().split()
    if operator in ("GT", "GTE", "LT", "LTE"):
        left, right = _as_time(have), _as_time(str(value))
        if left is None or right is None:
            return False
        return {"GT": left > right, "GTE": left >= right, "LT": left < right, "LTE": left <= right}[operator]
    raise ValueError(f"operator {operator} is not emulated")


@asynccontextmanager
async def serving(emulator: HubSpotEmulator) -> AsyncIterator[HubSpotEmulator]:
    """Serve the emulator with uvicorn on 127.0.0.1 and a free port, for as long as the block runs."""
    server = uvicorn.Server(uvicorn.Config(emulator.asgi, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
                                           timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    emulator.base_url = f"http://127.0.0.1:{port}"
    try:
        yield emulator
    finally:
        server.should_exit = True
        await task


# --- by hand, beside a running stack ------------------------------------------------------------


def control_routes(emulator: HubSpotEmulator, webhook_url: str) -> list[Route]:
    """Act as a rep in the emulated HubSpot over HTTP; each change is delivered, signed, to ``webhook_url``."""

    async def deliver(events: list[dict[str, Any]]) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=30) as http:
            answer = await emulator.deliver(http, webhook_url, events)
        return {"delivered": answer.status_code, "answer": answer.json() if answer.content else None}

    async def contact(request: Request) -> Response:
        body = await request.json()
        record = emulator.put("contacts", {k: str(v) for k, v in body.items()})
        return JSONResponse({"id": record.id, **await deliver([emulator.event("contact.creation", record.id)])})

    async def contact_change(request: Request) -> Response:
        events = emulator.change("contacts", request.path_params["object_id"], await request.json())
        return JSONResponse(await deliver(events))

    async def deal(request: Request) -> Response:
        body = await request.json()
        record = emulator.put("deals", {"dealname": str(body.get("dealname", "Deal")), "dealstage": str(body["dealstage"])},
                              {"contacts": [str(body["contact_id"])]})
        return JSONResponse({"id": record.id})

    async def deal_stage(request: Request) -> Response:
        events = emulator.change("deals", request.path_params["object_id"], {"dealstage": (await request.json())["dealstage"]})
        return JSONResponse(await deliver(events))

    return [
        Route("/_emulator/contacts", contact, methods=["POST"]),
        Route("/_emulator/contacts/{object_id}", contact_change, methods=["PATCH"]),
        Route("/_emulator/deals", deal, methods=["POST"]),
        Route("/_emulator/deals/{object_id}", deal_stage, methods=["PATCH"]),
    ]


def main() -> None:
    """``python -m tests.crm_emulators.hubspot --port 8321 --webhook http://127.0.0.1:8000/webhooks/crm/hubspot``"""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=8321)
    parser.add_argument("--webhook", default="http://127.0.0.1:8000/webhooks/crm/hubspot")
    parser.add_argument("--token", default="pat-na1-test-token")
    parser.add_argument("--app-secret", default="emulator-app-secret")
    args = parser.parse_args()
    emulator = HubSpotEmulator(token=args.token, app_secret=args.app_secret)
    emulator.add_owner("77", "rep-jane@example.com")
    control = Starlette(routes=control_routes(emulator, args.webhook))

    async def app(scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/_emulator/"):
            return await control(scope, receive, send)
        return await emulator.asgi(scope, receive, send)

    print(f"NURTURE_CRM_PROVIDER=hubspot NURTURE_CRM_HUBSPOT_BASE_URL=http://127.0.0.1:{args.port} "
          f"NURTURE_CRM_HUBSPOT_TOKEN={args.token} NURTURE_CRM_HUBSPOT_APP_SECRET={args.app_secret}")
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
