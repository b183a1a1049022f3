"""All side effects of an enrollment: database, email, contact changes."""

from activities.contacts import ContactActivities
from activities.email.activities import EmailActivities
from activities.email.providers import EmailProvider
from activities.progress import ProgressActivities
from nurture.db import Database


def build_activities(db: Database, provider: EmailProvider, sender: str) -> list:
    contacts = ContactActivities(db)
    email = EmailActivities(db, provider, sender)
    progress = ProgressActivities(db)
    return [contacts.load_contact, contacts.update_contact, email.send_email, progress.record_progress]
