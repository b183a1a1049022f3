"""A worker process that dies, or is told to stop, on the real dev server and real time.

The worker runs as ``python -m worker`` (as deployed) against an aiosmtpd server in this process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from activities.email.providers import SmtpProvider
from nurture.db import Database
from nurture.enrolling import Enroller
from nurture.migrating import upgrade
from nurture.settings import Settings, SmtpSettings
from nurture.trigger_schedule import trigger_scan_schedule_id
from tests.conftest import eventually
from tests.factories import add_active_flow, add_contact, add_templates, messages_of
from tests.test_send_failures import ONE_SEND
from tests.test_smtp import Recorder, free_port
from tests.test_workflow_example import enroll
from worker.main import build_worker

ROOT = Path(__file__).resolve().parent.parent


class Server:
    """An aiosmtpd server on a free port whose DATA answer waits ``answer_after`` seconds (None: never)."""

    def __init__(self, answer_after: float | None = 0):
        self.answer_after = answer_after
        self.data_started = threading.Event()
        self.envelopes: list = []
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope):
        self.data_started.set()
        await asyncio.sleep(3600 if self.answer_after is None else self.answer_after)
        self.envelopes.append(envelope)
        return "250 2.0.0 OK"

    def smtp(self) -> SmtpSettings:
        return SmtpSettings(host="127.0.0.1", port=self.port, timeout_seconds=60)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.controller.stop()


def start(servers: list[Server], answer_after: float | None = 0) -> Server:
    server = Server(answer_after)
    server.controller.start()
    servers.append(server)
    return server


@pytest.fixture
async def sqlite_db(tmp_path) -> AsyncIterator[Database]:
    """A file the worker process opens too."""
    database = Database(f"sqlite:///{tmp_path / 'nurture.db'}")
    await upgrade(database)  # the worker process refuses a database that is not migrated
    yield database
    await database.dispose()


@pytest.fixture
def crash_settings(tmp_path, sqlite_db: Database, dev_env) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=tmp_path,
        database_url=sqlite_db.url,
        temporal_address=dev_env.client.service_client.config.target_host,
        temporal_task_queue=f"crash-{uuid.uuid4()}",
        workflow_id_prefix=f"crash-{uuid.uuid4().hex[:8]}",
        temporal_search_attributes=True,
        email_provider="smtp",
        auth_required=False,
        # A worker refuses to start without real secrets (test_deploy.py).
        tracking_secret=f"crash-tracking-{uuid.uuid4().hex}",
        webhook_secret=f"crash-webhooks-{uuid.uuid4().hex}",
    )


class WorkerProcess:
    def __init__(self, settings: Settings, smtp: SmtpSettings, log: Path, **extra_env: str):
        env = {
            **os.environ,
            "NURTURE_DATA_DIR": str(settings.data_dir),
            "NURTURE_DATABASE_URL": f"sqlite:///{settings.data_dir / 'nurture.db'}",
            "NURTURE_TEMPORAL_ADDRESS": settings.temporal_address,
            "NURTURE_TEMPORAL_TASK_QUEUE": settings.temporal_task_queue,
            "NURTURE_WORKFLOW_ID_PREFIX": settings.workflow_id_prefix,
            "NURTURE_EMAIL_PROVIDER": "smtp",
            "NURTURE_SMTP__HOST": smtp.host,
            "NURTURE_SMTP__PORT": str(smtp.port),
            "NURTURE_SMTP__TIMEOUT_SECONDS": str(smtp.timeout_seconds),
            "NURTURE_TRACKING_SECRET": settings.tracking_secret,
            "NURTURE_WEBHOOK_SECRET": settings.webhook_secret,
            **extra_env,
        }
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=log.open("ab"), stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def worker_processes(dev_env, crash_settings: Settings) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for process in started:
        process.stop()


async def remove_schedule(dev_env, settings: Settings) -> None:
    """The worker creates the trigger-scan schedule of its prefix on the shared dev server."""
    try:
        await dev_env.client.get_schedule_handle(trigger_scan_schedule_id(settings.workflow_id_prefix)).delete()
    except Exception:
        pass


async def wait_for(event: threading.Event, process: WorkerProcess, timeout: float = 90) -> None:
    if not await asyncio.to_thread(event.wait, timeout):
        raise AssertionError(f"the worker never handed the message over:\n{process.output()}")


async def sent_once(db: Database, contact_id: int):
    messages = await messages_of(db, contact_id)
    return messages if messages and all(m.status == "sent" for m in messages) else None


async def test_a_killed_workers_send_is_retried_by_another_worker_within_seconds(
    sqlite_db, crash_settings, dev_env, servers, worker_processes, tmp_path
):
    db, settings = sqlite_db, crash_settings
    await add_templates(db)
    flow, contact = await add_active_flow(db, ONE_SEND), await add_contact(db)
    silent = start(servers, answer_after=None)  # takes the message, never answers
    dying = WorkerProcess(settings, silent.smtp(), tmp_path / "worker-1.log")
    worker_processes.append(dying)
    try:
        await enroll(db, Enroller(dev_env.client, settings), flow, contact)
        await wait_for(silent.data_started, dying)
        dying.process.kill()  # kill -9 in the middle of the send
        dying.process.wait(10)

        healthy = start(servers)
        async with build_worker(dev_env.client, db, SmtpProvider(healthy.smtp()), settings):
            # Well inside the 2 minutes a send once waited out before it was retried.
            [message] = await eventually(lambda: sent_once(db, contact.id), timeout=60)
        assert len(healthy.envelopes) == 1 and silent.envelopes == []
        assert message.attempts == 2
    finally:
        await remove_schedule(dev_env, settings)


async def test_sigterm_lets_the_send_in_flight_finish_then_exits_0(
    sqlite_db, crash_settings, dev_env, servers, worker_processes, tmp_path
):
    db, settings = sqlite_db, crash_settings
    await add_templates(db)
    flow, contact = await add_active_flow(db, ONE_SEND), await add_contact(db)
    slow = start(servers, answer_after=12)  # longer than the SDK's default drain
    stopping = WorkerProcess(settings, slow.smtp(), tmp_path / "worker.log", NURTURE_WORKER_GRACEFUL_SHUTDOWN_SECONDS="60")
    worker_processes.append(stopping)
    try:
        await enroll(db, Enroller(dev_env.client, settings), flow, contact)
        await wait_for(slow.data_started, stopping)
        stopping.process.send_signal(signal.SIGTERM)

        code = await asyncio.to_thread(stopping.process.wait, 90)
        assert code == 0, stopping.output()
        [message] = await messages_of(db, contact.id)
        assert message.status == "sent", stopping.output()
        assert len(slow.envelopes) == 1
        assert "worker_stopped" in stopping.output()
    finally:
        await remove_schedule(dev_env, settings)
