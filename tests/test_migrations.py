"""Schema migrations on real SQLite and PostgreSQL: an empty database upgraded from base to head
holds exactly what the models say, a downgrade empties it, a database made by create_all before
migrations is taken in, and neither the API nor the worker starts on a database that is behind."""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from api.main import create_app
from nurture import migrating
from nurture.db import Database
from nurture.migrate_command import migrate_command
from nurture.migrating import BASELINE_REVISION, MIGRATIONS_DIR, SchemaMismatch, SchemaNotCurrent
from nurture.models import Contact, Event
from nurture.settings import Settings
from tests.conftest import BACKENDS, POSTGRES_URL
from tests.test_deploy import GOOD_SECRET, bare_env, free_port, run_until_exit

REPO = Path(__file__).resolve().parents[1]
HEAD = migrating.head_revision()


@pytest.fixture(params=BACKENDS)
async def empty_url(request, tmp_path) -> AsyncIterator[str]:
    """The URL of a database with nothing in it: a new SQLite file, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'nurture.db'}"
        return
    schema = f"nurture_migrations_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    # In the URL, so processes and the settings reach the same schema.
    yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
async def empty(empty_url) -> AsyncIterator[Database]:
    database = Database(empty_url)
    yield database
    await database.dispose()


async def differences_from_models(db: Database) -> list:
    """What `alembic revision --autogenerate` would write for this database: nothing, when it agrees."""

    def compare(conn):
        return compare_metadata(MigrationContext.configure(conn, opts=migrating.context_options()), SQLModel.metadata)

    async with db.engine.connect() as conn:
        return await conn.run_sync(compare)


async def tables(db: Database) -> set[str]:
    async with db.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))


async def tables_at(url: str) -> set[str]:
    database = Database(url)
    try:
        return await tables(database)
    finally:
        await database.dispose()


async def without_revision(db: Database) -> None:
    """What create_all left before migrations existed: the baseline's tables and no alembic_version.

    Made from the baseline rather than by create_all, which follows today's models: the baseline is
    the models of the release before migrations (test_an_empty_database_... holds while it is the head).
    """
    await migrating.upgrade(db, BASELINE_REVISION)
    async with db.engine.begin() as conn:
        await conn.execute(sa.text("DROP TABLE alembic_version"))


async def add_contact_with_event(db: Database, email: str = "ada@example.com") -> int:
    async with db.session() as session:
        contact = Contact(email=email, name="Ada")
        session.add(contact)
        await session.flush()
        session.add(Event(event_id=f"e-{email}", contact_id=contact.id, type="demo_requested"))
        await session.commit()
        return contact.id


# -- base to head, and back ----------------------------------------------------------------------


async def test_an_empty_database_upgraded_to_head_is_what_the_models_define(empty):
    with pytest.raises(SchemaNotCurrent, match="`nurture migrate`"):
        await migrating.require_current_schema(empty)

    migrated = await migrating.upgrade(empty)

    assert (migrated.before, migrated.after, migrated.stamped) == (None, HEAD, False)
    assert await differences_from_models(empty) == []
    assert {t.name for t in SQLModel.metadata.sorted_tables} | {"alembic_version"} == await tables(empty)
    assert await migrating.require_current_schema(empty) == HEAD
    contact_id = await add_contact_with_event(empty)
    again = await migrating.upgrade(empty)
    assert (again.before, again.after) == (HEAD, HEAD)
    async with empty.session() as session:
        assert (await session.get(Contact, contact_id)).email == "ada@example.com"


async def test_a_downgrade_to_base_removes_every_table_and_the_upgrade_comes_back(empty):
    await migrating.upgrade(empty)
    await migrating.downgrade(empty, "base")

    assert await tables(empty) <= {"alembic_version"}
    with pytest.raises(SchemaNotCurrent, match="has no tables yet: run `nurture migrate`"):
        await migrating.require_current_schema(empty)
    assert (await migrating.upgrade(empty)).after == HEAD
    assert await differences_from_models(empty) == []


async def test_two_upgrades_at_once_create_the_schema_once(empty_url):
    """Two upgraders starting together (the race create_all at every start had) take turns."""
    first, second = Database(empty_url), Database(empty_url)
    try:
        results = await asyncio.gather(migrating.upgrade(first), migrating.upgrade(second))
    finally:
        await first.dispose()
        await second.dispose()
    assert sorted((r.before or "") for r in results) == ["", HEAD]
    checked = Database(empty_url)
    try:
        assert await differences_from_models(checked) == []
    finally:
        await checked.dispose()


async def test_a_later_migration_can_rebuild_a_table_other_tables_point_at(empty, tmp_path):
    """SQLite changes a column by copying the table (batch mode): with rows pointing at it, that
    works only with foreign keys off during the migration, and they are back on after it."""
    scripts = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9999_longer_names.py").write_text(
        f'''"""A column change SQLite can only make by copying the table."""
from alembic import op
import sqlalchemy as sa

revision = "9999"
down_revision = "{HEAD}"


def upgrade():
    with op.batch_alter_table("contacts") as batch:
        batch.alter_column("name", existing_type=sa.String(), type_=sa.String(length=500), existing_nullable=True)


def downgrade():
    with op.batch_alter_table("contacts") as batch:
        batch.alter_column("name", existing_type=sa.String(length=500), type_=sa.String(), existing_nullable=True)
'''
    )
    await migrating.upgrade(empty)
    contact_id = await add_contact_with_event(empty)

    migrated = await migrating.upgrade(empty, script_location=scripts)

    assert (migrated.before, migrated.after) == (HEAD, "9999")
    async with empty.session() as session:
        assert (await session.get(Contact, contact_id)).name == "Ada"
        session.add(Event(event_id="orphan", contact_id=contact_id + 1000, type="x"))
        with pytest.raises(sa.exc.IntegrityError):  # foreign keys are enforced again
            await session.commit()
    with pytest.raises(SchemaNotCurrent, match="does not know"):
        await migrating.require_current_schema(empty)  # this version's newest is HEAD, not 9999


# -- a database from before migrations -----------------------------------------------------------


async def test_a_database_created_before_migrations_is_stamped_and_keeps_its_rows(empty):
    await without_revision(empty)
    contact_id = await add_contact_with_event(empty)
    with pytest.raises(SchemaNotCurrent, match="created before schema migrations.*`nurture migrate`"):
        await migrating.require_current_schema(empty)

    migrated = await migrating.upgrade(empty)

    assert (migrated.before, migrated.after, migrated.stamped) == (None, HEAD, True)
    assert await migrating.require_current_schema(empty) == HEAD
    assert await differences_from_models(empty) == []
    async with empty.session() as session:
        assert (await session.get(Contact, contact_id)).email == "ada@example.com"


def readme_upgrade_statements() -> list[str]:
    section = re.search(r"^## Upgrading\n(.*?)^## ", (REPO / "README.md").read_text(), flags=re.S | re.M)
    assert section, "README.md has no Upgrading section"
    [block] = re.findall(r"```sql\n(.*?)```", section.group(1), flags=re.S)
    return [statement.strip() for statement in block.split(";") if statement.strip()]


async def test_a_database_missing_the_pause_columns_is_refused_until_the_readme_statements_add_them(empty):
    await without_revision(empty)
    async with empty.engine.begin() as conn:
        for column in ("requested_by", "api_key_id", "authenticated"):
            await conn.execute(sa.text(f"ALTER TABLE pause_log DROP COLUMN {column}"))
    before = await tables(empty)

    with pytest.raises(SchemaMismatch) as refused:
        await migrating.upgrade(empty)
    for column in ("requested_by", "api_key_id", "authenticated"):
        assert f"pause_log: column {column} is missing" in str(refused.value)
    assert "nurture migrate" in str(refused.value)
    assert await tables(empty) == before  # nothing was stamped or upgraded

    async with empty.engine.begin() as conn:
        for statement in readme_upgrade_statements():
            await conn.execute(sa.text(statement))
    assert (await migrating.upgrade(empty)).stamped
    assert await differences_from_models(empty) == []


# -- the API and the worker only check --------------------------------------------------------------


def settings_for(url: str, tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=tmp_path,
        database_url=url,
        temporal_address="127.0.0.1:1",  # nowhere: the API starts without Temporal
        tracking_secret=GOOD_SECRET,
        email_webhook_secret=GOOD_SECRET,
    )


async def test_the_api_refuses_to_start_on_an_unmigrated_database_and_starts_once_migrated(empty_url, tmp_path):
    settings = settings_for(empty_url, tmp_path)
    app = create_app(settings)
    with pytest.raises(SchemaNotCurrent, match="`nurture migrate`"):
        async with app.router.lifespan_context(app):
            pass
    assert await tables_at(empty_url) == set()  # it created nothing

    await migrating.migrate(settings)
    async with app.router.lifespan_context(app):
        assert app.state.db is not None


def test_the_processes_refuse_an_unmigrated_database_and_name_the_command(tmp_path):
    env = bare_env(tmp_path, NURTURE_TRACKING_SECRET=GOOD_SECRET, NURTURE_EMAIL_WEBHOOK_SECRET=GOOD_SECRET,
                   NURTURE_WEBHOOK_SECRET=GOOD_SECRET)
    api = [sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(free_port())]
    for command in (api, [sys.executable, "-m", "worker"]):
        code, output = run_until_exit(command, env)
        assert code != 0, output
        assert "refused_to_start" in output and "nurture migrate" in output, output[-3000:]
    assert not (tmp_path / "nurture.db").exists()  # no empty database left behind


# -- `nurture migrate` as an operator runs it ------------------------------------------------------------


def nurture(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nurture.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_nurture_migrate_says_from_which_revision_to_which(tmp_path):
    env = bare_env(tmp_path)
    database = tmp_path / "nurture.db"

    shown = nurture(["migrate", "--sql"], env)
    assert shown.returncode == 0, shown.stderr
    assert "CREATE TABLE contacts" in shown.stdout
    assert "INSERT INTO alembic_version (version_num) VALUES ('0001')" in shown.stdout
    assert f"version_num='{HEAD}'" in shown.stdout or f"VALUES ('{HEAD}')" in shown.stdout
    assert f"from an empty database to revision {HEAD}" in shown.stderr
    assert not database.exists()  # --sql changes nothing

    done = nurture(["migrate"], env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"database: {database}\nupgraded from an empty database to revision {HEAD} (head)\n"


async def run_migrate(settings: Settings, *, sql: bool = False) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await migrate_command(settings, out, err, sql=sql)
    return code, out.getvalue(), err.getvalue()


async def test_nurture_migrate_stamps_a_database_created_before_migrations_then_has_nothing_to_do(tmp_path):
    settings = settings_for(f"sqlite:///{tmp_path / 'nurture.db'}", tmp_path)
    db = Database(settings.database_url)
    try:
        await without_revision(db)
    finally:
        await db.dispose()

    code, out, _ = await run_migrate(settings, sql=True)
    assert code == 0 and "INSERT INTO alembic_version" in out and "CREATE TABLE contacts" not in out
    code, out, err = await run_migrate(settings)
    assert code == 0, err
    assert f"stamped it at revision {BASELINE_REVISION} (the baseline)" in out and "match the baseline" in out
    assert (await run_migrate(settings))[1].endswith(f"at revision {HEAD} (head): nothing to do\n")
    assert (await run_migrate(settings, sql=True))[1] == ""


async def test_nurture_migrate_names_each_difference_and_changes_nothing(tmp_path):
    settings = settings_for(f"sqlite:///{tmp_path / 'nurture.db'}", tmp_path)
    db = Database(settings.database_url)
    try:
        await without_revision(db)
        async with db.engine.begin() as conn:
            await conn.execute(sa.text("DROP INDEX ix_tasks_status"))
    finally:
        await db.dispose()

    code, out, err = await run_migrate(settings)

    assert code == 1 and out == ""
    assert "tasks: index ix_tasks_status (status) is missing" in err and "`nurture migrate` again" in err
    assert "alembic_version" not in await tables_at(settings.database_url)
