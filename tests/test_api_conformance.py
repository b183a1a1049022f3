"""No 5xx from a client's mistake, and every answer is one the OpenAPI declares.

Schemathesis generates valid and invalid requests for every operation (tests/schema_fuzzing.py);
the API must never answer 5xx, and each status, content type, header and body must match the
OpenAPI. Invalid data must be refused.
"""

from __future__ import annotations

import json
import os
import re

import httpx
import pytest
import yaml

from api.main import create_app
from nurture.models import Contact
from tests.api_support import EXAMPLE_FLOW, api, count_rows, locs  # noqa: F401  (fixtures)
from tests.schema_fuzzing import fuzz_app

# 54 operations x 2 generation modes x up to this many cases: about 1,000 per database backend,
# some 20 s each on a loaded 2-core machine. NURTURE_FUZZ_EXAMPLES=30 is the long run.
EXAMPLES_PER_OPERATION = int(os.environ.get("NURTURE_FUZZ_EXAMPLES", "10"))


async def test_every_operation_answers_as_its_openapi_declares(db, client, settings, worker):
    # About a thousand requests from one address in seconds: the budgets are tested in
    # test_rate_limits.py, here they would only turn cases into 429s.
    app = create_app(settings.model_copy(update={"rate_limit_enabled": False}), db=db, client=client)
    report = await fuzz_app(app, EXAMPLES_PER_OPERATION)
    print(f"schemathesis: {report.cases} cases, {report.server_errors} server errors, {len(report.failures)} failures")
    assert report.cases > 0
    assert report.server_errors == 0, report.summary()
    assert not report.failures, report.summary()


# --- the causes the audit found, one by one ------------------------------------------


@pytest.mark.parametrize("field", ["tags", "lists"])
async def test_null_tags_or_lists_clear_them_and_the_contact_list_stays_readable(api, field):
    created = await api.post("/contacts", json={"email": "ada@example.com", field: ["vip"]})
    assert created.status_code == 201, created.text
    cleared = await api.patch(f"/contacts/{created.json()['id']}", json={field: None})
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()[field] == []
    new = await api.post("/contacts", json={"email": "grace@example.com", field: None})
    assert new.status_code == 201, new.text
    assert new.json()[field] == []
    listed = await api.get("/contacts")
    assert listed.status_code == 200, listed.text
    assert [c[field] for c in listed.json()["items"]] == [[], []]


async def test_a_contact_whose_answer_cannot_be_produced_is_not_stored(api, db):
    # Properties nested deeper than the answer's serializer goes (pydantic stops at 255 levels) were
    # stored, then every read of the contact list failed. Whatever input limits refuse earlier,
    # a row whose answer cannot be produced is never committed.
    deep: dict = {}
    for _ in range(300):
        deep = {"a": deep}
    body = json.dumps({"email": "deep@example.com", "properties": {"x": deep}}).encode()
    response = await api.post("/contacts", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert await count_rows(db, Contact) == 0
    assert (await api.get("/contacts")).status_code == 200


@pytest.mark.parametrize("action", ["pause", "resume"])
async def test_an_out_of_range_flow_id_in_a_body_is_422_naming_it(api, action):
    contact = (await api.post("/contacts", json={"email": "ada@example.com"})).json()
    body = {"flow_ids": [99999999999999999999999], "reason": "call", "paused_by": "rep", "resumed_by": "rep", "duration": "1d"}
    if action == "resume":
        body = {k: body[k] for k in ("flow_ids", "resumed_by")}
    else:
        body.pop("resumed_by")
    response = await api.post(f"/contacts/{contact['id']}/{action}", json=body)
    assert response.status_code == 422, response.text
    assert locs(response) == [["body", "flow_ids", 0]]


async def test_a_junk_page_token_is_422_naming_it(dev_env, db, settings):
    app = create_app(settings.model_copy(update={"temporal_search_attributes": True}), db=db, client=dev_env.client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as api:
        flow = await api.post("/flows", json=yaml.safe_load(EXAMPLE_FLOW.read_text()))
        assert flow.status_code == 201, flow.text
        for junk in ("AAAA", "bm90IGEgdG9rZW4=", "%%%"):
            response = await api.get(f"/flows/{flow.json()['id']}/enrollments/search", params={"page_token": junk})
            assert response.status_code == 422, (junk, response.text)
            assert locs(response) == [["query", "page_token"]]


async def test_a_method_a_path_does_not_have_is_405_naming_the_methods_it_has(api):
    paths = (await api.get("/openapi.json")).json()["paths"]
    for path, operations in paths.items():
        concrete = re.sub(r"\{[^}]+\}", "1", path)
        documented = {method.upper() for method in operations}
        for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} - documented):
            response = await api.request(method, concrete)
            # GET /flows/validate once reached GET /flows/{flow_id} and answered 422.
            assert response.status_code == 405, (method, concrete, response.status_code)
            allowed = {m.strip() for m in response.headers.get("allow", "").split(",") if m.strip()}
            assert allowed == documented, (method, concrete, response.headers.get("allow"))


async def test_validate_refuses_a_body_that_is_not_a_document(api):
    for content, content_type in ((b"\x00", "application/json"), (b"{not json", "application/json"), (b"[1, 2]", "application/json"), (b"- a\n- b\n", "application/yaml")):
        response = await api.post("/flows/validate", content=content, headers={"content-type": content_type})
        assert response.status_code == 422, (content, response.text)
        assert locs(response) == [["body"]]
    problems = await api.post("/flows/validate", json={"name": "x"})
    assert problems.status_code == 200 and problems.json()["valid"] is False


async def test_a_list_where_a_flow_expects_a_name_is_422(api):
    # Found by the long schemathesis run: a list in `kind` broke the error report itself (500).
    flow = yaml.safe_load(EXAMPLE_FLOW.read_text())
    flow["steps"].insert(0, {"id": "task", "type": "create_task", "title": "Call", "kind": [None, None]})
    response = await api.post("/flows", json=flow)
    assert response.status_code == 422, response.text
    assert [["body", "steps", 0, "kind"]] == locs(response)
    branch = yaml.safe_load(EXAMPLE_FLOW.read_text())
    branch["steps"].insert(0, {"id": "b", "type": "branch", "condition": {"kind": ["tag"], "tag": "x"}, "then": "b", "else": "b"})
    response = await api.post("/flows", json=branch)
    assert response.status_code == 422, response.text
