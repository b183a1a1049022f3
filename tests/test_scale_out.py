"""Scale-out, exercised: two workers and two APIs on one Temporal and one PostgreSQL, and a
worker killed with SIGKILL while enrollments are mid-run.

Everything runs as deployed (``python -m worker``, ``uvicorn api.main:app``) against the real
dev server and a throw-away PostgreSQL schema. The four processes share one data directory, as
the compose services share their volume, so both workers write the one outbox: a message
delivered again under its idempotency key rewrites its own file (the outbox's promise), while
any second send of a step under another key would show up as a second file.

What is checked is what a user would see: every contact enrolled once and finished, every step's
email sent once (one Message row, one .eml), a pause asked of one API for a contact enrolled
through the other held and then resumed, and the bulk enrollment's progress readable from the
API that did not start it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg
import pytest
from sqlmodel import select
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from nurture.db import Database
from nurture.migrating import upgrade
from nurture.models import Enrollment, Message
from nurture.trigger_schedule import trigger_scan_schedule_id
from tests.conftest import BACKENDS, POSTGRES_URL, eventually

# CI (CI=true) has already failed at collection if PostgreSQL is unreachable (tests/conftest.py).
pytestmark = pytest.mark.skipif("postgresql" not in BACKENDS, reason=f"PostgreSQL is not reachable at {POSTGRES_URL}")

ROOT = Path(__file__).resolve().parent.parent
BOOT_TIMEOUT = 60.0
# Long enough for the slowest hand-over: an activity without a heartbeat that the killed worker
# had started is retried after its start-to-close timeout (30 s for the short database ones).
RUN_TIMEOUT = 90.0
STEPS = ("hello", "middle", "last")
# A pause is asked for while its contact sits in the first delay; 3 s leaves it ample room.
FLOW = {
    "name": "Scale-out",
    "trigger": {"type": "event", "event": "scaleout_signed_up"},
    "steps": [
        {"id": "hello", "type": "send_email", "template": "scaleout-hello"},
        {"id": "first-wait", "type": "delay", "duration": "3s"},
        {"id": "middle", "type": "send_email", "template": "scaleout-middle"},
        {"id": "second-wait", "type": "delay", "duration": "3s"},
        {"id": "last", "type": "send_email", "template": "scaleout-last"},
    ],
}
PER_API = 20  # half enrolled by hand, half by the event that triggers the flow
BULK = 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """One child process in a process group of its own, so killing it takes its render pool too."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path):
        self.name, self.log = name, log
        self.log_file = log.open("ab")
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def output(self) -> str:
        return f"--- {self.name} ---\n" + self.log.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL to the whole group: the process and whatever it started (its children may outlive it)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)
        self.log_file.close()


@dataclass
class Deployment:
    env: dict[str, str]
    data_dir: Path
    task_queue: str
    prefix: str

    @property
    def outbox(self) -> Path:
        return self.data_dir / "outbox"


@pytest.fixture
async def shared_db() -> AsyncIterator[tuple[Database, str]]:
    """A throw-away schema, migrated before the four processes start (they refuse an unmigrated one)."""
    schema = f"nurture_scaleout_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = f"{POSTGRES_URL}?options={quote(f'-csearch_path={schema}')}"
    database = Database(url)
    await upgrade(database)
    yield database, url
    await database.dispose()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def deployment(tmp_path, shared_db, dev_env) -> Deployment:
    _, url = shared_db
    data_dir = tmp_path / "data"
    task_queue, prefix = f"scaleout-{uuid.uuid4()}", f"scaleout-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    env.update(
        NURTURE_DATA_DIR=str(data_dir),
        NURTURE_DATABASE_URL=url,
        NURTURE_TEMPORAL_ADDRESS=dev_env.client.service_client.config.target_host,
        NURTURE_TEMPORAL_TASK_QUEUE=task_queue,
        NURTURE_WORKFLOW_ID_PREFIX=prefix,
        NURTURE_EMAIL_PROVIDER="outbox",
        NURTURE_AUTH_REQUIRED="false",
        # Every process signs and verifies with the same secrets, as a real deployment must.
        NURTURE_TRACKING_SECRET=f"scaleout-tracking-{uuid.uuid4().hex}",
        NURTURE_EMAIL_WEBHOOK_SECRET=f"scaleout-email-webhooks-{uuid.uuid4().hex}",
        NURTURE_WEBHOOK_SECRET=f"scaleout-webhooks-{uuid.uuid4().hex}",
        # A dead worker's sends are noticed after 2 s without a heartbeat; a send may take 1 + 5 s.
        NURTURE_ACTIVITY_HEARTBEAT_TIMEOUT_SECONDS="2",
        NURTURE_SMTP__TIMEOUT_SECONDS="1",
        NURTURE_SEND_ACTIVITY_MARGIN_SECONDS="5",
        NURTURE_WORKER_GRACEFUL_SHUTDOWN_SECONDS="2",
    )
    return Deployment(env=env, data_dir=data_dir, task_queue=task_queue, prefix=prefix)


@pytest.fixture
async def services(deployment, dev_env) -> AsyncIterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        service.kill()
    try:  # the workers create the trigger-scan schedule of their prefix on the shared dev server
        await dev_env.client.get_schedule_handle(trigger_scan_schedule_id(deployment.prefix)).delete()
    except Exception:
        pass


def start_worker(deployment: Deployment, services: list[Service], tmp_path: Path, n: int) -> Service:
    service = Service(f"worker-{n}", [sys.executable, "-m", "worker"], deployment.env, tmp_path / f"worker-{n}.log")
    services.append(service)
    return service


def start_api(deployment: Deployment, services: list[Service], tmp_path: Path, n: int) -> tuple[Service, str]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port)]
    service = Service(f"api-{n}", command, deployment.env, tmp_path / f"api-{n}.log")
    services.append(service)
    return service, f"http://127.0.0.1:{port}"


def diagnostics(services: list[Service]) -> str:
    return "\n".join(service.output() for service in services)


async def within(check, timeout: float, services: list[Service], interval: float = 0.2):
    """``eventually``, with the four processes' logs when it gives up."""
    try:
        return await eventually(check, timeout=timeout, interval=interval)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnostics(services)}") from None


async def wait_healthy(http: httpx.AsyncClient, service: Service, services: list[Service]) -> None:
    async def healthy() -> bool:
        if service.process.poll() is not None:
            raise AssertionError(f"{service.name} exited with {service.process.returncode}\n{diagnostics(services)}")
        try:
            return (await http.get("/health")).status_code == 200
        except httpx.TransportError:
            return False

    await eventually(healthy, timeout=BOOT_TIMEOUT, interval=0.2)


async def worker_identities(dev_env, deployment: Deployment) -> set[str]:
    """Who polls the task queue for workflow tasks (a worker's identity is ``<pid>@<host>``)."""
    described = await dev_env.client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=dev_env.client.namespace,
            task_queue=TaskQueue(name=deployment.task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return {poller.identity for poller in described.pollers}


def ok(response: httpx.Response, *expected: int) -> dict:
    assert response.status_code in (expected or (200, 201, 202)), (response.request.url, response.status_code, response.text)
    return response.json()


async def enrollments_of(db: Database, flow_id: int) -> list[Enrollment]:
    async with db.session() as s:
        return list((await s.exec(select(Enrollment).where(Enrollment.flow_id == flow_id))).all())


async def messages_of(db: Database, flow_id: int) -> list[Message]:
    async with db.session() as s:
        return list((await s.exec(select(Message).where(Message.flow_id == flow_id))).all())


async def sent_count(db: Database, flow_id: int, contact_id: int | None = None) -> int:
    return sum(
        1 for m in await messages_of(db, flow_id) if m.status == "sent" and contact_id in (None, m.contact_id)
    )


def outbox_files(outbox: Path) -> list[tuple[str, str]]:
    """(idempotency key, recipient) of every .eml in the outbox."""
    found = []
    for path in sorted(outbox.glob("*.eml")):
        headers = BytesHeaderParser().parsebytes(path.read_bytes())
        found.append((headers["X-Nurture-Idempotency-Key"], parseaddr(headers["To"])[1]))
    return found


def workflow_task_workers(history) -> list[str]:
    """The worker that completed each workflow task, in order."""
    return [
        event.workflow_task_completed_event_attributes.identity
        for event in history.events
        if event.HasField("workflow_task_completed_event_attributes")
    ]


def retried_after_timeout(history) -> list[str]:
    """The workers that ran an activity again after its previous attempt timed out (no heartbeat, no result)."""
    return [
        event.activity_task_started_event_attributes.identity
        for event in history.events
        if event.HasField("activity_task_started_event_attributes")
        and event.activity_task_started_event_attributes.last_failure.HasField("timeout_failure_info")
    ]


async def test_two_workers_and_two_apis_share_the_work_and_a_killed_worker_loses_none_of_it(
    shared_db, deployment, dev_env, services, tmp_path
):
    db, _ = shared_db
    workers = [start_worker(deployment, services, tmp_path, n) for n in (1, 2)]
    (api_one, url_one), (api_two, url_two) = (start_api(deployment, services, tmp_path, n) for n in (1, 2))

    async with httpx.AsyncClient(base_url=url_one, timeout=30) as one, httpx.AsyncClient(base_url=url_two, timeout=30) as two:
        await asyncio.gather(wait_healthy(one, api_one, services), wait_healthy(two, api_two, services))
        # Both workers poll before anything starts, so the work is spread over the two.
        identities = {worker.name: f"{worker.process.pid}@{socket.gethostname()}" for worker in workers}

        async def both_poll() -> bool:
            return await worker_identities(dev_env, deployment) == set(identities.values())

        await within(both_poll, BOOT_TIMEOUT, services)

        # Assets through API #1, the flow activated through API #2.
        for step in STEPS:
            ok(await one.post("/templates", json={
                "key": f"scaleout-{step}", "subject": f"{step} {{{{ contact.name }}}}", "html": f"<p>{step}</p>",
            }), 201)
        flow = ok(await two.post("/flows", json=FLOW), 201)
        ok(await two.post(f"/flows/{flow['id']}/activate"), 200)
        flow_id = flow["id"]

        # A contact enrolled through API #1 is paused through API #2 while it waits in the first delay.
        paused = ok(await one.post("/contacts", json={"email": "paused@example.com", "name": "Paula"}))
        held = ok(await one.post(f"/flows/{flow_id}/enrollments", json={"contact_id": paused["id"]}), 201)
        await within(lambda: sent_count(db, flow_id, paused["id"]), 30, services, interval=0.1)
        pause = ok(await two.post(f"/contacts/{paused['id']}/pause", json={
            "duration": "1h", "reason": "call booked", "paused_by": "rep-2",
        }), 200)
        assert pause["enrollment_ids"] == [held["id"]], pause
        assert pause["enrollments"][0]["paused_until"] is not None, pause

        # The rest at once: through both APIs, by hand and by event, and a bulk enrollment.
        async def by_hand(http: httpx.AsyncClient, email: str) -> int:
            contact = ok(await http.post("/contacts", json={"email": email, "name": email.split("@")[0]}))
            ok(await http.post(f"/flows/{flow_id}/enrollments", json={"contact_id": contact["id"]}), 201)
            return contact["id"]

        async def by_event(http: httpx.AsyncClient, email: str) -> int:
            answer = ok(await http.post("/events", json={"type": "scaleout_signed_up", "email": email}), 202)
            assert len(answer["enrolled"]) == 1, answer
            return answer["contact_id"]

        bulk_contacts = [
            (ok(await two.post("/contacts", json={"email": f"bulk-{i}@example.com", "tags": ["webinar"]})))["id"]
            for i in range(BULK)
        ]
        enrolling = []
        for name, http in (("one", one), ("two", two)):
            enrolling += [by_hand(http, f"{name}-hand-{i}@example.com") for i in range(PER_API // 2)]
            enrolling += [by_event(http, f"{name}-event-{i}@example.com") for i in range(PER_API // 2)]
        bulk_started = two.post(f"/flows/{flow_id}/bulk-enrollments", json={"segment": {"tag": "webinar"}, "rate_per_second": 100})
        *enrolled, bulk = await asyncio.gather(*enrolling, bulk_started)
        bulk = ok(bulk, 202)
        everyone = {paused["id"], *enrolled, *bulk_contacts}
        assert len(everyone) == 1 + 2 * PER_API + BULK

        # Mid-run (a fair share of the first emails out, most contacts still ahead of their delays),
        # one worker dies as a machine would: no shutdown, no chance to finish anything.
        await within(lambda: at_least_sent(db, flow_id, 10), 30, services, interval=0.05)
        dying, survivor = workers
        dying.kill()

        # Still held once everyone else has sent the step it waits at (its delay began before any of
        # theirs): the pause outlived the worker that may have been running that enrollment.
        async def others_past_middle() -> bool:
            sent = {(m.contact_id, m.step_id) for m in await messages_of(db, flow_id) if m.status == "sent"}
            return all((contact, "middle") in sent for contact in everyone - {paused["id"]})

        await within(others_past_middle, RUN_TIMEOUT, services)
        [row] = [e for e in await enrollments_of(db, flow_id) if e.contact_id == paused["id"]]
        assert (row.status, row.paused) == ("active", True)
        assert [m.step_id for m in await messages_of(db, flow_id) if m.contact_id == paused["id"]] == ["hello"]
        ok(await one.post(f"/contacts/{paused['id']}/resume", json={"resumed_by": "rep-2"}), 200)

        async def completed():
            rows = await enrollments_of(db, flow_id)
            return len(rows) >= len(everyone) and all(e.status == "completed" for e in rows)

        await within(completed, RUN_TIMEOUT, services)

        # The bulk enrollment, started through API #2, reads as finished through API #1.
        progress = ok(await one.get(f"/bulk-enrollments/{bulk['id']}"), 200)
        assert (progress["status"], progress["enrolled"]) == ("completed", BULK), progress
        listed = ok(await one.get("/enrollments", params={"flow_id": flow_id, "status": "completed", "limit": 500}), 200)
        assert listed["count"] == len(everyone)

    # Every contact: one enrollment, completed.
    rows = await enrollments_of(db, flow_id)
    assert sorted(e.contact_id for e in rows) == sorted(everyone)
    assert {e.status for e in rows} == {"completed"}

    # Every (enrollment, step): one Message, sent; and one .eml for each in the outbox.
    messages = await messages_of(db, flow_id)
    per_step = Counter((m.contact_id, m.step_id) for m in messages)
    assert per_step == Counter({(contact, step): 1 for contact in everyone for step in STEPS}), (
        {key: n for key, n in per_step.items() if n != 1}
    )
    assert {m.status for m in messages} == {"sent"}
    files = outbox_files(deployment.outbox)
    assert sorted(files) == sorted((m.idempotency_key, m.to_email) for m in messages)

    # The kill really cut work over: both workers ran enrollments; enrollments the dead one had been
    # running were finished by the survivor, which also ran again the activities it had left unfinished.
    histories = [await dev_env.client.get_workflow_handle(e.workflow_id).fetch_history() for e in rows]
    task_workers = [workflow_task_workers(history) for history in histories]
    by_worker = Counter(identity for workers_of_one in task_workers for identity in set(workers_of_one))
    assert by_worker.keys() == set(identities.values()), by_worker
    dead, alive = identities[dying.name], identities[survivor.name]
    assert any(dead in one and one[-1] == alive for one in task_workers), by_worker
    # An activity the dead worker had in hand is run again by the survivor; whether one was in hand at the
    # kill depends on timing (sends now take a few milliseconds, so the kill may fall between them).
    retried = Counter(identity for history in histories for identity in retried_after_timeout(history))
    assert set(retried) <= {alive}, retried


async def at_least_sent(db: Database, flow_id: int, n: int) -> bool:
    return await sent_count(db, flow_id) >= n
