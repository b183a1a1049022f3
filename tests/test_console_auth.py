"""People in the console: sign-in, the session cookie, CSRF on writes, the policy table, sign-out,
and what they do recorded under their name. Through the app over HTTP (the browser tests in
tests/test_console_browser.py drive the same pages in Chromium)."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from api.main import create_app
from nurture.api_keys import Role, create_key
from nurture.db import Database
from nurture.models import AuditEntry, Flow, PauseLog, User
from nurture.users import hash_password, user_by_email
from tests.factories import add_contact, add_templates, example_definition

PASSWORD = "correct horse battery"


@functools.cache
def password_hash() -> str:
    # Argon2 is slow on purpose: hash once for the whole run (each row still checks it in full).
    return hash_password(PASSWORD)


async def add_people(db: Database) -> None:
    """One console user per role (the sales user is rep-1), all with PASSWORD."""
    async with db.session() as session:
        for role in Role:
            session.add(
                User(
                    email=f"{role}@example.com", name=f"{role.title()} Person", role=role,
                    owner="rep-1" if role == Role.sales else None, password_hash=password_hash(),
                )
            )
        await session.commit()


@pytest.fixture
async def console(db, client, settings) -> AsyncIterator[httpx.AsyncClient]:
    settings.auth_required = True
    await add_people(db)
    app = create_app(settings, db=db, client=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        yield http


async def sign_in(http: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    form = await http.get("/app/sign-in")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    return await http.post("/app/sign-in", data={"email": email, "password": password, "csrf_token": token})


def csrf_of(page: httpx.Response) -> str:
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text).group(1)


async def signed_in_as(http: httpx.AsyncClient, role: Role) -> str:
    """Sign in and return the session's CSRF token, as the pages carry it."""
    done = await sign_in(http, f"{role}@example.com")
    assert done.status_code == 303, done.text
    return csrf_of(await http.get("/app/contacts"))


async def test_a_console_page_sends_a_stranger_to_sign_in_and_back_after(console):
    first = await console.get("/app/flows")
    assert first.status_code == 303 and first.headers["location"] == "/app/sign-in?next=/app/flows"

    form = await console.get(first.headers["location"])
    assert 'name="next" value="/app/flows"' in form.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    done = await console.post(
        "/app/sign-in", data={"email": "Marketer@Example.com", "password": PASSWORD, "csrf_token": token, "next": "/app/flows"}
    )
    assert done.status_code == 303 and done.headers["location"] == "/app/flows"
    cookie = done.headers["set-cookie"]
    assert "nurture_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    page = await console.get("/app/flows")
    assert page.status_code == 200 and "Marketer Person" in page.text


async def test_a_wrong_password_or_a_forged_form_signs_nobody_in(console, db):
    wrong = await sign_in(console, "marketer@example.com", "not the password")
    assert wrong.status_code == 401 and "Wrong email or password" in wrong.text
    unknown = await sign_in(console, "nobody@example.com")
    assert unknown.status_code == 401
    forged = await console.post(
        "/app/sign-in", data={"email": "marketer@example.com", "password": PASSWORD, "csrf_token": "guess"}
    )
    assert forged.status_code == 403 and "nurture_session" not in forged.headers.get("set-cookie", "")
    away = await console.get("/app/sign-in?next=//evil.example/")
    assert 'value="/app"' in away.text  # the next page is always inside the console
    async with db.session() as session:
        stored = (await user_by_email(session, "marketer@example.com")).password_hash
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


@pytest.fixture
def counted_exactly(settings):
    # The default sliding window weighs the last minute in: a run across a minute's turn lets one more through.
    settings.rate_limit_strategy = "moving-window"


@pytest.mark.usefixtures("counted_exactly")
async def test_failed_sign_ins_spend_the_failed_auth_budget(console, settings):
    for _ in range(10):
        assert (await sign_in(console, "marketer@example.com", "wrong password")).status_code == 401
    refused = await sign_in(console, "marketer@example.com")  # even the right password, for a while
    assert refused.status_code == 429 and "rate_limit_failed_auth" in refused.text


async def test_a_write_with_the_session_cookie_needs_its_csrf_token(console, db):
    await add_templates(db)
    csrf = await signed_in_as(console, Role.marketer)
    created = await console.post("/flows", json=example_definition())
    assert created.status_code == 403 and "CSRF" in created.json()["detail"]
    wrong = await console.post("/flows", json=example_definition(), headers={"X-CSRF-Token": "x" + csrf})
    assert wrong.status_code == 403
    async with db.session() as session:
        assert (await session.exec(select(Flow))).all() == []
    made = await console.post("/flows", json=example_definition(), headers={"X-CSRF-Token": csrf})
    assert made.status_code == 201, made.text
    assert (await console.get("/flows")).status_code == 200  # reads need no token


async def test_a_people_action_is_recorded_under_the_person(console, db):
    await add_templates(db)
    csrf = await signed_in_as(console, Role.marketer)
    flow_id = (await console.post("/flows", json=example_definition(), headers={"X-CSRF-Token": csrf})).json()["id"]
    assert (await console.post(f"/flows/{flow_id}/activate", headers={"X-CSRF-Token": csrf})).status_code == 200
    async with db.session() as session:
        entries = (await session.exec(select(AuditEntry).order_by(AuditEntry.id))).all()
        marketer = await user_by_email(session, "marketer@example.com")
    assert [(e.action, e.actor, e.user_id) for e in entries] == [
        ("flow.created", "marketer@example.com", marketer.id),
        ("flow.activated", "marketer@example.com", marketer.id),
    ]
    page = await console.get(f"/app/flows/{flow_id}")
    assert "flow.activated version 1 by <strong>marketer@example.com</strong>" in page.text


async def test_a_rep_pauses_as_their_own_rep_and_the_log_names_them(console, db):
    own = await add_contact(db, owner="rep-1")
    csrf = await signed_in_as(console, Role.sales)
    claimed = await console.post(
        f"/contacts/{own.id}/pause", json={"duration": "3d", "reason": "call", "paused_by": "rep-2"},
        headers={"X-CSRF-Token": csrf},
    )
    assert claimed.status_code == 403
    paused = await console.post(
        f"/contacts/{own.id}/pause", json={"duration": "3d", "reason": "call on Monday"}, headers={"X-CSRF-Token": csrf}
    )
    assert paused.status_code == 200, paused.text
    async with db.session() as session:
        [log] = (await session.exec(select(PauseLog))).all()
        rep = await user_by_email(session, "sales@example.com")
    assert (log.actor, log.requested_by, log.user_id, log.api_key_id, log.authenticated) == (
        "rep-1", "sales@example.com", rep.id, None, True
    )
    page = await console.get(f"/app/contacts/{own.id}")
    assert "pause until" in page.text and "by rep-1 (asked by Sales Person): call on Monday" in page.text


async def test_a_rep_sees_only_their_own_contacts(console, db):
    own = await add_contact(db, owner="rep-1", name="Own Contact")
    other = await add_contact(db, email="other@example.com", owner="rep-2", name="Other Contact")
    await signed_in_as(console, Role.sales)
    assert (await console.get(f"/app/contacts/{own.id}")).status_code == 200
    refused = await console.get(f"/app/contacts/{other.id}")
    assert refused.status_code == 403 and "Other Contact" not in refused.text
    assert (await console.get("/app/contacts/999999")).status_code == 403  # no probing which ids exist
    listed = await console.get("/app/contacts?owner=rep-2")
    assert "Own Contact" in listed.text and "Other Contact" not in listed.text
    assert (await console.get("/app/flows")).status_code == 403  # as GET /flows is for a sales key


async def test_a_read_only_user_sees_no_write_controls_and_is_refused_a_write(console, db):
    contact = await add_contact(db, owner="rep-1")
    csrf = await signed_in_as(console, Role.read_only)
    page = await console.get(f"/app/contacts/{contact.id}")
    assert page.status_code == 200 and 'id="pause-form"' not in page.text
    refused = await console.post(
        f"/contacts/{contact.id}/pause", json={"duration": "3d", "reason": "x", "paused_by": "rep-1"},
        headers={"X-CSRF-Token": csrf},
    )
    assert refused.status_code == 403 and "read_only console user" in refused.json()["detail"]


async def test_signing_out_ends_the_session_for_good(console):
    csrf = await signed_in_as(console, Role.marketer)
    cookie = console.cookies.get("nurture_session")
    without_token = await console.post("/app/sign-out", data={})
    assert without_token.status_code == 403
    out = await console.post("/app/sign-out", data={"csrf_token": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/app/sign-in"
    console.cookies.set("nurture_session", cookie)  # the old cookie, replayed
    assert (await console.get("/app/flows")).status_code == 303
    assert (await console.get("/flows")).status_code == 401


async def test_only_an_admin_creates_users_and_api_keys_still_work(console, db):
    async with db.session() as session:
        _, key = await create_key(session, "machine", Role.marketer)
        await session.commit()
    assert (await console.get("/flows", headers={"Authorization": f"Bearer {key}"})).status_code == 200
    body = {"email": "new@example.com", "role": "sales", "owner": "rep-9", "password": PASSWORD}
    refused = await console.post("/users", json=body, headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 403
    csrf = await signed_in_as(console, Role.admin)
    short = await console.post("/users", json={**body, "password": "short"}, headers={"X-CSRF-Token": csrf})
    assert short.status_code == 422 and short.json()["detail"][0]["loc"] == ["body", "password"]
    made = await console.post("/users", json=body, headers={"X-CSRF-Token": csrf})
    assert made.status_code == 201 and "password" not in made.text
    assert (await console.post("/users", json=body, headers={"X-CSRF-Token": csrf})).status_code == 409
    console.cookies.clear()
    assert (await sign_in(console, "new@example.com")).status_code == 303


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)  # the command opens the database itself
async def test_create_user_command_makes_a_person_who_can_sign_in(tmp_path, db):
    def run(*args: str, password: str = PASSWORD) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "nurture.cli", "create-user", *args, "--password-stdin"],
            input=password + "\n", cwd=tmp_path, capture_output=True, text=True, timeout=120,
            env={"PATH": "/usr/bin:/bin", "NURTURE_DATA_DIR": str(tmp_path / "data")},
        )

    done = run("--email", "Jane@Example.com", "--role", "sales", "--owner", "rep-jane", "--create-database")
    assert done.returncode == 0, done.stderr
    assert "created sales user jane@example.com" in done.stderr and "/app" in done.stdout
    assert run("--email", "jane@example.com", "--role", "admin").returncode == 1  # taken
    weak = run("--email", "bob@example.com", "--role", "admin", password="short")
    assert weak.returncode == 1 and "at least 10 characters" in weak.stderr
    stored = Database(f"sqlite:///{tmp_path / 'data' / 'nurture.db'}")
    try:
        async with stored.session() as session:
            [user] = (await session.exec(select(User))).all()
    finally:
        await stored.dispose()
    assert (user.email, user.role, user.owner) == ("jane@example.com", "sales", "rep-jane")
    assert Path(tmp_path / "data" / "nurture.db").exists()
