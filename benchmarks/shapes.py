"""History events and billable actions per flow shape: the engine's enrollment next to a bare workflow.

Both sides are read from the real histories of workflows the other cases ran to their end
(``fetch_history``), counted by benchmarks/actions.py. The branch shape gets runs of its own.
"""

from __future__ import annotations

import uuid
from typing import Any

from temporalio.client import Client

from benchmarks.actions import history_cost
from benchmarks.flows import BRANCH_COMPANY, BRANCH_EVENT
from benchmarks.harness import LONG_WAIT, Engine, poll
from benchmarks.raw_workflow import (
    RAW_BRANCH_WORKFLOW,
    EventSignal,
    Pings,
    PingsQuery,
    RawBranchInput,
    RawBranchResult,
)
from nurture.models import Flow

SHAPES = {
    "send_delay_send": "send_email → delay 1s → send_email",
    "wait_for_event_branch": "send_email → wait_for_event → branch → send_email",
    "delay_goal_exit": "delay 1h → goal event exits (raw: activity → timer a signal ends)",
}


async def history_sample(client: Client, workflow_ids: list[str], samples: int) -> dict[str, Any]:
    """The median run of a few (by actions, then events), with what its actions are made of."""
    costs = []
    for workflow_id in workflow_ids[:samples]:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        costs.append(history_cost(history.events))
    if not costs:
        return {"samples": 0}
    costs.sort(key=lambda c: (c.actions, c.events))
    median = costs[len(costs) // 2]
    return {
        "samples": len(costs),
        "events": median.events,
        "actions": median.actions,
        "range": {"events": [costs[0].events, costs[-1].events], "actions": [costs[0].actions, costs[-1].actions]},
        "by_kind": median.by_kind,
        "activities": median.activities,
    }


async def engine_branch_runs(engine: Engine, flow: Flow, count: int) -> list[str]:
    """Enrollments of the branch flow run to their end: the event arrives while they wait for it."""
    closed = []
    for contact in await engine.contacts(count, company=BRANCH_COMPANY):
        handle = engine.handle(await engine.enroll(flow, contact, "enroller"))

        async def waiting_for_the_event(handle=handle) -> bool:
            state = await engine.state(handle)
            return state.current_step == "wait" and state.waiting_until is not None

        await poll(waiting_for_the_event)
        await engine.event(contact.id, BRANCH_EVENT, "enroller")
        result = await handle.result()
        if result.status != "completed":
            raise RuntimeError(f"the branch flow ended {result.status} ({result.exit_reason}), not completed")
        closed.append(handle.id)
    return closed


async def raw_branch_runs(client: Client, task_queue: str, count: int) -> list[str]:
    closed = []
    for _ in range(count):
        handle = await client.start_workflow(
            RAW_BRANCH_WORKFLOW, RawBranchInput(timeout_seconds=LONG_WAIT.total_seconds(), company=BRANCH_COMPANY),
            id=f"bench-raw-branch-{uuid.uuid4().hex[:12]}", task_queue=task_queue, result_type=RawBranchResult,
        )

        async def waiting(handle=handle) -> bool:
            return (await handle.query("pings", PingsQuery(), result_type=Pings)).waiting

        await poll(waiting)
        await handle.signal("event", EventSignal(type=BRANCH_EVENT))
        result = await handle.result()
        if not (result.event_arrived and result.took_then):
            raise RuntimeError(f"the raw branch workflow went the wrong way: {result}")
        closed.append(handle.id)
    return closed


def history_ratios(raw: dict[str, Any], engine: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for shape in SHAPES:
        e, r = engine.get(shape, {}), raw.get(shape, {})
        if e.get("samples") and r.get("samples"):
            out[shape] = {
                "events": round(e["events"] / r["events"], 2),
                "actions": round(e["actions"] / r["actions"], 2),
            }
    return out
