"""Alembic's entry point for nurture's migrations.

`nurture migrate` (nurture/migrating.py) hands over the connection it already holds, inside its
own transaction; the `alembic` command a developer runs (alembic.ini) connects to the database
the settings name. Offline (`--sql`) needs only the URL.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from nurture.migrating import context_options

config = context.config


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url") or _settings_url(),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **context_options(),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection: Connection) -> None:
    context.configure(connection=connection, **context_options())
    # Inside the caller's transaction this begins nothing; alone, it is the migration's transaction.
    with context.begin_transaction():
        context.run_migrations()


async def run_from_settings() -> None:
    from nurture.db import Database

    database = Database(config.get_main_option("sqlalchemy.url") or _settings_url())
    try:
        async with database.engine.connect() as connection:
            await connection.run_sync(run_on)
            await connection.commit()
    finally:
        await database.dispose()


def _settings_url() -> str:
    from nurture.settings import get_settings

    return get_settings().resolved_database_url


if context.is_offline_mode():
    run_offline()
elif config.attributes.get("connection") is not None:
    run_on(config.attributes["connection"])
else:
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    asyncio.run(run_from_settings())
