"""The contact import case, measured by benchmarks/imports.py when that module exists.

``measure_import(base_url, key, rows)`` drives ``POST /contacts/import`` over real HTTP: the API is
served on a loopback port (``base_url``), in its own process, with an admin API key of its own (``key``, sent as
the module sees fit); ``rows`` is how many contact rows to import (``--import-rows``). What it
answers goes into the results as is. Without the module the case
reports "not available" rather than failing the run; a failure inside it is reported as "failed",
with the error, and the other cases' numbers stand.
"""

from __future__ import annotations

from typing import Any

from nurture.api_keys import Role, create_key
from nurture.db import Database

NOT_AVAILABLE = "not available"


async def admin_key(db: Database) -> str:
    async with db.session() as s:
        _, secret = await create_key(s, "benchmark", Role.admin)
        await s.commit()
    return secret


async def engine_import(base_url: str, db: Database, rows: int) -> dict[str, Any]:
    """The case against an API already served at ``base_url`` (its own process in benchmarks/enrollments.py)."""
    try:
        from benchmarks.imports import measure_import
    except ModuleNotFoundError as exc:
        if exc.name != "benchmarks.imports":
            raise
        return {"status": NOT_AVAILABLE, "reason": "benchmarks/imports.py is not there"}
    try:
        key = await admin_key(db)
        measured = await measure_import(base_url.rstrip("/"), key, rows)
    except Exception as exc:  # noqa: BLE001 - an optional case must not sink the run; its error is reported
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    return {"status": "measured", "rows": rows} | dict(measured)
