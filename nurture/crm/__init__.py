"""Two-way CRM sync (docs/crm.md): the connector interface, the mapping file, inbound and queued writes."""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

from nurture.crm.connector import CrmConnector, CrmError
from nurture.crm.mapping import CrmMapping, load_mapping
from nurture.crm.owners import imported_reps
from sqlmodel.ext.asyncio.session import AsyncSession
from nurture.logging import get_logger
from nurture.settings import Settings

# How long a process trusts the CRM's list of owners before asking again.
OWNER_LIST_SECONDS = 600.0


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


async def mapping_with_owners(settings: Settings, connector: CrmConnector, session: AsyncSession | None = None) -> CrmMapping:
    """The mapping, knowing the owners the sync imported (read in ``session``) and the CRM's owners' emails
    (asked at most every OWNER_LIST_SECONDS per connector; a CRM that cannot list them now leaves the
    last list, or none)."""
    cached: tuple[float, dict[str, str]] | None = getattr(connector, "owner_cache", None)
    now = time.monotonic()
    if cached is None or now - cached[0] > OWNER_LIST_SECONDS:
        try:
            cached = (now, await connector.owners())
        except CrmError as exc:
            get_logger(provider=connector.provider).warning("crm_owners_unavailable", error=str(exc))
            cached = (now, cached[1] if cached else {})
        connector.owner_cache = cached  # type: ignore[attr-defined]
    imported = await imported_reps(session, connector.provider) if session is not None else {}
    return mapping_for(settings).knowing_owners(cached[1], imported)
