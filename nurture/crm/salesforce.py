"""The Salesforce connector, on ``simple-salesforce`` with a connected app: logged in with the app's
OAuth 2.0 client credentials, the JWT bearer flow, or a user's username and password (SOAP ``login``),
as ``crm_salesforce_auth`` says. Whatever the mode, a refused login is ``CrmAuthFailed``.

Salesforce does not push here: contact and opportunity changes are read by the reconciliation's
incremental SOQL query on ``SystemModstamp``. A session that expires (401 ``INVALID_SESSION_ID``) is
renewed once from the token endpoint and the call repeated. Writes go out in sObject Collections of up
to 200 records (``allOrNone: false``, one result per record): contacts created here upserted by an
External ID field holding the email, field updates by record id, and tasks and timeline entries
upserted by an External ID field holding the write's key, so a retried write finds the record it made. ``REQUEST_LIMIT_EXCEEDED`` (the org's daily API budget)
and 5xx answers are ``CrmUnavailable``, and so is the org's daily API usage past
``crm_salesforce_max_api_usage_percent`` (read from each answer's ``Sforce-Limit-Info``).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

import requests
from requests.adapters import HTTPAdapter
from pydantic import SecretStr
from simple_salesforce import Salesforce, SalesforceLogin
from simple_salesforce.exceptions import SalesforceAuthenticationFailed, SalesforceError, SalesforceExpiredSession

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
from nurture.crm.mapping import parse_crm_time
from nurture.crm.pacing import BurstLimit
from nurture.settings import Settings

# Per-record errors of a collection that mean "try again later", not "this record is wrong".
# How long a daily API usage reading past our share holds before one call may read it again.
USAGE_RECHECK_SECONDS = 300.0
# How long a refused login stands before the connector tries its credentials again.
LOGIN_RECHECK_SECONDS = 240.0
TRANSIENT = {"UNABLE_TO_LOCK_ROW", "REQUEST_LIMIT_EXCEEDED", "SERVER_UNAVAILABLE"}
# The settings each login mode needs (the JWT's key may be inline or a file: checked apart).
REQUIRED = {
    "client_credentials": ["crm_salesforce_client_id", "crm_salesforce_client_secret"],
    "jwt": ["crm_salesforce_client_id", "crm_salesforce_username"],
    "password": ["crm_salesforce_username", "crm_salesforce_password"],
}
LOGIN_ORIGIN = "https://login.salesforce.com"
DEAL_FIELDS = ["Id", "Name", "StageName", "ContactId", "IsWon", "IsClosed", "SystemModstamp"]


class SalesforceConnector:
    provider = "salesforce"

    def __init__(self, settings: Settings):
        missing = [name for name in REQUIRED[settings.crm_salesforce_auth] if not getattr(settings, name)]
        if settings.crm_salesforce_auth == "jwt" and not (
                settings.crm_salesforce_private_key or settings.crm_salesforce_private_key_file):
            missing.append("crm_salesforce_private_key")
        if missing:
            names = " and ".join(f"NURTURE_{n.upper()}" for n in missing)
            raise CrmAuthFailed(f"{names} required to log in to Salesforce with crm_salesforce_auth={settings.crm_salesforce_auth}")
        self.settings = settings
        self.http = requests.Session()
        bundle = str(settings.crm_salesforce_ca_bundle) if settings.crm_salesforce_ca_bundle is not None else None
        # simple-salesforce's own login calls go to https://<domain>.salesforce.com. A login URL on
        # another host (a proxy in front of Salesforce; the tests' emulator) is reached by sending
        # those calls there.
        login = urlparse(settings.crm_salesforce_login_url)
        host = login.hostname or "login.salesforce.com"
        if host.endswith(".salesforce.com") and login.port in (None, 443):
            self.domain, login_origin = host.removesuffix(".salesforce.com"), None
        else:
            self.domain, login_origin = "login", f"{login.scheme}://{login.netloc}"
        adapter = _Adapter(settings.crm_request_timeout_seconds, bundle, login_origin)
        self.http.mount("https://", adapter)
        self.http.mount("http://", adapter)
        self.timeout = settings.crm_request_timeout_seconds
        self.batch_size = max(settings.crm_batch_size, 1)
        self.collection_size = settings.crm_salesforce_collection_size
        self.upsert_batch = self.update_batch = self.activity_batch = self.collection_size
        self.limit = BurstLimit.from_settings(settings)
        self.owner_cache: tuple[float, dict[str, str]] | None = None  # nurture.crm.mapping_with_owners
        self.sf: Salesforce | None = None
        # The org's daily API usage from the last answer (used, total, when read), None before the first.
        self.usage: tuple[int, int, float] | None = None
        self.logins = 0
        # A refused login and when: the calls that follow fail with it, without asking Salesforce, which
        # locks a user out after a number of failed logins in a row.
        self.refused: tuple[CrmAuthFailed, float] | None = None
        self.lock = threading.Lock()

    # --- contacts --------------------------------------------------------------

    async def get_contact(self, crm_id: str, properties: list[str]) -> CrmContact | None:
        found = await self.get_contacts([crm_id], properties)
        return found[0] if found else None

    async def get_contacts(self, crm_ids: list[str], properties: list[str]) -> list[CrmContact]:
        found: list[CrmContact] = []
        for start in range(0, len(crm_ids), self.batch_size):
            ids = ", ".join(_literal(i) for i in crm_ids[start : start + self.batch_size])
            answer = await self._call(lambda sf, ids=ids: sf.query(f"SELECT {_fields(properties)} FROM Contact WHERE Id IN ({ids})"))
            found.extend(self._contact(r) for r in answer["records"])
        return found

    async def changed_contacts(self, since: datetime, properties: list[str], after: str | None, limit: int) -> ContactPage:
        soql = f"SELECT {_fields(properties)} FROM Contact WHERE SystemModstamp >= {_soql_time(since)} ORDER BY SystemModstamp, Id"
        answer = await self._page(soql, after, limit)
        return ContactPage([self._contact(r) for r in answer["records"]], None if answer.get("done") else answer.get("nextRecordsUrl"))

    async def upsert_contacts(self, records: list[tuple[str, dict[str, str]]]) -> dict[str, str | CrmRejected]:
        """Upserted by the email's External ID field, up to 200 a call (sObject Collections)."""
        field = self.settings.crm_salesforce_contact_external_id
        rows = [
            (email, {"Email": email, "LastName": properties.get("LastName") or email.split("@")[0], **properties, field: email})
            for email, properties in records
        ]
        return await self._collection(f"composite/sobjects/Contact/{field}", "Contact", rows)

    async def update_contacts(self, updates: list[tuple[str, dict[str, str]]]) -> dict[str, CrmRejected | None]:
        rows = [(crm_id, {"id": crm_id, **properties}) for crm_id, properties in updates]
        answered = await self._collection("composite/sobjects", "Contact", rows)
        return {crm_id: result if isinstance(result, CrmRejected) else None for crm_id, result in answered.items()}

    # --- opportunities -----------------------------------------------------------

    async def get_deal(self, deal_id: str) -> CrmDeal | None:
        answer = await self._call(
            lambda sf: sf.query(f"SELECT {', '.join(DEAL_FIELDS)} FROM Opportunity WHERE Id = {_literal(deal_id)}")
        )
        return _deal(answer["records"][0]) if answer["records"] else None

    async def changed_deals(self, since: datetime, after: str | None, limit: int) -> tuple[list[CrmDeal], str | None]:
        soql = (f"SELECT {', '.join(DEAL_FIELDS)} FROM Opportunity WHERE SystemModstamp >= {_soql_time(since)}"
                " ORDER BY SystemModstamp, Id")
        answer = await self._page(soql, after, limit)
        return [_deal(r) for r in answer["records"]], None if answer.get("done") else answer.get("nextRecordsUrl")

    # --- tasks -------------------------------------------------------------------

    async def create_activities(self, activities: list[CrmActivity]) -> dict[str, str | CrmRejected]:
        """Upserted by the key's External ID field, up to 200 a call, so that even two pushes racing
        make one task each; those already there are found by the key first and not written again."""
        field = self.settings.crm_salesforce_task_external_id
        answered: dict[str, str | CrmRejected] = {}
        # Those made before (an answer lost) are found first, in one query a collection: not written again.
        for start in range(0, len(activities), self.collection_size):
            keys = {_key(a.key): a.key for a in activities[start : start + self.collection_size]}
            values = ", ".join(_literal(k) for k in keys)
            found = await self._call(lambda sf, values=values: sf.query(f"SELECT Id, {field} FROM Task WHERE {field} IN ({values})"))
            for record in found["records"]:
                if record.get(field) in keys:
                    answered[keys[record[field]]] = record["Id"]
        rows = []
        for activity in activities:
            if activity.key in answered:
                continue
            data: dict[str, Any] = {
                field: _key(activity.key),
                "WhoId": activity.contact_crm_id,
                "Subject": activity.subject[:255],
                "Description": activity.body[:32_000],
                "Status": "Not Started" if activity.kind == "task" else "Completed",
                "Priority": "High" if activity.kind == "task" else "Normal",
            }
            if activity.owner_crm_id:
                data["OwnerId"] = activity.owner_crm_id
            if activity.due_at is not None:
                data["ActivityDate"] = activity.due_at.date().isoformat()
            rows.append((activity.key, data))
        if rows:
            answered.update(await self._collection(f"composite/sobjects/Task/{field}", "Task", rows))
        return answered

    async def owners(self) -> dict[str, str]:
        answer = await self._call(lambda sf: sf.query("SELECT Id, Email FROM User WHERE IsActive = true"))
        return {r["Id"]: r.get("Email") or "" for r in answer["records"]}

    async def check(self) -> None:
        await self._call(lambda sf: sf.query("SELECT Id FROM User LIMIT 1"))

    # --- calling -----------------------------------------------------------------

    async def _collection(self, path: str, sobject: str, rows: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        """sObject Collections (PATCH, ``allOrNone: false``): each record succeeds or fails on its own,
        and the results come back in the order sent. Answers key -> record id, or the record's refusal."""
        answered: dict[str, Any] = {}
        for start in range(0, len(rows), self.collection_size):
            chunk = rows[start : start + self.collection_size]
            body = {"allOrNone": False, "records": [{"attributes": {"type": sobject}, **data} for _, data in chunk]}
            results = await self._call(lambda sf, body=body: sf.restful(path, method="PATCH", json=body)) or []
            if len(results) != len(chunk):
                raise CrmUnavailable(f"Salesforce answered {len(results)} results for {len(chunk)} records")
            for (key, _), result in zip(chunk, results):
                errors = [e for e in result.get("errors") or [] if isinstance(e, dict)]
                if result.get("success") and result.get("id"):
                    answered[key] = str(result["id"])
                elif any(e.get("statusCode") in TRANSIENT for e in errors):
                    # Busy, not wrong: the whole call is asked again (each record is an upsert or a diff).
                    raise CrmUnavailable(f"Salesforce could not write {sobject} {key} now: {_reasons(errors)}")
                else:
                    answered[key] = CrmRejected(f"Salesforce refused {sobject} {key}: {_reasons(errors) or 'no reason given'}")
        return answered

    async def _page(self, soql: str, after: str | None, limit: int) -> dict[str, Any]:
        # Salesforce answers batches of at least 200 records; ask for the page size we work in.
        headers = {"Sforce-Query-Options": f"batchSize={max(200, min(limit, 2000))}"}
        if after:
            return await self._call(lambda sf: sf.query_more(after, identifier_is_url=True, headers=headers))
        return await self._call(lambda sf: sf.query(soql, headers=headers))

    def _login_unless_refused(self) -> Salesforce:
        if self.refused is not None and time.monotonic() - self.refused[1] < LOGIN_RECHECK_SECONDS:
            raise self.refused[0]
        try:
            sf = self._login()
        except CrmAuthFailed as exc:
            self.refused = (exc, time.monotonic())
            raise
        self.refused = None
        return sf

    def _login(self) -> Salesforce:
        if self.settings.crm_salesforce_auth == "client_credentials":
            return self._client_credentials_login()
        s = self.settings
        if s.crm_salesforce_auth == "jwt":
            # An RS256 assertion (iss: consumer key, sub: username, aud: the login host) for an access token.
            key_file = str(s.crm_salesforce_private_key_file) if s.crm_salesforce_private_key_file else None
            login = dict(username=s.crm_salesforce_username, consumer_key=s.crm_salesforce_client_id,
                         privatekey=_secret(s.crm_salesforce_private_key) if not key_file else None,
                         privatekey_file=key_file)
        else:
            # SOAP login; the security token is appended to the password, as Salesforce expects.
            login = dict(username=s.crm_salesforce_username, password=_secret(s.crm_salesforce_password),
                         security_token=_secret(s.crm_salesforce_security_token) or "")
        try:
            session_id, instance = SalesforceLogin(session=self.http, domain=self.domain,
                                                   sf_version=s.crm_salesforce_api_version, **login)
        except SalesforceAuthenticationFailed as exc:
            raise _login_refused(exc, s.crm_salesforce_auth) from exc
        except requests.RequestException as exc:
            raise CrmUnavailable(f"Salesforce login unreachable: {exc}") from exc
        self.logins += 1
        # Our own session (no refresh inside simple-salesforce), so an expired one is renewed once, by _call.
        return Salesforce(instance=instance, session_id=session_id, session=self.http, version=s.crm_salesforce_api_version)

    def _client_credentials_login(self) -> Salesforce:
        """A session from the connected app (client credentials); the token endpoint names the instance."""
        s = self.settings
        try:
            answer = self.http.post(
                f"{s.crm_salesforce_login_url.rstrip('/')}/services/oauth2/token",
                data={"grant_type": "client_credentials", "client_id": s.crm_salesforce_client_id,
                      "client_secret": s.crm_salesforce_client_secret},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise CrmUnavailable(f"Salesforce login unreachable: {exc}") from exc
        if answer.status_code >= 500:
            raise CrmUnavailable(f"Salesforce login answered {answer.status_code}")
        if answer.status_code != 200:
            raise CrmAuthFailed(f"Salesforce refused the connected app ({answer.status_code}): {answer.text[:300]}")
        token = answer.json()
        self.logins += 1
        return Salesforce(instance_url=token["instance_url"], session_id=token["access_token"], session=self.http,
                          version=s.crm_salesforce_api_version)

    async def _call(self, call) -> Any:
        def run():
            for attempt in (1, 2):
                with self.lock:
                    if self.sf is None:
                        self.sf = self._login_unless_refused()
                    sf = self.sf
                self._within_budget()
                self.limit.wait()
                try:
                    return call(sf)
                except SalesforceExpiredSession:
                    with self.lock:
                        if self.sf is sf:
                            self.sf = None  # expired: the next attempt logs in again
                    if attempt == 2:
                        raise
                finally:
                    usage = sf.api_usage.get("api-usage")
                    if usage is not None:
                        self.usage = (usage.used, usage.total, time.monotonic())
            raise AssertionError("unreachable")

        try:
            return await asyncio.to_thread(run)
        except CrmError:
            raise
        except SalesforceError as exc:
            raise _translated(exc) from exc
        except requests.RequestException as exc:
            raise CrmUnavailable(f"Salesforce unreachable: {type(exc).__name__}: {exc}"[:500]) from exc

    def _within_budget(self) -> None:
        """Calls stop, as if Salesforce were down, while the org's daily API usage (the last answer's
        ``Sforce-Limit-Info``) is past our share, leaving the rest to the org's other integrations. A
        reading older than USAGE_RECHECK_SECONDS lets one call through, to read the usage again."""
        if self.usage is None:
            return
        used, total, read_at = self.usage
        share = self.settings.crm_salesforce_max_api_usage_percent
        if total and used >= total * share / 100 and time.monotonic() - read_at < USAGE_RECHECK_SECONDS:
            raise CrmUnavailable(
                f"Salesforce's daily API usage is {used}/{total}, past NURTURE_CRM_SALESFORCE_MAX_API_USAGE_PERCENT "
                f"({share:g}%): calls wait until the org's budget frees up"
            )

    def _contact(self, record: dict[str, Any]) -> CrmContact:
        properties = {k: v for k, v in record.items() if k != "attributes"}
        modified = properties.get("SystemModstamp")
        return CrmContact(
            id=record["Id"], properties=properties, updated_at=parse_crm_time(modified) if modified else None,
            archived=bool(properties.get("IsDeleted")), email_address=properties.get("Email"),
        )


class _Adapter(HTTPAdapter):
    """Every call bounded in time (simple-salesforce passes no timeout of its own), checked against
    the configured CA bundle (requests lets REQUESTS_CA_BUNDLE override a session's own), and login
    calls sent to a login URL off salesforce.com when one is configured."""

    def __init__(self, timeout: float, ca_bundle: str | None, login_origin: str | None = None):
        super().__init__(max_retries=0)
        self.timeout, self.ca_bundle, self.login_origin = timeout, ca_bundle, login_origin

    def send(self, request, **kwargs):
        if self.login_origin and request.url.startswith(LOGIN_ORIGIN + "/"):
            request.url = self.login_origin + request.url.removeprefix(LOGIN_ORIGIN)
        kwargs["timeout"] = kwargs.get("timeout") or self.timeout
        if self.ca_bundle is not None:
            kwargs["verify"] = self.ca_bundle
        return super().send(request, **kwargs)


def _translated(exc: SalesforceError) -> CrmError:
    content = exc.content if isinstance(exc.content, list) else []
    codes = {str(item.get("errorCode")) for item in content if isinstance(item, dict)}
    message = "; ".join(str(item.get("message")) for item in content if isinstance(item, dict)) or str(exc.content)[:300]
    if exc.status == 401:
        return CrmAuthFailed(f"Salesforce refused the session after a new login: {message}")
    if exc.status == 403 and "REQUEST_LIMIT_EXCEEDED" in codes:
        return CrmUnavailable(f"Salesforce's API request limit is spent: {message}")
    if exc.status == 403:
        return CrmAuthFailed(f"Salesforce refused the request (403): {message}")
    if exc.status >= 500 or exc.status == 429:
        return CrmUnavailable(f"Salesforce answered {exc.status}: {message}")
    return CrmRejected(f"Salesforce answered {exc.status}: {message}")


def _login_refused(exc: SalesforceAuthenticationFailed, mode: str) -> CrmError:
    """A login Salesforce refused (a SOAP fault such as INVALID_LOGIN, an OAuth error such as
    invalid_grant) is for a person to fix: not retried. Salesforce down at login is an outage."""
    if isinstance(exc.code, int) and (exc.code >= 500 or exc.code == 429):
        return CrmUnavailable(f"Salesforce login answered {exc.code}: {exc.auth_message[:300]}")
    if exc.code in TRANSIENT:
        return CrmUnavailable(f"Salesforce login failed for now: {exc.code}: {exc.auth_message[:300]}")
    return CrmAuthFailed(f"Salesforce refused the login ({mode}): {exc.code}: {exc.auth_message[:300]}")


def _secret(value: SecretStr | str | None) -> str | None:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _reasons(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{e.get('statusCode')}: {e.get('message')}" for e in errors)[:500]


def _deal(record: dict[str, Any]) -> CrmDeal:
    properties = {k: v for k, v in record.items() if k != "attributes"}
    properties["dealname"] = properties.get("Name")
    contacts = [record["ContactId"]] if record.get("ContactId") else []
    return CrmDeal(id=record["Id"], stage=str(record.get("StageName") or ""), contact_ids=contacts, properties=properties)


def _fields(properties: list[str]) -> str:
    names = ["Id", "Email", "SystemModstamp", *properties]
    return ", ".join(dict.fromkeys(n for n in names if n.replace("_", "").isalnum()))


def _literal(value: str) -> str:
    """A SOQL string literal: backslashes and quotes escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _soql_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _key(key: str) -> str:
    """The idempotency key as an External ID value: letters and digits, at most 40."""
    return hashlib.sha256(key.encode()).hexdigest()[:40]
