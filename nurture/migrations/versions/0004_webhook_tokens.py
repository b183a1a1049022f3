"""Provider webhook tokens: a signed Mailgun webhook's one-time token, so a replay is refused.

Revision ID: 0004_webhook_tokens
Revises: 0003_event_inbox
Create Date: 2026-12-06 23:50:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0004_webhook_tokens'
down_revision: Union[str, Sequence[str], None] = '0003_event_inbox'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('webhook_tokens',
    sa.Column('provider', sa.String(length=40), nullable=False),
    sa.Column('token', sa.String(length=200), nullable=False),
    sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('provider', 'token')
    )
    op.create_index(op.f('ix_webhook_tokens_seen_at'), 'webhook_tokens', ['seen_at'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(op.f('ix_webhook_tokens_seen_at'), table_name='webhook_tokens')
    op.drop_table('webhook_tokens')
