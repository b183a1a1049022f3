"""The initial import of 5,000 CRM contacts, per connector, through the real sync workflow.

Each emulator holds 5,000 contacts with their owners; a full resync (what ``POST /crm/resync``
starts) brings every one in exactly once, mapped, with its owner as rep, without passing the CRM's
limits: HubSpot's emulator answers 429 past the burst setting in any 10 seconds (none is seen), and
Salesforce's daily API usage stays far inside its share. The run reports its import rate.
SQLite only: these are slow, and the PostgreSQL paths are the same statements.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from api.main import create_app
from nurture.crm.contracts import CRM_SYNC_WORKFLOW, CrmSyncInput, CrmSyncResult
from nurture.models import Contact, utcnow
from tests.crm_emulators.hubspot import HubSpotEmulator, serving as serving_hubspot
from tests.crm_emulators.salesforce import SalesforceEmulator, serving as serving_salesforce
from worker.main import build_worker

CONTACTS = 5_000
# Low enough that the 5,000 (about 55 calls to HubSpot) have to be paced, and the emulator enforces it.
BURST = 30

pytestmark = pytest.mark.parametrize("db", ["sqlite"], indirect=True)


def widest_window(times: list[float], seconds: float = 10.0) -> int:
    """The most requests any ``seconds``-long window holds."""
    return max((sum(1 for u in times[i:] if u - t < seconds) for i, t in enumerate(times)), default=0)


async def full_sync(client, settings) -> CrmSyncResult:
    return await client.execute_workflow(
        CRM_SYNC_WORKFLOW, CrmSyncInput(full=True), id=f"crm-import-{utcnow().timestamp()}",
        task_queue=settings.temporal_task_queue, result_type=CrmSyncResult,
    )


async def crm_status(settings, db, client) -> dict:
    app = create_app(settings, db=db, client=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as api:
        answer = await api.get("/crm/status")
        assert answer.status_code == 200, answer.text
        return answer.json()


async def imported(db) -> dict[str, Contact]:
    async with db.session() as s:
        contacts = (await s.exec(select(Contact))).all()
    by_email: dict[str, Contact] = {}
    for contact in contacts:
        assert contact.email not in by_email, f"{contact.email} imported twice"
        by_email[contact.email] = contact
    return by_email


# --- HubSpot ---------------------------------------------------------------------------------------


@pytest.fixture
async def hubspot() -> AsyncIterator[HubSpotEmulator]:
    async with serving_hubspot(HubSpotEmulator(burst_limit=BURST)) as emulator:
        emulator.add_owner("77", "jane@example.com")
        emulator.add_owner("78", "Omar@Example.com")
        for n in range(CONTACTS):
            emulator.put("contacts", {"email": f"lead{n}@example.com", "firstname": f"Lead {n}",
                                      "company": f"Co {n % 97}", "hubspot_owner_id": "77" if n % 2 else "78"})
        emulator.requests.clear()
        emulator.request_times.clear()
        yield emulator


async def test_hubspot_initial_import_of_5000_contacts_within_the_burst_limit(hubspot, db, client, outbox, settings, tmp_path: Path):
    mapping = tmp_path / "crm-mapping.yaml"
    mapping.write_text('owners:\n  "77": rep-jane\nfields:\n  - {crm: firstname, contact: name, direction: inbound}\n'
                       "  - {crm: company, contact: company, direction: both}\n")
    crm_settings = settings.model_copy(update={
        "crm_provider": "hubspot", "crm_hubspot_token": hubspot.token, "crm_hubspot_base_url": hubspot.base_url,
        "crm_hubspot_app_secret": hubspot.app_secret, "crm_mapping_file": mapping, "crm_burst_per_10s": BURST,
    })

    async with build_worker(client, db, outbox, crm_settings):
        result = await full_sync(client, crm_settings)
        status = await crm_status(crm_settings, db, client)

    assert result.error is None and (result.read, result.changed) == (CONTACTS, CONTACTS)
    contacts = await imported(db)
    assert len(contacts) == CONTACTS
    for n in (0, 1, 2_345, CONTACTS - 1):
        record = next(o for o in hubspot.objects["contacts"].values() if o.properties["email"] == f"lead{n}@example.com")
        contact = contacts[f"lead{n}@example.com"]
        assert (contact.crm_id, contact.name, contact.company) == (record.id, f"Lead {n}", f"Co {n % 97}")
        assert contact.owner == ("rep-jane" if n % 2 else "omar@example.com")
    assert {c.crm_id for c in contacts.values()} == set(hubspot.objects["contacts"])
    # Within the limits: no 429, no 10-second window past the burst setting.
    assert [r for r in hubspot.requests if r[2] == 429] == []
    assert widest_window(hubspot.request_times) <= BURST
    searches = [r for r in hubspot.requests if r[1].endswith("/contacts/search")]
    assert len(searches) == CONTACTS // 100
    # The rate is reported, in the result and on /crm/status.
    assert result.seconds is not None and result.seconds > 0
    assert result.contacts_per_second == pytest.approx(CONTACTS / result.seconds, rel=0.01)
    last = status["last_sync"]
    assert last["contacts"] == CONTACTS and last["contacts_per_second"] == pytest.approx(result.contacts_per_second, rel=0.01)
    print(f"\nHubSpot import: {CONTACTS} contacts in {result.seconds:.1f} s, {result.contacts_per_second:.0f}/s, "
          f"{len(hubspot.requests)} calls, widest 10 s window {widest_window(hubspot.request_times)}")


# --- Salesforce ------------------------------------------------------------------------------------


@pytest.fixture
async def salesforce(tmp_path: Path) -> AsyncIterator[tuple[SalesforceEmulator, Path]]:
    emulator = SalesforceEmulator()
    async with serving_salesforce(emulator, tmp_path) as certificate:
        yield emulator, certificate


async def test_salesforce_initial_import_of_5000_contacts_within_the_api_budget(salesforce, db, client, outbox, settings, tmp_path: Path):
    sf, certificate = salesforce
    jane = sf.put("User", {"Email": "jane@example.com", "IsActive": True})
    omar = sf.put("User", {"Email": "Omar@Example.com", "IsActive": True})
    for n in range(CONTACTS):
        sf.put("Contact", {"Email": f"lead{n}@example.com", "FirstName": f"Lead {n}", "LastName": f"L{n}",
                           "Phone": f"+1 555 {n:04d}", "OwnerId": jane["Id"] if n % 2 else omar["Id"],
                           "HasOptedOutOfEmail": False})
    # The org's other integrations used most of the day's budget: our share (90%) leaves ~1,000 calls.
    sf.api_daily_limit, sf.api_used = 15_000, 12_500
    mapping = tmp_path / "crm-mapping.yaml"
    mapping.write_text(f'owners:\n  "{jane["Id"]}": rep-jane\n')
    crm_settings = settings.model_copy(update={
        "crm_provider": "salesforce", "crm_salesforce_login_url": sf.base_url,
        "crm_salesforce_client_id": sf.client_id, "crm_salesforce_client_secret": sf.client_secret,
        "crm_salesforce_ca_bundle": certificate, "crm_mapping_file": mapping, "crm_burst_per_10s": BURST,
    })

    async with build_worker(client, db, outbox, crm_settings):
        result = await full_sync(client, crm_settings)
        status = await crm_status(crm_settings, db, client)

    assert result.error is None and (result.read, result.changed) == (CONTACTS, CONTACTS)
    contacts = await imported(db)
    assert len(contacts) == CONTACTS
    for n in (0, 1, 2_345, CONTACTS - 1):
        contact = contacts[f"lead{n}@example.com"]
        assert contact.properties["first_name"] == f"Lead {n}" and contact.phone == f"+1 555 {n:04d}"
        assert contact.owner == ("rep-jane" if n % 2 else "omar@example.com")
    assert {c.crm_id for c in contacts.values()} == set(sf.records["Contact"])
    # Within the budget: a few dozen calls (SOQL batches of 200), far from the org's share.
    data_calls = [r for r in sf.requests if r[1].startswith("/services/data/")]
    assert len(data_calls) <= 40 and sf.api_used < sf.api_daily_limit * 0.9
    assert all(status_code < 400 for _, _, status_code in sf.requests)
    assert widest_window(sf.request_times) <= BURST
    assert result.seconds is not None and result.contacts_per_second == pytest.approx(CONTACTS / result.seconds, rel=0.01)
    assert status["last_sync"]["contacts"] == CONTACTS
    print(f"\nSalesforce import: {CONTACTS} contacts in {result.seconds:.1f} s, {result.contacts_per_second:.0f}/s, "
          f"{len(data_calls)} API calls, widest 10 s window {widest_window(sf.request_times)}")
