"""Signing in and out of the console.

The sign-in form carries a one-off token that must match a cookie set with the form (double
submit), so another site cannot sign a browser in to an account of its choosing. Failed
sign-ins spend the same per-address budget as wrong API keys (rate_limit_failed_auth).
"""

from __future__ import annotations

import hmac
import secrets
from datetime import timedelta
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from api.console.rendering import page
from api.deps import CSRF_FIELD, SESSION_COOKIE, DatabaseDep, SettingsDep, form_fields
from nurture.logging import get_logger
from nurture.users import end_session, password_matches, start_session, user_by_email

router = APIRouter(prefix="/app", include_in_schema=False)

SIGN_IN_COOKIE = "nurture_sign_in"


def sign_in_url(next_path: str) -> str:
    return f"/app/sign-in?next={quote(next_path, safe='/')}" if next_path not in ("/app", "/app/") else "/app/sign-in"


def _safe_next(value: str | None) -> str:
    # Only back into the console: never an open redirect to another site ("//evil", "/\\evil").
    if value and value.startswith("/app") and not value.startswith(("//", "/\\")) and "\\" not in value:
        return value
    return "/app"


def _form(request: Request, status_code: int = 200, error: str | None = None, email: str = "", next_path: str = "/app") -> Response:
    token = secrets.token_urlsafe(24)
    response = page(
        request, "sign_in.html", status_code=status_code, error=error, email=email, next_path=next_path, form_token=token
    )
    response.set_cookie(SIGN_IN_COOKIE, token, httponly=True, samesite="strict", path="/app/sign-in", max_age=3600)
    return response


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_form(request: Request, next: str | None = None) -> Response:
    return _form(request, next_path=_safe_next(next))


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(request: Request, db: DatabaseDep, settings: SettingsDep) -> Response:
    fields = await form_fields(request)
    email, password = fields.get("email", "").strip(), fields.get("password", "")
    next_path = _safe_next(fields.get("next"))
    expected = request.cookies.get(SIGN_IN_COOKIE, "")
    if not expected or not hmac.compare_digest(expected, fields.get(CSRF_FIELD, "")):
        return _form(request, 403, "The sign-in form had expired: please try again.", email, next_path)
    limits = request.app.state.rate_limits
    client = limits.client_address(request.scope)
    await limits.ensure_left(limits.failed_auth, client)
    async with db.session() as session:
        user = await user_by_email(session, email) if email and len(email) <= 320 else None
        if not await password_matches(user, password) or user is None or user.disabled_at is not None:
            await limits.spend(limits.failed_auth, client)
            get_logger(component="console").info("sign_in_refused", email=email[:320])
            return _form(request, 401, "Wrong email or password.", email, next_path)
        token = await start_session(session, user, timedelta(hours=settings.session_lifetime_hours))
        user_id = user.id
        await session.commit()
    get_logger(component="console", user_id=user_id).info("signed_in")
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        SESSION_COOKIE, token, httponly=True, samesite="lax", secure=settings.session_cookie_secure, path="/",
        max_age=int(settings.session_lifetime_hours * 3600),
    )
    response.delete_cookie(SIGN_IN_COOKIE, path="/app/sign-in")
    return response


@router.post("/sign-out")
async def sign_out(request: Request, db: DatabaseDep) -> Response:
    """Ends the session for good (authorize checked the form's CSRF token first)."""
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        async with db.session() as session:
            await end_session(session, token)
            await session.commit()
    response = RedirectResponse("/app/sign-in", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
