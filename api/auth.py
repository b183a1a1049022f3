"""Who may do what: one policy table, checked before every endpoint.

A route that the table does not cover is refused, so a new endpoint cannot be
left open by accident (the tests walk every route against this table).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi import HTTPException, Request

from nurture.api_keys import Role, authenticate
from nurture.models import Contact

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
    rule("POST", r"^/contacts/\{contact_id\}/(pause|resume)$", PAUSERS),
    rule("GET", r"^/contacts/\{contact_id\}(/.*)?$", ALL),
    rule("GET", r"^/pauses$", ALL),
    rule("GET", r"^/", frozenset({Role.admin, Role.marketer, Role.read_only})),
    rule("POST PUT PATCH DELETE", r"^/", WRITERS),
)


def roles_for(method: str, path: str) -> frozenset[Role] | None:
    for candidate in POLICY:
        if method in candidate.methods and candidate.path.search(path):
            return candidate.roles
    return frozenset()  # not in the table: nobody


async def authorize(request: Request) -> None:
    """The app-wide dependency: resolve the key, check the role, scope sales keys to their contacts."""
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
        if Role(key.role) not in roles:
            raise HTTPException(403, f"a {key.role} key may not {request.method} {template}")
        if key.role == Role.sales:
            await _scope_sales(request, session, key.owner)
    request.state.api_key = key


async def _scope_sales(request: Request, session, owner: str | None) -> None:
    """Sales keys see and pause the contacts they own, and list only their own pauses."""
    contact_id = request.path_params.get("contact_id")
    if contact_id is not None:
        contact = await session.get(Contact, int(contact_id)) if str(contact_id).isdigit() else None
        if contact is not None and (owner is None or contact.owner != owner):
            raise HTTPException(403, "a sales key may only act on the contacts its rep owns")
    rep = request.query_params.get("rep")
    if rep is not None and rep != owner:
        raise HTTPException(403, "a sales key may only list its own pauses")


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.headers.get("x-api-key") or None
