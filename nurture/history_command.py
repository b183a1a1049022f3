"""``nurture history <workflow id | enrollment id>``: an enrollment's timeline in the terminal."""

from __future__ import annotations

import json
from typing import TextIO

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from nurture.db import Database
from nurture.history import format_entry, read_history
from nurture.models import Enrollment
from nurture.settings import Settings
from nurture.temporal import connect


async def _resolve(settings: Settings, ref: str, db: Database | None) -> tuple[str, str | None] | None:
    """An enrollment id (digits) is looked up in the database; anything else is a workflow id."""
    if not ref.isdigit():
        return ref, None
    database = db or Database(settings.resolved_database_url)
    try:
        async with database.session() as session:
            row = await session.get(Enrollment, int(ref)) if int(ref) < 2**31 else None
            if row is None:  # a workflow id made only of digits is still possible
                return None
            return row.workflow_id, row.run_id
    finally:
        if db is None:
            await database.dispose()


async def show_history(
    settings: Settings,
    ref: str,
    out: TextIO,
    err: TextIO,
    *,
    as_json: bool = False,
    client: Client | None = None,
    db: Database | None = None,
) -> int:
    """Print the timeline; 0 when shown, 1 when the enrollment is unknown or Temporal unreachable."""
    found = await _resolve(settings, ref, db)
    if found is None:
        err.write(f"no enrollment {ref} in the database\n")
        return 1
    workflow_id, run_id = found
    try:
        client = client or await connect(settings)
        history = await read_history(client, workflow_id, run_id)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            err.write(f"no workflow {workflow_id} in namespace {settings.temporal_namespace}\n")
        else:
            err.write(f"Temporal at {settings.temporal_address} answered: {exc}\n")
        return 1
    except RuntimeError as exc:  # connect() failing
        err.write(f"cannot reach Temporal at {settings.temporal_address}: {exc}\n")
        return 1
    if as_json:
        out.write(json.dumps(history.model_dump(mode="json"), indent=2) + "\n")
        return 0
    out.write(f"{history.workflow_id}  ({history.status}, {len(history.runs)} run{'s' if len(history.runs) > 1 else ''})\n")
    for entry in history.entries:
        out.write(format_entry(entry) + "\n")
    return 0
