"""Bulk enrollment of a segment: a durable, rate-limited batch workflow with readable progress."""

from __future__ import annotations

import pytest
from sqlmodel import select
from temporalio.api.enums.v1 import EventType
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.enrolling import EnrollingActivities
from nurture.batch_contracts import BulkPageInput, BulkProgress
from nurture.enrolling import Enroller, _Candidate, active_version
from nurture.models import Contact, Enrollment, EnrollmentStatus, utcnow
from tests.api_support import api, locs  # noqa: F401  (fixtures)
from tests.conftest import eventually
from tests.factories import add_active_flow, add_contact, add_templates
from tests.temporal_link import cut_after, every_start_heartbeats, one_start_at_a_time, temporal_link  # noqa: F401  (fixtures)
from tests.trigger_support import (  # noqa: F401
    TEMPLATES,
    batches,
    enrolled_contacts,
    enrollments_of,
    one_email_flow,
    run_of,
    started_with,
)

WEBINAR = {"tag": "webinar-2026"}


async def webinar_audience(db):
    """Three who attended, one unsubscribed attendee, one attendee who is a customer, two others."""
    attendees = [await add_contact(db, f"attendee{i}@example.com", tags=["webinar-2026"]) for i in range(3)]
    await add_contact(db, "gone@example.com", tags=["webinar-2026"], subscription_status="unsubscribed")
    await add_contact(db, "customer@example.com", tags=["webinar-2026"], lifecycle_stage="customer")
    await add_contact(db, "other@example.com", tags=["ebook"])
    await add_contact(db, "nobody@example.com")
    return attendees


CUSTOMERS = {"suppress": [{"property": "lifecycle_stage", "op": "eq", "value": "customer"}]}


async def test_bulk_enrollment_enrolls_the_segment_at_the_rate_and_reports_progress_while_it_runs(api, db, batches):
    await add_templates(db, TEMPLATES)
    flow = await add_active_flow(db, one_email_flow({"type": "manual"}, enrollment=CUSTOMERS))
    attendees = await webinar_audience(db)

    response = await api.post(
        f"/flows/{flow.id}/bulk-enrollments", json={"segment": WEBINAR, "rate_per_second": 2, "requested_by": "marketer-1"}
    )
    assert response.status_code == 202, response.text
    started = response.json()
    assert started["status"] == "running" and started["flow_id"] == flow.id and started["enrolled"] == 0
    handle = batches.track(started["workflow_id"])

    async def partly_done():
        progress = (await api.get(f"/bulk-enrollments/{started['id']}")).json()
        return progress if progress["status"] == "running" and progress["enrolled"] >= 1 else None

    # At two a second it is still running after the first two enrollments: progress shows it.
    running = await eventually(partly_done)
    assert running["enrolled"] < 3 and running["requested_by"] == "marketer-1"

    result: BulkProgress = await batches.result(handle.id)
    final = (await api.get(f"/bulk-enrollments/{started['id']}")).json()
    assert final["status"] == "completed" and final["finished_at"] is not None
    # The two outside the webinar are ruled out in the database: examined are the five who match.
    assert (final["examined"], final["matched"], final["enrolled"]) == (5, 5, 3)
    assert final["skipped"] == {"unsubscribed": 1, "suppressed": 1}
    assert result.enrolled == 3
    assert await enrolled_contacts(db, flow.id) == [c.id for c in attendees]
    # Each row's workflow started with the row's id and the contact as it was.
    for row in await enrollments_of(db, flow.id):
        started = await started_with(batches.client, row.workflow_id)
        assert (started.enrollment_id, started.contact.id, started.flow_version) == (row.id, row.contact_id, 1)  # type: ignore[union-attr]

    # The rate limit: after each page of (at most) one second's worth of enrollments, a durable wait.
    history = await handle.fetch_history()
    waits = [
        e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta().total_seconds()
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED
    ]
    # Two enrolled (a second's worth at 2/s), a wait for what the page left of that second, then the
    # last one ends the segment.
    assert len(waits) == 1 and 0 < waits[0] <= 1.0


async def test_bulk_enrollment_can_be_stopped_and_keeps_who_it_enrolled(api, db, batches):
    await add_templates(db, TEMPLATES)
    flow = await add_active_flow(db, one_email_flow({"type": "manual"}))
    await webinar_audience(db)
    started = (await api.post(f"/flows/{flow.id}/bulk-enrollments", json={"segment": WEBINAR, "rate_per_second": 0.01})).json()
    handle = batches.track(started["workflow_id"])

    async def first_enrolled():
        progress = (await api.get(f"/bulk-enrollments/{started['id']}")).json()
        return progress["enrolled"] == 1

    await eventually(first_enrolled)  # now waiting 100 s before the next one
    stop = await api.post(f"/bulk-enrollments/{started['id']}/stop", json={"requested_by": "marketer-2", "reason": "wrong list"})
    assert stop.status_code == 202, stop.text
    result: BulkProgress = await batches.result(handle.id)
    assert result.status == "stopped" and result.enrolled == 1
    assert result.detail == "stopped by marketer-2: wrong list"
    assert len(await enrolled_contacts(db, flow.id)) == 1
    again = await api.post(f"/bulk-enrollments/{started['id']}/stop", json={"requested_by": "marketer-2"})
    assert again.status_code == 409


async def test_long_bulk_enrollment_continues_as_new_and_finishes_the_segment(db, batches):
    await add_templates(db, TEMPLATES)
    flow = await add_active_flow(db, one_email_flow({"type": "manual"}))
    everyone = [await add_contact(db, f"c{i}@example.com") for i in range(5)]

    handle = await batches.start_bulk(flow.id, rate_per_second=100, scan_limit=2, pages_per_run=1)
    result: BulkProgress = await batches.result(handle.id)

    assert result.status == "completed" and result.runs >= 3
    assert (result.examined, result.enrolled) == (5, 5)
    assert await enrolled_contacts(db, flow.id) == [c.id for c in everyone]


async def test_bulk_enrollment_input_is_checked(api, db):
    await add_templates(db, TEMPLATES)
    active = await add_active_flow(db, one_email_flow({"type": "manual"}))
    draft = (await api.post("/flows", json=one_email_flow({"type": "manual"}))).json()

    engagement = await api.post(f"/flows/{active.id}/bulk-enrollments", json={"segment": {"step": "send", "engagement": "opened"}})
    assert engagement.status_code == 422 and locs(engagement) == [["body", "segment"]]
    no_rate = await api.post(f"/flows/{active.id}/bulk-enrollments", json={"rate_per_second": 0})
    assert no_rate.status_code == 422 and locs(no_rate) == [["body", "rate_per_second"]]
    misspelt = await api.post(f"/flows/{active.id}/bulk-enrollments", json={"segmnt": WEBINAR})
    assert misspelt.status_code == 422 and locs(misspelt) == [["body", "segmnt"]]
    not_live = await api.post(f"/flows/{draft['id']}/bulk-enrollments", json={"segment": WEBINAR})
    assert not_live.status_code == 409 and "draft" in not_live.json()["detail"]
    assert (await api.post("/flows/4242/bulk-enrollments", json={})).status_code == 404
    assert (await api.get(f"/bulk-enrollments/{'0' * 32}")).status_code == 404
    assert (await api.get("/bulk-enrollments/not-an-id")).status_code == 422


async def test_a_page_whose_starts_partly_fail_is_retried_without_doubles_or_losses(db, client, settings, temporal_link, temporal_env, every_start_heartbeats):
    await add_templates(db, TEMPLATES)
    flow = await add_active_flow(db, one_email_flow({"type": "manual"}))
    everyone = [await add_contact(db, f"c{i}@example.com") for i in range(6)]
    at = await temporal_env.get_current_time()
    page = BulkPageInput(bulk_id="b1", flow_id=flow.id, max_enrollments=10, scan_limit=10, at=at, bulk_started_at=at)

    # The first attempt reaches Temporal through a link that breaks after two starts.
    flaky = EnrollingActivities(db, await temporal_link.client(), one_start_at_a_time(settings))
    first_try = ActivityEnvironment()
    first_try.on_heartbeat = cut_after(temporal_link, 2)
    with pytest.raises(ApplicationError, match="4 of the bulk page's enrollment workflows did not start"):
        await first_try.run(flaky.bulk_enroll_page, page)
    rows = await enrollments_of(db, flow.id)
    assert [r.contact_id for r in rows] == [c.id for c in everyone]  # every row kept for the retry
    runs = {r.id: await run_of(client, r.workflow_id) for r in rows}
    assert sum(run is not None for run in runs.values()) == 2

    # Temporal retries the page (same input): it finds its rows and starts the four left.
    retried = await ActivityEnvironment().run(EnrollingActivities(db, client, settings).bulk_enroll_page, page)

    assert (retried.examined, retried.matched, retried.enrolled, retried.skipped) == (6, 6, 6, {})
    rows = await enrollments_of(db, flow.id)
    assert [(r.contact_id, r.sequence) for r in rows] == [(c.id, 1) for c in everyone]
    emails = {c.id: c.email for c in everyone}
    for row in rows:
        run = await run_of(client, row.workflow_id)
        assert run is not None and runs[row.id] in (None, run)  # the two started first were not started again
        started = await started_with(client, row.workflow_id)
        assert (started.enrollment_id, started.contact.email) == (row.id, emails[row.contact_id])  # type: ignore[union-attr]


async def test_a_page_that_scans_the_last_contacts_is_the_last_page(db, client, settings, temporal_env):
    """A segment of exactly a page's size completes after that page, not after one more empty page."""
    await add_templates(db, TEMPLATES)
    flow = await add_active_flow(db, one_email_flow({"type": "manual"}))
    everyone = [await add_contact(db, f"c{i}@example.com") for i in range(4)]
    at = await temporal_env.get_current_time()
    activities = EnrollingActivities(db, client, settings)

    def page(after: int) -> BulkPageInput:
        return BulkPageInput(bulk_id="b1", flow_id=flow.id, max_enrollments=10, scan_limit=2, after_contact_id=after, at=at, bulk_started_at=at)

    first = await ActivityEnvironment().run(activities.bulk_enroll_page, page(0))
    assert (first.examined, first.enrolled, first.done, first.next_cursor) == (2, 2, False, everyone[1].id)
    last = await ActivityEnvironment().run(activities.bulk_enroll_page, page(first.next_cursor))
    assert (last.examined, last.enrolled, last.done, last.next_cursor) == (2, 2, True, everyone[3].id)
    assert await enrolled_contacts(db, flow.id) == [c.id for c in everyone]


async def test_a_segment_among_many_other_contacts_enrolls_exactly_its_audience_once_each(db, client, settings, temporal_env):
    """The pages skip the contacts a segment plainly excludes in the database (progress examines
    fewer than the table holds), and still enroll every contact the segment matches — whatever the
    case of the value, a built-in field shadowing a custom property, or a tag that only contains
    the segment's text — each once, over pages."""
    await add_templates(db, TEMPLATES)
    flow = await add_active_flow(db, one_email_flow({"type": "manual"}))
    segment = {"any": [{"property": "company", "op": "eq", "value": "Kwik-E-Mart"}, {"tag": "webinar-2026"}]}
    audience, others = [], []
    for i in range(40):
        others.append(await add_contact(db, f"other{i}@example.com", company="Globex", tags=["ebook"]))
        if i % 8 == 0:
            audience.append(await add_contact(db, f"kwik{i}@example.com", company=["KWIK-E-MART", "kwik-e-mart", "Kwik-E-Mart"][i % 3]))
        if i % 10 == 5:
            audience.append(await add_contact(db, f"attendee{i}@example.com", company=None, tags=["ebook", "Webinar-2026"]))
    # Python lowers the Kelvin sign to "k": the segment matches it, though SQL's lower() does not.
    audience.append(await add_contact(db, "kelvin@example.com", company="\u212awik-e-mart"))
    others.append(await add_contact(db, "shadow@example.com", company="Globex", properties={"company": "Kwik-E-Mart"}))
    others.append(await add_contact(db, "replay@example.com", company="Initech", tags=["webinar-2026-replay"]))
    at = await temporal_env.get_current_time()
    activities = EnrollingActivities(db, client, settings)

    cursor, examined, enrolled, pages = 0, 0, 0, 0
    while True:
        page = BulkPageInput(
            bulk_id="b1", flow_id=flow.id, segment=segment, max_enrollments=100, scan_limit=3,
            after_contact_id=cursor, at=at, bulk_started_at=at,
        )
        result = await ActivityEnvironment().run(activities.bulk_enroll_page, page)
        examined, enrolled, cursor, pages = examined + result.examined, enrolled + result.enrolled, result.next_cursor, pages + 1
        if result.done:
            break

    assert await enrolled_contacts(db, flow.id) == sorted(c.id for c in audience)
    assert [(r.contact_id, r.sequence) for r in await enrollments_of(db, flow.id)] == [(c.id, 1) for c in sorted(audience, key=lambda c: c.id)]
    assert enrolled == len(audience) and pages > 1
    # Read: the audience and the one whose tag only contains the segment's, not the 41 others.
    assert examined == len(audience) + 1


async def test_a_bulk_enrollment_of_a_company_among_many_other_contacts_enrolls_it_once_each(api, db, batches):
    await add_templates(db, TEMPLATES)
    flow = await add_active_flow(db, one_email_flow({"type": "manual"}))
    async with db.session() as s:
        s.add_all(Contact(email=f"other{i}@example.com", company="Globex") for i in range(300))
        await s.commit()
    audience = [await add_contact(db, f"acme{i}@example.com", company="acme") for i in range(5)]

    response = await api.post(
        f"/flows/{flow.id}/bulk-enrollments",
        json={"segment": {"property": "company", "op": "eq", "value": "ACME"}, "rate_per_second": 1000},
    )
    assert response.status_code == 202, response.text
    result: BulkProgress = await batches.result(batches.track(response.json()["workflow_id"]).id)

    assert (result.status, result.examined, result.matched, result.enrolled) == ("completed", 5, 5, 5)
    assert [(r.contact_id, r.sequence) for r in await enrollments_of(db, flow.id)] == [(c.id, 1) for c in audience]


async def test_a_page_whose_contact_was_enrolled_meanwhile_gets_that_enrollment_and_the_others_theirs(db, settings):
    """A page's rows go in as one statement. When another enrollment (an API request, a trigger)
    wrote one of its contacts' rows after the page read who was enrolled, that contact keeps the
    other enrollment, not a second one, and every other contact gets its own row with its own id."""
    await add_templates(db, TEMPLATES)
    flow = await add_active_flow(db, one_email_flow({"type": "manual"}))
    contacts = [await add_contact(db, f"page{i}@example.com") for i in range(6)]
    enroller = Enroller(None, settings)  # type: ignore[arg-type]  (no start: rows only)
    async with db.session() as session:
        version = await active_version(session, flow)
        candidates = [_Candidate(flow, version, contact, None) for contact in contacts]
    async with db.session() as other:
        meanwhile = (await enroller._write_rows(other, [candidates[3]], utcnow()))[0][0]
        await other.commit()

    async with db.session() as session:
        written = await enroller._write_rows(session, candidates, utcnow())
        await session.commit()

    assert [created for _, created in written] == [True, True, True, False, True, True]
    assert written[3][0].id == meanwhile.id
    async with db.session() as session:
        rows = {row.id: row for row in (await session.exec(select(Enrollment).where(Enrollment.flow_id == flow.id))).all()}
    assert len(rows) == 6
    for (row, _), contact in zip(written, contacts):
        assert rows[row.id].contact_id == contact.id
        assert rows[row.id].workflow_id == row.workflow_id


async def test_a_page_of_rows_is_written_with_each_id_on_its_own_contact(db, settings):
    await add_templates(db, TEMPLATES)
    flow = await add_active_flow(db, one_email_flow({"type": "manual"}))
    contacts = [await add_contact(db, f"ids{i}@example.com") for i in range(40)]
    enroller = Enroller(None, settings)  # type: ignore[arg-type]
    async with db.session() as session:
        version = await active_version(session, flow)
        written = await enroller._write_rows(session, [_Candidate(flow, version, c, None) for c in reversed(contacts)], utcnow())
        await session.commit()
    async with db.session() as session:
        on_record = {row.id: row for row in (await session.exec(select(Enrollment))).all()}
    assert len({row.id for row, _ in written}) == 40
    for (row, created), contact in zip(written, reversed(contacts)):
        assert created and on_record[row.id].contact_id == contact.id
        assert on_record[row.id].status == EnrollmentStatus.active and on_record[row.id].run_id is None
        assert on_record[row.id].started_at == row.started_at
