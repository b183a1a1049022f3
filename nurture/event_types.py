"""The event types the engine itself gives a meaning to, named once.

Any other type (``meeting_booked``, ``form_submitted`` ...) is the caller's own and means
only what a flow's triggers, goals and waits say. These are the ones the code reacts to:
the tracker and the email providers record them, the enrollment workflow, the Enroller,
the simulator and the statistics read them. Plain values only, so workflow code can
import this module too.
"""

from __future__ import annotations

from collections.abc import Mapping

EMAIL_OPENED = "email_opened"
EMAIL_CLICKED = "email_clicked"
EMAIL_DELIVERED = "email_delivered"
EMAIL_BOUNCED = "email_bounced"
EMAIL_COMPLAINED = "email_complained"
UNSUBSCRIBED = "unsubscribed"
EMAIL_UNSUBSCRIBED = "email_unsubscribed"
DEAL_STAGE_CHANGED = "deal_stage_changed"  # properties.stage: the deal's new stage
RETURNED_TO_MARKETING = "returned_to_marketing"  # sales hands the contact back

# An open or a click, and the engagement an enrollment records for it.
ENGAGEMENT_KINDS: Mapping[str, str] = {EMAIL_OPENED: "opened", EMAIL_CLICKED: "clicked"}

# Events about one sent email (properties.message_id): they concern only the enrollment that sent it.
MESSAGE_EVENTS = frozenset({EMAIL_OPENED, EMAIL_CLICKED, EMAIL_DELIVERED, EMAIL_BOUNCED, EMAIL_COMPLAINED})

# Both names mean the contact unsubscribed.
UNSUBSCRIBE_EVENTS = frozenset({UNSUBSCRIBED, EMAIL_UNSUBSCRIBED})
