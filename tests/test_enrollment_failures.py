"""The enrollments table never says `active` about an enrollment that has stopped, and an early
pause is confirmed, not lost."""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from temporalio.client import WorkflowFailureError

from activities.email.providers import SmtpProvider
from nurture.contracts import EnrollmentResult, EnrollmentState, PauseUpdate
from nurture.db import Database
from nurture.enrolling import Enroller
from nurture.models import Enrollment
from nurture.settings import SmtpSettings
from tests.conftest import eventually, result_of, timer_running
from tests.factories import add_active_flow, add_contact, add_templates
from tests.test_smtp import free_port
from tests.test_workflow_example import enroll
from worker.main import build_worker

WAIT_THEN_SEND = {
    "name": "Wait then send",
    "trigger": {"type": "manual"},
    "steps": [
        {"id": "wait", "type": "delay", "duration": "1d"},
        {"id": "hello", "type": "send_email", "template": "demo-welcome"},
    ],
}

HANDOFF = {
    "name": "Handoff",
    "trigger": {"type": "manual"},
    "steps": [{"id": "handoff", "type": "handoff_to_sales", "silence_limit": "7d"}],
}


async def row_of(db: Database, enrollment_id: int) -> Enrollment:
    async with db.session() as s:
        row = await s.get(Enrollment, enrollment_id)
        assert row is not None
        return row


async def delete_contact_by_hand(db: Database, contact_id: int) -> None:
    """What an operator deleting the contact straight in the database leaves behind."""
    if db.is_sqlite:
        # A plain connection: foreign keys are off unless switched on, as in the sqlite3 shell.
        with sqlite3.connect(make_url(db.url).database) as conn:
            conn.execute("DELETE FROM contacts WHERE id = ?", (contact_id,))
        return
    async with db.engine.connect() as conn:
        await conn.exec_driver_sql("SET session_replication_role = replica")
        await conn.execute(sa.text("DELETE FROM contacts WHERE id = :id"), {"id": contact_id})
        await conn.exec_driver_sql("SET session_replication_role = DEFAULT")
        await conn.commit()


async def test_a_contact_deleted_mid_flow_leaves_the_row_failed_with_the_reason(db, client, settings, worker, temporal_env):
    await add_templates(db)
    flow, contact = await add_active_flow(db, WAIT_THEN_SEND), await add_contact(db)
    enrollment = await enroll(db, Enroller(client, settings), flow, contact)
    handle = client.get_workflow_handle(enrollment.workflow_id, result_type=EnrollmentResult)
    await eventually(lambda: timer_running(handle, "wait"))

    await delete_contact_by_hand(db, contact.id)
    with pytest.raises(WorkflowFailureError):
        await result_of(temporal_env, handle)

    row = await row_of(db, enrollment.id)
    assert row.status == "failed"
    assert "ContactMissing" in (row.exit_reason or "") and f"contact {contact.id} does not exist" in row.exit_reason
    assert row.ended_at is not None
    state = await handle.query("state", result_type=EnrollmentState)
    assert state.status == "failed" and state.timeline[-1].kind == "failed"


async def test_a_handoff_whose_owner_cannot_be_notified_leaves_the_row_failed(db, client, settings, temporal_env):
    flow = await add_active_flow(db, HANDOFF)
    contact = await add_contact(db, owner="rep@example.com")
    nowhere = SmtpProvider(SmtpSettings(host="127.0.0.1", port=free_port(), timeout_seconds=5))
    async with build_worker(client, db, nowhere, settings):
        enrollment = await enroll(db, Enroller(client, settings), flow, contact)
        handle = client.get_workflow_handle(enrollment.workflow_id, result_type=EnrollmentResult)
        with pytest.raises(WorkflowFailureError):
            await result_of(temporal_env, handle)

    row = await row_of(db, enrollment.id)
    assert row.status == "failed" and "notify_owner" in (row.exit_reason or "")


async def test_a_pause_sent_the_moment_the_enrollment_starts_is_confirmed(db, client, settings, worker, temporal_env):
    """The enrollment carries its contact, so its first task can already take a rep's pause."""
    await add_templates(db)
    flow, contact = await add_active_flow(db, WAIT_THEN_SEND), await add_contact(db)
    enrollment = await enroll(db, Enroller(client, settings), flow, contact)
    handle = client.get_workflow_handle(enrollment.workflow_id, result_type=EnrollmentResult)
    now = (await handle.describe()).start_time
    request = PauseUpdate(until=now + timedelta(days=3), reason="Call on Thursday", paused_by="rep-jane")

    answer = await handle.execute_update("pause_enrollment", request, result_type=EnrollmentState)

    assert answer.paused is not None and answer.paused.paused_by == "rep-jane"
    # The update answers once the row says so: the workflow wrote it (the API no longer does).
    assert (await row_of(db, enrollment.id)).paused


async def _update_accepted(handle) -> bool:
    async for event in handle.fetch_history_events():
        if event.HasField("workflow_execution_update_accepted_event_attributes"):
            return True
    return False


async def _paused_row(db: Database, enrollment_id: int) -> bool:
    return (await row_of(db, enrollment_id)).paused
