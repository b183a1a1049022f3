"""Who may do what: every endpoint with a key that may and a key that may not."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlmodel import select

from api.auth import roles_for
from api.main import create_app
from nurture.api_keys import Role, create_key
from nurture.models import ApiKey
from tests.factories import add_contact



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
