"""A Salesforce REST API emulator on loopback (HTTPS, as simple-salesforce only speaks HTTPS).

From Salesforce's REST API reference, what the connector uses: the OAuth 2.0 token endpoint
(client credentials: ``access_token`` and ``instance_url``; the JWT bearer grant, an RS256 assertion
checked against the connected app's certificate, with ``iss`` the consumer key, ``sub`` a user,
``aud`` the login host and ``exp`` in the future, refused with ``invalid_grant`` /
``invalid_client_id`` as Salesforce answers), the SOAP partner API's ``login`` call
(``/services/Soap/u/{version}``: ``loginResponse`` with ``sessionId`` and ``serverUrl``, or a 500 SOAP
fault ``sf:INVALID_LOGIN`` for a wrong username, password or security token), SOQL queries of the shapes the connector
issues (``SELECT fields FROM object WHERE a >= datetime AND b = 'x' AND c IN (...) ORDER BY f, g
LIMIT n``) answered in batches with ``nextRecordsUrl`` (``Sforce-Query-Options: batchSize``), sObject
read, create, update and upsert by External ID (201 created / 204 updated), sObject Collections
(``PATCH composite/sobjects`` to update and ``PATCH composite/sobjects/{object}/{External ID field}``
to upsert: at most 200 records, each with its ``attributes.type``, ``allOrNone``; 200 with one
SaveResult / UpsertResult per record in the order sent, a refused record answered
``{"success": false, "errors": [{"statusCode", "message", "fields"}]}`` beside the others, and a
malformed request 400 as a whole), 401 ``INVALID_SESSION_ID``
for an expired session, 403 ``REQUEST_LIMIT_EXCEEDED`` and 503 while "down", and the org's daily API
usage on every REST answer (``Sforce-Limit-Info: api-usage=used/allowance``). Tests act as a user in
Salesforce through the methods of ``SalesforceEmulator``.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import jwt
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

COLLECTION_MAX = 200
PARTNER = "urn:partner.soap.sforce.com"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
JWT_AUDIENCES = ["https://login.salesforce.com", "https://test.salesforce.com"]
ORG_ID = "00D000000000001EAA"
PREFIXES = {"Contact": "003", "Opportunity": "006", "Task": "00T", "User": "005"}
SELECT = re.compile(
    r"^SELECT (?P<fields>.+?) FROM (?P<object>\w+)(?: WHERE (?P<where>.+?))?(?: ORDER BY (?P<order>.+?))?(?: LIMIT (?P<limit>\d+))?$",
    re.S,
)
CONDITION = re.compile(r"^(?P<field>\w+) (?P<op>>=|<=|=|>|<|IN) (?P<value>.+)$")


def _errors(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse([{"message": message, "errorCode": code}], status_code=status)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"


class SalesforceEmulator:
    def __init__(self, client_id: str = "emulator-client-id", client_secret: str = "emulator-client-secret",
                 version: str = "59.0", username: str = "integration@example.com",
                 password: str = "emulator-password", security_token: str = "emulatorSecurityToken"):
        self.client_id, self.client_secret, self.version = client_id, client_secret, version
        # The integration user, and the key pair whose certificate is uploaded to the connected app
        # ("Use digital signatures"): the private half is the connector's, the public half checks the JWT.
        self.username, self.password, self.security_token = username, password, security_token
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()).decode()
        self.public_key = key.public_key()
        self.grants: list[str] = []  # the grant (or "soap-login") of each login asked for, refused ones too
        self.records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in PREFIXES}
        self.sessions: set[str] = set()
        self.logins = 0
        self.down = False
        self.limit_exceeded = False
        # The org's daily API requests: used so far (every REST request counts) and the allowance.
        self.api_used = 0
        self.api_daily_limit = 15_000
        self.lose_answer_of: list[tuple[str, str]] = []  # (method, path part): carried out, answered 503
        self.down_after_lost_answer = False  # an outage that starts with the answer lost: down from then on
        self.requests: list[tuple[str, str, int]] = []
        self.request_times: list[float] = []  # time.monotonic() of each request, in order
        self.writes: list[tuple[str, str, dict[str, Any]]] = []  # (object, id, fields)
        self.cursors: dict[str, list[dict[str, Any]]] = {}
        self.numbers = itertools.count(1)
        self._last = datetime.now(UTC)
        self.base_url = ""
        base = f"/services/data/v{version}"
        self.app = Starlette(routes=[
            Route("/services/oauth2/token", self.token, methods=["POST"]),
            Route(f"/services/Soap/u/{version}", self.soap_login, methods=["POST"]),
            Route(f"{base}/query/", self.query, methods=["GET"]),
            Route(f"{base}/query/{{cursor}}", self.query_more, methods=["GET"]),
            Route(f"{base}/sobjects/{{object}}/", self.create, methods=["POST"]),
            Route(f"{base}/sobjects/{{object}}/{{record_id}}", self.one, methods=["GET", "PATCH"]),
            Route(f"{base}/sobjects/{{object}}/{{field}}/{{value}}", self.upsert, methods=["PATCH"]),
            Route(f"{base}/composite/sobjects", self.update_collection, methods=["PATCH"]),
            Route(f"{base}/composite/sobjects/{{object}}/{{field}}", self.upsert_collection, methods=["PATCH"]),
        ])
        self.collection_sizes: list[int] = []  # records per sObject Collections call, in order

    # --- a user's side: what happens in Salesforce ----------------------------------

    def now(self) -> datetime:
        moment = max(datetime.now(UTC), self._last + timedelta(milliseconds=1))
        self._last = moment
        return moment

    def put(self, object_name: str, fields: dict[str, Any]) -> dict[str, Any]:
        record_id = f"{PREFIXES[object_name]}{next(self.numbers):012d}AAA"
        record = {"Id": record_id, "IsDeleted": False, **fields}
        self.records[object_name][record_id] = record
        self._touch(record)
        return record

    def change(self, object_name: str, record_id: str, fields: dict[str, Any]) -> None:
        record = self.records[object_name][record_id]
        record.update(fields)
        self._touch(record)

    def expire_sessions(self) -> None:
        self.sessions.clear()

    def written(self, object_name: str) -> list[tuple[str, dict[str, Any]]]:
        return [(record_id, fields) for name, record_id, fields in self.writes if name == object_name]

    def _touch(self, record: dict[str, Any]) -> None:
        record["SystemModstamp"] = _stamp(self.now())
        if record["Id"].startswith("006"):
            record["IsWon"] = record.get("StageName") == "Closed Won"
            record["IsClosed"] = record.get("StageName") in ("Closed Won", "Closed Lost")

    # --- the wire -------------------------------------------------------------------

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        status = {"code": 0}

        data = request.url.path.startswith("/services/data/")
        if data:
            self.api_used += 1

        async def recording(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                if data:  # each REST answer reports the org's daily API usage
                    limit_info = f"api-usage={self.api_used}/{self.api_daily_limit}".encode()
                    message = {**message, "headers": [*message.get("headers", []), (b"sforce-limit-info", limit_info)]}
            await send(message)

        refusal = self._refusal(request)
        lost = next(((m, p) for m, p in self.lose_answer_of if m == request.method and p in request.url.path), None)
        if refusal is not None:
            await refusal(scope, receive, recording)
        elif lost is not None:
            self.lose_answer_of.remove(lost)
            self.down = self.down or self.down_after_lost_answer

            async def discard(message):
                pass

            await self.app(scope, receive, discard)
            await _errors(503, "SERVER_UNAVAILABLE", "Service Unavailable")(scope, receive, recording)
        else:
            await self.app(scope, receive, recording)
        self.requests.append((request.method, request.url.path, status["code"]))
        self.request_times.append(time.monotonic())

    def _refusal(self, request: Request) -> Response | None:
        if self.down:
            return _errors(503, "SERVER_UNAVAILABLE", "Service Unavailable")
        if request.url.path in ("/services/oauth2/token", f"/services/Soap/u/{self.version}"):
            return None
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self.sessions:
            return _errors(401, "INVALID_SESSION_ID", "Session expired or invalid")
        if self.limit_exceeded:
            return _errors(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        return None

    async def token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        self.grants.append(form.get("grant_type", ""))
        if form.get("grant_type") == JWT_GRANT:
            refusal = self._jwt_refusal(form.get("assertion", ""))
            if refusal is not None:
                return JSONResponse({"error": refusal[0], "error_description": refusal[1]}, 400)
        elif form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type", "error_description": "grant type not supported"}, 400)
        elif (form.get("client_id"), form.get("client_secret")) != (self.client_id, self.client_secret):
            return JSONResponse({"error": "invalid_client", "error_description": "invalid client credentials"}, 400)
        session = self._new_session()
        return JSONResponse({"access_token": session, "scope": "api", "instance_url": self.base_url, "id": f"{self.base_url}/id/00D/005",
                             "token_type": "Bearer", "issued_at": str(int(datetime.now(UTC).timestamp() * 1000)),
                             "signature": "emulated"})

    def _new_session(self) -> str:
        session = f"{ORG_ID[:15]}!{uuid.uuid4().hex}"
        self.sessions.add(session)
        self.logins += 1
        return session

    def _jwt_refusal(self, assertion: str) -> tuple[str, str] | None:
        """Salesforce's OAuth error for a JWT bearer assertion, or None when it is good (RFC 7523)."""
        try:
            claims = jwt.decode(assertion, self.public_key, algorithms=["RS256"], audience=JWT_AUDIENCES,
                                options={"require": ["iss", "sub", "aud", "exp"]})
        except jwt.ExpiredSignatureError:
            return "invalid_grant", "expired authorization code"
        except jwt.InvalidAudienceError:
            return "invalid_grant", "Audience validation failed"
        except jwt.PyJWTError:
            return "invalid_grant", "invalid assertion"
        if claims["iss"] != self.client_id:
            return "invalid_client_id", "client identifier invalid"
        if claims["sub"] != self.username:
            return "invalid_grant", "user hasn't approved this consumer"
        return None

    async def soap_login(self, request: Request) -> Response:
        """The partner API's login(username, password + security token)."""
        self.grants.append("soap-login")
        try:
            envelope = ElementTree.fromstring(await request.body())
        except ElementTree.ParseError:
            return _soap_fault("soapenv:Client", "INVALID_REQUEST", "Unable to parse the request body", "UnexpectedErrorFault")
        login = envelope.find(f".//{{{PARTNER}}}login")
        if login is None or "login" not in request.headers.get("soapaction", ""):
            return _soap_fault("soapenv:Client", "INVALID_OPERATION", "No operation available for request login",
                               "UnexpectedErrorFault")
        username = login.findtext(f"{{{PARTNER}}}username") or ""
        password = login.findtext(f"{{{PARTNER}}}password") or ""
        if (username, password) != (self.username, self.password + self.security_token):
            return _soap_fault("sf:INVALID_LOGIN", "INVALID_LOGIN",
                               "Invalid username, password, security token; or user locked out.", "LoginFault")
        session = self._new_session()
        soap = f"{self.base_url}/services/Soap/u/{self.version}/{ORG_ID[:15]}"
        return Response(
            f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns="{PARTNER}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><loginResponse><result><metadataServerUrl>{self.base_url}/services/Soap/m/{self.version}/{ORG_ID[:15]}</metadataServerUrl><passwordExpired>false</passwordExpired><sandbox>false</sandbox><serverUrl>{soap}</serverUrl><sessionId>{escape(session)}</sessionId><userId>005000000000001AAA</userId><userInfo><organizationId>{ORG_ID}</organizationId><userName>{escape(username)}</userName></userInfo></result></loginResponse></soapenv:Body></soapenv:Envelope>""",
            media_type="text/xml; charset=utf-8",
        )

    async def query(self, request: Request) -> Response:
        soql = request.query_params.get("q", "")
        match = SELECT.match(soql.strip())
        if match is None or match["object"] not in self.records:
            return _errors(400, "MALFORMED_QUERY", f"unexpected SOQL: {soql[:200]}")
        fields = [f.strip() for f in match["fields"].split(",")]
        rows = [r for r in self.records[match["object"]].values() if not r["IsDeleted"]]
        if match["where"]:
            for condition in match["where"].split(" AND "):
                rows = [r for r in rows if _holds(r, condition.strip())]
        if match["order"]:
            for name in reversed([f.strip() for f in match["order"].split(",")]):
                rows.sort(key=lambda r, name=name: str(r.get(name) or ""))
        if match["limit"]:
            rows = rows[: int(match["limit"])]
        answers = [{"attributes": {"type": match["object"],
                                   "url": f"/services/data/v{self.version}/sobjects/{match['object']}/{r['Id']}"},
                    **{f: r.get(f) for f in fields}} for r in rows]
        return self._batch(answers, _batch_size(request), len(answers))

    async def query_more(self, request: Request) -> Response:
        cursor = request.path_params["cursor"]
        name, _, offset = cursor.rpartition("-")
        rows = self.cursors.get(name)
        if rows is None:
            return _errors(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return self._batch(rows, _batch_size(request), len(rows), int(offset), name)

    def _batch(self, rows, size: int, total: int, offset: int = 0, name: str | None = None) -> JSONResponse:
        page = rows[offset : offset + size]
        done = offset + size >= total
        body: dict[str, Any] = {"totalSize": total, "done": done, "records": page}
        if not done:
            name = name or f"01g{uuid.uuid4().hex[:12]}"
            self.cursors[name] = rows
            body["nextRecordsUrl"] = f"/services/data/v{self.version}/query/{name}-{offset + size}"
        return JSONResponse(body)

    async def one(self, request: Request) -> Response:
        name, record_id = request.path_params["object"], request.path_params["record_id"]
        record = self.records.get(name, {}).get(record_id)
        if record is None or record["IsDeleted"]:
            return _errors(404, "NOT_FOUND", "The requested resource does not exist")
        if request.method == "GET":
            return JSONResponse({"attributes": {"type": name}, **record})
        fields = await request.json()
        self.change(name, record_id, fields)
        self.writes.append((name, record_id, dict(fields)))
        return Response(status_code=204)

    async def create(self, request: Request) -> Response:
        name = request.path_params["object"]
        if name not in self.records:
            return _errors(404, "NOT_FOUND", f"sObject type '{name}' is not supported.")
        fields = await request.json()
        if name == "Contact" and not fields.get("LastName"):
            return _errors(400, "REQUIRED_FIELD_MISSING", "Required fields are missing: [LastName]")
        record = self.put(name, fields)
        self.writes.append((name, record["Id"], dict(fields)))
        return JSONResponse({"id": record["Id"], "success": True, "errors": []}, status_code=201)

    async def upsert(self, request: Request) -> Response:
        name, field, value = request.path_params["object"], request.path_params["field"], unquote(request.path_params["value"])
        if name not in self.records:
            return _errors(404, "NOT_FOUND", f"sObject type '{name}' is not supported.")
        fields = await request.json()
        matches = [r for r in self.records[name].values() if str(r.get(field)) == value and not r["IsDeleted"]]
        if len(matches) > 1:
            return JSONResponse([r["Id"] for r in matches], status_code=300)
        if matches:
            self.change(name, matches[0]["Id"], fields)
            self.writes.append((name, matches[0]["Id"], dict(fields)))
            return Response(status_code=204)
        if name == "Contact" and not fields.get("LastName"):
            return _errors(400, "REQUIRED_FIELD_MISSING", "Required fields are missing: [LastName]")
        record = self.put(name, {**fields, field: value})
        self.writes.append((name, record["Id"], dict(fields)))
        return JSONResponse({"id": record["Id"], "success": True, "errors": [], "created": True}, status_code=201)


    async def _collection(self, request: Request) -> tuple[list[dict[str, Any]], bool] | Response:
        """The records of an sObject Collections body, or the 400 Salesforce answers for the whole request."""
        try:
            body = await request.json()
        except ValueError:
            return _errors(400, "JSON_PARSER_ERROR", "The request body is not valid JSON")
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list) or not records:
            return _errors(400, "INVALID_FIELD", "records: a non-empty list is required")
        if len(records) > COLLECTION_MAX:
            return _errors(400, "EXCEEDED_ID_LIMIT", f"record limit reached. cannot submit more than {COLLECTION_MAX} records into this call")
        if any(not isinstance(r, dict) or not (r.get("attributes") or {}).get("type") for r in records):
            return _errors(400, "INVALID_INPUT", "Each record must have an attributes map with a type")
        self.collection_sizes.append(len(records))
        return records, bool(body.get("allOrNone"))

    async def update_collection(self, request: Request) -> Response:
        parsed = await self._collection(request)
        if isinstance(parsed, Response):
            return parsed
        records, all_or_none = parsed
        results = []
        for record in records:
            name = record["attributes"]["type"]
            fields = {k: v for k, v in record.items() if k not in ("attributes", "id", "Id")}
            record_id = record.get("id") or record.get("Id")
            found = self.records.get(name, {}).get(str(record_id)) if record_id else None
            if not record_id:
                results.append(_record_error("MISSING_ARGUMENT", "Id not specified in an update call", ["Id"]))
            elif found is None or found["IsDeleted"]:
                results.append(_record_error("ENTITY_IS_DELETED", "entity is deleted", []))
            elif "LastName" in fields and not fields["LastName"]:
                results.append(_record_error("REQUIRED_FIELD_MISSING", "Required fields are missing: [LastName]", ["LastName"]))
            else:
                results.append({"id": found["Id"], "success": True, "errors": [], "apply": (name, found["Id"], fields)})
        return self._answer_collection(results, all_or_none)

    async def upsert_collection(self, request: Request) -> Response:
        name, field = request.path_params["object"], request.path_params["field"]
        if name not in self.records:
            return _errors(404, "NOT_FOUND", f"sObject type '{name}' is not supported.")
        parsed = await self._collection(request)
        if isinstance(parsed, Response):
            return parsed
        records, all_or_none = parsed
        if any(r["attributes"]["type"] != name for r in records):
            return _errors(400, "INVALID_INPUT", f"All records must be of type {name}")
        results: list[dict[str, Any]] = []
        seen: set[str] = set()
        for record in records:
            fields = {k: v for k, v in record.items() if k != "attributes"}
            value = fields.get(field)
            if "Id" in fields or "id" in fields:
                results.append(_record_error("INVALID_FIELD", "Only external ids are supported: don't set Id", ["Id"]))
                continue
            if not value:
                results.append(_record_error("MISSING_ARGUMENT", f"{field} not specified", [field]))
                continue
            if str(value) in seen:
                results.append(_record_error("DUPLICATE_EXTERNAL_ID", f"Duplicate external id specified: {value}", [field]))
                continue
            seen.add(str(value))
            matches = [r for r in self.records[name].values() if str(r.get(field)) == str(value) and not r["IsDeleted"]]
            if len(matches) > 1:
                results.append(_record_error("DUPLICATE_EXTERNAL_ID", f"{field} matches more than one record", [field]))
            elif matches:
                results.append({"id": matches[0]["Id"], "success": True, "errors": [], "created": False,
                                "apply": (name, matches[0]["Id"], fields)})
            elif name == "Contact" and not fields.get("LastName"):
                results.append(_record_error("REQUIRED_FIELD_MISSING", "Required fields are missing: [LastName]", ["LastName"]))
            else:
                results.append({"success": True, "errors": [], "created": True, "apply": (name, None, fields)})
        return self._answer_collection(results, all_or_none)

    def _answer_collection(self, results: list[dict[str, Any]], all_or_none: bool) -> JSONResponse:
        """Carry out the records that succeed (none when allOrNone and one fails), answered in order."""
        if all_or_none and any(not r["success"] for r in results):
            rolled = [r if not r["success"] else _record_error("ALL_OR_NONE_OPERATION_ROLLED_BACK", "Record rolled back because not all records were valid and the request was using AllOrNone header") for r in results]
            return JSONResponse([{"success": False, "errors": r["errors"]} for r in rolled])
        answered = []
        for result in results:
            apply = result.pop("apply", None)
            if apply is not None:
                name, record_id, fields = apply
                if record_id is None:
                    record_id = self.put(name, fields)["Id"]
                    result["id"] = record_id
                else:
                    self.change(name, record_id, fields)
                self.writes.append((name, record_id, {k: v for k, v in fields.items()}))
            answered.append({"id": result.get("id"), **{k: v for k, v in result.items() if k != "id"}}
                            if result["success"] else result)
        return JSONResponse(answered)

def _soap_fault(code: str, exception_code: str, message: str, fault_type: str) -> Response:
    """A SOAP 1.1 fault as the partner API sends it: HTTP 500, the code and message in sf: elements."""
    return Response(
        f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:sf="urn:fault.partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>{code}</faultcode><faultstring>{exception_code}: {escape(message)}</faultstring><detail><sf:{fault_type} xsi:type="sf:{fault_type}"><sf:exceptionCode>{exception_code}</sf:exceptionCode><sf:exceptionMessage>{escape(message)}</sf:exceptionMessage></sf:{fault_type}></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>""",
        status_code=500, media_type="text/xml; charset=utf-8",
    )


def _record_error(code: str, message: str, fields: list[str] | None = None) -> dict[str, Any]:
    return {"success": False, "errors": [{"statusCode": code, "message": message, "fields": fields or []}]}


def _batch_size(request: Request) -> int:
    options = request.headers.get("sforce-query-options", "")
    found = re.search(r"batchSize=(\d+)", options)
    return max(200, min(int(found.group(1)), 2000)) if found else 2000


def _value(text: str) -> Any:
    text = text.strip()
    if text.startswith("'") and text.endswith("'"):
        return text[1:-1].replace("\\'", "'").replace("\\\\", "\\")
    if text in ("true", "false"):
        return text == "true"
    if re.match(r"^\d{4}-\d{2}-\d{2}T", text):
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    return text


def _holds(record: dict[str, Any], condition: str) -> bool:
    match = CONDITION.match(condition)
    if match is None:
        raise ValueError(f"condition not emulated: {condition}")
    have, op, raw = record.get(match["field"]), match["op"], match["value"]
    if op == "IN":
        return have in [_value(v) for v in raw.strip("()").split(",")]
    wanted = _value(raw)
    if isinstance(wanted, datetime):
        if have is None:
            return False
        have = datetime.strptime(have, "%Y-%m-%dT%H:%M:%S.%f%z")
    if op == "=":
        return have == wanted
    if have is None:
        return False
    return {">=": have >= wanted, "<=": have <= wanted, ">": have > wanted, "<": have < wanted}[op]


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 made with the machine's openssl, trusted by the test's connector only."""
    cert, key = directory / "emulator.pem", directory / "emulator-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


@asynccontextmanager
async def serving(emulator: SalesforceEmulator, directory: Path) -> AsyncIterator[Path]:
    """Serve over HTTPS on 127.0.0.1 and a free port; yields the certificate to trust."""
    cert, key = self_signed_certificate(directory)
    server = uvicorn.Server(uvicorn.Config(emulator, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
                                           ssl_certfile=str(cert), ssl_keyfile=str(key), timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    emulator.base_url = f"https://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    try:
        yield cert
    finally:
        server.should_exit = True
        await task
