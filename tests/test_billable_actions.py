"""Billable actions counted from real histories (benchmarks/actions.py), by Temporal Cloud's rules."""

from __future__ import annotations

import json
from pathlib import Path

from temporalio.client import WorkflowHistory

from benchmarks.actions import history_cost
from tests.billable_workflow import FIRST_RUN_ACTIONS
from tests.record_billable_history import SAVED, run_billable

HISTORIES = Path(__file__).parent / "histories"


def saved(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, json.loads(path.read_text()))


def test_an_enrollment_history_costs_its_start_sends_rests_timers_and_signals():
    history = saved(HISTORIES / "enrollment_goal_mid_wait.json")

    cost = history_cost(history.events)

    # Two sends; four progress reports, each a local activity in a workflow task of its own; paused,
    # resumed, goal: 3 signals; 3 timers (the delay, the pause, the delay again); the start. No
    # search attributes (the recording turned them off).
    assert cost.by_kind == {
        "workflow_started": 1, "activities": 2, "local_activity_tasks": 4, "timers": 3, "signals": 3,
    }
    assert cost.actions == 13
    assert cost.events == 57
    assert cost.activities == {"send_email": 2}


def test_every_kind_of_action_counts_by_its_own_rule():
    history = saved(SAVED)

    cost = history_cost(history.events)

    # Three local activities in two workflow tasks count 2; the flaky activity's retry counts; the patch
    # marker and the TemporalChangeVersion upsert beside it are free, the search attribute given at start too.
    assert cost.by_kind == FIRST_RUN_ACTIONS
    assert cost.actions == 10
    assert cost.events == 34
    assert cost.activities == {"billable_echo": 1, "billable_flaky": 2}


async def test_a_fetched_history_counts_the_same_and_a_continued_run_starts_at_one(dev_env):
    first, second = await run_billable(dev_env.client)

    assert history_cost(first.events).by_kind == FIRST_RUN_ACTIONS
    assert history_cost(first.events).events == len(first.events)
    assert history_cost(second.events).by_kind == {"workflow_started": 1}
