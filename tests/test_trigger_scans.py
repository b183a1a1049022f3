"""Date and inactivity triggers: the scan workflow the Schedule starts, run directly on the test server."""

from __future__ import annotations

import calendar
from datetime import date, timedelta

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.enrolling import EnrollingActivities
from nurture.batch_contracts import ScanPageInput
from tests.conftest import eventually
from tests.factories import add_active_flow, add_contact, add_templates, messages_of
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


async def scan_now(temporal_env):
    """A scan instant on the test server's clock, whole minutes (trigger times are HH:MM)."""
    now = await temporal_env.get_current_time()
    return now.replace(second=0, microsecond=0)


async def test_date_trigger_enrolls_contacts_whose_date_minus_offset_is_today_in_their_time_zone(db, batches, temporal_env):
    await add_templates(db, TEMPLATES)
    at = await scan_now(temporal_env)
    fell = at - timedelta(hours=2)  # the trigger's time of day passed two hours ago (UTC)
    renewal = (fell.date() + timedelta(days=30)).isoformat()
    flow = await add_active_flow(
        db,
        one_email_flow(
            {"type": "date", "property": "renewal_date", "offset": "-30d", "time": fell.strftime("%H:%M")},
            template="renewal-soon",
            enrollment={
                "reenroll": "after_exit",
                "suppress": [{"property": "lifecycle_stage", "op": "eq", "value": "customer"}],
            },
        ),
    )
    due = await add_contact(db, "due@example.com", timezone="UTC", properties={"renewal_date": renewal})
    # 8 hours behind UTC: its local time of day has not come yet.
    west = await add_contact(db, "west@example.com", timezone="America/Los_Angeles", properties={"renewal_date": renewal})
    later = await add_contact(
        db, "later@example.com", timezone="UTC", properties={"renewal_date": (fell.date() + timedelta(days=31)).isoformat()}
    )
    await add_contact(db, "customer@example.com", timezone="UTC", lifecycle_stage="customer", properties={"renewal_date": renewal})
    await add_contact(db, "gone@example.com", timezone="UTC", subscription_status="unsubscribed", properties={"renewal_date": renewal})
    await add_contact(db, "nodate@example.com", timezone="UTC")

    result = await batches.scan([flow.id], at)

    [totals] = result.flows
    assert (totals.trigger, totals.enrolled, totals.skipped) == ("date", 1, {"suppressed": 1})
    assert await enrolled_contacts(db, flow.id) == [due.id]
    await eventually(lambda: _completed(db, flow.id, 1))
    assert [m.template_key for m in await messages_of(db, due.id)] == ["renewal-soon"]
    assert await messages_of(db, west.id) == [] and await messages_of(db, later.id) == []

    # The next scan (the same day) finds the same occurrence served, though the flow allows re-enrollment.
    again = await batches.scan([flow.id], at + timedelta(hours=1))
    assert again.flows[0].enrolled == 0 and again.flows[0].skipped == {"suppressed": 1, "already_enrolled": 1}

    # Eight hours later it is the time of day in Los Angeles too.
    west_scan = await batches.scan([flow.id], at + timedelta(hours=8, minutes=1))
    assert west_scan.flows[0].enrolled == 1
    assert await enrolled_contacts(db, flow.id) == [due.id, west.id]


async def test_yearly_date_trigger_enrolls_on_the_birthday_every_year(db, batches, temporal_env):
    await add_templates(db, TEMPLATES)
    at = await scan_now(temporal_env)
    fell = at - timedelta(minutes=30)
    flow = await add_active_flow(
        db,
        one_email_flow(
            {"type": "date", "property": "birthday", "yearly": True, "time": fell.strftime("%H:%M")},
            template="happy-birthday",
            enrollment={"reenroll": "after_exit"},
        ),
    )
    born = date(1992, fell.month, fell.day)  # a leap year: every day has a birthday
    birthday = await add_contact(db, "bday@example.com", timezone="UTC", properties={"birthday": born.isoformat()})
    await add_contact(db, "other@example.com", timezone="UTC", properties={"birthday": (born + timedelta(days=3)).isoformat()})

    first = await batches.scan([flow.id], at)
    assert first.flows[0].enrolled == 1
    await eventually(lambda: _completed(db, flow.id, 1))

    anniversary = fell.replace(year=fell.year + 1, day=min(fell.day, calendar.monthrange(fell.year + 1, fell.month)[1]))
    next_year = await batches.scan([flow.id], anniversary + timedelta(minutes=30))
    assert next_year.flows[0].enrolled == 1
    rows = await enrollments_of(db, flow.id)
    assert [(e.contact_id, e.sequence) for e in rows] == [(birthday.id, 1), (birthday.id, 2)]
    # Each enrollment its own workflow: the second (a re-enrollment) is the first's id with "-2".
    assert rows[1].workflow_id == f"{rows[0].workflow_id}-2"


async def _completed(db, flow_id: int, count: int) -> bool:
    return sum(e.status == "completed" for e in await enrollments_of(db, flow_id)) >= count


async def test_inactivity_trigger_enrolls_once_per_inactive_spell(db, batches, temporal_env):
    await add_templates(db, TEMPLATES)
    at = await scan_now(temporal_env)
    flow = await add_active_flow(
        db, one_email_flow({"type": "inactivity", "days": 30}, template="nudge", enrollment={"reenroll": "after_exit"})
    )
    idle = await add_contact(db, "idle@example.com", last_activity_at=at - timedelta(days=40))
    silent = await add_contact(db, "silent@example.com", created_at=at - timedelta(days=60))  # never had an event
    await add_contact(db, "busy@example.com", last_activity_at=at - timedelta(days=5))
    await add_contact(db, "new@example.com", created_at=at - timedelta(days=2))

    result = await batches.scan([flow.id], at)
    assert (result.flows[0].trigger, result.flows[0].enrolled) == ("inactivity", 2)
    assert await enrolled_contacts(db, flow.id) == [idle.id, silent.id]
    await eventually(lambda: _completed(db, flow.id, 2))

    # Still inactive, flow over, re-enrollment allowed: not again in the same spell.
    later = await batches.scan([flow.id], at + timedelta(days=1))
    assert later.flows[0].enrolled == 0 and later.flows[0].skipped == {"already_enrolled": 2}


async def test_a_long_scan_pages_and_continues_as_new_without_losing_its_place(db, batches, temporal_env):
    await add_templates(db, TEMPLATES)
    at = await scan_now(temporal_env)
    flow = await add_active_flow(db, one_email_flow({"type": "inactivity", "days": 7}, template="nudge"))
    idle = [await add_contact(db, f"idle{i}@example.com", last_activity_at=at - timedelta(days=10)) for i in range(4)]

    result = await batches.scan([flow.id], at, page_size=1, pages_per_run=2)

    assert result.runs >= 2
    assert result.flows[0].enrolled == 4 and result.flows[0].examined == 4
    assert await enrolled_contacts(db, flow.id) == [c.id for c in idle]


async def test_scan_without_flow_ids_covers_every_active_date_and_inactivity_flow(db, batches, temporal_env):
    await add_templates(db, TEMPLATES)
    at = await scan_now(temporal_env)
    inactivity = await add_active_flow(db, one_email_flow({"type": "inactivity", "days": 7}, template="nudge"))
    await add_active_flow(db, one_email_flow({"type": "event", "event": "signed_up"}))
    await add_active_flow(db, one_email_flow({"type": "manual"}))
    await add_contact(db, "idle@example.com", last_activity_at=at - timedelta(days=10))

    result = await batches.scan(None, at)

    assert [(t.flow_id, t.enrolled) for t in result.flows] == [(inactivity.id, 1)]


async def test_a_scan_page_whose_starts_partly_fail_is_retried_without_doubles_or_losses(db, client, settings, temporal_link, temporal_env, every_start_heartbeats):
    await add_templates(db, TEMPLATES)
    at = await scan_now(temporal_env)
    flow = await add_active_flow(db, one_email_flow({"type": "inactivity", "days": 30}, template="nudge"))
    idle = [await add_contact(db, f"idle{i}@example.com", last_activity_at=at - timedelta(days=40)) for i in range(5)]
    await add_contact(db, "busy@example.com", last_activity_at=at - timedelta(days=1))
    page = ScanPageInput(flow_id=flow.id, at=at, limit=50)

    flaky = EnrollingActivities(db, await temporal_link.client(), one_start_at_a_time(settings))
    first_try = ActivityEnvironment()
    first_try.on_heartbeat = cut_after(temporal_link, 3)
    with pytest.raises(ApplicationError, match="2 of the scan page's enrollment workflows did not start"):
        await first_try.run(flaky.scan_trigger_page, page)
    started_first = {r.id: await run_of(client, r.workflow_id) for r in await enrollments_of(db, flow.id)}
    assert len(started_first) == 5 and sum(run is not None for run in started_first.values()) == 3

    retried = await ActivityEnvironment().run(EnrollingActivities(db, client, settings).scan_trigger_page, page)

    assert (retried.examined, retried.enrolled, retried.skipped) == (5, 5, {})
    rows = await enrollments_of(db, flow.id)
    assert [(r.contact_id, r.sequence) for r in rows] == [(c.id, 1) for c in idle]
    for row in rows:
        run = await run_of(client, row.workflow_id)
        assert run is not None and started_first[row.id] in (None, run)
        assert (await started_with(client, row.workflow_id)).enrollment_id == row.id

    # A later scan in the same inactive spell enrolls nobody again.
    later = await ActivityEnvironment().run(
        EnrollingActivities(db, client, settings).scan_trigger_page, page.model_copy(update={"at": at + timedelta(hours=1)})
    )
    assert (later.enrolled, later.skipped) == (0, {"already_enrolled": 5})
