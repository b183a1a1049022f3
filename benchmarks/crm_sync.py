"""The HubSpot sync on the HubSpot emulator: initial import rate, inbound latency, and an outage's counts.

Run from the repository root: ``.venv/bin/python -m benchmarks.crm_sync`` (``--help`` for the knobs).
It starts a Temporal dev server, a SQLite database migrated as in production, a worker and the API
in this process, and the HubSpot emulator of the tests on loopback, reached through HubSpot's own
client. Three measurements:

- **import**: N contacts in the emulator (default 5,000), read by a full resync (search pages of
  100, paced to the private app's burst limit of 100 calls per 10 s): contacts per second, and the
  most calls HubSpot saw in any 10 seconds.
- **inbound**: a contact enrolled in a waiting flow; a rep changes a property M times (default 50),
  each a signed webhook; the time from the delivery sent to its answer, which comes once the contact
  was read back from HubSpot, stored, and the enrollment's ``contact_changed`` signal accepted by
  Temporal; p50 and p95.
- **outage**: W writes queued (default 100 MQL updates) while HubSpot answers 503 for D seconds
  (default 20); sync runs every 2 s throughout; then the counts: written, lost, written twice.
- **salesforce**: the import and the outage again on the Salesforce emulator (HTTPS), through
  simple-salesforce (``--no-salesforce`` to skip).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from sqlmodel import func, select

from activities.email.providers import OutboxProvider
from api.main import create_app
from benchmarks.harness import add_templates, backend, dev_server, engine_settings, latency_ms, machine
from nurture.logging import configure_logging
from nurture.crm.contracts import CRM_SYNC_WORKFLOW, CrmSyncInput, CrmSyncResult
from nurture.enrolling import Enroller
from nurture.models import Contact, CrmWrite, Flow
from tests.crm_emulators.hubspot import HubSpotEmulator, serving
from tests.crm_emulators.salesforce import SalesforceEmulator
from tests.crm_emulators.salesforce import serving as sf_serving
from tests.factories import add_active_flow
from worker.main import build_worker

RESULTS = Path(__file__).resolve().parent / "results" / "crm_sync.json"
WAITING = {"name": "CRM bench", "trigger": {"type": "manual"},
           "steps": [{"id": "wait", "type": "delay", "duration": "30d"}]}
MQL = {"name": "CRM MQL", "trigger": {"type": "manual"},
       "steps": [{"id": "mql", "type": "update_contact", "lifecycle_stage": "marketingqualifiedlead"}]}


async def run(args) -> dict:
    env = await dev_server()
    results: dict = {"machine": machine()}
    try:
        async with serving(HubSpotEmulator()) as hubspot:
            hubspot.add_owner("77", "jane@example.com")
            with tempfile.TemporaryDirectory() as workdir:
                async with backend("sqlite", Path(workdir)) as store:
                    tag = f"crm-bench-{uuid.uuid4().hex[:6]}"
                    settings = engine_settings(
                        store.url, Path(workdir), tag, crm_provider="hubspot", crm_hubspot_token=hubspot.token,
                        crm_hubspot_base_url=hubspot.base_url, crm_hubspot_app_secret=hubspot.app_secret,
                    )
                    await add_templates(store.db)
                    async with build_worker(env.client, store.worker_db, OutboxProvider(settings.outbox_dir), settings):
                        app = create_app(settings, db=store.db, client=env.client)
                        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as api:
                            results["import"] = await initial_import(env.client, settings, hubspot, args.contacts)
                            results["inbound"] = await inbound(env.client, settings, store.db, hubspot, api, args.changes)
                            results["outage"] = await outage(env.client, settings, store.db, hubspot, args.writes, args.down)
        if not args.no_salesforce:
            results["salesforce"] = await salesforce(env, args)
    finally:
        await env.shutdown()
    return results


async def salesforce(env, args) -> dict:
    """The same import and outage on the Salesforce emulator (HTTPS), through simple-salesforce. Salesforce
    does not push: its changes arrive with the next sync run (NURTURE_CRM_SYNC_INTERVAL)."""
    emulator = SalesforceEmulator()
    with tempfile.TemporaryDirectory() as workdir:
        async with sf_serving(emulator, Path(workdir)) as certificate, backend("sqlite", Path(workdir)) as store:
            tag = f"crm-bench-sf-{uuid.uuid4().hex[:6]}"
            settings = engine_settings(
                store.url, Path(workdir), tag, crm_provider="salesforce", crm_salesforce_login_url=emulator.base_url,
                crm_salesforce_client_id=emulator.client_id, crm_salesforce_client_secret=emulator.client_secret,
                crm_salesforce_ca_bundle=certificate,
            )
            async with build_worker(env.client, store.worker_db, OutboxProvider(settings.outbox_dir), settings):
                for i in range(args.contacts):
                    emulator.put("Contact", {"Email": f"lead{i}@example.com", "LastName": f"Lead {i}"})
                before = len(emulator.requests)
                started = time.monotonic()
                result = await sync(env.client, settings, full=True)
                elapsed = time.monotonic() - started
                imported = {"contacts": args.contacts, "read": result.read, "seconds": round(elapsed, 2),
                            "contacts_per_second": round(result.read / elapsed, 1),
                            "salesforce_calls": len(emulator.requests) - before}
                down = await outage(env.client, settings, store.db, emulator, args.writes, args.down, salesforce=True)
    return {"import": imported, "outage": down}


async def sync(client, settings, **options) -> CrmSyncResult:
    return await client.execute_workflow(
        CRM_SYNC_WORKFLOW, CrmSyncInput(**options), id=f"{settings.workflow_id_prefix}-sync-{uuid.uuid4().hex[:6]}",
        task_queue=settings.temporal_task_queue, result_type=CrmSyncResult,
    )


async def initial_import(client, settings, hubspot: HubSpotEmulator, n: int) -> dict:
    for i in range(n):
        hubspot.put("contacts", {"email": f"lead{i}@example.com", "firstname": f"Lead {i}", "hubspot_owner_id": "77"})
    before = len(hubspot.requests)
    started = time.monotonic()
    result = await sync(client, settings, full=True)
    elapsed = time.monotonic() - started
    return {
        "contacts": n, "read": result.read, "changed": result.changed, "seconds": round(elapsed, 2),
        "contacts_per_second": round(result.read / elapsed, 1), "hubspot_calls": len(hubspot.requests) - before,
        "max_calls_in_10s": max_in_window(hubspot.request_times[before:], 10.0),
        "burst_limit_per_10s": settings.crm_burst_per_10s,
    }


def max_in_window(times: list[float], seconds: float) -> int:
    best, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] > seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


async def inbound(client, settings, db, hubspot: HubSpotEmulator, api, changes: int) -> dict:
    record = hubspot.put("contacts", {"email": "latency@example.com", "firstname": "Lat", "hubspot_owner_id": "77"})
    url = "http://test/webhooks/crm/hubspot"
    assert (await hubspot.deliver(api, url, [hubspot.event("contact.creation", record.id)])).status_code == 200
    flow = await add_active_flow(db, WAITING)
    async with db.session() as s:
        contact = (await s.exec(select(Contact).where(Contact.crm_id == record.id))).one()
        outcome = await Enroller(client, settings).enroll(s, await s.get(Flow, flow.id), contact)
        await s.commit()
    assert outcome.created
    seconds: list[float] = []
    for i in range(changes):
        company = f"Company {i}"
        events = hubspot.change("contacts", record.id, {"company": company})
        started = time.monotonic()
        answer = await hubspot.deliver(api, url, events)
        # The answer comes once Temporal accepted the enrollment's contact_changed signal.
        assert answer.status_code == 200 and answer.json()["contacts"] == 1, answer.text
        seconds.append(time.monotonic() - started)
    return {"changes": changes, **latency_ms(seconds)}


async def outage(client, settings, db, crm, writes: int, down_seconds: float, salesforce: bool = False) -> dict:
    """MQL updates queued while the CRM answers 503; sync runs every 2 s; then what reached the CRM."""
    flow = await add_active_flow(db, MQL)
    crm.down = True
    emails = [f"lead{i}@example.com" for i in range(writes)]
    async with db.session() as s:
        contacts = (await s.exec(select(Contact).where(Contact.email.in_(emails)))).all()
        for contact in contacts:
            await Enroller(client, settings).enroll(s, await s.get(Flow, flow.id), contact)
        await s.commit()
    ids = {c.crm_id for c in contacts}
    before = len(crm.writes)
    went_down = time.monotonic()
    runs, down_error = 0, None
    while time.monotonic() - went_down < down_seconds:
        down_error = (await sync(client, settings, crm_attempts=2)).error or down_error
        runs += 1
        await asyncio.sleep(2)
    crm.down = False
    recovered, cpu_at_recovery, calls_at_recovery = time.monotonic(), time.process_time(), len(crm.requests)
    while True:
        await sync(client, settings)
        runs += 1
        async with db.session() as s:
            queued = (await s.exec(select(func.count()).select_from(CrmWrite).where(CrmWrite.status == "queued"))).one()
        if queued == 0:
            break
        await asyncio.sleep(1)
    drained, cpu = time.monotonic() - recovered, time.process_time() - cpu_at_recovery
    kind, field = ("Contact", "Nurture_Lifecycle_Stage__c") if salesforce else ("contacts", "lifecyclestage")
    updates = [u for u in crm.writes[before:] if u[0] == kind and u[2].get(field) == "marketingqualifiedlead"]
    written = {u[1] for u in updates}
    return {
        "writes": writes, "down_seconds": down_seconds, "sync_runs": runs,
        "seconds_to_drain_after_recovery": round(drained, 2),
        # CPU of this process (worker, API and the emulator answering it) from recovery to drained.
        "cpu_ms_per_write_after_recovery": round(cpu * 1000 / max(writes, 1), 2),
        "calls_after_recovery": calls_by_kind(crm.requests[calls_at_recovery:]),
        "written": len(written & ids), "lost": len(ids - written), "written_twice": len(updates) - len(written),
        "error_while_down": down_error,
    }


def calls_by_kind(requests: list[tuple]) -> dict[str, int]:
    """The CRM calls seen, by method and path with record ids left out (``PATCH /crm/v3/objects/contacts/{id}``)."""
    counted: dict[str, int] = {}
    for method, path, *_ in requests:
        shape = "/".join("{id}" if part.isdigit() or part.startswith("003") else part for part in path.split("/"))
        counted[f"{method} {shape}"] = counted.get(f"{method} {shape}", 0) + 1
    return dict(sorted(counted.items(), key=lambda item: -item[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=int, default=5000)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--writes", type=int, default=100)
    parser.add_argument("--down", type=float, default=20.0, help="seconds the CRM answers 503")
    parser.add_argument("--no-salesforce", action="store_true", help="HubSpot only")
    args = parser.parse_args()
    configure_logging("WARNING", False)
    results = asyncio.run(run(args))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
