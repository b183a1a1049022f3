"""Who may do what: every endpoint with a key that may and a key that may not."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlmodel import select

from api.auth import resolves_contact, roles_for
from api.main import create_app
from nurture.api_keys import Role, create_key
from nurture.models import ApiKey, Contact, PauseLog
from tests.conftest import eventually
from tests.factories import add_active_flow, add_contact
from tests.flow_runner import manual_flow



@pytest.fixture
async def secured(db, client, settings) -> AsyncIterator[tuple[httpx.AsyncClient, dict[Role, str], int]]:
    settings.auth_required = True
    keys = {}
    async with db.session() as session:
        for role in Role:
            _, keys[role] = await create_key(session, f"{role} key", role, owner="rep-1" if role == Role.sales else None)
        await session.commit()
    contact = await add_contact(db, owner="rep-1")
    app = create_app(settings, db=db, client=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        yield http, keys, contact.id


def routes():
    for path, operations in create_app().openapi()["paths"].items():
        for method in operations:
            yield method.upper(), path


def concrete(path: str, contact_id: int) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: str(contact_id) if m.group(1) == "contact_id" else "999999", path)


async def call(http, method, path, key=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return await http.request(method, path, json=body, headers=headers, params={"rep": "rep-1"})


async def test_every_endpoint_admits_an_allowed_role_and_refuses_the_others(secured):
    http, keys, contact_id = secured
    checked = 0
    for method, template in routes():
        path = concrete(template, contact_id)
        roles = roles_for(method, template)
        if roles is None:  # public: health, docs, tracking links, signed webhooks (which check their own signature)
            assert "API key" not in (await call(http, method, path)).text, (method, template)
            continue
        assert roles, f"{method} {template} is in no rule of the policy"
        assert (await call(http, method, path)).status_code == 401, (method, template)
        for role in Role:
            status = (await call(http, method, path, keys[role])).status_code
            if role in roles:
                assert status not in (401, 403), (method, template, role, status)
            else:
                assert status == 403, (method, template, role, status)
        checked += 1
    assert checked >= 20


async def test_a_sales_key_sees_and_pauses_only_its_reps_contacts(secured, db):
    http, keys, own = secured
    other = (await add_contact(db, email="other@example.com", owner="rep-2")).id
    sales = {"Authorization": f"Bearer {keys[Role.sales]}"}
    pause = {"duration": "3d", "reason": "call", "paused_by": "rep-1"}

    assert (await http.get(f"/contacts/{own}", headers=sales)).status_code == 200
    assert (await http.post(f"/contacts/{own}/pause", json=pause, headers=sales)).status_code == 200
    assert (await http.get(f"/contacts/{other}", headers=sales)).status_code == 403
    assert (await http.post(f"/contacts/{other}/pause", json=pause, headers=sales)).status_code == 403
    assert (await http.get("/pauses", params={"rep": "rep-2"}, headers=sales)).status_code == 403
    assert (await http.post("/flows", json={}, headers=sales)).status_code == 403


async def test_keys_are_stored_hashed_shown_once_and_revocable(secured, db):
    http, keys, _ = secured
    admin = {"Authorization": f"Bearer {keys[Role.admin]}"}
    created = await http.post("/api-keys", json={"name": "CRM sync", "role": "marketer"}, headers=admin)
    assert created.status_code == 201
    secret = created.json()["key"]
    async with db.session() as session:
        stored = (await session.exec(select(ApiKey).where(ApiKey.name == "CRM sync"))).one()
    assert secret not in stored.secret_hash and stored.secret_hash not in secret
    assert all("key" not in k for k in (await http.get("/api-keys", headers=admin)).json())

    marketer = {"Authorization": f"Bearer {secret}"}
    assert (await http.get("/flows", headers=marketer)).status_code == 200
    tampered = {"Authorization": f"Bearer {secret[:-2]}{'yy' if secret.endswith('xx') else 'xx'}"}
    assert (await http.get("/flows", headers=tampered)).status_code == 401
    assert (await http.delete(f"/api-keys/{stored.id}", headers=admin)).json()["revoked_at"] is not None
    assert (await http.get("/flows", headers=marketer)).status_code == 401


async def test_a_sales_key_needs_its_rep(secured):
    http, keys, _ = secured
    response = await http.post("/api-keys", json={"name": "Jane", "role": "sales"},
                               headers={"Authorization": f"Bearer {keys[Role.admin]}"})
    assert response.status_code == 422 and "owner" in response.text


async def test_the_first_admin_key_comes_from_the_command_line(db, client, settings):
    from nurture.cli import create_api_key

    settings.auth_required = True
    secret = await create_api_key(settings, "ops", "admin", None, db=db)
    app = create_app(settings, db=db, client=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        assert (await http.get("/api-keys", headers={"X-API-Key": secret})).status_code == 200
        assert (await http.get("/api-keys")).status_code == 401


# --- sales scope on the parsed id -------------------------------------------------

# Ways to spell a contact id that are not its plain digits: each parses (or fails to parse) on
# its own, and none may reach another rep's contact. ``{id}`` is the contact's id.
SPELLINGS = (
    "+{id}", "%2B{id}", "{id}.0", "{id}.00", "%20{id}", "{id}%20", "%09{id}", "0_{id}", "0{id}", "00{id}",
    "+0{id}", "{id}%00", "{id}e0", " {id}", "{id} ", "0x{id}", "{id}%2F", "-{id}", "{id}.5",
)


def contact_routes():
    """Every operation whose path takes a contact, with the body that would make it succeed."""
    for method, template in routes():
        if "{contact_id}" in template:
            yield method, template


def body_for(method: str, template: str) -> dict | None:
    if template.endswith("/pause"):
        return {"duration": "3d", "reason": "call", "paused_by": "rep-1"}
    if template.endswith("/resume"):
        return {"resumed_by": "rep-1"}
    return {} if method in ("POST", "PUT", "PATCH") else None


async def sales_key_for(db, rep: str) -> str:
    async with db.session() as session:
        _, secret = await create_key(session, f"{rep} key", Role.sales, owner=rep)
        await session.commit()
    return secret


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_no_spelling_of_another_reps_contact_id_gets_through(secured, db):
    http, keys, own = secured
    other = (await add_contact(db, email="other@example.com", owner="rep-2")).id
    sales = bearer(keys[Role.sales])
    tried = []
    for method, template in contact_routes():
        for spelling in SPELLINGS:
            path = template.replace("{contact_id}", spelling.format(id=other))
            response = await http.request(method, path, json=body_for(method, template), headers=sales)
            tried.append((method, path, response.status_code))
    assert len(tried) >= 7 * len(SPELLINGS)
    assert [t for t in tried if t[2] < 300] == []
    async with db.session() as session:
        assert (await session.get(Contact, other)).paused_until is None
        assert (await session.exec(select(PauseLog))).all() == []


async def test_a_sales_key_still_reaches_its_own_contacts_by_their_plain_id(secured):
    http, keys, own = secured
    sales = bearer(keys[Role.sales])
    for method, template in contact_routes():
        if Role.sales in roles_for(method, template):
            response = await http.request(
                method, concrete(template, own), json=body_for(method, template), headers=sales
            )
            assert response.status_code == 200, (method, template, response.text)


async def test_a_sales_key_cannot_probe_which_contacts_exist(secured):
    http, keys, own = secured
    sales = bearer(keys[Role.sales])
    assert (await http.get("/contacts/999999", headers=sales)).status_code == 403
    assert (await http.get("/contacts/0", headers=sales)).status_code in (403, 422)
    assert (await http.get("/contacts/abc", headers=sales)).status_code in (403, 422)


def api_routes(routes):
    """The app's routes, through included routers (which newer FastAPI keeps as one entry each)."""
    for route in routes:
        nested = getattr(route, "original_router", None)
        if nested is not None:
            yield from api_routes(nested.routes)
        else:
            yield route


def test_every_route_that_takes_a_contact_resolves_and_scopes_it():
    # The console's contact pages (not in the OpenAPI document) as well as the API's routes.
    taking_a_contact = [r for r in api_routes(create_app().routes) if "{contact_id}" in getattr(r, "path", "")]
    documented = [r for r in taking_a_contact if getattr(r, "include_in_schema", True)]
    assert len(documented) == len(list(contact_routes())) >= 8
    assert any(r.path.startswith("/app/") for r in taking_a_contact)
    for route in taking_a_contact:
        assert resolves_contact(route), f"{route.path} must take its contact as ContactDep"


async def test_a_contact_route_without_the_scoping_dependency_is_refused_to_sales_keys(secured, db, client, settings):
    _, keys, own = secured
    app = create_app(settings, db=db, client=client)

    @app.get("/contacts/{contact_id}/forgotten")
    async def forgotten(contact_id: int) -> dict:
        return {"contact_id": contact_id}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        assert (await http.get(f"/contacts/{own}/forgotten", headers=bearer(keys[Role.sales]))).status_code == 403
        assert (await http.get(f"/contacts/{own}/forgotten", headers=bearer(keys[Role.admin]))).status_code == 200


# --- actions recorded under the caller's identity -------------------------------


def trail_of(response) -> list[tuple]:
    return [(t["action"], t["actor"], t["requested_by"], t["authenticated"]) for t in response.json()]


async def test_a_sales_key_pauses_and_resumes_only_as_its_own_rep(secured, db):
    http, keys, own = secured
    sales, rep2 = bearer(keys[Role.sales]), bearer(await sales_key_for(db, "rep-2"))

    forged = await http.post(f"/contacts/{own}/pause", headers=sales,
                             json={"duration": "3d", "reason": "call", "paused_by": "rep-2"})
    assert forged.status_code in (403, 422) and "paused_by" in forged.text
    assert (await http.get("/pauses", params={"rep": "rep-2"}, headers=rep2)).json() == []
    assert (await http.get(f"/contacts/{own}", headers=sales)).json()["paused_until"] is None

    paused = await http.post(f"/contacts/{own}/pause", headers=sales, json={"duration": "3d", "reason": "call"})
    assert paused.status_code == 200, paused.text
    assert paused.json()["paused_by"] == "rep-1" and paused.json()["requested_by"] == "sales key"
    assert [p["contact_id"] for p in (await http.get("/pauses", headers=sales)).json()] == [own]
    assert [p["contact_id"] for p in (await http.get("/pauses", params={"rep": "rep-1"}, headers=sales)).json()] == [own]
    assert (await http.get("/pauses", params={"rep": "rep-2"}, headers=rep2)).json() == []

    forged = await http.post(f"/contacts/{own}/resume", headers=sales, json={"resumed_by": "rep-2"})
    assert forged.status_code in (403, 422) and "resumed_by" in forged.text
    assert (await http.post(f"/contacts/{own}/resume", headers=sales, json={"resumed_by": "rep-1"})).status_code == 200

    trail = await http.get(f"/contacts/{own}/pauses", headers=sales)
    assert trail_of(trail) == [("pause", "rep-1", "sales key", True), ("resume", "rep-1", "sales key", True)]


async def test_admin_and_marketer_keys_are_recorded_with_the_rep_they_act_for(secured):
    http, keys, own = secured
    admin, marketer, sales = bearer(keys[Role.admin]), bearer(keys[Role.marketer]), bearer(keys[Role.sales])

    for_rep = await http.post(f"/contacts/{own}/pause", headers=admin,
                              json={"duration": "3d", "reason": "deal desk", "paused_by": "rep-1"})
    assert for_rep.status_code == 200, for_rep.text
    assert (for_rep.json()["paused_by"], for_rep.json()["requested_by"]) == ("rep-1", "admin key")
    assert [p["contact_id"] for p in (await http.get("/pauses", headers=sales)).json()] == [own]

    assert (await http.post(f"/contacts/{own}/pause", headers=marketer,
                            json={"duration": "4d", "reason": "campaign freeze"})).status_code == 200
    assert (await http.get("/pauses", headers=sales)).json() == []  # now the marketer's own pause
    assert (await http.post(f"/contacts/{own}/resume", headers=admin, json={})).status_code == 200

    trail = await http.get(f"/contacts/{own}/pauses", headers=admin)
    assert trail_of(trail) == [
        ("pause", "rep-1", "admin key", True),
        ("extend", "marketer key", "marketer key", True),
        ("resume", "admin key", "admin key", True),
    ]


async def test_a_sales_pause_reaches_the_enrollment_under_the_keys_rep(secured, db, worker):
    http, keys, own = secured
    flow = await add_active_flow(db, manual_flow({"id": "wait", "type": "delay", "duration": "5d"}))
    enrolled = await http.post(f"/flows/{flow.id}/enrollments", json={"contact_id": own}, headers=bearer(keys[Role.admin]))
    assert enrolled.status_code in (200, 201), enrolled.text
    admin = bearer(keys[Role.admin])

    async def waiting():
        state = (await http.get(f"/enrollments/{enrolled.json()['id']}", headers=admin)).json()["workflow"]
        return state if state and state["current_step"] == "wait" else None

    await eventually(waiting)  # this test is about who pauses, not a pause racing the first step
    paused = await http.post(f"/contacts/{own}/pause", headers=bearer(keys[Role.sales]),
                             json={"duration": "3d", "reason": "call"})
    assert paused.status_code == 200, paused.text
    assert [e["enrollment_id"] for e in paused.json()["enrollments"]] == [enrolled.json()["id"]]
    state = (await http.get(f"/enrollments/{enrolled.json()['id']}", headers=admin)).json()
    assert state["workflow"]["paused"]["paused_by"] == "rep-1"
