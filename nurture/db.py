"""Async database access on SQLite (default) or PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from nurture import models  # noqa: F401  (registers the tables)
from nurture.settings import Settings, async_database_url


class Database:
    def __init__(self, url: str, **engine_kwargs):
        self.url = async_database_url(url)
        parsed = make_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine_kwargs.setdefault("connect_args", {"timeout": 30})
        else:
            engine_kwargs.setdefault("pool_pre_ping", True)
        self.engine: AsyncEngine = create_async_engine(self.url, **engine_kwargs)
        if self.is_sqlite:
            sa.event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            sa.event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
        self._sessions = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        # A single statement needs no transaction around it: on PostgreSQL, BEGIN and COMMIT are
        # a round trip each (SQLite keeps its transactions: they take its write lock up front).
        self._autocommit = None if self.is_sqlite else self.engine.execution_options(isolation_level="AUTOCOMMIT")

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            yield session

    async def execute_alone(self, statement: sa.Executable, params: dict | None = None) -> None:
        """One statement, committed on its own; on PostgreSQL one round trip (no BEGIN, no COMMIT)."""
        if self._autocommit is None:
            async with self.engine.begin() as conn:
                await conn.execute(statement, params)
            return
        async with self._autocommit.connect() as conn:
            await conn.execute(statement, params)

    async def create_all(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(SQLModel.metadata.create_all)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


def worker_database(url: str, settings: Settings) -> Database:
    """The worker's database. On PostgreSQL its pool is sized from the worker's activity slots
    (settings), and a connection is not pinged before each use (a round trip per transaction, a
    tenth of a busy worker's CPU): one broken by a database restart fails one activity attempt,
    which Temporal retries, and the pool replaces every connection opened before the failure.
    SQLite has one writer: more connections would only wait on its lock, first come not first
    served, so the worker keeps the default pool there, whose queue is."""
    if make_url(async_database_url(url)).get_backend_name() == "sqlite":
        return Database(url)
    return Database(url, pool_size=settings.worker_database_connections, pool_pre_ping=False)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # The driver's own transaction handling breaks savepoints; we issue BEGIN ourselves.
    dbapi_connection.isolation_level = None
    # WAL lets readers in while a writer works; the busy timeout rides out short write locks.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn) -> None:
    # IMMEDIATE takes the write lock up front: two transactions that read then write
    # queue up instead of one failing with "database is locked" half-way.
    conn.exec_driver_sql("BEGIN IMMEDIATE")
