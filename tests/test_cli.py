"""The pure helpers behind ``nurture stack``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import IndexedValueType

from nurture import cli
from nurture.search_attributes import SEARCH_ATTRIBUTES
from nurture.settings import Settings


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
