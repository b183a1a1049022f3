"""The flows the benchmark enrolls contacts in, by the shape each case needs.

Step ids are the benchmark's own (the cases look for them in the ``state`` query); nothing here
names an engine activity.
"""

from __future__ import annotations

from benchmarks.harness import GOAL_EVENT

BRANCH_EVENT = "bench_ready"
# The branch's condition holds for the benchmark's contacts (company "Bench"): the then-path runs.
BRANCH_COMPANY = "Bench"

SHORT_FLOW = {
    "name": "Benchmark: send, wait 1s, send",
    "trigger": {"type": "manual"},
    "steps": [
        {"id": "hello", "type": "send_email", "template": "bench-hello"},
        {"id": "wait", "type": "delay", "duration": "1s"},
        {"id": "again", "type": "send_email", "template": "bench-again"},
    ],
}
GOAL_FLOW = {
    "name": "Benchmark: wait for the goal",
    "trigger": {"type": "manual"},
    "goal": {"event": GOAL_EVENT},
    "steps": [
        {"id": "wait", "type": "delay", "duration": "1h"},
        {"id": "again", "type": "send_email", "template": "bench-again"},
    ],
}
BRANCH_FLOW = {
    "name": "Benchmark: send, wait for an event, branch, send",
    "trigger": {"type": "manual"},
    "steps": [
        {"id": "hello", "type": "send_email", "template": "bench-hello"},
        {"id": "wait", "type": "wait_for_event", "event": BRANCH_EVENT, "timeout": "1h"},
        {
            "id": "check", "type": "branch",
            "condition": {"property": "company", "op": "eq", "value": BRANCH_COMPANY},
            "then": "again", "else": "leave",
        },
        {"id": "leave", "type": "exit", "reason": "benchmark_else"},
        {"id": "again", "type": "send_email", "template": "bench-again"},
    ],
}
# Bulk enrollment: each enrollment goes to sleep at once, as in a real nurture's first delay.
BULK_FLOW = GOAL_FLOW | {"name": "Benchmark: bulk enrolled, asleep for an hour"}
SCALE_FLOW = {
    "name": "Benchmark: at scale, asleep for a day",
    "trigger": {"type": "manual"},
    "goal": {"event": GOAL_EVENT},
    "steps": [
        {"id": "wait", "type": "delay", "duration": "1d"},
        {"id": "again", "type": "send_email", "template": "bench-again"},
    ],
}
