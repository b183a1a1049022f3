"""All side effects of an enrollment: database, email, SMS, webhooks, contact changes."""

from temporalio.client import Client

from activities.actions import ActionActivities
from activities.contacts import ContactActivities
from activities.crm import CrmActivities
from activities.email.activities import EmailActivities
from activities.email.consent import ConsentLinks
from activities.email.providers import EmailProvider
from activities.email.rendering import TemplateRenderer
from activities.email.tracking import LinkTracker
from activities.enrolling import EnrollingActivities
from activities.governance import GovernanceActivities, SendGate
from activities.progress import ProgressActivities
from activities.scheduling import SchedulingActivities
from activities.sms import SmsActivities, SmsOutboxProvider, SmsProvider
from activities.webhooks import WebhookActivities
from nurture.crm import connector_for
from nurture.crm.connector import CrmConnector
from nurture.db import Database
from nurture.metrics import instrumented
from nurture.settings import Settings


def email_activities(
    db: Database, provider: EmailProvider, settings: Settings, renderer: TemplateRenderer | None = None
) -> EmailActivities:
    renderer = renderer or TemplateRenderer.from_settings(settings)
    return EmailActivities(db, provider, settings.email_from, LinkTracker.from_settings(settings),
                           ConsentLinks.from_settings(settings), renderer, SendGate(settings))


def build_send_activities(db: Database, provider: EmailProvider, settings: Settings) -> list:
    """What the send task queue's worker runs: only the send (settings.send_task_queue)."""
    return instrumented([email_activities(db, provider, settings).send_email])


def build_activities(
    db: Database,
    provider: EmailProvider,
    settings: Settings,
    client: Client | None = None,
    sms: SmsProvider | None = None,
    crm: CrmConnector | None = None,
) -> list:
    contacts = ContactActivities(db, settings)
    renderer = TemplateRenderer.from_settings(settings)
    email = email_activities(db, provider, settings, renderer)
    progress = ProgressActivities(db)
    scheduling = SchedulingActivities(db, settings.default_send_time)
    actions = ActionActivities(db, provider, client, settings)
    webhooks = WebhookActivities(db, settings)
    texts = SmsActivities(db, sms or SmsOutboxProvider(settings.sms_outbox_dir), renderer)
    governance = GovernanceActivities(db, settings, client)
    enrolling = EnrollingActivities(db, client, settings)
    # The CRM sync's activities exist only where a CRM is connected (crm_provider).
    crm = crm or connector_for(settings)
    synced = CrmActivities(db, crm, client, settings) if crm is not None else None
    crm_activities = [
        synced.push_crm_writes, synced.queue_crm_engagement, synced.start_crm_sync, synced.sync_crm_page, synced.sync_crm_deals,
        synced.finish_crm_sync, synced.import_crm_owners,
    ] if synced is not None else []
    # Every activity is timed into nurture_activity_seconds (nurture/metrics.py).
    return instrumented([
        contacts.update_contact,
        email.send_email,
        progress.record_progress,
        scheduling.resolve_time,
        scheduling.recent_events,
        actions.notify_owner,
        actions.create_task,
        actions.enroll_in_flow,
        webhooks.call_webhook,
        texts.send_sms,
        governance.quiet_period,
        enrolling.list_scan_flows,
        enrolling.scan_trigger_page,
        enrolling.bulk_enroll_page,
        *crm_activities,
    ])
