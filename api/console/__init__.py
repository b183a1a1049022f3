"""The console at /app: server-rendered pages for marketers, reps and engineers.

Pages read through the domain (nurture/) as the API routes do; every write a page offers is a
call to the API route that already does it, made by static/console.js with the session cookie and
its CSRF token, so the console obeys the API's policy table and validation (docs/console.md).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.console import contact_pages, editor_pages, flow_pages, playbook_pages, sign_in, template_pages
from api.console.rendering import STATIC_DIR, error_page
from api.deps import SignInRequired

PREFIX = "/app"


def install_console(app: FastAPI) -> None:
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC_DIR), name="console-static")
    # The editor first: /app/flows/new is not a flow id.
    for module in (sign_in, editor_pages, flow_pages, contact_pages, playbook_pages, template_pages):
        # A page answers HEAD as it answers GET (link checkers, uptime probes); the server sends no body.
        for route in module.router.routes:
            if isinstance(route, APIRoute) and "GET" in route.methods:
                route.methods.add("HEAD")
        app.include_router(module.router)

    @app.exception_handler(SignInRequired)
    async def sign_in_first(request: Request, exc: SignInRequired) -> Response:
        return RedirectResponse(sign_in.sign_in_url(exc.path), status_code=303)

    api_errors = app.exception_handlers[StarletteHTTPException]

    @app.exception_handler(StarletteHTTPException)
    async def console_errors(request: Request, exc: StarletteHTTPException) -> Response:
        path = request.url.path
        if request.method in ("GET", "HEAD") and (path == PREFIX or path.startswith(f"{PREFIX}/")) and not path.startswith(f"{PREFIX}/static/"):
            return error_page(request, exc.status_code, str(exc.detail))
        return await api_errors(request, exc)
