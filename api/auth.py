"""Who may do what: one policy table, checked before every endpoint.

A route that the table does not cover is refused, so a new endpoint cannot be
left open by accident (the tests walk every route against this table). Which
contacts a sales key reaches is decided on the parsed id, by ``api.deps.ContactDep``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi import HTTPException, Request

from api.deps import NOT_YOURS, Caller, resolve_contact
from nurture.api_keys import Role, authenticate

ALL = frozenset(Role)
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
    rule("GET POST DELETE", r"^/api-keys", frozenset({Role.admin})),
    # A full CRM resync reads every CRM contact: an operator's call.
    rule("POST", r"^/crm/resync$", frozenset({Role.admin})),
    rule("POST", r"^/contacts/\{contact_id\}/(pause|resume)$", PAUSERS),
    rule("GET", r"^/contacts/\{contact_id\}(/.*)?$", ALL),
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


async def authorize(request: Request) -> None:
    """The app-wide dependency: resolve the key and check its role; leave it on ``request.state.caller``.

    It runs before FastAPI parses the path, so it decides nothing on raw path values: a sales key's
    scope is checked on the parsed id, by the ``ContactDep`` every contact route takes.
    """
    request.state.caller = None
    settings = request.app.state.settings
    route = request.scope.get("route")
    template = getattr(route, "path", request.url.path)
    roles = roles_for(request.method, template)
    if roles is PUBLIC or not settings.auth_required:
        return
    token = _token(request)
    if token is None:
        raise HTTPException(401, "an API key is required: Authorization: Bearer <key>",
                            headers={"WWW-Authenticate": "Bearer"})
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
        caller = Caller.of(key)
    if caller.role not in roles:
        raise HTTPException(403, f"a {caller.role} key may not {request.method} {template}")
    if caller.is_sales and "{contact_id}" in template and not resolves_contact(route):
        # A contact route that does not check the owner itself is closed to sales keys, not open.
        raise HTTPException(403, NOT_YOURS)
    request.state.caller = caller


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
