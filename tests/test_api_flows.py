"""Templates and flows over the API: syntax checks, flow problems with paths, versions, activation."""

from __future__ import annotations

import json

import yaml

from nurture.models import Flow, FlowVersion, Template
from tests.api_support import (  # noqa: F401  (fixtures)
    EXAMPLE_FLOW,
    EXAMPLE_TEMPLATES,
    active_example_flow,
    api,
    count_rows,
    create_example_flow,
    create_template,
    enroll_by_event,
    locs,
    post_event,
)
from tests.conftest import eventually


def example() -> dict:
    return yaml.safe_load(EXAMPLE_FLOW.read_text())


# --- templates -------------------------------------------------------------------


async def test_template_syntax_error_is_422_naming_the_field_and_nothing_is_stored(api, db):
    broken = await api.post(
        "/templates", json={"key": "welcome", "subject": "Hi {{ contact.name }}", "html": "<p>{% if contact.name %}Hi</p>"}
    )
    assert broken.status_code == 422
    assert locs(broken) == [["body", "html"]]
    assert "syntax" in broken.json()["detail"][0]["msg"]

    both = await api.post("/templates", json={"key": "welcome", "subject": "Hi {{ contact.name", "html": "ok", "text": "{% endfor %}"})
    assert both.status_code == 422
    assert locs(both) == [["body", "subject"], ["body", "text"]]

    bad_key = await api.post("/templates", json={"key": "Welcome Email", "subject": "Hi", "html": "ok"})
    assert bad_key.status_code == 422
    assert locs(bad_key) == [["body", "key"]]
    assert await count_rows(db, Template) == 0
    assert (await api.get("/templates/welcome")).status_code == 404


async def test_template_create_get_list_and_put(api):
    created = await create_template(api, "welcome")
    assert created["key"] == "welcome"
    duplicate = await api.post("/templates", json={"key": "welcome", "subject": "Again", "html": "x"})
    assert duplicate.status_code == 409

    replaced = await api.put("/templates/welcome", json={"subject": "Welcome, {{ contact.name }}", "html": "<p>v2</p>"})
    assert replaced.status_code == 200, replaced.text
    assert (await api.get("/templates/welcome")).json()["html"] == "<p>v2</p>"
    broken = await api.put("/templates/welcome", json={"subject": "ok", "html": "{{ oops"})
    assert broken.status_code == 422 and locs(broken) == [["body", "html"]]
    assert (await api.get("/templates/welcome")).json()["html"] == "<p>v2</p>"

    new = await api.put("/templates/follow-up", json={"subject": "Following up", "html": "<p>hi</p>"})
    assert new.status_code == 201
    listed = (await api.get("/templates")).json()
    assert [t["key"] for t in listed["items"]] == ["follow-up", "welcome"] and listed["count"] == 2


# --- flows ---------------------------------------------------------------------


async def test_invalid_flow_is_422_listing_every_problem_with_its_path(api, db):
    flow = example()
    flow["steps"][1]["id"] = "welcome"  # duplicate of steps[0]
    flow["steps"][3]["next"] = "nowhere"  # unknown step
    response = await api.post("/flows", json=flow)
    assert response.status_code == 422, response.text
    problems = {item["path"]: item for item in response.json()["detail"]}
    assert set(problems) == {"steps[1].id", "steps[3].next"}
    assert "duplicate step id 'welcome'" in problems["steps[1].id"]["msg"]
    assert "nowhere" in problems["steps[3].next"]["msg"]
    assert problems["steps[3].next"]["loc"] == ["body", "steps", 3, "next"]

    structural = await api.post(
        "/flows",
        json={"name": "x", "trigger": {"type": "event", "event": "Bad Event"}, "steps": [{"id": "a", "type": "teleport"}]},
    )
    assert structural.status_code == 422
    paths = {item["path"] for item in structural.json()["detail"]}
    assert paths == {"trigger.event", "steps[0]"}

    garbage = await api.post("/flows", content=b"steps: [unclosed", headers={"content-type": "application/yaml"})
    assert garbage.status_code == 422
    assert garbage.json()["detail"][0]["path"] == "body"
    assert await count_rows(db, Flow) == 0 and await count_rows(db, FlowVersion) == 0


async def test_yaml_flow_is_a_draft_with_template_warnings(api):
    flow = await create_example_flow(api)
    assert flow["status"] == "draft"
    assert flow["latest_version"] == 1 and flow["active_version"] is None
    assert flow["name"] == "Demo-request nurture"
    assert {w["path"] for w in flow["warnings"]} == {"steps[0].template", "steps[3].template", "steps[4].template"}

    fetched = (await api.get(f"/flows/{flow['id']}")).json()
    assert fetched["versions"] == [{"version": 1, "created_at": fetched["versions"][0]["created_at"], "active": False}]
    assert fetched["definition_version"] == 1
    assert [s["id"] for s in fetched["definition"]["steps"]] == [s["id"] for s in example()["steps"]]
    assert fetched["definition"]["steps"][1]["duration"] == "2d"

    as_json = await api.post("/flows", content=json.dumps(example()), headers={"content-type": "application/json"})
    assert as_json.status_code == 201
    listed = (await api.get("/flows")).json()
    assert [f["id"] for f in listed["items"]] == [flow["id"], as_json.json()["id"]]
    assert (await api.get("/flows/77")).status_code == 404


async def test_activation_with_a_missing_template_is_422_and_the_flow_stays_draft(api):
    flow = await create_example_flow(api)
    await create_template(api, "demo-welcome")
    await create_template(api, "case-study")

    refused = await api.post(f"/flows/{flow['id']}/activate")
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    assert [item["path"] for item in detail] == ["steps[4].template"]
    assert detail[0]["loc"] == ["definition", "steps", 4, "template"]
    assert "demo-welcome-resend" in detail[0]["msg"]
    after = (await api.get(f"/flows/{flow['id']}")).json()
    assert after["status"] == "draft" and after["active_version"] is None and after["trigger_event"] is None

    await create_template(api, "demo-welcome-resend")
    activated = await api.post(f"/flows/{flow['id']}/activate")
    assert activated.status_code == 200, activated.text
    body = activated.json()
    assert body["status"] == "active" and body["active_version"] == 1
    assert body["trigger_event"] == "demo_requested"
    assert body["versions"][0]["active"] is True


async def test_validate_checks_structure_and_templates_and_answers_200_for_any_document(api):
    await create_template(api, "demo-welcome")
    missing = await api.post("/flows/validate", content=EXAMPLE_FLOW.read_text(), headers={"content-type": "text/yaml"})
    assert missing.status_code == 200
    assert missing.json()["valid"] is False
    assert {p["path"] for p in missing.json()["problems"]} == {"steps[3].template", "steps[4].template"}

    for key in EXAMPLE_TEMPLATES[1:]:
        await create_template(api, key)
    ok = await api.post("/flows/validate", json=example())
    assert ok.status_code == 200 and ok.json() == {"valid": True, "problems": []}

    broken = example()
    broken["steps"][2]["then"] = "ghost"
    invalid = await api.post("/flows/validate", json=broken)
    assert invalid.status_code == 200
    assert invalid.json()["problems"] == [{"path": "steps[2].then", "message": "no step has the id 'ghost'"}]

    unparsable = await api.post("/flows/validate", content=b"{not json", headers={"content-type": "application/json"})
    assert unparsable.status_code == 422
    assert unparsable.json()["detail"][0]["loc"] == ["body"] and "not valid JSON or YAML" in unparsable.json()["detail"][0]["msg"]


async def test_versions_are_immutable_and_any_one_can_be_activated(api):
    flow_id = await active_example_flow(api)
    edited = example()
    edited["name"] = "Demo-request nurture v2"
    edited["steps"][1]["duration"] = "3d"
    v2 = await api.post(f"/flows/{flow_id}/versions", json=edited)
    assert v2.status_code == 201, v2.text
    assert v2.json()["version"] == 2 and v2.json()["active"] is False

    v1 = (await api.get(f"/flows/{flow_id}/versions/1")).json()
    assert v1["definition"]["steps"][1]["duration"] == "2d" and v1["active"] is True
    flow = (await api.get(f"/flows/{flow_id}")).json()
    assert flow["latest_version"] == 2 and flow["active_version"] == 1
    assert flow["definition_version"] == 1  # the active one

    switched = await api.post(f"/flows/{flow_id}/activate", json={"version": 2})
    assert switched.status_code == 200
    assert switched.json()["active_version"] == 2
    assert switched.json()["definition"]["steps"][1]["duration"] == "3d"
    assert (await api.get(f"/flows/{flow_id}/versions/9")).status_code == 404
    assert (await api.post(f"/flows/{flow_id}/activate", json={"version": 9})).status_code == 404

    invalid = example()
    invalid["steps"].append({"id": "welcome", "type": "exit"})
    refused = await api.post(f"/flows/{flow_id}/versions", json=invalid)
    assert refused.status_code == 422
    assert (await api.get(f"/flows/{flow_id}")).json()["latest_version"] == 2


async def test_deactivate_stops_enrolling_and_can_exit_the_enrolled(api, worker):
    flow_id = await active_example_flow(api)
    _, enrollment_id = await enroll_by_event(api, "early@example.com")

    response = await api.post(f"/flows/{flow_id}/deactivate", params={"exit_enrolled": "true", "requested_by": "ops"})
    assert response.status_code == 200, response.text
    assert response.json()["flow"]["status"] == "inactive"
    assert response.json()["exited"] == [enrollment_id]

    async def exited():
        row = (await api.get(f"/enrollments/{enrollment_id}")).json()
        return row if row["status"] == "exited" else None

    row = await eventually(exited)
    assert row["exit_reason"] == "flow_deactivated"

    late = await post_event(api, type="demo_requested", email="late@example.com")
    assert late.status_code == 202
    assert late.json()["enrolled"] == []


async def test_openapi_documents_the_endpoints_and_the_flow_language(api):
    spec = (await api.get("/openapi.json")).json()
    assert {"/contacts", "/flows", "/flows/validate", "/events", "/enrollments/{enrollment_id}", "/health"} <= set(spec["paths"])
    body = spec["paths"]["/flows"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "application/yaml"}
    assert "steps" in spec["components"]["schemas"]["FlowDefinition"]["properties"]
    assert "SendEmailStep" in spec["components"]["schemas"]
    docs = await api.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
