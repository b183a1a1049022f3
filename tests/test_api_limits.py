"""Bounded input over the API: body size, nesting depth, YAML aliases, flow size, durations, loops.

Each request here once answered 500, hung the API for seconds, or stored something it should not.
"""

from __future__ import annotations

import json

import httpx

from api.main import create_app
from nurture.models import Contact, Event, Flow, FlowVersion
from tests.api_support import api, count_rows, locs  # noqa: F401  (fixtures)
from tests.test_flow_limits import ALIAS_BOMB, flow_of, sends

YAML = {"content-type": "application/yaml"}


def messages(response: httpx.Response) -> str:
    return json.dumps(response.json()["detail"])


async def test_a_yaml_alias_bomb_is_a_422_naming_the_budget_and_nothing_is_stored(api, db):
    response = await api.post("/flows", content=ALIAS_BOMB, headers=YAML)
    assert response.status_code == 422, response.text[:500]
    assert "max_yaml_alias_values" in messages(response)
    assert await count_rows(db, Flow) == 0 and await count_rows(db, FlowVersion) == 0


async def test_deep_yaml_and_json_flows_are_422_naming_the_depth_limit(api, db):
    deep_yaml = "name: deep\ntrigger: {type: manual}\nsteps: " + "[" * 10_000 + "]" * 10_000 + "\n"
    response = await api.post("/flows", content=deep_yaml, headers=YAML)
    assert response.status_code == 422 and "max_nesting_depth" in messages(response)

    deep_json = '{"name": "deep", "trigger": {"type": "manual"}, "steps": ' + "[" * 5_000 + "]" * 5_000 + "}"
    for path in ("/flows", "/flows/validate", "/flows/estimate"):
        response = await api.post(path, content=deep_json, headers={"content-type": "application/json"})
        assert response.status_code == 422, (path, response.text[:300])
        assert "max_nesting_depth" in messages(response)
    assert await count_rows(db, Flow) == 0


async def test_json_bodies_nested_too_deep_are_422_on_every_route(api, db):
    deep = '{"email": "deep@example.com", "properties": {"x": ' + "[" * 5_000 + "]" * 5_000 + "}}"
    for path in ("/contacts", "/events", "/templates", "/flows/simulate"):
        response = await api.post(path, content=deep, headers={"content-type": "application/json"})
        assert response.status_code == 422, (path, response.text[:300])
        assert "max_nesting_depth" in messages(response) and locs(response) == [["body"]]
    # Without a Content-Type FastAPI still reads JSON: the limit holds there too.
    response = await api.post("/contacts", content=deep)
    assert response.status_code == 422


async def test_properties_nested_900_deep_are_refused_before_anything_is_written(api, db):
    nested: object = "bottom"
    for _ in range(900):
        nested = {"k": nested}
    response = await api.post("/contacts", json={"email": "deep@example.com", "properties": {"p": nested}})
    assert response.status_code == 422 and "max_nesting_depth" in messages(response)
    response = await api.post("/events", json={"type": "signed_up", "email": "deep@example.com", "properties": {"p": nested}})
    assert response.status_code == 422
    assert await count_rows(db, Contact) == 0 and await count_rows(db, Event) == 0
    listed = await api.get("/contacts")
    assert listed.status_code == 200 and listed.json()["count"] == 0


async def test_a_utf16_json_body_cannot_slip_deep_nesting_past_the_gauge(api, db):
    # json.loads reads UTF-16 too; in it U+2200 holds a quote byte that would blind the depth count.
    nested: object = "\u2200"
    for _ in range(200):
        nested = {"k": nested}
    body = json.dumps({"email": "deep@example.com", "properties": {"p": nested}}, ensure_ascii=False)
    for encoding in ("utf-16-le", "utf-16", "utf-32"):
        response = await api.post("/contacts", content=body.encode(encoding), headers={"content-type": "application/json"})
        assert response.status_code == 422, (encoding, response.text[:300])
        assert "UTF-8" in messages(response)
    assert await count_rows(db, Contact) == 0


async def test_a_10mb_body_is_413_with_or_without_content_length(api, db):
    big = json.dumps({"email": "big@example.com", "properties": {"blob": "x" * 10_000_000}}).encode()
    response = await api.post("/contacts", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "max_body_bytes" in response.json()["detail"]

    async def chunks():
        for start in range(0, len(big), 65_536):
            yield big[start : start + 65_536]

    response = await api.post("/contacts", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413 and "max_body_bytes" in response.json()["detail"]

    response = await api.post("/flows", content=b"name: x\n" + b"#" * 10_000_000, headers=YAML)
    assert response.status_code == 413
    assert await count_rows(db, Contact) == 0 and await count_rows(db, Flow) == 0


async def test_the_body_limit_is_a_setting(db, client, settings):
    small = create_app(settings.model_copy(update={"max_body_bytes": 200}), db=db, client=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=small), base_url="http://test") as http:
        ok = await http.post("/contacts", json={"email": "ok@example.com"})
        assert ok.status_code == 201, ok.text
        big = await http.post("/contacts", json={"email": "big@example.com", "name": "x" * 300})
        assert big.status_code == 413 and "200 bytes" in big.json()["detail"]


async def test_10000_steps_are_a_422_naming_the_step_limit(api, db):
    response = await api.post("/flows", json=flow_of(sends(10_000)))
    assert response.status_code == 422
    [problem] = response.json()["detail"]
    assert problem["path"] == "steps" and "max_flow_steps" in problem["msg"]
    assert await count_rows(db, Flow) == 0


async def test_a_huge_delay_is_a_422_at_its_path(api, db):
    flow = flow_of([{"id": "a", "type": "send_email", "template": "t"}, {"id": "w", "type": "delay", "duration": "99999999d"}])
    response = await api.post("/flows", json=flow)
    assert response.status_code == 422 and locs(response) == [["body", "steps", 1, "duration"]]
    yaml_flow = "name: huge\ntrigger: {type: manual}\nsteps:\n  - {id: w, type: delay, duration: 99999999d}\n"
    response = await api.post("/flows", content=yaml_flow, headers=YAML)
    assert response.status_code == 422 and locs(response) == [["body", "steps", 0, "duration"]]
    assert await count_rows(db, Flow) == 0


async def test_a_huge_pause_is_a_422_naming_the_field(api):
    contact = (await api.post("/contacts", json={"email": "rep@example.com"})).json()
    for duration in ("99999999d", "P99999999D", "999999999w"):
        response = await api.post(
            f"/contacts/{contact['id']}/pause", json={"duration": duration, "reason": "vacation", "paused_by": "rep-a"}
        )
        assert response.status_code == 422, response.text
        assert locs(response) == [["body", "duration"]]
    assert (await api.get(f"/contacts/{contact['id']}")).json()["paused_until"] is None


async def test_a_next_loop_is_a_422_with_the_path_of_the_loop(api, db):
    flow = flow_of([
        {"id": "send", "type": "send_email", "template": "t"},
        {"id": "pause", "type": "delay", "duration": "1s", "next": "send"},
    ])
    response = await api.post("/flows", json=flow)
    assert response.status_code == 422
    [problem] = response.json()["detail"]
    assert problem["path"] == "steps[0]" and "steps[0] -> steps[1] -> steps[0]" in problem["msg"]
    assert await count_rows(db, Flow) == 0
