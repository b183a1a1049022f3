"""The deployment files: compose shape, Dockerfile basics, and the search-attribute script run for real.

No Docker engine runs here, so the compose file is checked as data; the
registration script it runs is executed against a Temporal dev server.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client

from nurture import cli
from nurture.search_attributes import SEARCH_ATTRIBUTES

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "register-search-attributes.sh"
SECRETS = ("NURTURE_TRACKING_SECRET", "NURTURE_EMAIL_WEBHOOK_SECRET", "NURTURE_WEBHOOK_SECRET")
GOOD_SECRET = "a3f9c2e7b1d84f60a9e2c7b3d1f08e4a"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_services(compose):
    services = compose["services"]
    assert {
        "postgresql", "temporal-postgresql", "temporal", "temporal-admin-tools", "temporal-ui", "migrate", "api", "worker"
    } <= set(services)
    assert services["temporal"]["environment"]["DB"] == "postgres12"
    assert services["temporal-ui"]["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"
    for name in ("postgresql", "temporal-postgresql", "temporal", "api"):
        assert "healthcheck" in services[name], name
    assert services["temporal"]["healthcheck"]["test"][1:5] == ["temporal", "operator", "cluster", "health"]


@pytest.mark.parametrize("name", ["api", "worker"])
def test_compose_app_services(compose, name):
    service = compose["services"][name]
    environment = service["environment"]
    assert environment["NURTURE_TEMPORAL_ADDRESS"] == "temporal:7233"
    assert environment["NURTURE_DATABASE_URL"].startswith("postgresql://")
    assert service["depends_on"] == {
        "postgresql": {"condition": "service_healthy"},
        "temporal": {"condition": "service_healthy"},
        "temporal-admin-tools": {"condition": "service_completed_successfully"},
        # The schema is upgraded once, before any replica starts; they only check it.
        "migrate": {"condition": "service_completed_successfully"},
    }


def test_compose_migrates_once_before_the_app_starts(compose):
    migrate = compose["services"]["migrate"]
    assert migrate["command"] == ["nurture", "migrate"]
    assert migrate["environment"]["NURTURE_DATABASE_URL"] == compose["services"]["api"]["environment"]["NURTURE_DATABASE_URL"]
    assert migrate["depends_on"] == {"postgresql": {"condition": "service_healthy"}}
    assert migrate["restart"] == "no"  # a one-shot: restarted after exit 0 it would never complete


@pytest.mark.parametrize("name", ["api", "worker"])
def test_compose_takes_every_secret_from_the_environment_or_stops(compose, name):
    """`${VAR:?message}`: docker compose refuses to start the stack while VAR is unset or empty."""
    environment = compose["services"][name]["environment"]
    for variable in SECRETS:
        value = environment.get(variable, "")
        assert re.fullmatch(r"\$\{" + variable + r":\?[^}]+\}", value), (variable, value)


def test_dockerfile_ships_no_secret():
    dockerfile = (REPO / "Dockerfile").read_text()
    for variable in SECRETS:
        assert f"{variable}=" not in dockerfile
    assert "change-me" not in dockerfile


def test_worker_can_be_scaled(compose):
    worker = compose["services"]["worker"]
    assert worker["command"] == ["python", "-m", "worker"]
    assert "container_name" not in worker and "ports" not in worker


def test_dockerfile_basics():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert dockerfile.startswith("# ") and "FROM python:3.11-slim" in dockerfile
    users = re.findall(r"^USER (\S+)$", dockerfile, flags=re.M)
    assert users and users[-1] not in ("root", "0")
    # X-Forwarded-For is the app's to trust (setting trusted_proxies), not uvicorn's.
    assert 'CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000", "--no-proxy-headers"]' in dockerfile


def test_script_registers_the_project_attributes():
    registered = re.findall(r"^register (\w+) (\w+)$", SCRIPT.read_text(), flags=re.M)
    assert [tuple(pair) for pair in registered] == [(a.name, a.type) for a in SEARCH_ATTRIBUTES]


@pytest.fixture
async def bare_dev_server(tmp_path) -> AsyncIterator[str]:
    """A dev server with no custom search attributes; yields its address."""
    address = f"127.0.0.1:{free_port()}"
    host, port = cli.parse_address(address)
    log = (tmp_path / "temporal.log").open("wb")
    server = subprocess.Popen(
        [cli.find_binary("temporal"), "server", "start-dev", "--headless", "--ip", host, "--port", str(port),
         "--log-level", "error"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            try:
                await Client.connect(address)
                break
            except RuntimeError:
                if server.poll() is not None or asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.2)
        yield address
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


async def test_script_registers_on_a_live_server_and_is_idempotent(bare_dev_server):
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(cli.find_binary("temporal")).parent), os.environ.get("PATH", "")]),
        "TEMPORAL_ADDRESS": bare_dev_server,
        "TEMPORAL_NAMESPACE": "default",
    }
    for _ in range(2):  # the compose one-shot may run again on every `docker compose up`
        done = await asyncio.to_thread(
            subprocess.run, ["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr

    client = await Client.connect(bare_dev_server)
    listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace="default"))
    registered = dict(listed.custom_attributes)
    for attribute in SEARCH_ATTRIBUTES:
        assert IndexedValueType.Name(registered[attribute.name]) == IndexedValueType.Name(
            cli.INDEXED_VALUE_TYPES[attribute.type]
        )


# --- a process started with a forgeable secret refuses to start, and says which -----------------


def run_until_exit(command: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """The exit code and output of a process expected to stop by itself; fails if it keeps running."""
    with subprocess.Popen(
        command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if process.poll() is None:
            process.kill()
            pytest.fail(f"{command} still running after {timeout}s: {process.communicate()[0][-3000:]}")
        return process.returncode, process.communicate()[0]


def bare_env(tmp_path, **settings: str) -> dict[str, str]:
    """No NURTURE_* from the caller, an empty data directory, and Temporal nowhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    env.update(
        NURTURE_DATA_DIR=str(tmp_path / "data"),
        NURTURE_DATABASE_URL=f"sqlite:///{tmp_path / 'nurture.db'}",
        NURTURE_TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
        **settings,
    )
    return env


@pytest.mark.parametrize(
    ("secrets", "named"),
    [
        ({}, {"NURTURE_TRACKING_SECRET", "NURTURE_EMAIL_WEBHOOK_SECRET"}),
        (
            {"NURTURE_TRACKING_SECRET": "change-me-tracking", "NURTURE_EMAIL_WEBHOOK_SECRET": GOOD_SECRET},
            {"NURTURE_TRACKING_SECRET"},
        ),
        (
            {"NURTURE_TRACKING_SECRET": GOOD_SECRET, "NURTURE_EMAIL_WEBHOOK_SECRET": "change-me-email-webhooks"},
            {"NURTURE_EMAIL_WEBHOOK_SECRET"},
        ),
        ({"NURTURE_TRACKING_SECRET": "short", "NURTURE_EMAIL_WEBHOOK_SECRET": GOOD_SECRET}, {"NURTURE_TRACKING_SECRET"}),
    ],
    ids=["unset", "default-tracking", "default-email-webhooks", "too-short"],
)
def test_the_api_refuses_to_start_with_a_forgeable_secret(tmp_path, secrets, named):
    command = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", str(free_port())]
    code, output = run_until_exit(command, bare_env(tmp_path, **secrets))
    assert code != 0, output
    for variable in SECRETS:
        assert (variable in output) == (variable in named), (variable, output[-3000:])


@pytest.mark.parametrize(
    ("secrets", "named"),
    [
        ({}, {"NURTURE_TRACKING_SECRET", "NURTURE_WEBHOOK_SECRET"}),
        ({"NURTURE_TRACKING_SECRET": GOOD_SECRET, "NURTURE_WEBHOOK_SECRET": "change-me"}, {"NURTURE_WEBHOOK_SECRET"}),
    ],
    ids=["unset", "default-webhook"],
)
def test_the_worker_refuses_to_start_with_a_forgeable_secret(tmp_path, secrets, named):
    code, output = run_until_exit([sys.executable, "-m", "worker"], bare_env(tmp_path, **secrets))
    assert code != 0, output
    for variable in SECRETS:
        assert (variable in output) == (variable in named), (variable, output[-3000:])
