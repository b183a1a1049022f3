"""The provider walkthrough on the running stack (benchmarks/provider_walkthrough.py), for SES: the
provider with the most moving parts outside the engine (moto's SES v2, SNS's subscription and its
certificate on loopback, settings read from the environment by ``nurture stack``'s children).
The other three run the same script: ``python -m benchmarks.provider_walkthrough``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_ses_sends_and_takes_its_reports_on_the_running_stack(tmp_path):
    output = tmp_path / "walkthrough.json"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.provider_walkthrough", "--providers", "ses", "--output", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    [ses] = json.loads(output.read_text())["providers"]
    steps = {step["step"]: step for step in ses["steps"]}
    assert steps["sns_subscription_confirmation"]["sns_confirmed"] == 1
    arrived = [step for step in ses["steps"] if step["step"] == "send_arrived"]
    assert len(arrived) == 3
    for step in arrived:
        [send] = step["at_provider"]
        assert set(send["metadata"]) == {"nurture_message_id", "nurture_enrollment"}
        assert send["provider_id"] == step["provider_message_id"]
    assert steps["delivery_report"]["body"]["recorded"] == 1 and steps["delivery_report"]["delivered_at"]
    assert steps["delivery_report_again"]["body"]["duplicates"] == 1
    assert steps["hard_bounce_report"]["outcome"] == {"contact": "bounced", "enrollment": "exited", "exit_reason": "bounced"}
    assert steps["complaint_report"]["outcome"] == {
        "contact": "unsubscribed", "enrollment": "exited", "exit_reason": "unsubscribed"}
    assert steps["forged_report"]["status"] == 401
    assert steps["delivered_contact_waits"] == {**steps["delivered_contact_waits"], "status": "active", "sends_at_provider": 3}
    assert steps["stack_stopped"]["exit_code"] == 0
