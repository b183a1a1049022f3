"""Contact import (POST /contacts/import and `nurture import`): files as a B2B team exports them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlmodel import select
from structlog.testing import capture_logs

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from benchmarks.imports import measure_import
from api.schemas.contacts import ContactUpsert
from nurture.api_keys import Role, create_key
from nurture import import_formats
from nurture.contact_import import ContactImporter
from nurture.import_formats import RowLimits
from nurture.enrolling import Enroller
from nurture.models import Contact, Enrollment, Flow
from tests.api_support import api, count_rows, create_template  # noqa: F401  (fixtures)
from tests.conftest import _binary, eventually
from tests.factories import add_contact
from tests.test_cli import run_nurture
from tests.trigger_support import one_email_flow

CSV = {"content-type": "text/csv"}
JSONL = {"content-type": "application/x-ndjson"}


async def import_file(api: httpx.AsyncClient, body: bytes | str, headers=CSV) -> httpx.Response:
    return await api.post("/contacts/import", content=body.encode() if isinstance(body, str) else body, headers=headers)


async def contact(api: httpx.AsyncClient, email: str) -> dict | None:
    items = (await api.get("/contacts", params={"email": email})).json()["items"]
    return items[0] if items else None


def counts(response: httpx.Response) -> tuple[int, int, int, int, int]:
    body = response.json()
    return body["rows"], body["created"], body["updated"], body["unchanged"], body["failed"]


def errors(response: httpx.Response) -> list[tuple[int, int, str | None]]:
    return [(e["row"], e["line"], e["field"]) for e in response.json()["errors"]]


async def test_a_csv_creates_updates_and_leaves_unchanged_contacts_as_post_contacts_would(api):
    await api.post("/contacts", json={"email": "ada@example.com", "name": "Ada", "properties": {"plan": "free", "seats": 3}})
    await api.post("/contacts", json={"email": "grace@example.com", "name": "Grace", "lifecycle_stage": "lead"})
    await api.post("/contacts", json={"email": "gone@example.com", "subscription_status": "unsubscribed"})

    response = await import_file(api, (
        "Email,Name,Lifecycle Stage,Plan,Tags,Subscription Status\n"
        "ADA@Example.com,,customer,pro,vip; webinar ,\n"   # existing: case-insensitive match, empty name kept
        "grace@example.com,Grace,lead,,,\n"                # exactly as stored: unchanged
        "lin@example.com,Lin,,trial,,\n"                   # new
        "gone@example.com,Gone,,,,subscribed\n"            # never re-subscribed, the name still applies
    ))

    assert response.status_code == 200, response.text
    assert counts(response) == (4, 1, 2, 1, 0)
    assert response.json()["errors"] == [] and response.json()["truncated"] is False
    ada = await contact(api, "ada@example.com")
    assert (ada["name"], ada["lifecycle_stage"], ada["tags"]) == ("Ada", "customer", ["vip", "webinar"])
    assert ada["properties"] == {"plan": "pro", "seats": 3}  # merged, as POST /contacts merges
    lin = await contact(api, "lin@example.com")
    assert (lin["name"], lin["properties"], lin["subscription_status"]) == ("Lin", {"plan": "trial"}, "subscribed")
    gone = await contact(api, "gone@example.com")
    assert (gone["name"], gone["subscription_status"]) == ("Gone", "unsubscribed")

    again = await import_file(api, "email,name\nlin@example.com,Lin\n")
    assert counts(again) == (1, 0, 0, 1, 0)


async def test_json_lines_take_post_contacts_bodies_and_other_keys_become_properties(api):
    await api.post("/contacts", json={"email": "ada@example.com", "properties": {"plan": "free", "trial": True}})
    lines = [
        {"email": "ada@example.com", "properties": {"trial": None}, "plan": "pro", "lists": ["newsletter"]},
        {"email": "lin@example.com", "name": "Lin", "timezone": "Europe/Berlin", "seats": 12, "deal": {"stage": "won"}},
        {"email": "lin@example.com", "name": "Lin"},  # the same contact again: nothing changes
    ]
    body = "\r\n".join(json.dumps(line) for line in lines) + "\n\n"

    response = await import_file(api, body, JSONL)

    assert response.status_code == 200, response.text
    assert counts(response) == (3, 1, 1, 1, 0)
    ada = await contact(api, "ada@example.com")
    assert (ada["properties"], ada["lists"]) == ({"plan": "pro"}, ["newsletter"])
    lin = await contact(api, "lin@example.com")
    assert (lin["timezone"], lin["properties"]) == ("Europe/Berlin", {"seats": 12, "deal": {"stage": "won"}})
    also_jsonl = await import_file(api, json.dumps(lines[1]), {"content-type": "application/jsonl"})
    assert counts(also_jsonl) == (1, 0, 0, 1, 0)


async def test_a_bom_and_quoted_fields_holding_commas_quotes_and_line_breaks(api):
    body = (
        "\ufeffemail,name,company,Call Notes\r\n"
        'ada@example.com,"Lovelace, Ada","Analytical ""Engines""","line one\r\nline two, still notes"\r\n'
        'grace@example.com,Grace,"Navy, US",plain\r\n'
    ).encode()
    # Sent in pieces that cut through the BOM, the quotes and the line breaks.
    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 5):
            yield body[i : i + 5]

    response = await api.post("/contacts/import", content=pieces(), headers=CSV)

    assert response.status_code == 200, response.text
    assert counts(response) == (2, 2, 0, 0, 0)
    ada = await contact(api, "ada@example.com")
    assert (ada["name"], ada["company"]) == ("Lovelace, Ada", 'Analytical "Engines"')
    assert ada["properties"] == {"call_notes": "line one\r\nline two, still notes"}
    grace = await contact(api, "grace@example.com")
    assert (grace["name"], grace["company"], grace["properties"]) == ("Grace", "Navy, US", {"call_notes": "plain"})


@pytest.mark.parametrize("piece", [1, 2, 7, 64, 1 << 20])
def test_the_file_reads_the_same_however_its_body_is_cut(piece):
    limits = RowLimits(max_row_bytes=60, max_columns=10, max_depth=8)
    csv_body = (
        '\ufeffEmail,Name,Notes\r\n"ada@example.com","Ada ""A"" L",x\r\n'
        'b@example.com,' + "long" * 20 + '\r\n'
        'c@example.com,"two\nlines",5" screen\r\n\r\n'
        'd@example.com,"never closed\n'
    ).encode()
    jsonl_body = ('\ufeff{"email": "a@example.com", "plan": "pro"}\n\n{"email": "' + "x" * 80 + '"}\n{"email": 1').encode()

    def read(kind, body):
        reader = import_formats.reader(kind, limits, ContactUpsert.model_fields)
        rows = [row for i in range(0, len(body), piece) for row in reader.feed(body[i : i + piece])]
        return [(r.number, r.line, r.values, r.problem) for r in rows + reader.close()]

    assert read("csv", csv_body) == [
        (1, 2, {"email": "ada@example.com", "name": 'Ada "A" L', "properties": {"notes": "x"}}, None),
        (2, 3, None, "the row is longer than 60 bytes (the import_max_row_bytes limit)"),
        (3, 4, {"email": "c@example.com", "name": "two\nlines", "properties": {"notes": '5" screen'}}, None),
        (4, 7, None, "a quoted field is never closed"),
    ]
    assert read("jsonl", jsonl_body) == [
        (1, 1, {"email": "a@example.com", "properties": {"plan": "pro"}}, None),
        (2, 3, None, "the line is longer than 60 bytes (the import_max_row_bytes limit)"),
        (3, 4, None, "the line is not JSON: Expecting ',' delimiter: line 1 column 12 (char 11)"),
    ]


async def test_bad_rows_are_reported_by_row_line_and_field_and_the_others_go_in(db, client, settings):
    settings.import_chunk_rows = 2  # several chunks, bad rows among them
    async with app_client(settings, db, client) as api:
        response = await import_file(api, (
            "email,name,timezone,lifecycle_stage\n"
            "ok1@example.com,One,,\n"
            "not-an-email,Two,,\n"
            "ok3@example.com,Three,Mars/Olympus_Mons,\n"
            'ok4@example.com,"Four\nlines",,customer\n'
            "ok5@example.com,Five,,prospect,extra\n"
            "ok6@example.com,Six,Europe/London,lead\n"
        ))
        assert response.status_code == 200, response.text
        assert counts(response) == (6, 3, 0, 0, 3)
        assert errors(response) == [(2, 3, "email"), (3, 4, "timezone"), (5, 7, None)]
        reasons = [e["reason"] for e in response.json()["errors"]]
        assert "Mars/Olympus_Mons" in reasons[1] and "the header 4 columns" in reasons[2]
        emails = sorted(c["email"] for c in (await api.get("/contacts")).json()["items"])
        assert emails == ["ok1@example.com", "ok4@example.com", "ok6@example.com"]

        jsonl = "\n".join(['{"email": "a@example.com"}', "{not json", "[1, 2]", '{"email": "b@example.com", "lifecycle_stage": 7}'])
        response = await import_file(api, jsonl, JSONL)
        assert counts(response) == (4, 1, 0, 0, 3)
        assert errors(response) == [(2, 2, None), (3, 3, None), (4, 4, "lifecycle_stage")]


async def test_the_error_list_is_capped_and_says_so(db, client, settings):
    settings.import_max_errors = 2
    async with app_client(settings, db, client) as api:
        response = await import_file(api, "email\n" + "".join(f"bad-{i}\n" for i in range(5)) + "fine@example.com\n")
    assert counts(response) == (6, 1, 0, 0, 5)
    assert len(response.json()["errors"]) == 2 and response.json()["truncated"] is True


async def test_a_file_without_an_email_column_or_with_an_unusable_header_is_422_and_writes_nothing(api, db):
    for header in ("name,company\nAda,Engines\n", "Email,email\nada@example.com,ada@example.com\n", ""):
        response = await import_file(api, header)
        assert response.status_code == 422, (header, response.text)
        assert response.json()["detail"][0]["loc"] == ["body"]
    assert "no email column" in (await import_file(api, "name\nAda\n")).json()["detail"][0]["msg"]
    assert await count_rows(db, Contact) == 0


async def test_another_content_type_or_charset_is_415(api):
    for content_type in ("application/json", "text/plain", "text/csv; charset=latin-1"):
        response = await import_file(api, "email\nada@example.com\n", {"content-type": content_type})
        assert response.status_code == 415, (content_type, response.text)
    assert (await import_file(api, "email\nada@example.com\n", {"content-type": "text/csv; charset=UTF-8"})).status_code == 200


async def test_size_row_and_width_limits(db, client, settings):
    settings.import_max_bytes = 2048
    settings.import_max_rows = 3
    settings.import_max_row_bytes = 300
    settings.import_max_columns = 4
    settings.import_chunk_rows = 2
    async with app_client(settings, db, client) as api:
        # Past the size: refused up front when the length is declared; cut off as it streams otherwise.
        declared = await import_file(api, "email\n" + "x" * 3000)
        assert declared.status_code == 413 and "import_max_bytes" in declared.text
        assert await count_rows(db, Contact) == 0

        async def streamed() -> AsyncIterator[bytes]:
            yield b"email,name\n" + b"".join(b"s%d@example.com,S\n" % i for i in range(2))
            yield b"s9@example.com," + b"y" * 250 + b"\n"
            for _ in range(20):
                yield b"z" * 100
        response = await api.post("/contacts/import", content=streamed(), headers=CSV)
        assert response.status_code == 413, response.text
        assert "import_max_bytes" in response.json()["detail"]
        assert response.json()["report"]["created"] == 3  # the rows read in full before the limit stay
        assert await count_rows(db, Contact) == 3

        # More rows than allowed: the rows before the limit are imported.
        rows = await import_file(api, "email\n" + "".join(f"r{i}@example.com\n" for i in range(5)))
        assert rows.status_code == 413 and "import_max_rows" in rows.json()["detail"]
        assert rows.json()["report"]["rows"] == 3
        assert await contact(api, "r2@example.com") is not None and await contact(api, "r3@example.com") is None

        # A row too long or too wide is reported and skipped; a header too wide refuses the file.
        long_rows = await import_file(api, "email,name\nw1@example.com," + "n" * 400 + "\nw2@example.com,W\n")
        assert counts(long_rows) == (2, 1, 0, 0, 1) and "import_max_row_bytes" in long_rows.json()["errors"][0]["reason"]
        wide_line = json.dumps({"email": "w3@example.com", **{f"k{i}": i for i in range(5)}})
        wide = await import_file(api, wide_line, JSONL)
        assert counts(wide) == (1, 0, 0, 0, 1) and "import_max_columns" in wide.json()["errors"][0]["reason"]
        wide_header = await import_file(api, "email,a,b,c,d\n")
        assert wide_header.status_code == 422 and "import_max_columns" in wide_header.text

        deep = await import_file(api, '{"email": "d@example.com", "x": ' + "[" * 40 + "]" * 40 + "}", JSONL)
        assert counts(deep) == (1, 0, 0, 0, 1) and "max_nesting_depth" in deep.json()["errors"][0]["reason"]


async def test_a_client_that_goes_quiet_is_cut_off_and_the_rows_it_sent_stay(db, client, settings):
    settings.import_idle_timeout_seconds = 0.5

    async def stalls() -> AsyncIterator[bytes]:
        yield b"email,name\nada@example.com,Ada\ngrace@example.com,Gr"
        await asyncio.sleep(5)
        yield b"ace\n"

    async with app_client(settings, db, client) as api:
        response = await api.post("/contacts/import", content=stalls(), headers=CSV)
    assert response.status_code == 408, response.text
    assert "import_idle_timeout_seconds" in response.json()["detail"]
    assert response.json()["report"]["created"] == 1  # the row read in full; the half row is not a row
    assert (await contact_row(db, "ada@example.com")).name == "Ada"
    assert await count_rows(db, Contact) == 1


async def test_only_keys_that_may_create_contacts_may_import_and_the_import_is_logged_with_its_key(db, client, settings):
    settings.auth_required = True
    keys = {}
    async with db.session() as session:
        for role in Role:
            _, keys[role] = await create_key(session, f"{role} key", role, owner="rep-1" if role == Role.sales else None)
        await session.commit()
    async with app_client(settings, db, client) as api:
        for role in (Role.sales, Role.read_only):
            refused = await import_file(api, "email\nada@example.com\n", {**CSV, "authorization": f"Bearer {keys[role]}"})
            assert refused.status_code == 403, (role, refused.text)
        for role in (Role.admin, Role.marketer):
            with capture_logs() as logs:
                done = await import_file(api, f"email\n{role}@example.com\n", {**CSV, "authorization": f"Bearer {keys[role]}"})
            assert done.status_code == 200, (role, done.text)
            [entry] = [e for e in logs if e["event"] == "contacts_imported"]
            assert (entry["api_key"], entry["created"]) == (f"{role} key", 1)
    async with db.session() as session:
        emails = sorted((await session.exec(select(Contact.email))).all())
    assert emails == ["admin@example.com", "marketer@example.com"]


async def test_a_running_enrollment_hears_an_imported_change_and_property_triggers_fire(api, worker):
    await create_template(api, "hello")
    goal = one_email_flow({"type": "manual"}, wait="30d", goal={"condition": {"property": "lifecycle_stage", "op": "eq", "value": "customer"}})
    goal_flow = (await api.post("/flows", json=goal)).json()["id"]
    assert (await api.post(f"/flows/{goal_flow}/activate")).status_code == 200
    ada = (await api.post("/contacts", json={"email": "ada@example.com", "lifecycle_stage": "lead"})).json()
    enrolled = await api.post(f"/flows/{goal_flow}/enrollments", json={"contact_id": ada["id"]})
    assert enrolled.status_code == 201, enrolled.text
    enrollment_id = enrolled.json()["id"]

    async def waiting():
        state = (await api.get(f"/enrollments/{enrollment_id}")).json()["workflow"]
        return state and state["current_step"] == "linger"

    await eventually(waiting)
    trigger = one_email_flow({"type": "property", "condition": {"property": "plan", "op": "eq", "value": "enterprise"}}, wait="30d")
    trigger_flow = (await api.post("/flows", json=trigger)).json()["id"]
    assert (await api.post(f"/flows/{trigger_flow}/activate")).status_code == 200

    response = await import_file(api, (
        "email,lifecycle_stage,plan\n"
        "ada@example.com,customer,\n"          # reaches her goal in the running enrollment
        "big@example.com,,enterprise\n"         # created matching the property trigger
        "small@example.com,,starter\n"          # created, matches nothing
    ))
    assert counts(response) == (3, 2, 1, 0, 0)

    async def exited():
        row = (await api.get(f"/enrollments/{enrollment_id}")).json()
        return row if row["status"] == "exited" else None

    assert (await eventually(exited))["exit_reason"] == "goal_met"
    big, small = await contact(api, "big@example.com"), await contact(api, "small@example.com")
    [started] = (await api.get(f"/contacts/{big['id']}/enrollments")).json()["items"]
    assert started["flow_id"] == trigger_flow
    assert (await api.get(f"/contacts/{small['id']}/enrollments")).json()["items"] == []


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)  # the command sees only HTTP: one backend is enough
async def test_the_import_command_streams_a_file_to_a_running_api(db, client, settings, tmp_path):
    settings.auth_required = True
    async with db.session() as session:
        _, key = await create_key(session, "importer", Role.marketer)
        await session.commit()
    good = tmp_path / "contacts.csv"
    good.write_text("email,name,plan\n" + "".join(f"c{i}@example.com,C {i},pro\n" for i in range(300)))
    bad = tmp_path / "more.jsonl"
    bad.write_text('{"email": "c0@example.com", "name": "C zero"}\n{"email": "nope"}\n')

    async with live_api(settings, db, client) as url:
        done = await asyncio.to_thread(run_nurture, ["import", str(good), "--url", url, "--key", key], tmp_path)
        assert done.returncode == 0, done.stderr
        assert "300 rows read: 300 created, 0 updated, 0 unchanged, 0 failed" in done.stdout

        failed = await asyncio.to_thread(run_nurture, ["import", str(bad), "--url", url], tmp_path, NURTURE_API_KEY=key)
        assert failed.returncode == 1, failed.stderr
        assert "1 updated" in failed.stdout and "1 failed" in failed.stdout
        assert "row 2 (line 2) email:" in failed.stdout

        refused = await asyncio.to_thread(run_nurture, ["import", str(good), "--url", url, "--key", "nk_wrong_key"], tmp_path)
        assert refused.returncode == 2 and "401" in refused.stderr
    assert await count_rows(db, Contact) == 300


# --- helpers -----------------------------------------------------------------------


async def chunks(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def add_flow_row(session) -> int:
    flow = Flow(name="running somewhere", status="active", active_version=1)
    session.add(flow)
    await session.flush()
    return flow.id


async def contact_row(db, email: str) -> Contact:
    async with db.session() as session:
        return (await session.exec(select(Contact).where(Contact.email == email))).one()


def app_client(settings, db, client) -> httpx.AsyncClient:
    """A client of an app built with ``settings`` as the test changed them (the body limit is set at build)."""
    app = create_app(settings, db=db, client=client)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


class live_api:
    """The app served by uvicorn on a free loopback port, on this event loop."""

    def __init__(self, settings, db, client):
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(create_app(settings, db=db, client=client), host="127.0.0.1", port=0, lifespan="off", log_level="warning")
        )

    async def __aenter__(self) -> str:
        self.task = asyncio.create_task(self.server.serve())
        await eventually(lambda: self.server.started)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc) -> None:
        self.server.should_exit = True
        await self.task


async def test_a_contact_created_by_another_request_meanwhile_is_left_alone_and_its_row_reported(db, client, settings):
    class ReadsBeforeTheOtherRequest(ContactImporter):
        async def _read(self, session, emails):
            return {}  # as if the read came just before another request created the contact

    await add_contact(db, "ada@example.com", name="Ada")
    importer = ReadsBeforeTheOtherRequest(db, Enroller(client, settings), settings, ContactUpsert, "csv")
    report = await importer.run(chunks(b"email,name\nada@example.com,Someone else\nlin@example.com,Lin\n"))

    assert (report.created, report.failed) == (1, 1)
    assert [(e.row, e.field) for e in report.errors] == [(1, "email")] and "import the row again" in report.errors[0].reason
    async with db.session() as session:
        names = dict((await session.exec(select(Contact.email, Contact.name))).all())
    assert names == {"ada@example.com": "Ada", "lin@example.com": "Lin"}


async def test_when_temporal_fails_the_contacts_not_told_are_put_back_and_the_import_stops(db, settings):
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=_binary("temporal-test-server"), data_converter=pydantic_data_converter
    )
    ada = await add_contact(db, "ada@example.com", name="Ada", lifecycle_stage="lead")
    async with db.session() as session:
        session.add(Enrollment(flow_id=(await add_flow_row(session)), flow_version=1, contact_id=ada.id, workflow_id="gone-1"))
        await session.commit()
    async with app_client(settings, db, env.client) as api:
        await env.shutdown()  # the API holds a client whose server is gone
        response = await import_file(api, "email,lifecycle_stage\nnew@example.com,lead\nada@example.com,customer\n")

    assert response.status_code == 503, response.text
    assert "Temporal is unavailable" in response.json()["detail"]
    report = response.json()["report"]
    assert (report["created"], report["failed"]) == (1, 1) and report["errors"][0]["row"] == 2
    stored = await contact_row(db, "ada@example.com")
    assert stored.lifecycle_stage == "lead"  # as it was: importing the file again tells its enrollment


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)  # the numbers are the benchmark's; this proves it runs
async def test_the_import_benchmark_imports_creates_leaves_and_updates_every_row(db, client, settings):
    settings.auth_required = True
    async with db.session() as session:
        _, key = await create_key(session, "benchmark", Role.admin)
        await session.commit()
    async with live_api(settings, db, client) as url:
        result = await measure_import(url, key, 120)
    assert [(result[p]["created"], result[p]["unchanged"], result[p]["updated"]) for p in ("create", "unchanged", "update")] == [
        (120, 0, 0), (0, 120, 0), (0, 0, 120),
    ]
    assert all(result[p]["failed"] == 0 and result[p]["rows_per_s"] > 0 for p in ("create", "unchanged", "update"))
