"""The console in headless Chromium, against the real app on a loopback port, the time-skipping
Temporal server and a worker: what a marketer, a rep, an engineer and a read-only user see and do.
Screenshots of the main pages go to docs/screenshots/ (docs/console.md shows them)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlmodel import select

from api.main import create_app
from nurture.api_keys import Role, create_key
from nurture.models import Contact, Enrollment, Flow
from tests.browser import Browser, chromium, served
from tests.factories import add_contact
from tests.test_console_auth import PASSWORD, add_people

pytestmark = pytest.mark.parametrize("db", ["sqlite"], indirect=True)  # one backend: the pages, not SQL, are tested

PLAYBOOK = "blog-subscriber-welcome"


@pytest.fixture
async def site(db, client, settings, worker) -> AsyncIterator[tuple[Browser, httpx.AsyncClient]]:
    """The console served on 127.0.0.1 with one user per role (the sales user is rep-1), a browser,
    and an HTTP client holding a marketer key, as a site posting events would."""
    settings.auth_required = True
    await add_people(db)
    async with db.session() as session:
        _, key = await create_key(session, "website", Role.marketer)
        await session.commit()
    async with served(create_app(settings, db=db, client=client)) as base, chromium(base) as browser:
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            yield browser, http


async def counts_at(browser: Browser, step: str) -> str:
    return await browser.script(
        "const n = document.querySelector(`g[data-step='${arguments[0]}'] .counts`); return n ? n.textContent : '';", step
    )


async def test_a_marketer_installs_and_activates_a_rep_pauses_and_the_timelines_say_who(site, db):
    browser, _ = site

    # A marketer installs a playbook from the gallery and activates it from the flow page.
    await browser.sign_in("marketer@example.com", PASSWORD)
    assert await browser.path() == "/app/flows"
    await browser.go("/app/playbooks")
    assert "Blog subscriber welcome" in await browser.text("main")
    await browser.screenshot("playbooks")
    await browser.click(f"#install-{PLAYBOOK} button")
    await browser.eventually(lambda: at(browser, "/app/flows/"), what="the installed flow's page")
    flow_id = int((await browser.path()).split("/")[3])
    assert await browser.text("#flow-status") == "draft"

    # Before going live: the editor finds no problem, and the simulator walks a contact through.
    await browser.go(f"/app/flows/{flow_id}/edit")
    await browser.eventually(lambda: browser.has("#problems .form-ok"), what="the editor's check")
    assert await browser.has("#editor-diagram g[data-step='wait-2d']")
    await browser.click("#simulate-form button")
    await browser.eventually(lambda: _timeline_ends(browser), timeout=60, what="the simulated path")
    simulated = await browser.text("#sim-timeline")
    assert "welcome (send_email)" in simulated and "CET" in simulated  # in the contact's time zone
    await browser.screenshot("editor")
    await browser.go(f"/app/flows/{flow_id}")
    await browser.click("#estimate-form button")
    await browser.eventually(lambda: browser.text("#estimate-result"), what="the estimate")
    assert "would enroll now" in await browser.text("#estimate-result")
    await browser.click("#activate-form button")
    await browser.eventually(lambda: _status_is(browser, "active"), what="the flow shown active")
    async with db.session() as session:
        flow = await session.get(Flow, flow_id)
        assert (flow.status, flow.active_version) == ("active", 1)

    # The marketer adds the contact and records its subscription: the contact enrolls, and the
    # flow page counts 1 waiting two days.
    await browser.go("/app/contacts")
    await browser.click("details summary")
    for field, value in (("email", "ada@example.com"), ("name", "Ada Lovelace"), ("owner", "rep-1"),
                         ("timezone", "Europe/Paris"), ("tags", "vip, beta")):
        await browser.fill(f"#c-{field}", value)
    await browser.click("#contact-form button[type=submit]")
    await browser.eventually(lambda: at(browser, "/app/contacts/"), what="the new contact's page")
    contact_id = int((await browser.path()).split("/")[3])
    assert "vip, beta" in await browser.text("main")
    # The subscription is recorded from the contact page, as the site would post it.
    await browser.fill("#event-type", "blog_subscribed")
    await browser.fill("#event-properties", '{"source": "blog"}')
    await browser.click("#event-form button[type=submit]")
    await browser.eventually(lambda: browser.text("#event-form .form-ok"), what="the recorded event's answer")
    assert "1 enrollment(s) started" in await browser.text("#event-form .form-ok")

    async def waiting_two_days() -> bool:
        await browser.go(f"/app/flows/{flow_id}")
        return (await counts_at(browser, "wait-2d")).startswith("1 waiting")

    await browser.eventually(waiting_two_days, timeout=20, what="1 waiting at wait-2d")
    assert (await counts_at(browser, "welcome")).startswith("0 waiting · 1 entered")
    await browser.screenshot("flow")
    await browser.click("g[data-step='wait-2d'] a")
    await browser.eventually(lambda: at(browser, f"/app/flows/{flow_id}/enrollments?step=wait-2d"), what="the enrollments behind the count")
    assert "1 waiting at wait-2d" in await browser.text("h1") and "Ada Lovelace" in await browser.text("main")
    await browser.go("/app/flows")
    assert "Blog subscriber welcome" in await browser.text("main")
    await browser.screenshot("flows")
    await browser.go("/app/dashboard")
    assert "entered 1" in " ".join((await browser.text(".funnel")).split())
    await browser.screenshot("dashboard")

    # The marketer sends the welcome email, rendered for the contact, to themselves.
    await browser.go("/app/templates/blog-welcome")
    await browser.fill("#test-contact", str(contact_id))
    await browser.click("#test-send-form button")
    await browser.eventually(lambda: browser.text("#test-send-form .form-ok"), what="the test send's confirmation")
    assert "Sent to marketer@example.com: [Test]" in await browser.text("#test-send-form .form-ok")

    # A new template from the templates page opens its own page.
    await browser.go("/app/templates")
    await browser.click("details summary")
    for field, value in (("key", "demo-followup"), ("subject", "Your demo"), ("html", "<p>Hi {{ contact.name }}</p>")):
        await browser.fill(f"#t-{field}", value)
    await browser.click("#new-template-form button[type=submit]")
    await browser.eventually(lambda: at(browser, "/app/templates/demo-followup"), what="the new template's page")

    # Rep-1 signs in, finds the contact on their own, and pauses it for a call.
    await browser.sign_in("sales@example.com", PASSWORD)
    assert await browser.path() == "/app/my"
    await browser.go("/app/contacts?q=ada")
    await browser.click(f"a[href='/app/contacts/{contact_id}']")
    await browser.eventually(lambda: browser.has("#pause-form"), what="the contact page with its pause form")
    assert "wait-2d" in await browser.text("main")  # the enrollment's current step
    await browser.fill("#pause-reason", "Call with Ada on Monday")
    await browser.click("#pause-form button[type=submit]")
    await browser.eventually(lambda: browser.has("#paused-badge"), what="the contact shown paused")
    activity = await browser.text("#activity")
    assert "by rep-1 (asked by Sales Person): Call with Ada on Monday" in activity
    await browser.screenshot("contact")
    await browser.go("/app/my")
    assert "Ada Lovelace" in await browser.text("main")
    await browser.screenshot("rep-home")

    # An engineer opens the enrollment: its timeline, read from the workflow history, names the rep.
    await browser.sign_in("admin@example.com", PASSWORD)
    async with db.session() as session:
        [enrollment] = (await session.exec(select(Enrollment))).all()
    await browser.go(f"/app/enrollments/{enrollment.id}")
    timeline = await browser.text("#timeline")
    assert "Paused by rep-1" in timeline and "Call with Ada on Monday" in timeline
    assert await browser.has("a[href*='/namespaces/']")  # the same workflow in the Temporal UI
    await browser.screenshot("enrollment")


async def _timeline_ends(browser: Browser) -> bool:
    text = await browser.text("#sim-timeline") + await browser.text("#sim-error")
    return " after " in text or bool(await browser.text("#sim-error"))


async def at(browser: Browser, prefix: str) -> bool:
    return (await browser.path()).startswith(prefix)


async def _status_is(browser: Browser, status: str) -> bool:
    await browser.go(await browser.path())
    return await browser.text("#flow-status") == status


async def test_the_console_keeps_each_person_to_what_their_role_allows(site, db):
    browser, _ = site
    own = await add_contact(db, email="own@example.com", name="Own Contact", owner="rep-1")
    other = await add_contact(db, email="other@example.com", name="Other Contact", owner="rep-2")

    await browser.go("/app/sign-in")
    await browser.screenshot("sign-in")

    # A rep cannot open another rep's contact by its URL, nor write without the session's CSRF token.
    await browser.sign_in("sales@example.com", PASSWORD)
    await browser.go(f"/app/contacts/{other.id}")
    assert "Not yours to see" in await browser.text("h1") and "Other Contact" not in await browser.text("main")
    await browser.go(f"/app/contacts/{own.id}")
    # The API's 422 lands under the field it names, and nothing is paused.
    await browser.fill("#pause-duration", "fortnight")
    await browser.fill("#pause-reason", "call")
    await browser.click("#pause-form button[type=submit]")
    await browser.eventually(lambda: browser.text("[data-error-for='duration']"), what="the duration's error")
    assert await browser.script("return document.activeElement.id") == "pause-duration"
    assert await browser.script("return document.getElementById('pause-duration').getAttribute('aria-invalid')") == "true"
    pause = {"duration": "2d", "reason": "call"}
    assert await browser.fetch("POST", f"/contacts/{other.id}/pause", pause) == 403
    assert await browser.fetch("POST", f"/contacts/{own.id}/pause", pause, csrf=False) == 403

    # A read-only user sees no write controls, and is refused when posting anyway.
    await browser.sign_in("read_only@example.com", PASSWORD)
    await browser.go(f"/app/contacts/{own.id}")
    assert "Own Contact" in await browser.text("h1")
    assert not await browser.has("#pause-form") and not await browser.has("#resume-form")
    assert await browser.fetch("POST", f"/contacts/{own.id}/pause", {**pause, "paused_by": "rep-1"}) == 403
    async with db.session() as session:
        assert (await session.get(Contact, own.id)).paused_until is None  # by neither the rep nor the reader
