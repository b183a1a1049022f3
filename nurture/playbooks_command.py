"""``nurture load-playbooks``: install the shipped playbooks straight into the database (no HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TextIO

from temporalio.client import Client

from nurture.db import Database
from nurture.flow.triggers import SCANNED_TRIGGER_TYPES
from nurture.migrating import upgrade
from nurture.playbooks import PlaybookError, install_playbook, load_playbooks, playbooks_directory
from nurture.settings import Settings
from nurture.temporal import connect

CONNECT_TIMEOUT_SECONDS = 10.0


async def load_playbooks_command(
    settings: Settings,
    out: TextIO,
    err: TextIO,
    *,
    activate: bool = False,
    names: Sequence[str] = (),
    db: Database | None = None,
) -> int:
    """Install every playbook (or those named): missing templates, then the flow as a draft or active.

    Running it again changes nothing that exists: a flow is found by its name, a template by its key.
    """
    try:
        playbooks = load_playbooks(playbooks_directory(settings))
    except PlaybookError as exc:
        err.write(f"a playbook file is broken: {exc}\n")
        return 1
    unknown = sorted(set(names) - {p.name for p in playbooks})
    if unknown:
        err.write(f"no playbook named {', '.join(unknown)} (known: {', '.join(p.name for p in playbooks)})\n")
        return 2
    chosen = [p for p in playbooks if not names or p.name in names]

    client: Client | None = None
    if activate and any(p.flow.trigger.type in SCANNED_TRIGGER_TYPES for p in chosen):
        try:
            client = await asyncio.wait_for(connect(settings), CONNECT_TIMEOUT_SECONDS)
        except Exception as exc:  # connect raises RuntimeError, TimeoutError, RPCError ...
            err.write(f"Temporal is unreachable at {settings.temporal_address} ({exc or type(exc).__name__}): "
                      "playbooks with date or inactivity triggers stay drafts\n")

    database = db or Database(settings.resolved_database_url)
    try:
        if db is None:  # a database passed in is used as is
            await upgrade(database)
        for playbook in chosen:
            scanned = playbook.flow.trigger.type in SCANNED_TRIGGER_TYPES
            async with database.session() as session:
                outcome = await install_playbook(
                    session, playbook, activate=activate and (client is not None or not scanned),
                    client=client, settings=settings,
                )
            state = "created" if outcome.created else "exists"
            out.write(
                f"{playbook.number:02d} {playbook.name}: flow {outcome.flow.id} {state}, {outcome.flow.status}; "
                f"templates {len(outcome.created_templates)} created, {len(outcome.existing_templates)} existing\n"
            )
    finally:
        if db is None:
            await database.dispose()
    return 0
