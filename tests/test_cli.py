"""The pure helpers behind ``nurture stack``, and the commands run as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import IndexedValueType

from nurture import cli
from nurture.api_keys import authenticate
from nurture.db import Database
from nurture.deployment_secrets import API_SECRETS, WORKER_SECRETS, ensure_local_secrets, forgeable, with_stored_secrets
from nurture.enrolling import Enroller
from nurture.search_attributes import SEARCH_ATTRIBUTES
from nurture.settings import Settings
from tests.conftest import eventually
from tests.factories import add_active_flow, add_contact, add_templates, messages_of
from tests.test_workflow_example import enroll


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:7233", ("127.0.0.1", 7233)),
        ("localhost:17233", ("localhost", 17233)),
        (" temporal:7233 ", ("temporal", 7233)),
        ("[::1]:7233", ("::1", 7233)),
    ],
)
def test_parse_address(address, expected):
    assert cli.parse_address(address) == expected


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:", ":7233", "host:http", "host:0", "host:70000"])
def test_parse_address_rejects(address):
    with pytest.raises(ValueError):
        cli.parse_address(address)


def test_url_host_turns_wildcards_into_loopback():
    assert cli.url_host("0.0.0.0") == "127.0.0.1"
    assert cli.url_host("::") == "127.0.0.1"
    assert cli.url_host("::1") == "[::1]"
    assert cli.url_host("127.0.0.1") == "127.0.0.1"


def test_temporal_server_command(tmp_path):
    settings = Settings(
        _env_file=None, data_dir=tmp_path, temporal_address="127.0.0.1:17233", temporal_ui_port=18233,
        temporal_namespace="nurture",
    )
    command = cli.temporal_server_command(settings, "/venv/bin/temporal")
    assert command[:3] == ["/venv/bin/temporal", "server", "start-dev"]

    def flag(name: str) -> str:
        return command[command.index(name) + 1]

    assert flag("--db-filename") == str(tmp_path / "temporal.db")
    assert flag("--port") == "17233"
    assert flag("--ip") == "127.0.0.1"
    assert flag("--ui-port") == "18233"
    assert flag("--namespace") == "nurture"
    assert flag("--log-level") == "warn"
    registered = [command[i + 1] for i, part in enumerate(command) if part == "--search-attribute"]
    assert registered == [
        "NurtureFlowId=Keyword",
        "NurtureFlowVersion=Int",
        "NurtureContactId=Keyword",
        "NurtureStep=Keyword",
        "NurtureStatus=Keyword",
        "NurturePaused=Bool",
    ]


def test_children_run_on_this_interpreter():
    settings = Settings(_env_file=None, api_host="0.0.0.0", api_port=8123)
    assert cli.worker_command() == [sys.executable, "-m", "worker"]
    assert cli.api_command(settings) == [
        sys.executable, "-m", "uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8123", "--no-proxy-headers",
    ]
    several = Settings(_env_file=None, api_workers=4)
    assert cli.api_command(several)[-2:] == ["--workers", "4"]


def test_temporal_binary_comes_from_this_environment():
    assert Path(cli.find_binary("temporal")).parent == Path(sys.executable).parent


def test_missing_search_attributes():
    keyword = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
    registered = {"NurtureFlowId": keyword, "NurtureStep": keyword, "SomethingElse": keyword}
    missing = cli.missing_search_attributes(registered)
    assert missing == {
        "NurtureFlowVersion": IndexedValueType.INDEXED_VALUE_TYPE_INT,
        "NurtureContactId": keyword,
        "NurtureStatus": keyword,
        "NurturePaused": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
    }
    assert cli.missing_search_attributes({**registered, **missing}) == {}


def test_search_attribute_of_another_type_is_an_error():
    with pytest.raises(cli.StackError, match="NurturePaused"):
        cli.missing_search_attributes({"NurturePaused": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD})


def test_search_attribute_list_matches_the_workflow_keys():
    """nurture.search_attributes (plain data) and the workflow's typed keys must not drift apart."""
    from workflows.enrollment import SEARCH_ATTRIBUTES as WORKFLOW_KEYS

    assert [(a.name, cli.INDEXED_VALUE_TYPES[a.type]) for a in SEARCH_ATTRIBUTES] == [
        (key.name, int(key.indexed_value_type)) for key in WORKFLOW_KEYS
    ]


def test_a_command_is_required():
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args([])
    assert exited.value.code == 2
    assert cli.build_parser().parse_args(["stack"]).command == "stack"


# --- the commands as a new user runs them, in a subprocess ------------------------------------


def run_nurture(args: list[str], cwd: Path, **settings: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    env.update(settings)
    return subprocess.run(
        [sys.executable, "-m", "nurture.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_create_api_key_away_from_the_project_creates_no_database(tmp_path):
    done = run_nurture(["create-api-key", "--name", "first", "--role", "admin"], cwd=tmp_path)

    assert done.returncode != 0 and done.stdout == ""  # no key that no API would accept
    assert str(tmp_path / "data" / "nurture.db") in done.stderr and "--create-database" in done.stderr
    assert not (tmp_path / "data" / "nurture.db").exists()


async def test_create_api_key_says_which_database_holds_the_key(tmp_path):
    database = tmp_path / "data" / "nurture.db"
    created = run_nurture(["create-api-key", "--name", "first", "--role", "admin", "--create-database"], cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert f"in database {database}" in created.stderr
    again = run_nurture(["create-api-key", "--name", "second", "--role", "marketer"], cwd=tmp_path / "data",
                        NURTURE_DATA_DIR=str(tmp_path / "data"))
    assert again.returncode == 0, again.stderr
    assert f"in database {database}" in again.stderr

    db = Database(f"sqlite:///{database}")
    try:
        async with db.session() as session:
            for done, name in ((created, "first"), (again, "second")):
                key = await authenticate(session, done.stdout.strip())
                assert key is not None and key.name == name
    finally:
        await db.dispose()


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)  # the command opens the database itself
async def test_history_prints_the_timeline_and_exits_cleanly_every_time(db, client, settings, worker):
    await add_templates(db)
    flow, contact = await add_active_flow(db), await add_contact(db)
    enrollment = await enroll(db, Enroller(client, settings), flow, contact)
    await eventually(lambda: messages_of(db, contact.id))
    env = {
        "NURTURE_DATABASE_URL": db.url,
        "NURTURE_TEMPORAL_ADDRESS": client.service_client.config.target_host,
    }
    # The abort came at interpreter exit in about a third of the runs: a dozen catch it.
    for _ in range(12):
        done = await asyncio.to_thread(run_nurture, ["history", str(enrollment.id)], settings.data_dir, **env)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "Sent 'demo-welcome'" in done.stdout, done.stdout


def test_a_process_started_alone_uses_the_secrets_the_stack_kept(tmp_path):
    set_by_hand = "from-the-environment-0123456789"
    stack = ensure_local_secrets(Settings(_env_file=None, data_dir=tmp_path, webhook_secret=set_by_hand))
    stored = json.loads((tmp_path / "secrets.json").read_text())
    assert set(stored) == {"tracking_secret", "email_webhook_secret"}  # a secret given is never written down
    assert (tmp_path / "secrets.json").stat().st_mode & 0o777 == 0o600

    alone = with_stored_secrets(Settings(_env_file=None, data_dir=tmp_path))
    assert (alone.tracking_secret, alone.email_webhook_secret) == (stack.tracking_secret, stack.email_webhook_secret)
    assert alone.webhook_secret is None and forgeable(alone, WORKER_SECRETS) == ["NURTURE_WEBHOOK_SECRET is not set"]
    assert forgeable(alone, API_SECRETS) == []
    overridden = with_stored_secrets(Settings(_env_file=None, data_dir=tmp_path, tracking_secret="x" * 20))
    assert overridden.tracking_secret == "x" * 20  # the environment wins over the file
    assert ensure_local_secrets(Settings(_env_file=None, data_dir=tmp_path)).tracking_secret == stack.tracking_secret
