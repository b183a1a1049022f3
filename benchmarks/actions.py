"""What one workflow run costs in history events and in Temporal Cloud billable actions, read from its history.

The rules follow Temporal Cloud's published list of actions (docs.temporal.io/cloud/actions), as far
as a history shows them:

- the run starting: 1 (a client start, a continue-as-new and a child start each begin a run with
  ``WorkflowExecutionStarted``; the ``ContinuedAsNew`` event closing the previous run is not counted
  again);
- an activity: 1 per attempt, so 1 for ``ActivityTaskScheduled`` plus ``attempt - 1`` retries read from its
  ``ActivityTaskStarted`` (the server records that event once, with the attempt that ended it);
- a timer started: 1;
- an upsert of search attributes: 1 each, however many it sets (search attributes given at start are
  free, and so is the ``TemporalChangeVersion`` upsert the SDK adds to a patch);
- a signal received: 1; an update accepted: 1;
- local activities: all local activity markers recorded by one workflow task completion count 1
  together;
- version and patch markers: free.

Actions crossing workflows (a signal or a child start from a workflow) count once, where they land.
Queries and heartbeats are billed too but leave no event behind, so no history can show them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

# Written by the SDK beside a patch marker; exempt from action counting.
CHANGE_VERSION = "TemporalChangeVersion"
# Local activity markers of the Python, TypeScript and .NET SDKs (core) and of the Go and Java SDKs.
LOCAL_ACTIVITY_MARKERS = frozenset({"core_local_activity", "LocalActivity"})

ONE_EACH = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED: "workflow_started",
    EventType.EVENT_TYPE_TIMER_STARTED: "timers",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED: "signals",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED: "updates",
}


@dataclass(frozen=True)
class HistoryCost:
    events: int
    actions: int
    # Actions per rule (see the module's docstring), and activity attempts per activity type.
    by_kind: dict[str, int] = field(default_factory=dict)
    activities: dict[str, int] = field(default_factory=dict)


def history_cost(events: Iterable[HistoryEvent]) -> HistoryCost:
    """Count one run's history (``WorkflowHistory.events``, from ``fetch_history`` or a saved JSON history)."""
    events = list(events)
    by_kind: Counter[str] = Counter()
    activity_type: dict[int, str] = {}
    attempts: Counter[str] = Counter()
    local_activity_tasks: set[int] = set()
    last_task_completed = 0
    for event in events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            last_task_completed = event.event_id
        kind = ONE_EACH.get(event.event_type)
        if kind is not None:
            by_kind[kind] += 1
        elif event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
            if set(fields) != {CHANGE_VERSION}:
                by_kind["search_attribute_upserts"] += 1
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            activity_type[event.event_id] = name
            by_kind["activities"] += 1
            attempts[name] += 1
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = event.activity_task_started_event_attributes
            retries = max(0, started.attempt - 1)
            if retries:
                by_kind["activity_retries"] += retries
                attempts[activity_type.get(started.scheduled_event_id, "?")] += retries
        elif event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            marker = event.marker_recorded_event_attributes
            if marker.marker_name in LOCAL_ACTIVITY_MARKERS:
                # A marker follows the completion of the task that recorded it; the event says which.
                local_activity_tasks.add(marker.workflow_task_completed_event_id or last_task_completed)
    if local_activity_tasks:
        by_kind["local_activity_tasks"] = len(local_activity_tasks)
    return HistoryCost(
        events=len(events),
        actions=sum(by_kind.values()),
        by_kind=dict(sorted(by_kind.items())),
        activities=dict(sorted(attempts.items())),
    )
