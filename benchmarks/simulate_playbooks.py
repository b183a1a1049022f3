"""How long the simulator takes to answer for each playbook's main path (wall time), and what it answers.

Run from the repository root: ``.venv/bin/python -m benchmarks.simulate_playbooks``. Timing claims live
here, not in the test suite. The contacts and events are the tests' scenarios (tests/playbook_scenarios.py).
"""

from __future__ import annotations

import asyncio
import statistics
import time

from nurture.flow.conditions import EventFact
from nurture.playbooks import load_playbooks
from nurture.simulation_models import HypotheticalContact, ScriptedEvent
from simulation.simulator import Simulator
from tests.playbook_scenarios import BY_NAME

ROUNDS = 3


async def main() -> None:
    simulator = Simulator()
    print(f"{'#':>2}  {'playbook':30} {'steps':>5}  {'main path':>10}  {'path':>4}  {'messages':>8}  {'wall (median of 3)':>18}")
    try:
        for playbook in load_playbooks():
            scenario = BY_NAME[playbook.name]
            contact = HypotheticalContact.model_validate(scenario.contact)
            walls = []
            for _ in range(ROUNDS):
                began = time.perf_counter()
                result = await simulator.simulate(
                    playbook.flow, contact.snapshot(), templates=playbook.template_texts,
                    events=[ScriptedEvent.model_validate(e) for e in scenario.events],
                    history=[EventFact(type=e.type, at=scenario.start - e.ago, properties=e.properties)
                             for e in contact.events],
                    start=scenario.start,
                )
                walls.append(time.perf_counter() - began)
            print(f"{playbook.number:>2}  {playbook.name:30} {len(playbook.flow.steps):>5}  {result.duration:>10}  "
                  f"{len(result.path):>4}  {len(result.messages):>8}  {statistics.median(walls) * 1000:>15.0f} ms")
    finally:
        await simulator.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
