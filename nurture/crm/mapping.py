"""How a CRM's records map onto contacts: the mapping file (YAML), validated on load.

One file per deployment (``NURTURE_CRM_MAPPING_FILE``; the defaults below without one). It says
which CRM property feeds which contact field or property and which way it flows, which CRM owner
is which rep, which lifecycle and deal stages mean what, and which side wins a conflict.
docs/crm.md shows a complete file.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

Direction = Literal["inbound", "outbound", "both"]
Side = Literal["crm", "engine"]

UNLISTED_OWNER = "crm-owner-"
# Contact columns a mapping may name; anything else is ``properties.<name>``.
CONTACT_FIELDS = frozenset({"name", "company", "timezone", "lifecycle_stage", "phone"})


class FieldMap(BaseModel):
    model_config = ConfigDict(extra="forbid")

    crm: str = Field(min_length=1, max_length=200, description="The CRM property's internal name.")
    contact: str = Field(min_length=1, max_length=200, description="A contact field or properties.<name>.")
    direction: Direction = "both"

    @field_validator("contact")
    @classmethod
    def _known_target(cls, value: str) -> str:
        if value in CONTACT_FIELDS or (value.startswith("properties.") and len(value) > len("properties.")):
            return value
        raise ValueError(f"'{value}' is neither a contact field ({', '.join(sorted(CONTACT_FIELDS))}) nor properties.<name>")

    @property
    def inbound(self) -> bool:
        return self.direction in ("inbound", "both")

    @property
    def outbound(self) -> bool:
        return self.direction in ("outbound", "both")


class DealStages(BaseModel):
    model_config = ConfigDict(extra="forbid")

    closed_won: list[str] = Field(default_factory=lambda: ["closedwon"])
    closed_lost: list[str] = Field(default_factory=lambda: ["closedlost"])
    # CRM stage id -> the name flows see in deal_stage_changed's `stage` (ids are opaque in custom pipelines).
    names: dict[str, str] = Field(default_factory=dict)


class Conflicts(BaseModel):
    """Which side's value stands when both changed: the CRM owns sales data, the engine engagement."""

    model_config = ConfigDict(extra="forbid")

    owner: Side = "crm"
    lifecycle: Side = "crm"
    deal: Side = "crm"
    engagement: Side = "engine"


class PauseProperties(BaseModel):
    """A rep pauses a contact's nurture from the CRM by setting these properties on the contact."""

    model_config = ConfigDict(extra="forbid")

    until: str = "nurture_pause_until"
    reason: str = "nurture_pause_reason"


class Suppression(BaseModel):
    """CRM properties that say the contact must get no more email."""

    model_config = ConfigDict(extra="forbid")

    unsubscribed: str = "hs_email_optout"
    hard_bounced: str = "hs_email_hard_bounce_reason_enum"


DEFAULT_FIELDS = [
    FieldMap(crm="firstname", contact="properties.first_name", direction="inbound"),
    FieldMap(crm="lastname", contact="properties.last_name", direction="inbound"),
    FieldMap(crm="company", contact="company", direction="both"),
    FieldMap(crm="phone", contact="phone", direction="both"),
    FieldMap(crm="lifecyclestage", contact="lifecycle_stage", direction="both"),
]


class CrmMapping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The CRM's own names for the record's email, owner and last modification.
    email_property: str = "email"
    owner_property: str = "hubspot_owner_id"
    modified_property: str = "lastmodifieddate"
    fields: list[FieldMap] = Field(default_factory=lambda: list(DEFAULT_FIELDS), max_length=500)
    owners: dict[str, str] = Field(default_factory=dict, description="CRM owner id -> rep id.")
    # CRM lifecycle value -> ours, e.g. marketingqualifiedlead: mql (unlisted values pass as they are).
    lifecycle_stages: dict[str, str] = Field(default_factory=dict)
    deal_stages: DealStages = DealStages()
    conflicts: Conflicts = Conflicts()
    pause: PauseProperties = PauseProperties()
    suppression: Suppression = Suppression()
    # The CRM's owners (id -> email), as the CRM lists them now: an owner the file does not name
    # is the rep with that email (so notify_owner can write to them).
    _owner_emails: dict[str, str] = PrivateAttr(default_factory=dict)
    # The owners the sync imported (CRM owner id -> rep id, the crm_owners table): after the file's.
    _imported: dict[str, str] = PrivateAttr(default_factory=dict)

    def knowing_owners(self, emails: dict[str, str], imported: dict[str, str] | None = None) -> CrmMapping:
        known = self.model_copy()
        known._owner_emails = {k: v.lower() for k, v in emails.items() if v}
        known._imported = dict(imported or {})
        return known

    @model_validator(mode="after")
    def _one_source_per_target(self) -> CrmMapping:
        seen: dict[str, str] = {}
        for field in self.fields:
            if field.inbound:
                if field.contact in seen:
                    raise ValueError(f"{field.contact} is fed by both {seen[field.contact]} and {field.crm}")
                seen[field.contact] = field.crm
        return self

    # --- reading a CRM record ------------------------------------------------

    def crm_properties(self) -> list[str]:
        """Every CRM contact property a read must ask for."""
        names = {self.email_property, self.owner_property, self.modified_property, self.pause.until, self.pause.reason}
        names |= {self.suppression.unsubscribed, self.suppression.hard_bounced}
        names |= {f.crm for f in self.fields if f.inbound}
        return sorted(names)

    def rep_for(self, crm_owner_id: str | None) -> str | None:
        """Our rep id for a CRM owner: the file's, else the one imported, else the owner's email, else ``crm-owner-<id>``."""
        if not crm_owner_id:
            return None
        crm_owner_id = str(crm_owner_id)
        return (self.owners.get(crm_owner_id) or self._imported.get(crm_owner_id) or self._owner_emails.get(crm_owner_id)
                or f"{UNLISTED_OWNER}{crm_owner_id}")

    def crm_owner_for(self, rep: str | None) -> str | None:
        if not rep:
            return None
        if rep.startswith(UNLISTED_OWNER):
            return rep.removeprefix(UNLISTED_OWNER)
        listed = next((crm for crm, ours in self.owners.items() if ours == rep), None)
        listed = listed or next((crm for crm, ours in self._imported.items() if ours == rep), None)
        return listed or next((crm for crm, email in self._owner_emails.items() if email == rep.lower()), None)

    def lifecycle_in(self, value: str) -> str:
        return self.lifecycle_stages.get(value, value)

    def lifecycle_out(self, value: str) -> str:
        return next((crm for crm, ours in self.lifecycle_stages.items() if ours == value), value)

    def inbound_changes(self, properties: dict[str, Any]) -> dict[str, Any]:
        """The contact fields (``apply_contact_changes``' shape) a CRM record sets."""
        changes: dict[str, Any] = {}
        custom: dict[str, Any] = {}
        for field in self.fields:
            if not field.inbound or field.crm not in properties:
                continue
            value = properties[field.crm]
            value = None if value == "" else value
            if field.contact == "lifecycle_stage":
                if self.conflicts.lifecycle == "crm" and value is not None:
                    changes["lifecycle_stage"] = self.lifecycle_in(str(value))
            elif field.contact.startswith("properties."):
                custom[field.contact.removeprefix("properties.")] = value
            else:
                changes[field.contact] = value
        if custom:
            changes["properties"] = custom
        if self.conflicts.owner == "crm" and self.owner_property in properties:
            changes["owner"] = self.rep_for(properties.get(self.owner_property))
        return changes

    def outbound_properties(self, contact_fields: dict[str, Any], names: list[str] | None = None) -> dict[str, str]:
        """The CRM properties to write for a contact's fields (all outbound ones, or only ``names``)."""
        out: dict[str, str] = {}
        for field in self.fields:
            if not field.outbound:
                continue
            key = field.contact.removeprefix("properties.")
            if names is not None and key not in names and field.contact not in names:
                continue
            value = contact_fields.get(key)
            if value is None:
                continue
            if field.contact == "lifecycle_stage":
                value = self.lifecycle_out(str(value))
            out[field.crm] = str(value)
        return out

    def deal_stage(self, crm_stage: str) -> dict[str, Any]:
        """A deal_stage_changed event's properties: ``stage`` is closedwon / closedlost when the
        stage closes the deal (what a handoff step's won and lost paths listen for)."""
        won, lost = crm_stage in self.deal_stages.closed_won, crm_stage in self.deal_stages.closed_lost
        stage = "closedwon" if won else "closedlost" if lost else self.deal_stages.names.get(crm_stage, crm_stage)
        return {"stage": stage, "crm_stage": crm_stage, "closed_won": won, "closed_lost": lost}

    def pause_request(self, properties: dict[str, Any], now: datetime) -> tuple[datetime, str] | None:
        """(until, reason) when the record asks for a pause that is still ahead, else None."""
        raw = properties.get(self.pause.until)
        if not raw:
            return None
        until = parse_crm_time(str(raw))
        if until is None or until <= now:
            return None
        reason = str(properties.get(self.pause.reason) or "paused from the CRM")[:500]
        return until, reason

    def suppressed(self, properties: dict[str, Any]) -> str | None:
        """'unsubscribed' or 'bounced' when the CRM says so, else None."""
        if str(properties.get(self.suppression.unsubscribed) or "").lower() == "true":
            return "unsubscribed"
        if properties.get(self.suppression.hard_bounced):
            return "bounced"
        return None


def parse_crm_time(value: str) -> datetime | None:
    """HubSpot sends datetimes as ISO 8601 or epoch milliseconds, and date properties as midnight UTC."""
    value = value.strip()
    try:
        if value.isdigit():
            return datetime.fromtimestamp(int(value) / 1000, UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class MappingInvalid(Exception):
    pass


# Salesforce's standard Contact fields, and the custom ones docs/crm.md asks to create.
SALESFORCE_DEFAULTS: dict[str, Any] = {
    "email_property": "Email",
    "owner_property": "OwnerId",
    "modified_property": "SystemModstamp",
    "fields": [
        {"crm": "FirstName", "contact": "properties.first_name", "direction": "inbound"},
        {"crm": "LastName", "contact": "properties.last_name", "direction": "inbound"},
        {"crm": "Phone", "contact": "phone", "direction": "both"},
        {"crm": "Nurture_Lifecycle_Stage__c", "contact": "lifecycle_stage", "direction": "both"},
    ],
    "deal_stages": {"closed_won": ["Closed Won"], "closed_lost": ["Closed Lost"]},
    "pause": {"until": "Nurture_Pause_Until__c", "reason": "Nurture_Pause_Reason__c"},
    "suppression": {"unsubscribed": "HasOptedOutOfEmail", "hard_bounced": "EmailBouncedReason"},
}


def load_mapping(path: Path | None, provider: str = "hubspot") -> CrmMapping:
    """The mapping file over the provider's defaults (a key the file sets replaces the default's)."""
    defaults = SALESFORCE_DEFAULTS if provider == "salesforce" else {}
    if path is None:
        return CrmMapping.model_validate(defaults)
    try:
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError("the file must hold a mapping (keys such as fields, owners, deal_stages)")
        return CrmMapping.model_validate({**defaults, **data})
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise MappingInvalid(f"the CRM mapping file {path} is not usable: {exc}") from exc
