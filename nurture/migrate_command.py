"""``nurture migrate``: bring the database to this version's schema (nurture/migrating.py).

Run it before starting the API and the workers of a new version: they refuse to start on a
database that is not at their newest revision. ``nurture stack`` runs it by itself.
"""

from __future__ import annotations

from typing import TextIO

import sqlalchemy as sa

from nurture.db import Database
from nurture.migrating import BASELINE_REVISION, Migrated, MigrationFailed, describe, upgrade, upgrade_sql
from nurture.settings import Settings


async def migrate_command(settings: Settings, out: TextIO, err: TextIO, *, sql: bool = False) -> int:
    """Upgrade to head and say from which revision to which; with ``sql``, print the SQL instead
    (on ``out``, the summary on ``err``) and change nothing."""
    database = Database(settings.resolved_database_url)
    where = describe(database)
    try:
        result = await (upgrade_sql(database, out) if sql else upgrade(database))
    except MigrationFailed as exc:
        err.write(f"nurture: {exc}\n")
        return 1
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        err.write(f"nurture: migrating the database at {where} failed, nothing was changed: {exc}\n")
        return 1
    finally:
        await database.dispose()
    (err if sql else out).write(summary(where, result, sql=sql))
    return 0


def summary(where: str, result: Migrated, *, sql: bool = False) -> str:
    lines = [f"database: {where}"]
    if result.stamped:
        lines.append(
            f"{'would stamp' if sql else 'stamped'} it at revision {BASELINE_REVISION} (the baseline): its tables were "
            "created before schema migrations and match the baseline"
        )
    before = BASELINE_REVISION if result.stamped else result.before
    if before == result.after:
        lines.append(f"at revision {result.after} (head): nothing to do")
    else:
        verb = "the SQL above upgrades it" if sql else "upgraded"
        lines.append(f"{verb} from {before or 'an empty database'} to revision {result.after} (head)")
    return "".join(line + "\n" for line in lines)
