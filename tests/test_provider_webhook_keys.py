"""Provider webhook credentials at start: a chosen provider without its webhook key is reported by
name; a key anyone could guess (or get around) keeps the API from starting, as a forgeable signing
secret does."""

from __future__ import annotations

import base64
import secrets
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from nurture.provider_webhook_keys import forgeable_webhook_keys, unconfigured
from nurture.settings import MailgunSettings, PostmarkSettings, SendgridSettings, SesSettings, Settings
from tests.test_deploy import GOOD_SECRET, bare_env, free_port, run_until_exit

TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-events"


def der(key) -> str:
    return base64.b64encode(
        key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ).decode()


def settings(**values) -> Settings:
    return Settings(_env_file=None, **values)


@pytest.mark.parametrize(
    ("provider", "variables"),
    [
        ("ses", ["NURTURE_SES__SNS_TOPIC_ARNS"]),
        ("sendgrid", ["NURTURE_SENDGRID__WEBHOOK_PUBLIC_KEY"]),
        ("postmark", ["NURTURE_POSTMARK__WEBHOOK_USERNAME", "NURTURE_POSTMARK__WEBHOOK_PASSWORD"]),
        ("mailgun", ["NURTURE_MAILGUN__WEBHOOK_SIGNING_KEY"]),
    ],
)
def test_a_chosen_provider_without_its_webhook_key_is_named(provider, variables):
    [problem] = unconfigured(settings(email_provider=provider))
    assert all(variable in problem for variable in variables)


def test_complete_webhook_settings_and_other_providers_report_nothing():
    complete = settings(
        ses=SesSettings(sns_topic_arns=[TOPIC]),
        sendgrid=SendgridSettings(webhook_public_key=der(ec.generate_private_key(ec.SECP256R1()))),
        postmark=PostmarkSettings(webhook_username="postmark", webhook_password=secrets.token_urlsafe(24)),
        mailgun=MailgunSettings(webhook_signing_key="key-" + secrets.token_hex(16)),
    )
    for provider in ("ses", "sendgrid", "postmark", "mailgun"):
        chosen = complete.model_copy(update={"email_provider": provider})
        assert unconfigured(chosen) == [] and forgeable_webhook_keys(chosen) == []
    assert unconfigured(settings(email_provider="smtp")) == unconfigured(settings(email_provider="outbox")) == []


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"postmark": PostmarkSettings(webhook_username="postmark", webhook_password="hook-secret")},
         "NURTURE_POSTMARK__WEBHOOK_PASSWORD is shorter than 16"),
        ({"postmark": PostmarkSettings(webhook_username="postmark", webhook_password="change-me")},
         "NURTURE_POSTMARK__WEBHOOK_PASSWORD is a published placeholder"),
        ({"postmark": PostmarkSettings(webhook_password=GOOD_SECRET)}, "must be set together"),
        ({"mailgun": MailgunSettings(webhook_signing_key="key-123")}, "NURTURE_MAILGUN__WEBHOOK_SIGNING_KEY is shorter"),
        ({"sendgrid": SendgridSettings(webhook_public_key="not a key")}, "NURTURE_SENDGRID__WEBHOOK_PUBLIC_KEY"),
        ({"sendgrid": SendgridSettings(webhook_public_key=der(rsa.generate_private_key(65537, 2048)))},
         "not an ECDSA key"),
        ({"sendgrid": SendgridSettings(webhook_public_key=der(ec.generate_private_key(ec.SECP384R1())))}, "not P-256"),
        ({"ses": SesSettings(sns_topic_arns=["ses-events"])}, "not an SNS topic ARN"),
        ({"ses": SesSettings(sns_trusted_url_prefix="https://certs.example.com/")}, "NURTURE_SES__SNS_TRUSTED_URL_PREFIX"),
        # No path: http://127.0.0.1:@evil.example/ would start with it.
        ({"ses": SesSettings(sns_trusted_url_prefix="http://127.0.0.1:")}, "NURTURE_SES__SNS_TRUSTED_URL_PREFIX"),
    ],
    ids=["short-password", "placeholder-password", "password-alone", "short-signing-key", "not-base64",
         "rsa-key", "p384-key", "not-an-arn", "remote-cert-prefix", "open-ended-prefix"],
)
def test_a_webhook_key_anyone_could_forge_with_is_named(values, named):
    # Checked whichever provider sends: each endpoint takes posts whenever its key is set.
    for provider in ("outbox", "ses"):
        problems = forgeable_webhook_keys(settings(email_provider=provider, **values))
        assert len(problems) == 1 and named in problems[0], problems


def test_a_loopback_emulator_prefix_is_allowed():
    assert forgeable_webhook_keys(settings(ses=SesSettings(sns_trusted_url_prefix="http://127.0.0.1:8123/"))) == []


def test_the_api_refuses_to_start_with_a_guessable_webhook_key_and_says_which(tmp_path):
    command = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(free_port())]
    env = bare_env(
        tmp_path, NURTURE_TRACKING_SECRET=GOOD_SECRET, NURTURE_EMAIL_WEBHOOK_SECRET=GOOD_SECRET,
        NURTURE_EMAIL_PROVIDER="postmark", NURTURE_POSTMARK__WEBHOOK_USERNAME="postmark",
        NURTURE_POSTMARK__WEBHOOK_PASSWORD="password",
    )
    code, output = run_until_exit(command, env)
    assert code != 0, output
    assert "NURTURE_POSTMARK__WEBHOOK_PASSWORD is a published placeholder" in output, output[-3000:]


def test_the_api_names_the_chosen_providers_missing_webhook_key_at_start(tmp_path):
    command = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(free_port())]
    env = bare_env(
        tmp_path, NURTURE_TRACKING_SECRET=GOOD_SECRET, NURTURE_EMAIL_WEBHOOK_SECRET=GOOD_SECRET,
        NURTURE_EMAIL_PROVIDER="mailgun",
    )
    # The database here was never migrated, so the API stops right after its start checks.
    code, output = run_until_exit(command, env)
    assert "email_webhook_not_configured" in output and "NURTURE_MAILGUN__WEBHOOK_SIGNING_KEY is not set" in output, output[-3000:]
    assert "refuses to start: NURTURE_MAILGUN" not in output
