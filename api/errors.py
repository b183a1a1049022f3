"""Errors turned into 4xx/503 answers: bad input names its field, outages say so, never a 500."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from activities.email.rendering import RenderProcessLost
from nurture.enrolling import TemporalUnavailable
from nurture.flow import Problem
from nurture.logging import get_logger


class ErrorOut(BaseModel):
    detail: str = Field(description="What went wrong, in a sentence.")


class FieldProblemOut(BaseModel):
    loc: list[str | int] = Field(description='Where: ["body", "steps", 2, "template"], ["query", "limit"]...')
    msg: str
    type: str
    path: str | None = Field(default=None, description="For a flow problem: e.g. steps[2].template.")


class ValidationErrorOut(BaseModel):
    detail: list[FieldProblemOut]


def _error(description: str, model: type[BaseModel] = ErrorOut) -> dict[str, Any]:
    # JSON whatever the route's own response class (the consent pages are HTML, their 422 is not).
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error_schemas() -> dict[str, Any]:
    """The OpenAPI components ERROR_RESPONSES refer to."""
    found: dict[str, Any] = {}
    for model in (ErrorOut, ValidationErrorOut):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        found.update(schema.pop("$defs", {}))
        found[model.__name__] = schema
    return found


# The errors any route may answer, declared once for all of them (main.py includes every router
# with these); a route adds its own (e.g. 410) or describes one more precisely.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("The request cannot be read"),
    401: _error("No API key, or an unknown or revoked one"),
    403: _error("The key's role may not do this"),
    404: _error("Not found"),
    409: _error("Conflicts with the current state (e.g. already exists, not active)"),
    413: {"description": "The request body is larger than allowed"},
    415: _error("Unsupported Content-Type"),
    422: _error("Invalid input: each problem names its field", ValidationErrorOut),
    429: {
        "description": "Too many requests: retry after the given number of seconds",
        "headers": {"Retry-After": {"description": "Seconds to wait", "required": True, "schema": {"type": "integer"}}},
    },
    503: _error("Temporal or the database is unreachable; nothing was changed"),
}


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


@lru_cache(maxsize=256)
def _template_pattern(template: str) -> re.Pattern:
    return re.compile("".join("[^/]+" if part.startswith("{") else re.escape(part) for part in re.split(r"(\{[^}]+\})", template)))


def documented_methods(app: FastAPI, path: str) -> list[str] | None:
    """The methods the OpenAPI declares for the request's path (None when it declares none). A path
    several templates match is the most specific one's: /flows/validate is POST, not GET /flows/{flow_id}."""
    best: tuple[int, set[str]] | None = None
    for template, operations in app.openapi()["paths"].items():
        if not _template_pattern(template).fullmatch(path):
            continue
        params, methods = template.count("{"), {method.upper() for method in operations}
        if best is None or params < best[0]:
            best = (params, methods)
        elif params == best[0]:
            best[1].update(methods)
    return sorted(best[1]) if best else None


def install_error_handlers(app: FastAPI) -> None:
    log = get_logger(component="api")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # The router names at most the first matching route's methods, and none for included routers.
        methods = documented_methods(request.app, request.url.path) if exc.status_code == 405 else None
        if methods:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(methods)}
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # A path of a literal route (POST /contacts/import) also fits a parameter route of other
        # methods (GET /contacts/{contact_id}), whose parameter then fails: the method is what is wrong.
        methods = documented_methods(request.app, request.url.path)
        if methods and request.method not in methods:
            return JSONResponse(
                status_code=405, content={"detail": "Method Not Allowed"}, headers={"Allow": ", ".join(methods)}
            )
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(TemporalUnavailable)
    async def temporal_unavailable(request: Request, exc: TemporalUnavailable) -> JSONResponse:
        log.warning("temporal_unavailable", path=request.url.path, error=str(exc))
        return JSONResponse(status_code=503, content={"detail": f"Temporal is unavailable, nothing was changed: {exc}"})

    @app.exception_handler(RenderProcessLost)
    async def render_process_lost(request: Request, exc: RenderProcessLost) -> JSONResponse:
        # A render process killed from outside (the OOM killer): not the template's fault, retry.
        log.warning("render_process_lost", path=request.url.path, error=str(exc))
        return JSONResponse(status_code=503, content={"detail": f"templates cannot be rendered now, retry: {exc}"})

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
