"""``nurture stack`` for real: Temporal dev server, worker and API as one supervised process tree.

Linux only (the process tree is read from /proc). Until api/main.py exists, a
stand-in API with the same /health answer is used, with a warning.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from temporalio.api.enums.v1 import IndexedValueType, TaskQueueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowExecutionStatus

from nurture.migrating import head_revision
from nurture.search_attributes import SEARCH_ATTRIBUTES
from tests.conftest import eventually

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")

REPO = Path(__file__).resolve().parents[1]
BOOT_TIMEOUT = 90.0
EXIT_TIMEOUT = 30.0

STAND_IN_API = '''
from fastapi import FastAPI

app = FastAPI()


@app.get("/health")
async def health():
    return {"database": "ok", "temporal": "ok"}
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the process tree, from /proc ----------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, starttime) of a process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root`` as pid -> start time (to tell a reused pid apart)."""
    parents: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[0] != "Z":
            parents[int(entry.name)] = (stat[1], stat[2])
    found: dict[int, int] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, start) in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                frontier.append(pid)
    return found


def still_running(processes: dict[int, int]) -> list[int]:
    alive = []
    for pid, start in processes.items():
        stat = _stat(pid)
        if stat and stat[0] != "Z" and stat[2] == start:
            alive.append(pid)
    return alive


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except FileNotFoundError:
        return []


# -- running the stack ---------------------------------------------------------------------------


@dataclass
class StackConfig:
    cwd: Path
    env: dict[str, str]
    data_dir: Path
    temporal_address: str
    namespace: str
    task_queue: str
    api_url: str
    log: Path


@pytest.fixture
def stack_config(tmp_path) -> StackConfig:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    cwd = REPO
    if not (REPO / "api" / "main.py").exists():
        warnings.warn("api/main.py does not exist yet: the stack test runs a stand-in API", stacklevel=1)
        cwd = tmp_path / "stand-in"
        (cwd / "api").mkdir(parents=True)
        (cwd / "api" / "__init__.py").write_text("")
        (cwd / "api" / "main.py").write_text(STAND_IN_API)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    temporal_port, ui_port, api_port = free_port(), free_port(), free_port()
    data_dir = tmp_path / "data"
    env.update(
        NURTURE_DATA_DIR=str(data_dir),
        NURTURE_DATABASE_URL=f"sqlite:///{data_dir / 'nurture.db'}",
        NURTURE_TEMPORAL_ADDRESS=f"127.0.0.1:{temporal_port}",
        NURTURE_TEMPORAL_UI_PORT=str(ui_port),
        NURTURE_TEMPORAL_NAMESPACE="default",
        NURTURE_TEMPORAL_TASK_QUEUE=f"stack-test-{uuid.uuid4().hex[:8]}",
        NURTURE_API_HOST="127.0.0.1",
        NURTURE_API_PORT=str(api_port),
        NURTURE_EMAIL_PROVIDER="outbox",
    )
    return StackConfig(
        cwd=cwd,
        env=env,
        data_dir=data_dir,
        temporal_address=env["NURTURE_TEMPORAL_ADDRESS"],
        namespace="default",
        task_queue=env["NURTURE_TEMPORAL_TASK_QUEUE"],
        api_url=f"http://127.0.0.1:{api_port}",
        log=tmp_path / "stack.log",
    )


class RunningStack:
    def __init__(self, config: StackConfig):
        self.config = config
        self.log_file = config.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nurture.cli", "stack"],
            cwd=config.cwd,
            env=config.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )
        self.seen: dict[int, int] = {}

    def output(self) -> str:
        self.log_file.flush()
        return self.config.log.read_text(errors="replace")[-6000:]

    def remember_tree(self) -> dict[int, int]:
        self.seen.update(descendants(self.process.pid))
        return self.seen

    async def wait_healthy(self) -> dict:
        async with httpx.AsyncClient(base_url=self.config.api_url, timeout=5) as http:
            deadline = asyncio.get_running_loop().time() + BOOT_TIMEOUT
            while True:
                if self.process.poll() is not None:
                    pytest.fail(f"stack exited with {self.process.returncode} while booting:\n{self.output()}")
                try:
                    response = await http.get("/health")
                    if response.status_code == 200:
                        return response.json()
                except httpx.TransportError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    pytest.fail(f"/health did not answer 200 within {BOOT_TIMEOUT}s:\n{self.output()}")
                await asyncio.sleep(0.2)

    async def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        deadline = asyncio.get_running_loop().time() + timeout
        while self.process.poll() is None:
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"stack still running {timeout}s after being stopped:\n{self.output()}")
            await asyncio.sleep(0.1)
        return self.process.returncode

    def kill_everything(self) -> None:
        for pid in still_running(self.remember_tree()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log_file.close()


@pytest.fixture
def launch(stack_config) -> Iterator:
    started: list[RunningStack] = []

    def start() -> RunningStack:
        stack = RunningStack(stack_config)
        started.append(stack)
        return stack

    yield start
    for stack in started:
        stack.kill_everything()


async def temporal_client(config: StackConfig) -> Client:
    return await Client.connect(config.temporal_address, namespace=config.namespace)


async def assert_worker_polls(client: Client, config: StackConfig) -> None:
    async def pollers():
        described = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=config.namespace,
                task_queue=TaskQueue(name=config.task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            )
        )
        return list(described.pollers)

    await eventually(pollers, timeout=30, interval=0.2)


async def stop_and_assert_clean_exit(stack: RunningStack) -> None:
    tree = stack.remember_tree()
    stack.process.send_signal(signal.SIGINT)
    code = await stack.wait_exit()
    assert code == 0, stack.output()
    left = still_running(tree)
    assert not left, f"left running: {[cmdline(pid) for pid in left]}\n{stack.output()}"


# -- the tests -----------------------------------------------------------------------------------


async def test_stack_serves_then_stops_cleanly_on_sigint(launch, stack_config):
    stack = launch()

    health = await stack.wait_healthy()
    assert health.get("database") == "ok" and health.get("temporal") == "ok", health

    client = await temporal_client(stack_config)
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=stack_config.namespace)
    )
    registered = {name: IndexedValueType.Name(kind) for name, kind in listed.custom_attributes.items()}
    for attribute in SEARCH_ATTRIBUTES:
        assert attribute.name in registered, registered
        assert registered[attribute.name].removeprefix("INDEXED_VALUE_TYPE_").replace("_", "") == (
            attribute.type.upper()
        )
    await assert_worker_polls(client, stack_config)
    assert (stack_config.data_dir / "temporal.db").exists()
    # The stack upgraded the new database before the worker and the API (which refuse one that is behind).
    with sqlite3.connect(stack_config.data_dir / "nurture.db") as database:
        assert database.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]

    tree = stack.remember_tree()
    commands = [" ".join(cmdline(pid)) for pid in tree]
    assert any("start-dev" in c for c in commands), commands
    assert any("-m worker" in c for c in commands), commands
    assert any("uvicorn api.main:app" in c for c in commands), commands

    await stop_and_assert_clean_exit(stack)


SECRET_VARIABLES = {
    "tracking_secret": "NURTURE_TRACKING_SECRET",
    "email_webhook_secret": "NURTURE_EMAIL_WEBHOOK_SECRET",
    "webhook_secret": "NURTURE_WEBHOOK_SECRET",
}


def children_secrets(stack: RunningStack) -> dict[str, dict[str, str]]:
    """The secrets each Python child (worker, API) was started with, from its environment."""
    found = {}
    for pid in stack.remember_tree():
        line = " ".join(cmdline(pid))
        name = "worker" if "-m worker" in line else "api" if "api.main:app" in line else None
        if name:
            env = environ(pid)
            found[name] = {key: env.get(variable) for key, variable in SECRET_VARIABLES.items()}
    return found


def stored_secrets(config: StackConfig) -> dict[str, str]:
    path = config.data_dir / "secrets.json"
    assert path.stat().st_mode & 0o777 == 0o600, oct(path.stat().st_mode)
    return json.loads(path.read_text())


async def test_stack_keeps_workflows_and_secrets_across_restarts_and_fails_when_a_child_dies(launch, stack_config):
    # A workflow on a task queue nobody polls stays open: it stands for an in-flight enrollment.
    workflow_id = f"parked-{uuid.uuid4().hex[:8]}"
    first = launch()
    await first.wait_healthy()
    client = await temporal_client(stack_config)
    await client.start_workflow("NobodyRunsThis", id=workflow_id, task_queue=f"parked-{uuid.uuid4().hex[:8]}")
    # First start: a random secret of its own for each setting, kept in the data directory, given
    # to both children.
    secrets = stored_secrets(stack_config)
    assert set(secrets) == set(SECRET_VARIABLES), secrets
    assert len(set(secrets.values())) == 3 and all(len(value) >= 32 for value in secrets.values()), secrets
    assert children_secrets(first) == {"worker": secrets, "api": secrets}
    await stop_and_assert_clean_exit(first)

    second = launch()
    await second.wait_healthy()
    assert stored_secrets(stack_config) == secrets  # the same ones again: links sent before still verify
    assert children_secrets(second) == {"worker": secrets, "api": secrets}
    client = await temporal_client(stack_config)
    described = await client.get_workflow_handle(workflow_id).describe()
    assert described.status == WorkflowExecutionStatus.RUNNING

    tree = second.remember_tree()
    worker = next(pid for pid in tree if "worker" in cmdline(pid) and "-m" in cmdline(pid))
    os.kill(worker, signal.SIGKILL)
    code = await second.wait_exit()
    assert code != 0, second.output()
    left = still_running(tree)
    assert not left, f"left running: {[cmdline(pid) for pid in left]}\n{second.output()}"


@pytest.mark.parametrize(
    ("taken", "setting"),
    [("temporal", "NURTURE_TEMPORAL_ADDRESS"), ("ui", "NURTURE_TEMPORAL_UI_PORT"), ("api", "NURTURE_API_PORT")],
)
async def test_a_taken_port_stops_the_stack_before_it_starts_anything(launch, stack_config, taken, setting):
    port = {
        "temporal": int(stack_config.temporal_address.rsplit(":", 1)[1]),
        "ui": int(stack_config.env["NURTURE_TEMPORAL_UI_PORT"]),
        "api": int(stack_config.env["NURTURE_API_PORT"]),
    }[taken]
    with socket.socket() as other:  # another program (another stack) listening there
        other.bind(("127.0.0.1", port))
        other.listen()
        stack = launch()
        code = await stack.wait_exit()
    output = stack.output()
    assert code != 0, output
    assert f"port {port}" in output and setting in output, output
    assert "child_started" not in output, output  # no Temporal, worker or API was started
