from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from api.schemas.common import Id, Strict, UTCDatetime
from api.schemas.templates import TemplateBody, TemplateKey
from nurture.flow.durations import Duration
from nurture.simulation_models import HypotheticalContact, ScriptedEvent
from simulation.simulator import DEFAULT_HORIZON, MAX_HORIZON


class SimulationScript(Strict):
    """Who goes through the flow, what happens to them and when, and for how long to look."""

    contact_id: Id | None = Field(default=None, description="A real contact, read but never changed.")
    contact: HypotheticalContact | None = Field(default=None, description="A contact that exists only for this run.")
    events: list[ScriptedEvent] = Field(
        default_factory=list, max_length=200,
        description='At offsets from the start: [{"at": "2d3h", "type": "email_opened", "step": "welcome"}].',
    )
    start: UTCDatetime | None = Field(default=None, description="When the contact enters; now when omitted.")
    trigger_properties: dict[str, Any] = Field(
        default_factory=dict, description="Properties of the event that enrolled the contact (event triggers)."
    )
    horizon: Duration = Field(default=DEFAULT_HORIZON, description="Stop looking after this long (at most 50 years).")

    @model_validator(mode="after")
    def _one_contact(self) -> SimulationScript:
        if (self.contact_id is None) == (self.contact is None):
            raise ValueError("give either 'contact_id' (a real contact) or 'contact' (a hypothetical one)")
        if self.horizon > MAX_HORIZON:
            raise ValueError(f"'horizon' is at most {MAX_HORIZON.days} days")
        return self


class SimulateIn(SimulationScript):
    flow: dict[str, Any] | None = Field(
        default=None, description="A flow definition, as a JSON object (the shape POST /flows takes)."
    )
    flow_id: Id | None = Field(default=None, description="A stored flow instead of 'flow'.")
    version: Id | None = Field(default=None, description="With flow_id: the version (default: active, else latest).")
    templates: dict[TemplateKey, TemplateBody] = Field(
        default_factory=dict, description="Templates to use instead of (or besides) the stored ones, for drafts."
    )

    @model_validator(mode="after")
    def _one_flow(self) -> SimulateIn:
        if (self.flow is None) == (self.flow_id is None):
            raise ValueError("give either 'flow' (a definition) or 'flow_id' (a stored flow)")
        if self.version is not None and self.flow_id is None:
            raise ValueError("'version' picks a version of 'flow_id'")
        return self
