"""Rendering console pages: one Jinja2 environment, and what a page may show a caller,
decided by the API's own policy table (a button is shown only to whom its route admits)."""

from __future__ import annotations

from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from api.auth import roles_for
from api.deps import Caller

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")


def can(caller: Caller | None, method: str, route: str) -> bool:
    """Whether the API's policy lets this caller make the call (route as declared, e.g. /flows/{flow_id})."""
    roles = roles_for(method, route)
    return roles is None or (caller is not None and caller.role in roles)


def require(caller: Caller | None, method: str, route: str) -> Caller:
    """A page showing what ``method route`` answers is for the same roles as that route: 403 otherwise."""
    if caller is None or not can(caller, method, route):
        role = caller.role if caller else "anonymous"
        raise HTTPException(403, f"a {role} user may not see this page ({method} {route} is not theirs)")
    return caller


def zone(name: str | None, fallback: str = "UTC") -> tzinfo:
    for candidate in (name, fallback, "UTC"):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def local(value: datetime | None, where: tzinfo | None = None) -> str:
    """A moment as people read it: in the given zone (the contact's), else UTC."""
    if value is None:
        return "—"
    shown = value.astimezone(where or ZoneInfo("UTC"))
    return shown.strftime("%a %d %b %Y %H:%M ") + (shown.tzname() or "")


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


templates.env.filters["local"] = local
templates.env.filters["percent"] = percent


def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    caller: Caller | None = getattr(request.state, "caller", None)
    return templates.TemplateResponse(
        request,
        name,
        {"caller": caller, "can": lambda method, route: can(caller, method, route), **context},
        status_code=status_code,
    )


def error_page(request: Request, status_code: int, message: str) -> HTMLResponse:
    return page(request, "error.html", status_code=status_code, status=status_code, message=message)
