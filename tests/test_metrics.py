"""Prometheus metrics after flows ran: sends by outcome, failures, signals, starts, activity latency."""

from __future__ import annotations

import socket

import httpx
from prometheus_client.parser import text_string_to_metric_families

from nurture.metrics import serve_worker_metrics
from tests.api_support import active_example_flow, api, enroll_by_event, post_event, wait_for_step  # noqa: F401
from tests.conftest import eventually
from tests.factories import add_templates
from tests.flow_runner import manual_flow, run_flow
from tests.tracking_support import first_message, links_of


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(api) -> dict[tuple[str, tuple], float]:
    answer = await api.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return samples(answer.text)


def grew(before: dict, after: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_metrics_show_what_the_flows_did(api, worker, db, client, settings, temporal_env):
    before = await scrape(api)
    await active_example_flow(api)
    contact_id, enrollment_id = await enroll_by_event(api, "metrics@example.com")
    await wait_for_step(api, enrollment_id, "wait-2d")
    pixel, _ = links_of(await first_message(db, contact_id))
    await api.get(pixel)  # right after the send: a prefetch, counted apart
    await post_event(api, type="meeting_booked", contact_id=contact_id)
    await eventually(lambda: _exited(api, enrollment_id))
    await add_templates(db, {"broken": ("Hi", "{{ oops")})  # stored without the API's syntax check
    await run_flow(db, client, settings, temporal_env, manual_flow({"id": "oops", "type": "send_email", "template": "broken"}),
                   email="broken@example.com")
    after = await scrape(api)

    # The API's start; run_flow starts its workflow with the bare test client, which counts nothing.
    assert grew(before, after, "nurture_enrollment_starts_total") == 1
    assert grew(before, after, "nurture_email_sends_total", status="sent") == 1
    assert grew(before, after, "nurture_email_sends_total", status="failed") == 1
    assert grew(before, after, "nurture_email_send_failures_total", error="TemplateError") == 1
    assert grew(before, after, "nurture_signals_sent_total", signal="contact_event") == 1  # the bot open is not one
    assert grew(before, after, "nurture_tracking_hits_total", kind="open", bot="true") == 1
    assert grew(before, after, "nurture_activity_seconds_count", activity="send_email", outcome="ok") == 1
    assert grew(before, after, "nurture_activity_seconds_count", activity="send_email", outcome="error") == 1
    # Progress rides in the sends; the local activity only runs when an enrollment comes to rest or ends.
    assert grew(before, after, "nurture_activity_seconds_count", activity="record_progress", outcome="ok") >= 2
    assert grew(before, after, "nurture_activity_seconds_bucket", activity="send_email", outcome="ok", le="+Inf") == 1


async def _exited(api, enrollment_id: int) -> bool:
    return (await api.get(f"/enrollments/{enrollment_id}")).json()["status"] == "exited"


async def test_the_worker_serves_its_own_metrics_on_a_port():
    assert serve_worker_metrics(0) is None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = serve_worker_metrics(port, host="127.0.0.1")
    try:
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"http://127.0.0.1:{port}/metrics")
        assert answer.status_code == 200 and "nurture_activity_seconds" in answer.text
    finally:
        server.shutdown()


async def test_the_last_crm_sync_is_on_the_apis_metrics_per_connector(db, client, outbox, settings):
    """The sync runs in the worker; the API's /metrics shows what its last run recorded."""
    from api.main import create_app
    from nurture.crm.contracts import CRM_SYNC_WORKFLOW, CrmSyncInput, CrmSyncResult
    from nurture.metrics import CRM_LAST_SYNC_CONTACTS, CRM_LAST_SYNC_RATE, CRM_LAST_SYNC_SECONDS
    from tests.crm_emulators.hubspot import HubSpotEmulator, serving
    from worker.main import build_worker

    async with serving(HubSpotEmulator()) as hubspot:
        for n in range(120):
            hubspot.put("contacts", {"email": f"gauge{n}@example.com", "firstname": f"Gauge {n}"})
        crm_settings = settings.model_copy(update={
            "crm_provider": "hubspot", "crm_hubspot_token": hubspot.token, "crm_hubspot_base_url": hubspot.base_url,
            "crm_hubspot_app_secret": hubspot.app_secret,
        })
        async with build_worker(client, db, outbox, crm_settings):
            result = await client.execute_workflow(
                CRM_SYNC_WORKFLOW, CrmSyncInput(full=True), id="crm-sync-metrics",
                task_queue=crm_settings.temporal_task_queue, result_type=CrmSyncResult,
            )
    assert result.read == 120 and result.seconds
    for gauge in (CRM_LAST_SYNC_CONTACTS, CRM_LAST_SYNC_SECONDS, CRM_LAST_SYNC_RATE):
        gauge.clear()  # as in an API process, which ran no sync itself
    app = create_app(crm_settings, db=db, client=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        shown = await scrape(http)

    hubspot_label = (("provider", "hubspot"),)
    assert shown[("nurture_crm_last_sync_contacts", hubspot_label)] == 120
    assert shown[("nurture_crm_last_sync_seconds", hubspot_label)] == result.seconds
    assert shown[("nurture_crm_last_sync_contacts_per_second", hubspot_label)] == round(120 / result.seconds, 1)
