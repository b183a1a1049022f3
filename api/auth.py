"""Who may do what: one policy table, checked before every endpoint.

A route that the table does not cover is refused, so a new endpoint cannot be
left open by accident (the tests walk every route against this table). Which
contacts a sales key reaches is decided on the parsed id, by ``api.deps.ContactDep``.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

from fastapi import HTTPException, Request

from api.deps import CSRF_FIELD, CSRF_HEADER, NOT_YOURS, SESSION_COOKIE, Caller, SignInRequired, form_fields, resolve_contact
from nurture.api_keys import Role, authenticate
from nurture.users import signed_in

ALL = frozenset(Role)
ADMINS = frozenset({Role.admin})
WRITERS = frozenset({Role.admin, Role.marketer})
PAUSERS = frozenset({Role.admin, Role.marketer, Role.sales})
PUBLIC = None  # no key needed


@dataclass(frozen=True)
class Rule:
    methods: frozenset[str]
    path: re.Pattern
    roles: frozenset[Role] | None


def rule(methods: str, path: str, roles) -> Rule:
    return Rule(frozenset(methods.split()), re.compile(path), roles)


# First match wins. Paths are route templates, as FastAPI declares them.
POLICY: tuple[Rule, ...] = (
    rule("GET HEAD", r"^/(health|docs|docs/oauth2-redirect|redoc|openapi\.json|metrics)$", PUBLIC),
    # Links in emails and provider callbacks carry their own signatures.
    rule("GET POST HEAD", r"^/(t|u|optin)/", PUBLIC),
    rule("POST", r"^/webhooks/", PUBLIC),
    # The console (/app): its pages show each role what the rows below let it do; every write it
    # makes goes to the API routes below, with the session cookie and its CSRF token.
    rule("GET POST HEAD", r"^/app/(sign-in|static/.*)$", PUBLIC),
    rule("POST", r"^/app/sign-out$", ALL),
    rule("POST", r"^/app/(flows/check|templates/preview)$", WRITERS),  # they only read
    rule("GET HEAD", r"^/app(/.*)?$", ALL),
    rule("GET POST DELETE", r"^/api-keys", ADMINS),
    rule("GET POST", r"^/users", ADMINS),
    # A full CRM resync reads every CRM contact: an operator's call.
    rule("POST", r"^/crm/resync$", ADMINS),
    rule("POST", r"^/contacts/\{contact_id\}/(pause|resume)$", PAUSERS),
    rule("GET", r"^/contacts/\{contact_id\}(/.*)?$", ALL),
    # A test send goes to the signed-in person's own address, but it is a write like any other.
    rule("POST", r"^/templates/\{key\}/test-send$", WRITERS),
    rule("GET", r"^/pauses$", ALL),
    # Events, one at a time or in batches: site trackers, CRM connectors, importers.
    rule("POST", r"^/events(/batch)?$", WRITERS),
    rule("GET", r"^/", frozenset({Role.admin, Role.marketer, Role.read_only})),
    rule("POST PUT PATCH DELETE", r"^/", WRITERS),
)


def roles_for(method: str, path: str) -> frozenset[Role] | None:
    for candidate in POLICY:
        if method in candidate.methods and candidate.path.search(path):
            return candidate.roles
    return frozenset()  # not in the table: nobody


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def authorize(request: Request) -> None:
    """The app-wide dependency: resolve the key or the console session and check its role; leave
    the caller on ``request.state.caller``.

    A console session (cookie) counts wherever a key does, and is resolved even when the API runs
    without keys, so that what a person does is recorded under their name; a write made with it
    must carry the session's CSRF token. Console pages always need a session.
    It runs before FastAPI parses the path, so it decides nothing on raw path values: a sales key's
    scope is checked on the parsed id, by the ``ContactDep`` every contact route takes.
    """
    request.state.caller = None
    settings = request.app.state.settings
    route = request.scope.get("route")
    template = getattr(route, "path", request.url.path)
    roles = roles_for(request.method, template)
    if roles is PUBLIC:
        return
    console = template == "/app" or template.startswith("/app/")
    token = _token(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    if console:
        caller = await _session_caller(request, cookie) if cookie else None
        if caller is None:
            raise SignInRequired(request.url.path)
    elif token is None and cookie is not None:
        caller = await _session_caller(request, cookie)
        if caller is None:
            if not settings.auth_required:
                return  # a stale cookie on an open API counts as no credential
            raise HTTPException(401, "your console session has ended: sign in again at /app/sign-in")
    elif not settings.auth_required:
        return
    elif token is None:
        raise HTTPException(401, "an API key is required: Authorization: Bearer <key>",
                            headers={"WWW-Authenticate": "Bearer"})
    else:
        caller = await _key_caller(request, token)
    if caller.is_person and request.method not in SAFE_METHODS:
        await _require_csrf(request, caller)
    if caller.role not in roles:
        what = "console user" if caller.is_person else "key"
        raise HTTPException(403, f"a {caller.role} {what} may not {request.method} {template}")
    if caller.is_sales and "{contact_id}" in template and not resolves_contact(route):
        # A contact route that does not check the owner itself is closed to sales keys, not open.
        raise HTTPException(403, NOT_YOURS)
    request.state.caller = caller


async def _session_caller(request: Request, cookie: str) -> Caller | None:
    async with request.app.state.db.session() as session:
        user = await signed_in(session, cookie)
    if user is None:
        return None
    await request.app.state.rate_limits.spend(request.app.state.rate_limits.per_key, f"user:{user.user_id}")
    return Caller.of_user(user)


async def _require_csrf(request: Request, caller: Caller) -> None:
    """A write made with the session cookie must echo the session's CSRF token (a header from the
    console's scripts, the form field from its plain forms): another site can make the browser send
    the cookie, but cannot read the token."""
    presented = request.headers.get(CSRF_HEADER)
    if presented is None and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        presented = (await form_fields(request)).get(CSRF_FIELD)
    if not presented or not hmac.compare_digest(presented, caller.csrf_token or ""):
        raise HTTPException(403, f"a write with the console session needs its CSRF token ({CSRF_HEADER} header)")


async def _key_caller(request: Request, token: str) -> Caller:
    # Abuse limits (api/rate_limits.py): a client that spent its failed-auth budget may not try
    # another key, right or wrong, until the window moves on; every authenticated call counts
    # against its key's budget.
    limits = request.app.state.rate_limits
    client = limits.client_address(request.scope)
    await limits.ensure_left(limits.failed_auth, client)
    async with request.app.state.db.session() as session:
        key = await authenticate(session, token)
        if key is None:
            await limits.spend(limits.failed_auth, client)
            raise HTTPException(401, "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
        await limits.spend(limits.per_key, f"key:{key.id}")
        return Caller.of(key)


def resolves_contact(route) -> bool:
    """Whether the route takes its contact through ``resolve_contact`` (which scopes sales keys)."""
    pending = [getattr(route, "dependant", None)]
    while pending:
        dependant = pending.pop()
        if dependant is None:
            continue
        if dependant.call is resolve_contact:
            return True
        pending.extend(dependant.dependencies)
    return False


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.headers.get("x-api-key") or None
