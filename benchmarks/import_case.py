"""The contact import case, measured by benchmarks/imports.py when that module exists.

``measure_import(base_url, key, rows)`` drives ``POST /contacts/import`` over real HTTP: the API is
served on a loopback port for it (``base_url``), with an admin API key of its own (``key``, sent as
the module sees fit); ``rows`` is how many contact rows to import (``--import-rows``). What it
answers goes into the results as is. Without the module the case
reports "not available" rather than failing the run; a failure inside it is reported as "failed",
with the error, and the other cases' numbers stand.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

from nurture.api_keys import Role, create_key
from nurture.db import Database

NOT_AVAILABLE = "not available"


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """The app on 127.0.0.1 at a free port; answers its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise RuntimeError("the API server stopped before it started")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def admin_key(db: Database) -> str:
    async with db.session() as s:
        _, secret = await create_key(s, "benchmark", Role.admin)
        await s.commit()
    return secret


async def engine_import(app: FastAPI, db: Database, rows: int) -> dict[str, Any]:
    try:
        from benchmarks.imports import measure_import
    except ModuleNotFoundError as exc:
        if exc.name != "benchmarks.imports":
            raise
        return {"status": NOT_AVAILABLE, "reason": "benchmarks/imports.py is not there"}
    try:
        key = await admin_key(db)
        async with serving(app) as base_url:
            measured = await measure_import(base_url, key, rows)
    except Exception as exc:  # noqa: BLE001 - an optional case must not sink the run; its error is reported
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    return {"status": "measured", "rows": rows} | dict(measured)
