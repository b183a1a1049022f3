"""The README and docs/ as a user reads and pastes them: examples that work in a script, in the
order shown, and numbers that match the settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nurture.settings import Settings

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
USER_DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def shell_commands(text: str) -> list[str]:
    """Each command of the ```sh blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        commands += [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return commands


def test_readme_api_calls_send_the_key_without_an_alias():
    """An alias does not expand in a script (or a pasted block in some shells): a header variable does."""
    commands = shell_commands(README)
    assert not any(line.lstrip().startswith("alias ") for line in commands)
    assert any(line.startswith('AUTH="Authorization: Bearer $KEY"') for line in commands)
    calls = [line for line in commands if line.startswith("curl ") and "localhost:8000" in line]
    assert calls
    for call in calls:
        assert '-H "$AUTH"' in call, call


def test_readme_lists_a_reps_pauses_while_the_pause_is_on():
    commands = shell_commands(README)
    position = {
        what: next(i for i, line in enumerate(commands) if marker in line)
        for what, marker in (("pause", "/contacts/1/pause "), ("list", "/pauses?rep=rep-jane"), ("resume", "/contacts/1/resume"))
    }
    assert position["pause"] < position["list"] < position["resume"]


def test_readme_workflow_list_finds_the_enrollment_it_just_ended():
    """The example enrollment has exited by then: a query for active ones would come out empty."""
    [listing] = [line for line in shell_commands(README) if "temporal workflow list" in line]
    query = listing.split("#", 1)[0]
    assert 'NurtureStatus="active"' not in query


def test_the_api_docs_state_the_pause_limit_the_api_applies():
    [line] = [line for line in (REPO / "docs" / "api.md").read_text().splitlines() if line.startswith("| `POST /contacts/{id}/pause`")]
    assert "NURTURE_MAX_PAUSE_DAYS" in line and f"default {Settings(_env_file=None).max_pause_days}" in line
    assert "3650" not in line


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda path: path.name)
def test_user_docs_speak_to_users(path):
    words = re.compile(r"\bseed \d{3}\b|\bthe brief\b|\bthe issue\b|\bthe task\b", re.I)
    text = re.sub(r"\s+", " ", path.read_text())  # a phrase may wrap across lines
    assert not [match.group(0) for match in words.finditer(text)]
