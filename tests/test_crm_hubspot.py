"""Two-way HubSpot sync on the HubSpot emulator, reached through HubSpot's own client.

A rep's changes in the CRM arrive by signed webhook (and by the reconciliation sync) and drive the
enrollments; the flows' writes go back to the CRM once each, through outages and retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from api.main import create_app
from nurture.api_keys import Role, create_key
from nurture.contracts import EnrollmentState
from nurture.crm.contracts import CRM_SYNC_WORKFLOW, CrmSyncInput, CrmSyncResult
from nurture.crm.mapping import MappingInvalid, load_mapping
from nurture.crm.writes import CONTACT, NOTE, TASK, queue_write
from nurture.db import Database
from nurture.models import Contact, CrmOwner, Enrollment, Event, PauseLog, utcnow
from tests.conftest import eventually, result_of
from tests.crm_emulators.hubspot import HubSpotEmulator, serving
from tests.crm_support import at_step, crm_writes, paused_by, queued_backlog
from tests.factories import add_templates
from tests.flow_runner import manual_flow, start
from worker.main import build_worker

WEBHOOK = "http://test/webhooks/crm/hubspot"
SEARCH_CAP = 300
MAPPING = """
owners:
  "77": rep-jane
fields:
  - {crm: firstname, contact: name, direction: inbound}
  - {crm: company, contact: company, direction: both}
  - {crm: lifecyclestage, contact: lifecycle_stage, direction: both}
"""

HANDOFF = manual_flow(
    {"id": "handoff", "type": "handoff_to_sales", "silence_limit": "21d",
     "on_won": "won", "on_lost": "lost", "on_silence": "reengage"},
    {"id": "won", "type": "update_contact", "lifecycle_stage": "customer", "next": "end"},
    {"id": "lost", "type": "update_contact", "add_tags": ["lost"], "next": "end"},
    {"id": "reengage", "type": "send_email", "template": "demo-welcome-resend"},
    {"id": "end", "type": "exit", "reason": "handoff_done"},
)
NURTURE = manual_flow(
    {"id": "hello", "type": "send_email", "template": "demo-welcome"},
    {"id": "wait", "type": "delay", "duration": "2d"},
    {"id": "again", "type": "send_email", "template": "case-study"},
)
MQL = manual_flow(
    {"id": "mql", "type": "update_contact", "lifecycle_stage": "marketingqualifiedlead"},
    {"id": "task", "type": "create_task", "title": "Call {{ contact.name }}", "description": "Became an MQL"},
)


@pytest.fixture
async def hubspot() -> AsyncIterator[HubSpotEmulator]:
    # HubSpot's search cap is 10,000 results; 300 here, so that a test reaches it with few contacts.
    async with serving(HubSpotEmulator(search_cap=SEARCH_CAP)) as emulator:
        emulator.add_owner("77", "jane@example.com")
        yield emulator


@pytest.fixture
def crm_settings(settings, hubspot, tmp_path: Path):
    mapping = tmp_path / "crm-mapping.yaml"
    mapping.write_text(MAPPING)
    return settings.model_copy(update={
        "crm_provider": "hubspot",
        "crm_hubspot_token": hubspot.token,
        "crm_hubspot_base_url": hubspot.base_url,
        "crm_hubspot_app_secret": hubspot.app_secret,
        "crm_hubspot_app_id": "4242",
        "crm_mapping_file": mapping,
        "crm_hubspot_search_cap": SEARCH_CAP,
    })


@pytest.fixture
async def crm_worker(client, db, outbox, crm_settings):
    async with build_worker(client, db, outbox, crm_settings) as running:
        yield running


@pytest.fixture
async def crm_api(db, client, crm_settings, crm_worker) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(crm_settings, db=db, client=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        yield http


@pytest.fixture(autouse=True)
async def templates(db):
    await add_templates(db)


async def linked_contact(hubspot: HubSpotEmulator, crm_api: httpx.AsyncClient, db: Database, email="ada@example.com"):
    """A contact a rep created in HubSpot, arrived here by webhook."""
    record = hubspot.put("contacts", {"email": email, "firstname": "Ada", "hubspot_owner_id": "77", "company": "AE"})
    answer = await hubspot.deliver(crm_api, WEBHOOK, [hubspot.event("contact.creation", record.id)])
    assert answer.status_code == 200, answer.text
    assert answer.json()["contacts"] == 1
    async with db.session() as s:
        contact = (await s.exec(select(Contact).where(Contact.crm_id == record.id))).one()
    return record, contact


async def sync(client, crm_settings, **options) -> CrmSyncResult:
    return await client.execute_workflow(
        CRM_SYNC_WORKFLOW, CrmSyncInput(**options), id=f"crm-sync-test-{utcnow().timestamp()}",
        task_queue=crm_settings.temporal_task_queue, result_type=CrmSyncResult,
    )


# --- inbound -------------------------------------------------------------------------------------


async def test_a_contact_created_in_hubspot_arrives_mapped_with_its_owner(hubspot, crm_api, db):
    record, contact = await linked_contact(hubspot, crm_api, db)
    assert (contact.email, contact.name, contact.company, contact.owner) == ("ada@example.com", "Ada", "AE", "rep-jane")
    shown = (await crm_api.get(f"/contacts/{contact.id}")).json()
    assert shown["crm_id"] == record.id

    # Changes to several contacts, one of them gone since, are read in one batch call.
    hubspot.change("contacts", record.id, {"company": "Analytical Engines"})
    reads = len([r for r in hubspot.requests if r[1].endswith("/batch/read")])
    answer = await hubspot.deliver(crm_api, WEBHOOK, [
        hubspot.event("contact.propertyChange", record.id, "company", "Analytical Engines"),
        hubspot.event("contact.propertyChange", "999999", "company", "Gone"),
    ])
    assert answer.json()["contacts"] == 1 and answer.json()["ignored"] == ["contact 999999: no longer in the CRM"]
    assert len([r for r in hubspot.requests if r[1].endswith("/batch/read")]) == reads + 1
    async with db.session() as s:
        assert (await s.get(Contact, contact.id)).company == "Analytical Engines"


async def test_an_owner_the_mapping_does_not_name_is_the_rep_with_their_email_both_ways(
    hubspot, crm_api, db, client, crm_settings, temporal_env
):
    hubspot.add_owner("78", "Omar@Example.com")
    record = hubspot.put("contacts", {"email": "grace@example.com", "firstname": "Grace", "hubspot_owner_id": "78"})
    assert (await hubspot.deliver(crm_api, WEBHOOK, [hubspot.event("contact.creation", record.id)])).status_code == 200
    async with db.session() as s:
        contact = (await s.exec(select(Contact).where(Contact.crm_id == record.id))).one()
    assert contact.owner == "omar@example.com"  # so notify_owner can write to the rep

    _, _, handle = await start(db, client, crm_settings, MQL, contact=contact)
    await result_of(temporal_env, handle)
    await sync(client, crm_settings)

    [task] = hubspot.objects["tasks"].values()
    assert task.properties["hubspot_owner_id"] == "78"


async def test_a_deal_moved_to_closed_won_ends_the_handoff_on_its_won_path(hubspot, crm_api, db, client, crm_settings, temporal_env):
    record, contact = await linked_contact(hubspot, crm_api, db)
    _, _, handle = await start(db, client, crm_settings, HANDOFF, contact=contact)
    await eventually(lambda: paused_by(db, contact.id, f"handoff:{handle.id}"))
    deal = hubspot.put("deals", {"dealstage": "appointmentscheduled", "dealname": "Ada's engines"}, {"contacts": [record.id]})

    events = hubspot.change("deals", deal.id, {"dealstage": "closedwon"})
    answer = await hubspot.deliver(crm_api, WEBHOOK, events)

    assert answer.status_code == 200 and answer.json()["events"] == 1
    await result_of(temporal_env, handle)
    state = await handle.query("state", result_type=EnrollmentState)
    assert next(e.detail for e in state.timeline if e.kind == "handoff_outcome") == "won"
    assert "won" in [e.step_id for e in state.timeline if e.step_id]
    async with db.session() as s:
        [event] = (await s.exec(select(Event).where(Event.contact_id == contact.id, Event.type == "deal_stage_changed"))).all()
    assert event.properties["stage"] == "closedwon" and event.properties["closed_won"] is True
    assert event.properties["deal_id"] == deal.id
    # HubSpot delivers again after a timeout: the same change is not recorded twice.
    again = await hubspot.deliver(crm_api, WEBHOOK, events)
    assert again.status_code == 200 and again.json()["events"] == 0


async def test_a_forged_or_stale_delivery_is_refused_and_changes_nothing(hubspot, crm_api, db):
    record = hubspot.put("contacts", {"email": "eve@example.com", "firstname": "Eve"})
    events = [hubspot.event("contact.creation", record.id)]

    forged = await hubspot.deliver(crm_api, WEBHOOK, events, secret="not-the-app-secret")
    stale = await hubspot.deliver(crm_api, WEBHOOK, events, timestamp_ms=int((utcnow() - timedelta(minutes=6)).timestamp() * 1000))
    unsigned = await crm_api.post(WEBHOOK, json=events)
    body, headers = hubspot.signed(WEBHOOK, events)
    tampered = await crm_api.post(WEBHOOK, content=body.replace(record.id.encode(), b"1"), headers=headers)

    assert [r.status_code for r in (forged, stale, unsigned, tampered)] == [401, 401, 401, 401]
    assert "older than 300 seconds" in stale.json()["detail"]
    async with db.session() as s:
        assert (await s.exec(select(Contact))).all() == []
    assert not [r for r in hubspot.requests if "/objects/contacts" in r[1]]  # nothing was even read


async def test_the_rep_sets_the_pause_property_and_the_contacts_flows_pause_under_the_owners_name(
    hubspot, crm_api, db, client, crm_settings
):
    record, contact = await linked_contact(hubspot, crm_api, db)
    _, _, handle = await start(db, client, crm_settings, NURTURE, contact=contact)
    await eventually(lambda: at_step(handle, "wait"))
    until = (utcnow() + timedelta(days=3)).replace(microsecond=0)

    events = hubspot.change("contacts", record.id, {"nurture_pause_until": until.isoformat().replace("+00:00", "Z"),
                                                    "nurture_pause_reason": "Call booked for Friday"})
    answer = await hubspot.deliver(crm_api, WEBHOOK, events)

    assert answer.status_code == 200
    state = await handle.query("state", result_type=EnrollmentState)
    assert state.paused is not None and state.paused.paused_by == "rep-jane"
    assert state.paused.until == until and state.paused.reason == "Call booked for Friday"
    async with db.session() as s:
        fresh = await s.get(Contact, contact.id)
        [log] = (await s.exec(select(PauseLog).where(PauseLog.contact_id == contact.id))).all()
    assert (fresh.paused_by, fresh.paused_until, fresh.pause_reason) == ("rep-jane", until, "Call booked for Friday")
    assert (log.actor, log.requested_by, log.action) == ("rep-jane", "hubspot", "pause")
    # The same property delivered again (HubSpot retries) pauses nothing more.
    assert (await hubspot.deliver(crm_api, WEBHOOK, events)).status_code == 200
    async with db.session() as s:
        assert len((await s.exec(select(PauseLog).where(PauseLog.contact_id == contact.id))).all()) == 1

    # The rep clears the date: the pause the CRM set ends, in the CRM's name too.
    cleared = await hubspot.deliver(crm_api, WEBHOOK, hubspot.change("contacts", record.id, {"nurture_pause_until": ""}))

    assert cleared.status_code == 200
    assert (await handle.query("state", result_type=EnrollmentState)).paused is None
    async with db.session() as s:
        actions = [(e.action, e.actor) for e in (await s.exec(select(PauseLog).where(PauseLog.contact_id == contact.id))).all()]
    assert actions == [("pause", "rep-jane"), ("resume", "rep-jane")]

    # A pause longer than the pause API allows (max_pause_days, 90) is not applied from the CRM either.
    far = (utcnow() + timedelta(days=200)).isoformat().replace("+00:00", "Z")
    assert (await hubspot.deliver(crm_api, WEBHOOK, hubspot.change("contacts", record.id, {"nurture_pause_until": far}))).status_code == 200
    assert (await handle.query("state", result_type=EnrollmentState)).paused is None


async def test_a_crm_unsubscribe_suppresses_the_contact_and_ends_its_flows(hubspot, crm_api, db, client, crm_settings, temporal_env):
    record, contact = await linked_contact(hubspot, crm_api, db)
    _, _, handle = await start(db, client, crm_settings, NURTURE, contact=contact)
    await eventually(lambda: at_step(handle, "wait"))

    answer = await hubspot.deliver(crm_api, WEBHOOK, hubspot.change("contacts", record.id, {"hs_email_optout": "true"}))

    assert answer.status_code == 200
    result = await result_of(temporal_env, handle)
    assert result.status == "exited"
    async with db.session() as s:
        assert (await s.get(Contact, contact.id)).subscription_status == "unsubscribed"


async def test_a_delivery_hubspot_cannot_be_asked_about_is_answered_503_and_applied_when_delivered_again(hubspot, crm_api, db):
    record = hubspot.put("contacts", {"email": "later@example.com", "firstname": "Later"})
    events = [hubspot.event("contact.creation", record.id)]
    hubspot.fail_next(1, 429, retry_after=10, path_contains="/contacts/batch/read")

    refused = await hubspot.deliver(crm_api, WEBHOOK, events)

    assert refused.status_code == 503 and "429" in refused.json()["detail"]
    async with db.session() as s:
        assert (await s.exec(select(Contact))).all() == []
    assert (await hubspot.deliver(crm_api, WEBHOOK, events)).status_code == 200
    async with db.session() as s:
        assert (await s.exec(select(Contact.email))).all() == ["later@example.com"]


# --- outbound ------------------------------------------------------------------------------------


async def test_an_mql_update_is_written_once_even_when_the_write_is_retried(hubspot, crm_api, db, client, crm_settings, temporal_env):
    record, contact = await linked_contact(hubspot, crm_api, db)
    _, _, handle = await start(db, client, crm_settings, MQL, contact=contact)
    await result_of(temporal_env, handle)
    # HubSpot applies the update but the answer is lost (a 503 from its edge): the activity is retried.
    hubspot.fail_next(1, 503, path_contains="/contacts/batch/update", after_applying=True)

    result = await sync(client, crm_settings)

    assert result.pushed == 2 and result.error is None
    updates = [props for object_id, props in hubspot.written("contacts") if object_id == record.id]
    assert updates == [{"lifecyclestage": "marketingqualifiedlead"}]
    [task] = hubspot.objects["tasks"].values()
    assert task.properties["hs_task_subject"] == "Call Ada" and task.properties["hubspot_owner_id"] == "77"
    assert "Became an MQL" in task.properties["hs_task_body"] and task.associations == {"contacts": [record.id]}
    assert [w.status for w in await crm_writes(db)] == ["done", "done"]
    # Our own write comes back as a webhook: applied to nothing, told to nobody.
    echo = await hubspot.deliver(crm_api, WEBHOOK, [
        {**e, "changeSource": "INTEGRATION", "sourceId": "4242"} for e in
        [hubspot.event("contact.propertyChange", record.id, "lifecyclestage", "marketingqualifiedlead")]
    ])
    assert echo.json()["contacts"] == 0 and echo.json()["ignored"] == ["[0]: our own write"]
    # Another sync run writes nothing again.
    before = len(hubspot.writes)
    assert (await sync(client, crm_settings)).pushed == 0
    assert len(hubspot.writes) == before


async def test_the_crm_down_then_rate_limited_loses_and_doubles_no_write(hubspot, crm_api, db, client, crm_settings, temporal_env):
    record, contact = await linked_contact(hubspot, crm_api, db)
    newcomer = (await crm_api.post("/contacts", json={"email": "new@example.com", "name": "Newt", "company": "N"})).json()
    for who in (contact.id, newcomer["id"]):
        async with db.session() as s:
            person = await s.get(Contact, who)
        _, _, handle = await start(db, client, crm_settings, MQL, contact=person)
        await result_of(temporal_env, handle)
    hubspot.down = True

    failed = await sync(client, crm_settings, crm_attempts=2)

    assert failed.pushed == 0 and "503" in failed.error
    status = (await crm_api.get("/crm/status")).json()
    # The newcomer's upsert (created here), then each contact's MQL update and task.
    assert status["connected"] is False and status["writes"]["queued"] == 5
    assert "503" in status["last_error"]

    hubspot.down = False
    hubspot.fail_next(1, 429, retry_after=1)
    recovered = await sync(client, crm_settings)

    assert recovered.pushed == 5 and recovered.error is None
    assert [w.status for w in await crm_writes(db)] == ["done"] * 5
    assert len(hubspot.objects["tasks"]) == 2
    new_id = next(o.id for o in hubspot.objects["contacts"].values() if o.properties["email"] == "new@example.com")
    assert hubspot.objects["contacts"][new_id].properties["lifecyclestage"] == "marketingqualifiedlead"
    assert any(status == 429 for _, _, status in hubspot.requests)
    status = (await crm_api.get("/crm/status")).json()
    assert status["connected"] is True and status["writes"] == {"queued": 0, "done": 5, "failed": 0}


async def test_opens_clicks_and_unsubscribes_are_logged_on_the_crm_timeline_once(hubspot, crm_api, db, client, crm_settings):
    record, contact = await linked_contact(hubspot, crm_api, db)
    for event in ({"type": "email_clicked", "properties": {"url": "https://example.com/pricing", "template": "demo-welcome"}},
                  {"type": "unsubscribed"}):
        answer = await crm_api.post("/events", json={"contact_id": contact.id, **event})
        assert answer.status_code == 202, answer.text

    assert (await sync(client, crm_settings)).pushed == 1
    assert (await sync(client, crm_settings)).pushed == 0

    [note] = hubspot.objects["notes"].values()
    assert note.associations == {"contacts": [record.id]}
    body = note.properties["hs_note_body"]
    assert "email_clicked (template=demo-welcome, url=https://example.com/pricing)" in body and "unsubscribed" in body


async def test_a_full_resync_is_an_admin_call_and_one_runs_at_a_time(hubspot, db, client, crm_settings, crm_worker):
    keys = {}
    async with db.session() as s:
        for role in (Role.admin, Role.marketer):
            keys[role] = (await create_key(s, f"{role} key", role))[1]
        await s.commit()
    app = create_app(crm_settings.model_copy(update={"auth_required": True}), db=db, client=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        refused = await http.post("/crm/resync", headers={"Authorization": f"Bearer {keys[Role.marketer]}"})
        first = await http.post("/crm/resync", headers={"Authorization": f"Bearer {keys[Role.admin]}"})
        second = await http.post("/crm/resync", headers={"Authorization": f"Bearer {keys[Role.admin]}"})
        result = await client.get_workflow_handle(first.json()["workflow_id"], result_type=CrmSyncResult).result()
        status = await http.get("/crm/status", headers={"Authorization": f"Bearer {keys[Role.marketer]}"})

    assert refused.status_code == 403
    assert first.status_code == second.status_code == 202
    assert first.json()["workflow_id"] == second.json()["workflow_id"]
    assert result.error is None
    # The finished resync cleared its request and counts as the last success.
    assert status.status_code == 200 and status.json()["resync_requested_at"] is None
    assert status.json()["last_success_at"] is not None


# --- reconciliation ------------------------------------------------------------------------------


async def test_a_full_resync_imports_every_crm_contact_in_pages_then_reads_only_changes(hubspot, crm_api, db, client, crm_settings):
    for n in range(230):
        hubspot.put("contacts", {"email": f"lead{n}@example.com", "firstname": f"Lead {n}", "hubspot_owner_id": "77"})

    full = await sync(client, crm_settings, full=True, pages_per_run=2)

    assert (full.read, full.changed) == (230, 230)
    async with db.session() as s:
        assert len((await s.exec(select(Contact).where(Contact.owner == "rep-jane"))).all()) == 230
    searches = [r for r in hubspot.requests if r[1].endswith("/contacts/search")]
    assert len(searches) == 3  # 100 + 100 + 30, across a continue-as-new
    moved = next(iter(hubspot.objects["contacts"].values()))
    hubspot.change("contacts", moved.id, {"company": "Moved Inc"})

    incremental = await sync(client, crm_settings)

    assert incremental.changed == 1 and incremental.read < 5
    async with db.session() as s:
        assert (await s.exec(select(Contact).where(Contact.crm_id == moved.id))).one().company == "Moved Inc"
    status = (await crm_api.get("/crm/status")).json()
    assert status["cursor"] is not None and status["lag_seconds"] >= 0 and status["contacts_read"] >= 231


async def test_a_resync_past_the_search_cap_searches_again_from_the_newest_change(hubspot, crm_api, db, client, crm_settings):
    for n in range(SEARCH_CAP + 150):
        hubspot.put("contacts", {"email": f"many{n}@example.com", "firstname": f"Many {n}"})

    result = await sync(client, crm_settings, full=True)

    assert result.error is None and result.changed == SEARCH_CAP + 150
    async with db.session() as s:
        assert len((await s.exec(select(Contact.id))).all()) == SEARCH_CAP + 150
    refused = [r for r in hubspot.requests if r[1].endswith("/contacts/search") and r[2] != 200]
    assert refused == []  # the search past the cap was never asked


def test_a_mapping_file_with_an_unknown_target_is_refused_naming_it(tmp_path):
    path = tmp_path / "mapping.yaml"
    path.write_text("fields:\n  - {crm: jobtitle, contact: title}\n")
    with pytest.raises(MappingInvalid, match="'title' is neither a contact field"):
        load_mapping(path)


async def test_the_worker_schedules_the_reconciliation_that_imports_crm_contacts(dev_env, hubspot, db, crm_settings):
    """On the dev server (the test server has no Schedules): the schedule runs the sync on the worker's queue."""
    from activities.email.providers import OutboxProvider
    from nurture.crm.contracts import crm_sync_schedule_id
    from nurture.crm.schedule import ensure_crm_sync_schedule

    client = dev_env.client
    hubspot.put("contacts", {"email": "scheduled@example.com", "firstname": "Sched", "hubspot_owner_id": "77"})
    schedule = client.get_schedule_handle(crm_sync_schedule_id(crm_settings.workflow_id_prefix, "hubspot"))
    try:
        async with build_worker(client, db, OutboxProvider(crm_settings.outbox_dir), crm_settings):
            await ensure_crm_sync_schedule(client, crm_settings)
            await ensure_crm_sync_schedule(client, crm_settings)  # again: the one schedule stays
            described = await schedule.describe()
            assert [i.every for i in described.schedule.spec.intervals] == [timedelta(minutes=5)]

            await schedule.trigger()

            async def imported():
                async with db.session() as s:
                    return (await s.exec(select(Contact).where(Contact.email == "scheduled@example.com"))).first()

            contact = await eventually(imported, timeout=30)
            assert contact.owner == "rep-jane" and contact.crm_id is not None
    finally:
        await schedule.delete()


# --- contacts created here ---------------------------------------------------------------------


async def test_contacts_created_here_are_upserted_to_hubspot_by_email_in_batches_of_100(
    hubspot, crm_api, db, client, crm_settings
):
    hubspot.put("contacts", {"email": "known@example.com", "company": "Old"})
    created = await crm_api.post("/contacts", json={"email": "Lin@Example.com", "company": "Lin Co"})
    assert created.status_code == 201, created.text
    rows = "\n".join(f"lead{i}@example.com,Co {i}" for i in range(150))
    imported = await crm_api.post(
        "/contacts/import", content=f"email,company\nknown@example.com,New\n{rows}\n", headers={"content-type": "text/csv"}
    )
    assert imported.status_code == 200, imported.text
    queued = [w for w in await crm_writes(db) if w.kind == "upsert"]
    assert len(queued) == 152  # one per contact created here, in the transaction that created it
    assert (await crm_api.post("/contacts", json={"email": "lin@example.com", "company": "Lin & Co"})).status_code == 200
    assert len([w for w in await crm_writes(db) if w.kind == "upsert"]) == 152  # an update is no new contact

    await sync(client, crm_settings)
    await sync(client, crm_settings)

    upserts = [r for r in hubspot.requests if r[1].endswith("/contacts/batch/upsert")]
    assert [r[2] for r in upserts] == [200, 200]  # 152 contacts in two calls of at most 100
    by_email = {o.properties.get("email"): o for o in hubspot.objects["contacts"].values()}
    assert len(by_email) == 152
    assert by_email["lin@example.com"].properties["company"] == "Lin & Co"
    assert by_email["lead149@example.com"].properties["company"] == "Co 149"
    assert by_email["known@example.com"].properties["company"] == "New"  # found by email, not doubled
    async with db.session() as s:
        contacts = {c.email: c for c in (await s.exec(select(Contact))).all()}
    assert contacts["known@example.com"].crm_id == by_email["known@example.com"].id
    assert contacts["lead7@example.com"].crm_id == by_email["lead7@example.com"].id
    assert {w.status for w in await crm_writes(db) if w.kind == "upsert"} == {"done"}


async def test_a_deal_webhook_that_never_came_is_caught_by_the_next_sync_once(hubspot, crm_api, db, client, crm_settings):
    record, contact = await linked_contact(hubspot, crm_api, db)
    deal = hubspot.put("deals", {"dealstage": "appointmentscheduled", "dealname": "Ada's engines"}, {"contacts": [record.id]})

    async def stages() -> list[str]:
        async with db.session() as s:
            found = (await s.exec(select(Event).where(Event.contact_id == contact.id, Event.type == "deal_stage_changed")
                                  .order_by(Event.id))).all()
        return [e.properties["stage"] for e in found]

    await sync(client, crm_settings)
    assert await stages() == ["appointmentscheduled"]
    await sync(client, crm_settings)
    assert await stages() == ["appointmentscheduled"]  # read again, not moved: nothing new

    late = hubspot.change("deals", deal.id, {"dealstage": "closedwon"})  # the webhook is lost
    await sync(client, crm_settings)
    assert await stages() == ["appointmentscheduled", "closedwon"]
    searches = [r for r in hubspot.requests if r[1] == "/crm/v3/objects/deals/search"]
    assert searches and all(status == 200 for _, _, status in searches)

    answer = await hubspot.deliver(crm_api, WEBHOOK, late)  # it arrives after all
    assert answer.status_code == 200 and answer.json()["events"] == 0
    assert await stages() == ["appointmentscheduled", "closedwon"]


async def test_the_sync_imports_hubspot_owners_as_reps_once_and_keeps_their_rep_ids(hubspot, crm_api, db, client, crm_settings):
    hubspot.add_owner("78", "Omar@Example.com")
    hubspot.add_owner("79", "")

    await sync(client, crm_settings)

    async with db.session() as s:
        owners = {o.crm_owner_id: o.rep for o in (await s.exec(select(CrmOwner))).all()}
    # The file's rep for 77, the owner's email for 78, and an id for an owner without one.
    assert owners == {"77": "rep-jane", "78": "omar@example.com", "79": "crm-owner-79"}

    # Omar's email changes in HubSpot, and HubSpot then cannot list owners for a while: his
    # contacts stay with the rep id his sales key uses.
    hubspot.owners[1]["email"] = "omar.k@example.com"
    hubspot.add_owner("80", "ida@example.com")
    await sync(client, crm_settings)
    hubspot.fail_next(50, 503, path_contains="/owners")
    record = hubspot.put("contacts", {"email": "grace@example.com", "hubspot_owner_id": "78"})
    answer = await hubspot.deliver(crm_api, WEBHOOK, [hubspot.event("contact.creation", record.id)])
    assert answer.status_code == 200, answer.text
    async with db.session() as s:
        owners = {o.crm_owner_id: o.rep for o in (await s.exec(select(CrmOwner))).all()}
        contact = (await s.exec(select(Contact).where(Contact.crm_id == record.id))).one()
    assert owners["78"] == "omar@example.com" and owners["80"] == "ida@example.com"
    assert contact.owner == "omar@example.com"


# --- a backlog, and contacts first seen in events ----------------------------------------------


async def test_a_backlog_of_250_writes_drains_in_one_run_at_the_burst_limit_through_a_429(
    hubspot, db, client, outbox, crm_settings
):
    settings = crm_settings.model_copy(update={"crm_burst_per_10s": 150})
    people = await queued_backlog(  # as 250 update_contact steps would have queued them
        db, settings, 250, lambda email: hubspot.put("contacts", {"email": email, "lifecyclestage": "lead"}).id,
        {"lifecyclestage": "marketingqualifiedlead"},
    )
    hubspot.fail_next(1, 429, retry_after=1, path_contains="/contacts/batch/update")

    async with build_worker(client, db, outbox, settings):
        result = await sync(client, settings)

    assert result.pushed == 250 and result.error is None
    assert [w.status for w in await crm_writes(db)] == ["done"] * 250
    written = [object_id for object_id, props in hubspot.written("contacts") if props == {"lifecyclestage": "marketingqualifiedlead"}]
    assert sorted(written) == sorted(p.crm_id for p in people)  # each contact once: none lost, none doubled
    assert any(status == 429 for _, _, status in hubspot.requests)
    # Paced to the burst limit: no 10-second window (less the network's jitter) holds more calls.
    times = hubspot.request_times
    assert max(sum(1 for u in times[i:] if u - t < 9.5) for i, t in enumerate(times)) <= 150


async def test_a_contact_first_seen_in_an_event_is_upserted_to_hubspot_by_email_once(hubspot, crm_api, db, client, crm_settings):
    hubspot.put("contacts", {"email": "known@example.com", "company": "Known"})

    single = await crm_api.post("/events", json={"email": "Walk.In@Example.com", "type": "page_viewed"})
    batch = await crm_api.post("/events/batch", json=[
        {"email": "known@example.com", "type": "page_viewed"},
        {"email": "batch@example.com", "type": "page_viewed"},
        {"email": "batch@example.com", "type": "form_submitted"},
    ])
    again = await crm_api.post("/events", json={"email": "walk.in@example.com", "type": "page_viewed"})

    assert single.status_code == 202 and single.json()["contact_created"] is True, single.text
    assert batch.status_code == 200, batch.text
    assert again.json()["contact_created"] is False
    assert sorted(w.payload["email"] for w in await crm_writes(db) if w.kind == "upsert") == [
        "batch@example.com", "known@example.com", "walk.in@example.com"]
    await sync(client, crm_settings)
    await sync(client, crm_settings)

    by_email: dict[str, list[str]] = {}
    for record in hubspot.objects["contacts"].values():
        by_email.setdefault(record.properties.get("email"), []).append(record.id)
    assert sorted(by_email) == ["batch@example.com", "known@example.com", "walk.in@example.com"]
    assert all(len(ids) == 1 for ids in by_email.values())  # the one HubSpot had is found, not doubled
    assert len([r for r in hubspot.requests if r[1].endswith("/contacts/batch/upsert")]) == 1
    async with db.session() as s:
        linked = {c.email: c.crm_id for c in (await s.exec(select(Contact))).all()}
    assert linked == {email: ids[0] for email, ids in by_email.items()}


async def test_the_enrollment_history_shows_its_crm_writes_as_they_stand(hubspot, crm_api, db, client, crm_settings, temporal_env):
    record, contact = await linked_contact(hubspot, crm_api, db)
    _, _, handle = await start(db, client, crm_settings, MQL, contact=contact)
    await result_of(temporal_env, handle)
    async with db.session() as s:
        enrollment = (await s.exec(select(Enrollment).where(Enrollment.workflow_id == handle.id))).one()

    async def crm_lines() -> list[str]:
        answer = await crm_api.get(f"/enrollments/{enrollment.id}/history")
        assert answer.status_code == 200, answer.text
        return [e["text"] for e in answer.json()["entries"] if e["kind"] == "crm_write"]

    assert await crm_lines() == ["CRM contact update queued for hubspot", "CRM task queued for hubspot"]
    await sync(client, crm_settings)

    [task] = hubspot.objects["tasks"].values()
    assert await crm_lines() == [f"CRM contact update written to hubspot (record {record.id})",
                                 f"CRM task written to hubspot (record {task.id})"]


async def test_a_send_is_logged_on_the_crm_timeline_once(hubspot, crm_api, db, client, crm_settings):
    record, contact = await linked_contact(hubspot, crm_api, db)
    _, _, handle = await start(db, client, crm_settings, NURTURE, contact=contact)
    await eventually(lambda: at_step(handle, "wait"))  # demo-welcome sent

    assert (await sync(client, crm_settings)).pushed == 1
    await sync(client, crm_settings)

    # Waiting on a sync lets the time-skipping test server fire the flow's delay, so a later email may be sent and
    # logged too; what must hold is that the welcome email is on the timeline exactly once.
    [note] = [n for n in hubspot.objects["notes"].values()
              if "email_sent (template=demo-welcome" in n.properties["hs_note_body"]]
    assert note.associations == {"contacts": [record.id]}


# --- batched writes ----------------------------------------------------------------------------------


async def linked_people(hubspot: HubSpotEmulator, db: Database, n: int, stem: str = "batch") -> list[Contact]:
    """``n`` contacts in HubSpot and here, linked by their CRM id."""
    async with db.session() as s:
        people = []
        for i in range(n):
            record = hubspot.put("contacts", {"email": f"{stem}{i}@example.com", "lifecyclestage": "lead"})
            person = Contact(email=f"{stem}{i}@example.com", crm_id=record.id)
            s.add(person)
            people.append(person)
        await s.commit()
        for person in people:
            await s.refresh(person)
    return people


async def queue(db: Database, settings, *writes: tuple[str, str, Contact, dict]) -> None:
    """Writes as flow steps would have queued them: (key, kind, contact, payload) each, in this order."""
    async with db.session() as s:
        for key, kind, person, payload in writes:
            await queue_write(s, settings, key=key, kind=kind, contact_id=person.id, payload=payload)
        await s.commit()


def calls(hubspot: HubSpotEmulator, method: str, path_end: str) -> list[int]:
    """The statuses HubSpot answered to these calls, in order."""
    return [status for m, path, status in hubspot.requests if m == method and path.endswith(path_end)]


async def test_field_updates_go_in_batches_of_100_with_one_contacts_updates_merged(hubspot, db, client, outbox, crm_settings):
    settings = crm_settings.model_copy(update={"crm_write_batch": 1000})
    people = await linked_people(hubspot, db, 250)
    first, *others = people
    # The first contact's two updates, queued one after the other: the later value wins.
    await queue(db, settings,
                ("crm:a", CONTACT, first, {"properties": {"lifecyclestage": "marketingqualifiedlead", "company": "Ada Co"}}),
                ("crm:b", CONTACT, first, {"properties": {"lifecyclestage": "salesqualifiedlead"}}),
                *[(f"crm:mql:{p.id}", CONTACT, p, {"properties": {"lifecyclestage": "marketingqualifiedlead"}}) for p in others])

    async with build_worker(client, db, outbox, settings):
        result = await sync(client, settings)

    assert result.pushed == 251 and result.error is None
    assert calls(hubspot, "POST", "/contacts/batch/update") == [200, 200, 200]  # 250 contacts: ceil(250 / 100)
    assert not calls(hubspot, "PATCH", "")  # no call per record
    assert hubspot.written("contacts").count((first.crm_id, {"lifecyclestage": "salesqualifiedlead", "company": "Ada Co"})) == 1
    assert hubspot.objects["contacts"][first.crm_id].properties["lifecyclestage"] == "salesqualifiedlead"
    written = [object_id for object_id, props in hubspot.written("contacts") if props == {"lifecyclestage": "marketingqualifiedlead"}]
    assert sorted(written) == sorted(p.crm_id for p in others)  # each once
    assert {w.status for w in await crm_writes(db)} == {"done"}


async def test_a_value_hubspot_refuses_fails_that_update_alone_with_hubspots_reason(hubspot, db, client, outbox, crm_settings):
    ada, bad, cy = await linked_people(hubspot, db, 3)
    await queue(db, crm_settings, *[(f"crm:{p.id}", CONTACT, p, {"properties": {"lifecyclestage": stage}})
                                    for p, stage in ((ada, "customer"), (bad, "not-a-stage"), (cy, "customer"))])

    async with build_worker(client, db, outbox, crm_settings):
        result = await sync(client, crm_settings)

    # HubSpot refuses the whole batch for the one bad value; each is then written on its own.
    assert calls(hubspot, "POST", "/contacts/batch/update") == [400]
    assert calls(hubspot, "PATCH", "") == [200, 400, 200]
    assert result.pushed == 2 and result.error is None
    stages = {p.crm_id: hubspot.objects["contacts"][p.crm_id].properties["lifecyclestage"] for p in (ada, bad, cy)}
    assert stages == {ada.crm_id: "customer", bad.crm_id: "lead", cy.crm_id: "customer"}
    rows = {w.contact_id: w for w in await crm_writes(db)}
    assert (rows[ada.id].status, rows[cy.id].status, rows[bad.id].status) == ("done", "done", "failed")
    assert "INVALID_OPTION" in rows[bad.id].last_error and "not-a-stage" in rows[bad.id].last_error
    # Refused for good: the next run does not ask again.
    assert (await sync_with(client, db, outbox, crm_settings)).pushed == 0
    assert calls(hubspot, "PATCH", "") == [200, 400, 200]


async def test_a_multi_status_answer_fails_only_the_records_it_names(hubspot, db, client, outbox, crm_settings):
    ada, gone, cy = await linked_people(hubspot, db, 3)
    hubspot.objects["contacts"][gone.crm_id].archived = True  # deleted in HubSpot since
    await queue(db, crm_settings, *[(f"crm:{p.id}", CONTACT, p, {"properties": {"lifecyclestage": "customer"}})
                                    for p in (ada, gone, cy)])

    result = await sync_with(client, db, outbox, crm_settings)

    assert calls(hubspot, "POST", "/contacts/batch/update") == [207]
    assert not calls(hubspot, "PATCH", "")
    assert result.pushed == 2 and result.error is None
    rows = {w.contact_id: w for w in await crm_writes(db)}
    assert (rows[ada.id].status, rows[cy.id].status, rows[gone.id].status) == ("done", "done", "failed")
    assert "OBJECT_NOT_FOUND" in rows[gone.id].last_error
    assert hubspot.objects["contacts"][cy.crm_id].properties["lifecyclestage"] == "customer"


async def test_tasks_and_notes_go_in_batch_creates_and_those_whose_answer_was_lost_are_found_not_made_again(
    hubspot, db, client, outbox, crm_settings
):
    people = await linked_people(hubspot, db, 7)
    await queue(db, crm_settings,
                *[(f"crm:task:{p.id}", TASK, p, {"subject": f"Call {p.email}", "body": "Became an MQL", "owner": "rep-jane"})
                  for p in people],
                *[(f"crm:note:{p.id}", NOTE, p, {"subject": "Email engagement", "body": "email_opened"}) for p in people[:3]])
    # HubSpot makes the 7 tasks, but its answer is lost (a 503 from its edge): the push is tried again.
    hubspot.fail_next(1, 503, path_contains="/tasks/batch/create", after_applying=True)

    result = await sync_with(client, db, outbox, crm_settings)

    assert result.pushed == 10 and result.error is None
    assert calls(hubspot, "POST", "/tasks/batch/create") == [503]  # made once, never again
    assert calls(hubspot, "POST", "/tasks/search") == [200, 200]  # the 7 maybe-made tasks: 5 keys, then 2
    assert calls(hubspot, "POST", "/notes/batch/create") == [201]
    tasks, notes = hubspot.objects["tasks"], hubspot.objects["notes"]
    assert sorted(t.associations["contacts"][0] for t in tasks.values()) == sorted(p.crm_id for p in people)
    assert sorted(n.associations["contacts"][0] for n in notes.values()) == sorted(p.crm_id for p in people[:3])
    assert {t.properties["hubspot_owner_id"] for t in tasks.values()} == {"77"}
    rows = await crm_writes(db)
    assert {w.status for w in rows} == {"done"}
    assert sorted(w.crm_record_id for w in rows) == sorted([*tasks, *notes])  # each row its own record

    # New rows, never sent before, are made without a search.
    await queue(db, crm_settings, *[(f"crm:note2:{p.id}", NOTE, p, {"subject": "Later", "body": "clicked"}) for p in people])
    searches = len(calls(hubspot, "POST", "/notes/search")) + len(calls(hubspot, "POST", "/tasks/search"))
    assert (await sync_with(client, db, outbox, crm_settings)).pushed == 7
    assert len(calls(hubspot, "POST", "/notes/search")) + len(calls(hubspot, "POST", "/tasks/search")) == searches
    assert calls(hubspot, "POST", "/notes/batch/create") == [201, 201] and len(notes) == 10


async def test_a_task_hubspot_refuses_fails_alone_named_in_a_multi_status_answer(hubspot, db, client, outbox, crm_settings):
    ada, gone = await linked_people(hubspot, db, 2)
    del hubspot.objects["contacts"][gone.crm_id]  # deleted for good: a task cannot be associated with it
    await queue(db, crm_settings, *[(f"crm:task:{p.id}", TASK, p, {"subject": "Call", "body": "now"}) for p in (ada, gone)])

    result = await sync_with(client, db, outbox, crm_settings)

    assert calls(hubspot, "POST", "/tasks/batch/create") == [207]
    assert result.pushed == 1 and result.error is None
    [task] = hubspot.objects["tasks"].values()
    rows = {w.contact_id: w for w in await crm_writes(db)}
    assert (rows[ada.id].status, rows[ada.id].crm_record_id) == ("done", task.id)
    assert rows[gone.id].status == "failed" and f"contact {gone.crm_id} does not exist" in rows[gone.id].last_error


async def test_the_emulator_refuses_a_search_of_more_than_5_filter_groups_as_hubspot_does(hubspot):
    import hubspot as hubspot_client
    from hubspot.crm.objects.tasks import Filter, FilterGroup, PublicObjectSearchRequest
    from hubspot.crm.objects.tasks.exceptions import ApiException

    api = hubspot_client.Client.create(access_token=hubspot.token, host=hubspot.base_url).crm.objects.tasks.search_api

    def groups(n: int) -> PublicObjectSearchRequest:
        return PublicObjectSearchRequest(filter_groups=[
            FilterGroup(filters=[Filter(property_name="hs_task_body", operator="CONTAINS_TOKEN", value=f"t{i}")]) for i in range(n)
        ])

    assert (await asyncio.to_thread(api.do_search, groups(5))).total == 0
    with pytest.raises(ApiException) as refused:
        await asyncio.to_thread(api.do_search, groups(6))
    assert refused.value.status == 400 and "at most 5 filterGroups" in refused.value.body


async def sync_with(client, db, outbox, settings) -> CrmSyncResult:
    async with build_worker(client, db, outbox, settings):
        return await sync(client, settings)
