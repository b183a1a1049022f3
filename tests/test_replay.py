"""Saved histories must replay with today's workflow code: the guard against non-determinism.

The written policy (docs/workflow-versioning.md) is checked here too: every feature path of the
interpreter has a history, and the patches in the code are the ones workflows/enrollment/patches.py
declares, each active one with a history recorded before it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from worker.sandbox import SandboxRunner
from workflows import WORKFLOWS
from workflows.enrollment import patches

HISTORIES_DIR = Path(__file__).parent / "histories"
HISTORIES = sorted(HISTORIES_DIR.glob("*.json"))
WORKFLOW_CODE = Path(__file__).resolve().parent.parent / "workflows"
FEATURE_PATHS = (
    "goal_mid_wait", "pause_by_update", "continue_as_new", "handoff_won", "handoff_lost", "handoff_returned",
    "handoff_silence", "split", "deferred_send", "failure",
)


def test_every_feature_path_has_a_saved_history():
    saved = {p.stem for p in HISTORIES}
    missing = [name for name in FEATURE_PATHS if f"enrollment_{name}" not in saved]
    assert not missing, f"record them: python -m tests.record_histories {' '.join(missing)}"


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_saved_history_replays(path: Path):
    history = WorkflowHistory.from_json("replayed", json.loads(path.read_text()))
    assert len(history.events) > 15  # a real run, not an empty stub

    # In the sandbox the worker runs workflows in (worker/sandbox.py).
    result = await Replayer(
        workflows=WORKFLOWS, data_converter=pydantic_data_converter, workflow_runner=SandboxRunner()
    ).replay_workflow(history, raise_on_replay_failure=False)

    assert result.replay_failure is None, result.replay_failure


def _ids_in_code(call: str) -> set[str]:
    pattern = re.compile(rf"workflow\.{call}\(\s*[\"']([^\"']+)[\"']")
    return {m for path in WORKFLOW_CODE.rglob("*.py") for m in pattern.findall(path.read_text())}


def test_the_patches_in_the_code_are_the_declared_ones():
    assert _ids_in_code("patched") == {p.id for p in patches.ACTIVE}
    assert _ids_in_code("deprecate_patch") == {p.id for p in patches.DEPRECATED}


def test_every_active_patch_keeps_a_history_from_before_it():
    missing = [p.id for p in patches.ACTIVE if not list(HISTORIES_DIR.glob(f"*-before-{p.id}.json"))]
    assert not missing, f"save a history recorded before each as tests/histories/<path>-before-<id>.json: {missing}"
