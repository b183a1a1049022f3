"""Errors turned into 4xx/503 answers: bad input names its field, outages say so, never a 500."""

from __future__ import annotations

import re
from collections.abc import Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from nurture.enrolling import TemporalUnavailable
from nurture.flow import Problem
from nurture.logging import get_logger

_PATH_PART = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def path_to_loc(path: str) -> list[str | int]:
    """``steps[2].template`` -> ``["steps", 2, "template"]``; the whole flow is ``[]``."""
    if path in ("flow", "body"):
        return []
    return [int(index) if index else name for index, name in _PATH_PART.findall(path)]


def flow_problems_error(problems: Iterable[Problem], where: str = "body") -> RequestValidationError:
    return RequestValidationError(
        [
            {"type": "flow_invalid", "loc": (where, *path_to_loc(p.path)), "msg": p.message, "path": p.path}
            for p in problems
        ]
    )


def install_error_handlers(app: FastAPI) -> None:
    log = get_logger(component="api")

    @app.exception_handler(TemporalUnavailable)
    async def temporal_unavailable(request: Request, exc: TemporalUnavailable) -> JSONResponse:
        log.warning("temporal_unavailable", path=request.url.path, error=str(exc))
        return JSONResponse(status_code=503, content={"detail": f"Temporal is unavailable, nothing was changed: {exc}"})

    @app.exception_handler(IntegrityError)
    async def integrity_error(request: Request, exc: IntegrityError) -> JSONResponse:
        log.info("conflict", path=request.url.path, error=str(exc.orig))
        return JSONResponse(
            status_code=409, content={"detail": "a concurrent request changed the same record; retry the request"}
        )

    @app.exception_handler(DataError)
    async def data_error(request: Request, exc: DataError) -> JSONResponse:
        log.info("unstorable_value", path=request.url.path, error=str(exc.orig))
        return JSONResponse(
            status_code=422,
            content={"detail": [{"type": "value_error", "loc": ["body"], "msg": f"a value cannot be stored: {exc.orig}"}]},
        )

    @app.exception_handler(DBAPIError)
    async def database_unavailable(request: Request, exc: DBAPIError) -> JSONResponse:
        log.error("database_error", path=request.url.path, error=str(exc.orig))
        return JSONResponse(status_code=503, content={"detail": f"the database is unavailable, nothing was changed: {exc.orig}"})
