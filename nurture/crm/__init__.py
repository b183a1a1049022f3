"""Two-way CRM sync (docs/crm.md): the connector interface, the mapping file, inbound and queued writes."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from nurture.crm.connector import CrmConnector
from nurture.crm.mapping import CrmMapping, load_mapping
from nurture.settings import Settings


def connector_for(settings: Settings) -> CrmConnector | None:
    """The configured CRM's connector, or None without one (``crm_provider: none``)."""
    if settings.crm_provider == "hubspot":
        from nurture.crm.hubspot import HubSpotConnector

        return HubSpotConnector(settings)
    if settings.crm_provider == "salesforce":
        from nurture.crm.salesforce import SalesforceConnector

        return SalesforceConnector(settings)
    return None


@lru_cache(maxsize=8)
def _mapping(path: Path | None, modified: float, provider: str) -> CrmMapping:
    return load_mapping(path, provider)


def mapping_for(settings: Settings) -> CrmMapping:
    """The mapping file's content (read again when the file changes)."""
    path = settings.crm_mapping_file
    modified = path.stat().st_mtime if path is not None and path.exists() else 0.0
    return _mapping(path, modified, settings.crm_provider)
