"""Two-way Salesforce sync on the Salesforce REST emulator (HTTPS on loopback), through simple-salesforce.

Salesforce does not push: the reconciliation's incremental SOQL query on SystemModstamp brings
contact and opportunity changes in; flow writes go out as upserts by External ID.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr
from sqlmodel import select

from api.main import create_app

from nurture.contracts import EnrollmentState
from nurture.crm.contracts import CRM_SYNC_WORKFLOW, CrmSyncInput, CrmSyncResult
from nurture.crm.writes import CONTACT, queue_write
from nurture.db import Database
from nurture.models import Contact, CrmOwner, CrmWrite, Event, PauseLog, utcnow
from tests.conftest import eventually, result_of
from tests.crm_emulators.salesforce import JWT_GRANT, SalesforceEmulator, serving
from tests.crm_support import at_step, crm_writes, paused_by, queued_backlog
from tests.factories import add_templates
from tests.flow_runner import manual_flow, start
from worker.main import build_worker

HANDOFF = manual_flow(
    {"id": "handoff", "type": "handoff_to_sales", "silence_limit": "21d", "on_won": "won", "on_lost": "lost"},
    {"id": "won", "type": "update_contact", "lifecycle_stage": "customer", "next": "end"},
    {"id": "lost", "type": "update_contact", "add_tags": ["lost"], "next": "end"},
    {"id": "end", "type": "exit", "reason": "handoff_done"},
)
NURTURE = manual_flow(
    {"id": "hello", "type": "send_email", "template": "demo-welcome"},
    {"id": "wait", "type": "delay", "duration": "2d"},
    {"id": "again", "type": "send_email", "template": "case-study"},
)
MQL = manual_flow(
    {"id": "mql", "type": "update_contact", "lifecycle_stage": "marketingqualifiedlead"},
    {"id": "task", "type": "create_task", "title": "Call {{ contact.email }}", "description": "Became an MQL"},
)


@pytest.fixture
async def salesforce(tmp_path: Path) -> AsyncIterator[tuple[SalesforceEmulator, Path]]:
    emulator = SalesforceEmulator()
    async with serving(emulator, tmp_path) as certificate:
        yield emulator, certificate


@pytest.fixture
def sf(salesforce) -> SalesforceEmulator:
    return salesforce[0]


@pytest.fixture
def login_mode() -> str:
    """How the connector logs in; tests of the other modes parametrize it."""
    return "client_credentials"


@pytest.fixture
def crm_settings(settings, salesforce, tmp_path: Path, login_mode: str):
    emulator, certificate = salesforce
    rep = emulator.put("User", {"Email": "jane@example.com", "IsActive": True})
    mapping = tmp_path / "crm-mapping.yaml"
    mapping.write_text(f'owners:\n  "{rep["Id"]}": rep-jane\n')
    return settings.model_copy(update={
        "crm_provider": "salesforce",
        "crm_salesforce_login_url": emulator.base_url,
        "crm_salesforce_client_id": emulator.client_id,
        "crm_salesforce_client_secret": emulator.client_secret,
        "crm_salesforce_ca_bundle": certificate,
        "crm_mapping_file": mapping,
        **_login(emulator, login_mode, tmp_path),
    })


def _login(emulator: SalesforceEmulator, mode: str, tmp_path: Path) -> dict:
    """Settings for a login mode; a "-wrong" mode has one wrong credential (another key; a wrong password)."""
    if mode.startswith("jwt"):
        key = emulator.private_key_pem if mode == "jwt" else _another_key()
        key_file = tmp_path / "salesforce-jwt.key"
        key_file.write_text(key)
        return {"crm_salesforce_auth": "jwt", "crm_salesforce_username": emulator.username,
                "crm_salesforce_client_secret": None, "crm_salesforce_private_key_file": key_file}
    if mode.startswith("password"):
        return {"crm_salesforce_auth": "password", "crm_salesforce_client_id": None, "crm_salesforce_client_secret": None,
                "crm_salesforce_username": emulator.username,
                "crm_salesforce_password": SecretStr(emulator.password if mode == "password" else "not-the-password"),
                "crm_salesforce_security_token": SecretStr(emulator.security_token)}
    return {}


def _another_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture(autouse=True)
async def crm_worker(client, db, outbox, crm_settings):
    await add_templates(db)
    async with build_worker(client, db, outbox, crm_settings) as running:
        yield running


def rep_id(sf: SalesforceEmulator) -> str:
    return next(iter(sf.records["User"]))


async def sync(client, crm_settings, **options) -> CrmSyncResult:
    """One reconciliation run, in real time: waiting on it must not skip the enrollments' timers ahead."""
    started = await client.start_workflow(
        CRM_SYNC_WORKFLOW, CrmSyncInput(**options), id=f"crm-sync-test-{utcnow().timestamp()}",
        task_queue=crm_settings.temporal_task_queue,
    )
    return await client.get_workflow_handle(started.id, result_type=CrmSyncResult).result()


async def synced_contact(sf: SalesforceEmulator, client, crm_settings, db: Database, email="ada@example.com"):
    record = sf.put("Contact", {"Email": email, "FirstName": "Ada", "LastName": "Lovelace", "OwnerId": rep_id(sf),
                                "HasOptedOutOfEmail": False})
    await sync(client, crm_settings)
    async with db.session() as s:
        contact = (await s.exec(select(Contact).where(Contact.crm_id == record["Id"]))).one()
    return record, contact


async def test_an_opportunity_moved_to_closed_won_ends_the_handoff_on_its_won_path(sf, client, crm_settings, db, temporal_env):
    record, contact = await synced_contact(sf, client, crm_settings, db)
    assert contact.owner == "rep-jane" and contact.properties["first_name"] == "Ada"
    _, _, handle = await start(db, client, crm_settings, HANDOFF, contact=contact)
    await eventually(lambda: paused_by(db, contact.id, f"handoff:{handle.id}"))
    deal = sf.put("Opportunity", {"Name": "Engines", "StageName": "Prospecting", "ContactId": record["Id"]})
    await sync(client, crm_settings)
    sf.change("Opportunity", deal["Id"], {"StageName": "Closed Won"})

    result = await sync(client, crm_settings)

    assert result.error is None
    await result_of(temporal_env, handle)
    state = await handle.query("state", result_type=EnrollmentState)
    assert next(e.detail for e in state.timeline if e.kind == "handoff_outcome") == "won"
    sf.change("Opportunity", deal["Id"], {"Name": "Engines (signed)"})  # another field: no second event
    await sync(client, crm_settings)
    async with db.session() as s:
        events = (await s.exec(select(Event).where(Event.contact_id == contact.id, Event.type == "deal_stage_changed"))).all()
    assert [(e.properties["crm_stage"], e.properties["stage"]) for e in events] == [
        ("Prospecting", "Prospecting"), ("Closed Won", "closedwon")]


async def test_the_rep_sets_the_pause_fields_and_the_flows_pause_under_the_owners_name(sf, client, crm_settings, db):
    record, contact = await synced_contact(sf, client, crm_settings, db)
    _, _, handle = await start(db, client, crm_settings, NURTURE, contact=contact)
    await eventually(lambda: at_step(handle, "wait"))
    until = (utcnow() + timedelta(days=5)).replace(microsecond=0)
    sf.change("Contact", record["Id"], {"Nurture_Pause_Until__c": until.strftime("%Y-%m-%dT%H:%M:%S.000+0000"),
                                        "Nurture_Pause_Reason__c": "Negotiating"})

    await sync(client, crm_settings)

    state = await handle.query("state", result_type=EnrollmentState)
    assert state.paused is not None and (state.paused.paused_by, state.paused.until) == ("rep-jane", until)
    async with db.session() as s:
        [log] = (await s.exec(select(PauseLog).where(PauseLog.contact_id == contact.id))).all()
    assert (log.actor, log.requested_by, log.reason) == ("rep-jane", "salesforce", "Negotiating")


async def test_an_mql_update_and_its_task_are_written_once_when_an_answer_is_lost(sf, client, crm_settings, db, temporal_env):
    record, contact = await synced_contact(sf, client, crm_settings, db)
    _, _, handle = await start(db, client, crm_settings, MQL, contact=contact)
    await result_of(temporal_env, handle)
    # Salesforce carries out the update collection and the task upsert, but both answers are lost.
    sf.lose_answer_of += [("PATCH", "/composite/sobjects/Task/Nurture_Key__c"), ("PATCH", "/composite/sobjects")]

    result = await sync(client, crm_settings)

    assert result.error is None
    assert [f for i, f in sf.written("Contact") if i == record["Id"]] == [
        {"Nurture_Lifecycle_Stage__c": "marketingqualifiedlead"}]
    [task] = sf.records["Task"].values()
    assert task["WhoId"] == record["Id"] and task["OwnerId"] == rep_id(sf) and task["Subject"] == "Call ada@example.com"
    assert len(sf.written("Task")) == 1  # the lost answer's retry found the task by its key
    assert [w.status for w in await crm_writes(db)] == ["done", "done"]


async def test_salesforce_down_then_an_expired_session_loses_and_doubles_no_write(sf, client, crm_settings, db, temporal_env):
    newcomer = None
    async with db.session() as s:
        newcomer = Contact(email="new@example.com", name="Newt")
        s.add(newcomer)
        await s.commit()
        await s.refresh(newcomer)
    _, _, handle = await start(db, client, crm_settings, MQL, contact=newcomer)
    await result_of(temporal_env, handle)
    sf.down = True

    failed = await sync(client, crm_settings, crm_attempts=2)

    assert failed.pushed == 0 and "503" in failed.error
    assert [w.status for w in await crm_writes(db)] == ["queued", "queued"]
    sf.down = False
    sf.expire_sessions()  # the session the connector holds is gone: it logs in again once
    logins = sf.logins

    recovered = await sync(client, crm_settings)

    assert recovered.pushed == 2 and recovered.error is None and sf.logins == logins + 1
    [created] = [r for r in sf.records["Contact"].values() if r.get("Nurture_Email__c") == "new@example.com"]
    assert created["Nurture_Lifecycle_Stage__c"] == "marketingqualifiedlead" and created["LastName"] == "new"
    assert len(sf.records["Task"]) == 1 and [w.status for w in await crm_writes(db)] == ["done", "done"]
    async with db.session() as s:
        assert (await s.get(Contact, newcomer.id)).crm_id == created["Id"]


async def test_the_daily_api_budget_spent_is_an_outage_not_a_failure(sf, client, crm_settings, db, temporal_env):
    record, contact = await synced_contact(sf, client, crm_settings, db)
    _, _, handle = await start(db, client, crm_settings, MQL, contact=contact)
    await result_of(temporal_env, handle)
    sf.limit_exceeded = True

    spent = await sync(client, crm_settings, crm_attempts=1)

    assert "REQUEST_LIMIT_EXCEEDED" in spent.error or "request limit" in spent.error
    assert [w.status for w in await crm_writes(db)] == ["queued", "queued"]
    sf.limit_exceeded = False
    assert (await sync(client, crm_settings)).pushed == 2


async def test_contacts_created_here_are_upserted_to_salesforce_by_the_email_external_id(sf, client, crm_settings, db):
    field = crm_settings.crm_salesforce_contact_external_id
    sf.put("Contact", {"Email": "known@example.com", "LastName": "Known", field: "known@example.com"})
    app = create_app(crm_settings, db=db, client=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as api:
        assert (await api.post("/contacts", json={"email": "Lin@Example.com", "phone": "+1 555 0100"})).status_code == 201
        imported = await api.post("/contacts/import", content="email,phone\nknown@example.com,+1 555 0101\nbo@example.com,\n",
                                  headers={"content-type": "text/csv"})
        assert imported.status_code == 200, imported.text

    await sync(client, crm_settings)

    by_email = {r[field]: r for r in sf.records["Contact"].values() if r.get(field)}
    assert sorted(by_email) == ["bo@example.com", "known@example.com", "lin@example.com"]  # none doubled
    assert by_email["lin@example.com"]["Phone"] == "+1 555 0100"
    assert by_email["known@example.com"]["Phone"] == "+1 555 0101"
    async with db.session() as s:
        contacts = {c.email: c for c in (await s.exec(select(Contact))).all()}
        upserts = (await s.exec(select(CrmWrite).where(CrmWrite.kind == "upsert"))).all()
    assert {e: c.crm_id for e, c in contacts.items()} == {e: r["Id"] for e, r in by_email.items()}
    assert sorted(w.status for w in upserts) == ["done", "done", "done"]


async def test_the_sync_imports_salesforce_users_as_reps(sf, client, crm_settings, db):
    omar = sf.put("User", {"Email": "Omar@Example.com", "IsActive": True})
    sf.put("User", {"Email": "gone@example.com", "IsActive": False})

    await sync(client, crm_settings)
    record = sf.put("Contact", {"Email": "grace@example.com", "LastName": "Hopper", "OwnerId": omar["Id"]})
    await sync(client, crm_settings)

    async with db.session() as s:
        owners = {o.crm_owner_id: o.rep for o in (await s.exec(select(CrmOwner))).all()}
        contact = (await s.exec(select(Contact).where(Contact.crm_id == record["Id"]))).one()
    assert owners == {rep_id(sf): "rep-jane", omar["Id"]: "omar@example.com"}  # active users only
    assert contact.owner == "omar@example.com"


async def test_a_backlog_goes_out_in_collections_of_200_and_a_refused_record_fails_alone(sf, client, crm_settings, db):
    people = await queued_backlog(  # as 250 update_contact steps would have queued them
        db, crm_settings, 250, lambda email: sf.put("Contact", {"Email": email, "LastName": email.split("@")[0]})["Id"],
        {"Nurture_Lifecycle_Stage__c": "marketingqualifiedlead"},
    )
    sf.records["Contact"][people[7].crm_id]["IsDeleted"] = True  # deleted in Salesforce meanwhile

    result = await sync(client, crm_settings)

    assert result.pushed == 249 and result.error is None
    assert sf.collection_sizes == [200, 50]  # two calls for 250 updates (one record was not there to write)
    statuses = {w.contact_id: (w.status, w.last_error) for w in await crm_writes(db)}
    assert statuses.pop(people[7].id)[0] == "failed"
    assert set(statuses.values()) == {("done", None)}
    written = [record_id for record_id, fields in sf.written("Contact")]
    assert sorted(written) == sorted(p.crm_id for i, p in enumerate(people) if i != 7)  # each once
    status = await _status(crm_settings, db, client)
    [failed] = status["failed_writes"]
    assert failed["contact_id"] == people[7].id and "ENTITY_IS_DELETED" in failed["last_error"]


async def test_a_contact_first_seen_in_an_event_is_upserted_to_salesforce_by_email_once(sf, client, crm_settings, db):
    field = crm_settings.crm_salesforce_contact_external_id
    app = create_app(crm_settings, db=db, client=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as api:
        assert (await api.post("/events", json={"email": "walk.in@example.com", "type": "page_viewed"})).status_code == 202
        assert (await api.post("/events/batch", json=[{"email": "batch@example.com", "type": "page_viewed"}])).status_code == 200

    await sync(client, crm_settings)
    await sync(client, crm_settings)

    by_email = [r[field] for r in sf.records["Contact"].values() if r.get(field)]
    assert sorted(by_email) == ["batch@example.com", "walk.in@example.com"]
    assert sf.collection_sizes == [2]  # both in one upsert collection, and nothing written again
    async with db.session() as s:
        assert all(c.crm_id for c in (await s.exec(select(Contact))).all())


async def _status(crm_settings, db, client) -> dict:
    app = create_app(crm_settings, db=db, client=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as api:
        return (await api.get("/crm/status")).json()


async def test_the_sync_stops_calling_salesforce_past_its_share_of_the_daily_api_budget(sf, client, crm_settings, db, temporal_env):
    record, contact = await synced_contact(sf, client, crm_settings, db)
    _, _, handle = await start(db, client, crm_settings, MQL, contact=contact)
    await result_of(temporal_env, handle)
    sf.api_used = int(sf.api_daily_limit * 0.95)  # the org's other integrations spent it (the share is 90%)
    before = len(sf.requests)

    result = await sync(client, crm_settings, crm_attempts=1)

    assert "daily API usage is 14251/15000" in result.error
    assert len(sf.requests) - before == 1  # the one answer that told; nothing more was asked
    assert [w.status for w in await crm_writes(db)] == ["queued", "queued"]


@pytest.mark.parametrize(("login_mode", "grant"), [("jwt", JWT_GRANT), ("password", "soap-login")])
async def test_each_login_mode_syncs_and_an_expired_session_logs_in_again_once(sf, client, crm_settings, db, grant):
    record, contact = await synced_contact(sf, client, crm_settings, db)

    assert contact.owner == "rep-jane" and contact.properties["first_name"] == "Ada"
    assert sf.grants and set(sf.grants) == {grant}
    sf.expire_sessions()
    logins = sf.logins
    sf.change("Contact", record["Id"], {"FirstName": "Augusta"})

    result = await sync(client, crm_settings)

    assert result.error is None and sf.logins == logins + 1
    async with db.session() as s:
        assert (await s.get(Contact, contact.id)).properties["first_name"] == "Augusta"
    assert (await _status(crm_settings, db, client))["connected"] is True


@pytest.mark.parametrize(("login_mode", "refusal"), [
    ("jwt-wrong-key", "invalid_grant: invalid assertion"),
    ("password-wrong", "INVALID_LOGIN: Invalid username, password, security token; or user locked out."),
])
async def test_a_wrong_credential_fails_the_sync_once_with_salesforces_reason(sf, client, crm_settings, db, refusal):
    async with db.session() as s:
        record = sf.put("Contact", {"Email": "ada@example.com", "LastName": "Lovelace"})
        person = Contact(email="ada@example.com", crm_id=record["Id"])
        s.add(person)
        await s.flush()
        await queue_write(s, crm_settings, key=f"crm:mql:{person.id}", kind=CONTACT, contact_id=person.id,
                          payload={"properties": {"Nurture_Lifecycle_Stage__c": "marketingqualifiedlead"}})
        await s.commit()

    result = await sync(client, crm_settings, crm_attempts=3)

    assert "Salesforce refused the login" in result.error and refusal in result.error
    assert len(sf.grants) == 1  # not retried: a person has to fix the credential
    assert [w.status for w in await crm_writes(db)] == ["queued"]
    status = await _status(crm_settings, db, client)
    assert status["connected"] is False and refusal in status["error"] and refusal in status["last_error"]
