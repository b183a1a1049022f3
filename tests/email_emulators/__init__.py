"""Email providers' HTTP APIs on loopback, speaking each vendor's published wire format.

SendGrid v3, Postmark and Mailgun are emulated here (request shapes, auth headers, error
answers, 429 with Retry-After, webhook payloads signed with test keys); SES v2 is moto in server
mode, and SNS's signed HTTP notifications come from ``sns.SnsSigner`` with a test certificate.
The provider code reaches all of them through the same clients it uses in production.
"""
