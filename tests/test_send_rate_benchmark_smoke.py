"""The send-rate benchmark (benchmarks/send_rate.py) works end to end on a tiny run: bare Temporal and
the engine each send every message exactly once to their provider emulator, every workflow was
asleep at the due instant, and the result carries what the README's table is made of. Run as the
command is (its own dev server, workers and emulators as processes). No timing is asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
N = 40

SIDE_FIELDS = {
    "completed", "lead_s", "asleep_at_due", "seconds_from_due_to_last_send", "sends_per_s",
    "busiest_second_at_provider", "provider_throttled_429", "provider_accepted", "distinct_messages_at_provider",
    "cpu_ms_per_send", "history_after_due",
}
PROCESSES = {"workflow_worker", "send_worker", "temporal_server", "provider_emulator"}


def test_both_sides_send_every_message_once(tmp_path):
    out = tmp_path / "send_rate.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [sys.executable, "-m", "benchmarks.send_rate", "--n", str(N), "--lead", "6", "--backend", "sqlite",
         "--out", str(out), "--logs", str(tmp_path / "logs")],
        cwd=REPO, env=env, check=True, timeout=240, stdout=subprocess.DEVNULL,
    )

    result = json.loads(out.read_text())["send_rate"]
    assert (result["n"], result["engine_rate_per_s"], result["provider_limit_per_s"]) == (N, 50.0, 50.0)
    for name in ("raw_temporal", "engine"):
        side = result[name]
        assert SIDE_FIELDS <= side.keys(), name
        assert PROCESSES <= side["cpu_ms_per_send"].keys(), name
        # Every message reached the provider, none twice (a 429 is not an acceptance).
        assert (side["completed"], side["distinct_messages_at_provider"], side["provider_accepted"]) == (True, N, N), name
        assert side["asleep_at_due"] == N, name
        assert side["history_after_due"]["closed"] == N, name
    assert result["engine"]["messages_sent_rows"] == N
