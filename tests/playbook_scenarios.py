"""One representative contact per playbook, what happens to them, and the path and send times expected.

Times are offsets from the moment the contact enters. Calendar waits (weekday and time of day,
date properties) are written as the local moment they must land on, so the expectation says what
a marketer would check: "the reminder goes out on the 11th at 09:00 Berlin time".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from nurture.flow.durations import parse_duration

# A Monday, in winter time in Europe (Berlin is UTC+1).
MONDAY = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def local(text: str, zone: str) -> datetime:
    """'2026-03-11 09:00' in a time zone, as UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)


@dataclass
class Scenario:
    playbook: str
    contact: dict[str, Any]
    path: list[str]
    # (when, what): when is an offset ("2d3h") or a datetime; what is a template key, or "sms:<step>",
    # "internal:<step>" for a text or a note to the owner.
    sends: list[tuple[str | datetime, str]]
    end: str | datetime
    status: str = "completed"
    exit_reason: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    start: datetime = MONDAY
    tasks: list[tuple[str | datetime, str]] = field(default_factory=list)

    def at(self, when: str | datetime) -> datetime:
        if isinstance(when, datetime):
            return when
        return self.start + (timedelta(0) if when in ("0", "0s") else parse_duration(when))

    @property
    def expected_sends(self) -> list[tuple[datetime, str]]:
        return [(self.at(when), what) for when, what in self.sends]


SCENARIOS = [
    Scenario(
        "topic-interest",
        contact={"name": "Ada", "company": "Analytical Engines"},
        events=[{"at": "1d", "type": "page_viewed", "properties": {"url": "https://acme.com/blog/marketing-automation/tools"}}],
        path=["tag-interest", "topic-guide", "wait-3d", "kept-reading", "deep-dive", "done"],
        sends=[("0s", "topic-guide"), ("3d", "topic-deep-dive")],
        end="3d", status="exited", exit_reason="topic_series_sent",
    ),
    Scenario(
        "blog-subscriber-welcome",
        contact={"name": "Grace", "timezone": "Europe/Berlin"},
        path=["join-list", "welcome", "wait-2d", "popular-posts", "next-thursday", "preferences"],
        # Two days after Monday 10:00 is Wednesday; the next Thursday 10:00 in Berlin follows.
        sends=[("0s", "blog-welcome"), ("2d", "blog-popular-posts"),
               (local("2026-03-05 10:00", "Europe/Berlin"), "blog-preferences")],
        end=local("2026-03-05 10:00", "Europe/Berlin"),
    ),
    Scenario(
        "new-customer-onboarding",
        contact={"name": "Linus", "company": "Kernel Co", "lifecycle_stage": "customer", "owner": "rep@example.com"},
        path=["welcome", "tell-owner", "wait-1d", "getting-started", "first-login", "login-nudge", "success-task",
              "wait-advanced", "advanced-training", "onboarded"],
        sends=[("0s", "onboarding-welcome"), ("0s", "internal:tell-owner"), ("1d", "onboarding-getting-started"),
               ("4d", "onboarding-login-nudge"), ("7d", "onboarding-advanced")],
        tasks=[("4d", "Help Linus log in for the first time")],
        end="7d",
    ),
    Scenario(
        "engaged-contacts",
        contact={"name": "Margaret", "properties": {"social_followers": 2500},
                 "events": [{"type": "page_viewed", "ago": "1d"}, {"type": "page_viewed", "ago": "3d"},
                            {"type": "page_viewed", "ago": "9d"}]},
        path=["engaged", "add-to-list", "share-ask", "wait-5d", "influencer", "ambassador-invite", "done"],
        sends=[("0s", "engaged-share-top-content"), ("5d", "engaged-ambassador-invite")],
        end="5d", status="exited", exit_reason="engaged_contact_done",
    ),
    Scenario(
        "lead-nurturing",
        contact={"name": "Alan", "company": "Bletchley", "lifecycle_stage": "lead", "timezone": "Europe/Berlin"},
        path=["is-lead", "buyers-guide", "wait-4d", "clicked-guide", "webinar-invite", "wait-5d", "consultation",
              "wait-click", "nurtured", "end"],
        sends=[("0s", "lead-buyers-guide"), ("4d", "lead-webinar-invite"), ("9d", "lead-consultation-offer")],
        end="16d", status="exited", exit_reason="nurture_finished",
    ),
    Scenario(
        "internal-sales-notification",
        contact={"name": "Ada", "company": "Analytical Engines", "owner": "rep@example.com"},
        path=["tag", "has-owner", "notify-owner", "call-task", "wait-1d", "pricing-help"],
        sends=[("0s", "internal:notify-owner"), ("1d", "sales-pricing-help")],
        tasks=[("0s", "Call Ada about pricing")],
        end="1d",
    ),
    Scenario(
        "re-engagement",
        contact={"name": "Barbara"},
        path=["miss-you", "wait-click-1", "offer", "wait-click-2", "last-chance", "wait-click-3", "sunset",
              "sunset-exit"],
        sends=[("0s", "reengage-we-miss-you"), ("5d", "reengage-exclusive-offer"), ("12d", "reengage-last-chance")],
        end="17d", status="exited", exit_reason="sunset",
    ),
    Scenario(
        "event-webinar",
        contact={"name": "Hedy", "timezone": "Europe/Berlin",
                 "properties": {"event_date": "2026-03-12", "event_name": "Nurture Summit"}},
        events=[{"at": "10d8h", "type": "event_attended"}],
        path=["confirmation", "day-before", "reminder", "event-day", "starting-today", "attendance", "attended",
              "thanks", "wait-3d", "next-events"],
        sends=[("0s", "event-confirmation"), (local("2026-03-11 09:00", "Europe/Berlin"), "event-reminder"),
               (local("2026-03-12 08:00", "Europe/Berlin"), "event-starting-today"), ("10d8h", "event-thanks"),
               ("13d8h", "event-upcoming")],
        end="13d8h",
    ),
    Scenario(
        "abandoned-cart",
        contact={"name": "Ada", "phone": "+15550100", "properties": {"cart_url": "https://shop.example.com/cart/42"}},
        path=["wait-1h", "reminder", "wait-23h", "discount", "wait-2d", "last-chance", "last-chance-sms", "tag"],
        sends=[("1h", "cart-reminder"), ("1d", "cart-discount"), ("3d", "cart-last-chance"),
               ("3d", "sms:last-chance-sms")],
        end="3d",
    ),
    Scenario(
        "upsell",
        contact={"name": "Katherine", "company": "Langley"},
        path=["starter-buyers", "wait-14d", "pro-pitch", "wait-click", "add-ons", "offered"],
        # The pitch is one of two A/B variants: the test checks it against the variant drawn.
        sends=[("14d", "upsell-pro-*"), ("19d", "upsell-add-ons")],
        end="19d",
    ),
    Scenario(
        "customer-happiness-nps",
        contact={"name": "Dorothy", "lifecycle_stage": "customer", "properties": {"nps_score": 10}},
        path=["score", "promoter", "promoter-thanks", "wait-7d", "referral", "done"],
        sends=[("0s", "nps-promoter-thanks"), ("7d", "nps-promoter-referral")],
        end="7d", status="exited", exit_reason="nps_handled",
    ),
    Scenario(
        "customer-success-usage",
        contact={"name": "Frances", "company": "Fortran Inc", "lifecycle_stage": "customer",
                 "properties": {"active_days_30d": 2, "unused_feature": "automated reports"}},
        path=["usage", "feature-tips", "wait-usage", "csm-task", "training-offer", "done"],
        sends=[("0s", "success-feature-tips"), ("7d", "success-training-offer")],
        tasks=[("7d", "Low usage: check in with Fortran Inc")],
        end="7d", status="exited", exit_reason="usage_handled",
    ),
    Scenario(
        "upcoming-purchase-reminder",
        contact={"name": "Mary", "timezone": "Europe/Berlin", "phone": "+4915550100",
                 "properties": {"last_purchase_date": "2026-01-15"}},
        start=datetime(2026, 1, 15, 12, 0, tzinfo=UTC),
        path=["five-months-later", "reordered-already", "reminder", "wait-reorder", "last-call", "last-call-sms",
              "reminded"],
        # Five months after 15 January, 10:00 in Berlin (summer time by then).
        sends=[(local("2026-06-15 10:00", "Europe/Berlin"), "reorder-reminder"),
               (local("2026-06-29 10:00", "Europe/Berlin"), "reorder-last-call"),
               (local("2026-06-29 10:00", "Europe/Berlin"), "sms:last-call-sms")],
        end=local("2026-06-29 10:00", "Europe/Berlin"), status="exited", exit_reason="reminded",
    ),
    Scenario(
        "customer-service-ticket",
        contact={"name": "Radia", "lifecycle_stage": "customer", "company": "Spanning Tree"},
        events=[{"at": "1d", "type": "ticket_resolved"}],
        path=["route", "priority-ticket", "acknowledge", "wait-resolved", "wait-1h", "satisfaction"],
        sends=[("0s", "ticket-received"), ("1d1h", "ticket-satisfaction")],
        tasks=[("0s", "Customer request from Radia (Spanning Tree)")],
        end="1d1h",
    ),
    Scenario(
        "deal-based",
        contact={"name": "Joan", "company": "Clarke Ltd", "owner": "rep@example.com", "lifecycle_stage": "opportunity",
                 "properties": {"deal_stage": "contractsent"}},
        events=[{"at": "2d", "type": "contract_signed"}],
        path=["stage", "contract", "wait-signature", "won", "welcome-aboard", "tell-owner", "end"],
        sends=[("0s", "deal-contract-ready"), ("2d", "deal-welcome-aboard"), ("2d", "internal:tell-owner")],
        end="2d", status="exited", exit_reason="deal_step_done",
    ),
    Scenario(
        "welcome-double-opt-in",
        contact={"name": "Sophie"},
        events=[{"at": "3h", "type": "optin_confirmed"}],
        path=["confirm-request", "wait-confirm", "confirmed", "welcome", "wait-2d", "best-content", "wait-2w", "feedback"],
        sends=[("0s", "welcome-confirm-request"), ("3h", "welcome-confirmed"), ("2d3h", "welcome-best-content"),
               ("16d3h", "welcome-feedback-request")],
        end="16d3h",
    ),
    Scenario(
        "first-purchase-feedback",
        contact={"name": "Emmy", "properties": {"last_product": "espresso machine"}},
        path=["wait-7d", "feedback-request", "wait-review", "wait-2d", "cross-sell", "end"],
        sends=[("7d", "first-purchase-feedback"), ("14d", "first-purchase-cross-sell")],
        end="14d", status="exited", exit_reason="feedback_handled",
    ),
    Scenario(
        "birthday",
        contact={"name": "Yuki", "timezone": "Asia/Tokyo", "phone": "+81355550100",
                 "properties": {"birthday": "1990-03-10"}},
        # The date trigger enrolls on the birthday at 09:00 Tokyo time.
        start=local("2026-03-10 09:00", "Asia/Tokyo"),
        path=["greeting", "greeting-sms", "wait-purchase", "gift-reminder", "reminded"],
        sends=[("0s", "birthday-greeting"), ("0s", "sms:greeting-sms"), ("6d", "birthday-gift-reminder")],
        end="6d", status="exited", exit_reason="birthday_done",
    ),
    Scenario(
        "best-customers",
        contact={"name": "Ada", "lifecycle_stage": "customer", "properties": {"total_spent": 1500, "orders_count": 4}},
        path=["already-vip", "make-vip", "vip-welcome", "tell-owner", "wait-30d", "early-access", "wait-60d",
              "referral", "end"],
        sends=[("0s", "vip-welcome"), ("0s", "internal:tell-owner"), ("30d", "vip-early-access"), ("90d", "vip-referral")],
        end="90d", status="exited", exit_reason="vip_programme_sent",
    ),
    Scenario(
        "win-back",
        contact={"name": "Ada", "lifecycle_stage": "customer", "properties": {"last_purchase_date": "2025-09-02"}},
        # The split draws one offer per enrollment: the test maps "offer" to the path drawn.
        path=["whats-new", "wait-7d", "offer-test", "<offer>", "wait-10d", "last-reminder", "lapsed"],
        sends=[("0s", "winback-whats-new"), ("7d", "<offer>"), ("17d", "winback-last-reminder")],
        end="17d",
    ),
    Scenario(
        "geolocation",
        contact={"name": "Minji", "timezone": "Asia/Seoul", "phone": "+821055550100", "properties": {"city": "Seoul"}},
        start=local("2026-03-02 10:00", "Asia/Seoul"),
        path=["region", "seoul-invite", "saturday", "store-day-sms", "store-day", "visit", "end"],
        sends=[("0s", "geo-seoul-invite"), (local("2026-03-07 10:00", "Asia/Seoul"), "sms:store-day-sms"),
               (local("2026-03-07 10:00", "Asia/Seoul"), "geo-store-day")],
        end=local("2026-03-09 10:00", "Asia/Seoul"), status="exited", exit_reason="campaign_done",
    ),
]

BY_NAME = {s.playbook: s for s in SCENARIOS}
# Per playbook, per split step: each path's step and the template it sends.
SPLIT_STEPS = {"win-back": {"offer-test": {"discount": ("discount-offer", "winback-discount"),
                                           "free-shipping": ("shipping-offer", "winback-free-shipping")}}}
