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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_services(compose):
    services = compose["services"]
    assert {"postgresql", "temporal-postgresql", "temporal", "temporal-admin-tools", "temporal-ui", "api", "worker"} <= set(
        services
    )
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
    }


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
