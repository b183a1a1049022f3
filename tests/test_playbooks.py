"""The 21 shipped playbooks: each loads with its templates, is documented, and runs end to end on
simulated time (the real EnrollmentWorkflow on the simulator's test server) along the expected path."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from activities.email.rendering import TemplateRenderer
from nurture.flow import load_flow
from nurture.flow.conditions import EventFact
from nurture.playbooks import Playbook, load_playbooks
from nurture.simulation_models import HypotheticalContact, ScriptedEvent, SimulationResult
from simulation.simulator import Simulator
from tests.playbook_scenarios import BY_NAME, SPLIT_STEPS, Scenario

DOCS = Path(__file__).resolve().parent.parent / "docs" / "playbooks.md"

# The seeds' fifteen workflows (seed 000) and six campaign types (seed 004), in their order.
EXPECTED = [
    "topic-interest", "blog-subscriber-welcome", "new-customer-onboarding", "engaged-contacts", "lead-nurturing",
    "internal-sales-notification", "re-engagement", "event-webinar", "abandoned-cart", "upsell",
    "customer-happiness-nps", "customer-success-usage", "upcoming-purchase-reminder", "customer-service-ticket",
    "deal-based", "welcome-double-opt-in", "first-purchase-feedback", "birthday", "best-customers", "win-back",
    "geolocation",
]

PLAYBOOKS = {p.name: p for p in load_playbooks()}


@pytest.fixture(scope="module")
async def simulator() -> AsyncIterator[Simulator]:
    running = Simulator()
    yield running
    await running.shutdown()


def test_the_21_playbooks_ship_in_the_seeds_order():
    assert list(PLAYBOOKS) == EXPECTED
    assert [p.number for p in PLAYBOOKS.values()] == list(range(1, 22))
    assert set(BY_NAME) == set(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_playbook_validates_with_exactly_the_templates_it_ships(name):
    playbook = PLAYBOOKS[name]
    keys = {t.key for t in playbook.templates}
    load_flow(playbook.definition, known_templates=keys)  # raises on any problem, unknown templates included
    assert keys == set(playbook.sends), "every shipped template is used, and every used template is shipped"


@pytest.mark.parametrize("name", EXPECTED)
async def test_playbook_templates_render_for_a_sparse_and_a_full_contact(name):
    sparse = {"email": "someone@example.com"}
    full = {**BY_NAME[name].contact.get("properties", {}), **BY_NAME[name].contact, "email": "ada@example.com"}
    for template in PLAYBOOKS[name].templates:
        for contact in (sparse, full):
            rendered = await TemplateRenderer().email(template.subject, template.html, template.text, {"contact": contact})
            assert rendered.subject.strip() and rendered.text.strip(), template.key
            assert "None" not in rendered.subject + rendered.html + rendered.text, template.key
        assert "{{" in template.subject + template.html, f"{template.key} is not personalised"


def test_every_playbook_has_a_paragraph_in_the_docs():
    text = DOCS.read_text()
    for playbook in PLAYBOOKS.values():
        heading = re.search(rf"^## {playbook.number}\. .*`{playbook.name}`", text, re.MULTILINE)
        assert heading, f"docs/playbooks.md has no section for {playbook.name}"
    assert "nurture load-playbooks" in text and "POST /playbooks/{name}/install" in text


async def simulate(simulator: Simulator, playbook: Playbook, scenario: Scenario) -> SimulationResult:
    contact = HypotheticalContact.model_validate(scenario.contact)
    return await simulator.simulate(
        playbook.flow,
        contact.snapshot(),
        templates=playbook.template_texts,
        events=[ScriptedEvent.model_validate(e) for e in scenario.events],
        history=[EventFact(type=e.type, at=scenario.start - e.ago, properties=e.properties) for e in contact.events],
        start=scenario.start,
    )


def sends_of(result: SimulationResult) -> list[tuple]:
    return [(m.at, m.template if m.channel == "email" else f"{m.channel}:{m.step_id}") for m in result.messages]


def expected_for(scenario: Scenario, result: SimulationResult) -> tuple[list[str], list[tuple]]:
    """The scenario's path and sends, with A/B draws filled in from what this enrollment drew."""
    path, sends = list(scenario.path), scenario.expected_sends
    for step_id, paths in SPLIT_STEPS.get(scenario.playbook, {}).items():
        step, template = paths[result.choices[step_id]]
        path = [step if p == "<offer>" else p for p in path]
        sends = [(at, template if what == "<offer>" else what) for at, what in sends]
    return path, sends


@pytest.mark.parametrize("name", EXPECTED)
async def test_playbook_runs_its_main_path_on_simulated_time(simulator, name):
    scenario, playbook = BY_NAME[name], PLAYBOOKS[name]
    result = await simulate(simulator, playbook, scenario)

    path, sends = expected_for(scenario, result)
    assert result.path == path
    got = sends_of(result)
    assert [at for at, _ in got] == [at for at, _ in sends]
    assert all(fnmatchcase(what, pattern) for (_, what), (_, pattern) in zip(got, sends)), (got, sends)
    assert (result.status, result.exit_reason) == (scenario.status, scenario.exit_reason)
    assert result.ended_at == scenario.at(scenario.end)
    tasks = [(a.at, a.detail) for a in result.actions if a.kind == "task"]
    assert tasks == [(scenario.at(when), title) for when, title in scenario.tasks]
    for task in (a for a in result.actions if a.kind == "task"):
        step = next(s for s in playbook.flow.steps if s.id == task.step_id)
        assert task.due_at == task.at + step.due_in
    assert result.warnings == []
    assert all(m.status == "sent" and m.subject for m in result.messages if m.channel == "email")


async def test_upsell_pitch_is_the_variant_drawn_with_its_own_subject(simulator):
    playbook = PLAYBOOKS["upsell"]
    templates = {"features": "upsell-pro-features", "savings": "upsell-pro-savings"}
    for _ in range(3):
        result = await simulate(simulator, playbook, BY_NAME["upsell"])
        pitch = next(m for m in result.messages if m.step_id == "pro-pitch")
        assert pitch.variant == result.choices["pro-pitch"]
        assert pitch.template == templates[pitch.variant]
        source = playbook.template_texts[pitch.template]
        expected = await TemplateRenderer().line(source.subject, {"contact": {"name": "Katherine"}})
        assert pitch.subject == expected


@pytest.mark.parametrize(
    ("score", "path_end", "sent"),
    [
        (8, ["passive", "passive-tips", "done"], ["nps-passive-tips"]),
        (3, ["detractor", "detractor-follow-up", "detractor-ticket", "tell-owner", "done"],
         ["nps-detractor-follow-up", "internal:tell-owner"]),
    ],
)
async def test_nps_passives_and_detractors_take_their_own_paths(simulator, score, path_end, sent):
    scenario = BY_NAME["customer-happiness-nps"]
    contact = {**scenario.contact, "owner": "csm@example.com", "properties": {"nps_score": score}}
    result = await simulate(simulator, PLAYBOOKS["customer-happiness-nps"],
                            Scenario(scenario.playbook, contact, [], [], "0s"))
    assert result.path == ["score"] + path_end
    assert [what for _, what in sends_of(result)] == sent
    assert all(m.at == scenario.start for m in result.messages)
    assert (score < 7) == ("detractor" in result.contact.tags and "at-risk" in result.contact.lists)


async def test_abandoned_cart_stops_the_moment_the_purchase_happens(simulator):
    scenario = BY_NAME["abandoned-cart"]
    result = await simulate(simulator, PLAYBOOKS["abandoned-cart"], Scenario(
        scenario.playbook, scenario.contact, [], [], "0s",
        events=[{"at": "1d6h", "type": "purchase_completed", "properties": {"order_id": "A-1"}}]))
    assert [what for _, what in sends_of(result)] == ["cart-reminder", "cart-discount"]
    assert (result.status, result.exit_reason, result.duration) == ("exited", "goal_met", "1d6h")
    assert result.waits[-1].step_id == "wait-2d" and result.waits[-1].ended_by == "exit: goal_met"


async def test_a_flow_spanning_five_months_is_reported_on_the_contacts_calendar(simulator):
    """The reorder reminder lands on 15 June at 10:00 in Berlin, in summer time, though the flow began in winter."""
    result = await simulate(simulator, PLAYBOOKS["upcoming-purchase-reminder"], BY_NAME["upcoming-purchase-reminder"])
    wait = result.waits[0]
    assert (wait.step_id, wait.ended_by, wait.start_offset) == ("five-months-later", "timer", "0s")
    assert wait.ended_at.isoformat() == "2026-06-15T08:00:00+00:00"
