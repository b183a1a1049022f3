"""The CRM down (503) for 10 minutes, per connector, in the test server's skipped time.

Writes are queued before and during the outage through the paths a user takes (flows'
``update_contact`` and ``create_task`` steps, contacts created with ``POST /contacts``, and the sends
logged as timeline notes). The outage starts with a write the CRM carried out but whose answer was
lost. The reconciliation runs every 5 minutes, as its schedule would: the runs during the outage
fail and leave the rows queued, the flows' sends go out meanwhile, and the run after the CRM is back
writes each one: none lost, none doubled.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from api.main import create_app
from nurture.crm.contracts import CRM_SYNC_WORKFLOW, CrmSyncInput, CrmSyncResult
from nurture.db import Database
from nurture.enrolling import Enroller
from nurture.models import Contact, Flow, Message, MessageStatus
from tests.crm_emulators import hubspot as hubspot_emulator, salesforce as salesforce_emulator
from tests.crm_support import crm_writes
from tests.factories import add_active_flow, add_templates
from tests.flow_runner import manual_flow
from worker.main import build_worker

MQL = manual_flow(
    {"id": "hello", "type": "send_email", "template": "demo-welcome"},
    {"id": "mql", "type": "update_contact", "lifecycle_stage": "marketingqualifiedlead"},
    {"id": "task", "type": "create_task", "title": "Call {{ contact.email }}", "description": "Became an MQL"},
)
SCHEDULE_EVERY = timedelta(minutes=5)


@dataclass
class Crm:
    """One emulated CRM, seen the same way whichever it is."""

    name: str
    settings: dict[str, Any]
    add_contact: Callable[[str], str]  # email -> CRM id
    set_down: Callable[[bool], None]
    lose_next_write_then_go_down: Callable[[], None]
    stage_writes: Callable[[str], list[dict]]  # CRM id -> the lifecycle writes it received
    records_with_email: Callable[[str], list[Any]]
    tasks: Callable[[], list[Any]]  # tasks and timeline entries, as the CRM holds them
    unavailable_answers: Callable[[], int]


@pytest.fixture(params=["hubspot", "salesforce"])
async def crm(request, tmp_path: Path) -> AsyncIterator[Crm]:
    if request.param == "hubspot":
        async with hubspot_emulator.serving(hubspot_emulator.HubSpotEmulator()) as hs:
            hs.add_owner("77", "jane@example.com")
            mapping = tmp_path / "crm-mapping.yaml"
            mapping.write_text('owners:\n  "77": rep-jane\nfields:\n'
                               "  - {crm: lifecyclestage, contact: lifecycle_stage, direction: both}\n")

            def down(value: bool) -> None:
                hs.down = value

            yield Crm(
                name="hubspot",
                settings={"crm_provider": "hubspot", "crm_hubspot_token": hs.token, "crm_hubspot_base_url": hs.base_url,
                          "crm_hubspot_app_secret": hs.app_secret, "crm_mapping_file": mapping},
                add_contact=lambda email: hs.put("contacts", {"email": email, "hubspot_owner_id": "77"}).id,
                set_down=down,
                lose_next_write_then_go_down=lambda: hs.fail_next(
                    1, 503, path_contains="/contacts/batch/upsert", after_applying=True, then_down=True),
                stage_writes=lambda crm_id: [p for i, p in hs.written("contacts") if i == crm_id and "lifecyclestage" in p],
                records_with_email=lambda email: [o for o in hs.objects["contacts"].values() if o.properties.get("email") == email],
                tasks=lambda: [*hs.objects["tasks"].values(), *hs.objects["notes"].values()],
                unavailable_answers=lambda: sum(1 for r in hs.requests if r[2] == 503),
            )
        return
    sf = salesforce_emulator.SalesforceEmulator()
    async with salesforce_emulator.serving(sf, tmp_path) as certificate:
        rep = sf.put("User", {"Email": "jane@example.com", "IsActive": True})
        mapping = tmp_path / "crm-mapping.yaml"
        mapping.write_text(f'owners:\n  "{rep["Id"]}": rep-jane\n')

        def lose_then_down() -> None:
            sf.lose_answer_of.append(("PATCH", "/composite/sobjects"))
            sf.down_after_lost_answer = True

        def set_down(value: bool) -> None:
            sf.down_after_lost_answer = False
            sf.down = value

        field = "Nurture_Email__c"
        yield Crm(
            name="salesforce",
            settings={"crm_provider": "salesforce", "crm_salesforce_login_url": sf.base_url,
                      "crm_salesforce_client_id": sf.client_id, "crm_salesforce_client_secret": sf.client_secret,
                      "crm_salesforce_ca_bundle": certificate, "crm_mapping_file": mapping},
            add_contact=lambda email: sf.put("Contact", {"Email": email, "LastName": email, "OwnerId": rep["Id"]})["Id"],
            set_down=set_down,
            lose_next_write_then_go_down=lose_then_down,
            stage_writes=lambda crm_id: [f for i, f in sf.written("Contact")
                                         if i == crm_id and "Nurture_Lifecycle_Stage__c" in f],
            records_with_email=lambda email: [r for r in sf.records["Contact"].values()
                                              if email in (r.get("Email"), r.get(field))],
            tasks=lambda: list(sf.records["Task"].values()),
            unavailable_answers=lambda: sum(1 for r in sf.requests if r[2] == 503),
        )


async def linked_contacts(db: Database, crm: Crm, emails: list[str]) -> list[Contact]:
    """Contacts the CRM and the engine both have (as an earlier sync left them)."""
    async with db.session() as s:
        people = [Contact(email=email, crm_id=crm.add_contact(email), owner="rep-jane") for email in emails]
        s.add_all(people)
        await s.commit()
        for person in people:
            await s.refresh(person)
    return people


async def run_mql(db: Database, client, settings, flow: Flow, people: list[Contact]) -> None:
    """The flow for each contact, to its end: a send, a lifecycle update, a task for the owner."""
    handles = []
    for person in people:
        async with db.session() as s:
            outcome = await Enroller(client, settings).enroll(s, await s.get(Flow, flow.id), await s.get(Contact, person.id))
            await s.commit()
        handles.append(client.get_workflow_handle(outcome.enrollment.workflow_id))
    for handle in handles:  # in real time (no timer in this flow): the outage's clock is the test's to move
        await handle.result()


async def create_here(settings, db, client, emails: list[str]) -> None:
    app = create_app(settings, db=db, client=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as api:
        for email in emails:
            answer = await api.post("/contacts", json={"email": email, "lifecycle_stage": "lead"})
            assert answer.status_code == 201, answer.text


async def sync(client, settings) -> CrmSyncResult:
    """One scheduled run (the test server has no Schedules: the test starts it at each due time).

    Waited on without skipping time: the CRM's answers take real time, and a skip would time its
    activities out. Two tries per CRM call (1 s apart) keep the failing runs short in real time; the
    outage's 10 minutes are skipped between the runs."""
    started = await client.start_workflow(
        CRM_SYNC_WORKFLOW, CrmSyncInput(crm_attempts=2), id=f"crm-sync-{uuid.uuid4().hex[:12]}",
        task_queue=settings.temporal_task_queue,
    )
    return await client.get_workflow_handle(started.id, result_type=CrmSyncResult).result()


async def sent_messages(db: Database) -> list[Message]:
    async with db.session() as s:
        return list((await s.exec(select(Message).where(Message.status == MessageStatus.sent))).all())


async def test_the_crm_down_for_10_minutes_loses_and_doubles_no_write_and_blocks_no_send(
    crm: Crm, db, client, outbox, settings, temporal_env
):
    crm_settings = settings.model_copy(update=crm.settings)
    await add_templates(db)
    flow = await add_active_flow(db, MQL)
    async with build_worker(client, db, outbox, crm_settings):
        # Before the outage: three flows' updates and tasks, and two contacts created here.
        before = await linked_contacts(db, crm, [f"before{n}@example.com" for n in range(3)])
        await run_mql(db, client, crm_settings, flow, before)
        await create_here(crm_settings, db, client, ["new-before0@example.com", "new-before1@example.com"])
        queued_before = len(await crm_writes(db))
        assert queued_before == 3 * 2 + 2
        started = await temporal_env.get_current_time()

        # The outage begins: the CRM carries out the first write (the upserts) but its answer is
        # lost, and then answers 503 to everything. The schedule's runs at 0 and 5 minutes fail.
        crm.lose_next_write_then_go_down()
        first = await sync(client, crm_settings)
        assert first.pushed == 0 and "503" in (first.error or "")

        # During it: two more flows (their sends go out, the CRM waits), two more contacts created here.
        during = await linked_contacts(db, crm, [f"during{n}@example.com" for n in range(2)])
        await run_mql(db, client, crm_settings, flow, during)
        await create_here(crm_settings, db, client, ["new-during0@example.com", "new-during1@example.com"])
        sends = await sent_messages(db)
        assert {m.contact_id for m in sends} >= {p.id for p in before + during}  # not one send waited
        await temporal_env.sleep(SCHEDULE_EVERY)
        second = await sync(client, crm_settings)
        assert second.pushed == 0 and "503" in (second.error or "")
        assert {w.status for w in await crm_writes(db)} == {"queued"}
        failed_runs, unavailable = 2, crm.unavailable_answers()
        await temporal_env.sleep(SCHEDULE_EVERY)

        # Back after 10 minutes: the next run writes everything, once.
        crm.set_down(False)
        recovered = await sync(client, crm_settings)
        outage = await temporal_env.get_current_time() - started

    rows = await crm_writes(db)
    assert recovered.error is None and recovered.pushed == len(rows)
    assert [w.status for w in rows] == ["done"] * len(rows)
    assert outage >= timedelta(minutes=10)
    # Every contact created here is in the CRM once, under its email, linked back.
    created = ["new-before0@example.com", "new-before1@example.com", "new-during0@example.com", "new-during1@example.com"]
    async with db.session() as s:
        linked = {c.email: c.crm_id for c in (await s.exec(select(Contact).where(col(Contact.email).in_(created)))).all()}
    for email in created:
        [record] = crm.records_with_email(email)
        assert linked[email] is not None
    # Each flow's lifecycle update was written once, and each task made once.
    for person in before + during:
        assert len(crm.stage_writes(person.crm_id)) == 1, person.email
    tasks = crm.tasks()
    task_rows = [w for w in rows if w.kind in ("task", "note")]
    assert len(tasks) == len(task_rows)  # one CRM record per task or timeline note: none doubled, none lost
    assert len([w for w in rows if w.kind == "task"]) == 5
    print(f"\n{crm.name} outage: {queued_before} writes queued before, {len(rows) - queued_before} during; "
          f"{failed_runs} runs failed over {outage} of Temporal time, {unavailable} answers 503; after recovery "
          f"{recovered.pushed} written, {len(rows)} rows done, 0 lost, 0 doubled")
