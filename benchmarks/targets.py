"""What the engine should reach, as a ratio engine / raw Temporal on the same server in the same run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    label: str
    path: tuple[str, ...]  # into one backend's ratios
    # Per backend: the ratio must be at least (throughput) or at most (times, sizes) this.
    limit: dict[str, float]
    at_least: bool = False

    def check(self, backend: str, ratios: dict[str, Any]) -> dict[str, Any] | None:
        limit = self.limit.get(backend, self.limit.get("*"))
        if limit is None:
            return None
        value: Any = ratios
        for key in self.path:
            value = value.get(key) if isinstance(value, dict) else None
        met = None if value is None else (value >= limit if self.at_least else value <= limit)
        return {"target": self.label, "ratio": value, "limit": f"{'≥' if self.at_least else '≤'} {limit}", "met": met}


TARGETS = (
    Target("bulk enrollments/s vs raw starts/s", ("bulk_enrollments_per_s",),
           {"postgresql": 0.8, "sqlite": 0.5}, at_least=True),
    Target("all N closed (send → 1s → send), Enroller", ("enroller", "all_closed_s"), {"*": 2.0}),
    Target("all N closed (send → 1s → send), HTTP API", ("api", "all_closed_s"), {"*": 2.0}),
    Target("goal event → closed p50, Enroller", ("enroller", "event_to_exit_p50"), {"*": 1.2}),
    Target("goal event → closed p50, HTTP API", ("api", "event_to_exit_p50"), {"*": 1.2}),
    Target("history events, send → delay → send", ("history", "send_delay_send", "events"), {"*": 1.5}),
    Target("billable actions, send → delay → send", ("history", "send_delay_send", "actions"), {"*": 1.5}),
)


def evaluate(backend: str, ratios: dict[str, Any]) -> list[dict[str, Any]]:
    return [row for target in TARGETS if (row := target.check(backend, ratios)) is not None]
