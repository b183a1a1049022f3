"""CRM sync: the contact's CRM record id, the queue of writes to the CRM, each connector's sync cursor and its owners.

Revision ID: 0005_crm_sync
Revises: 0004_webhook_tokens
Create Date: 2026-12-06 23:40:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0005_crm_sync'
down_revision: Union[str, Sequence[str], None] = '0004_webhook_tokens'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('crm_id', sa.String(length=100), nullable=True))
        batch_op.create_index(batch_op.f('ix_contacts_crm_id'), ['crm_id'], unique=False)

    op.create_table('crm_writes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('idempotency_key', sa.String(length=300), nullable=False),
    sa.Column('provider', sa.String(), nullable=False),
    sa.Column('kind', sa.String(), nullable=False),
    sa.Column('contact_id', sa.Integer(), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.String(), nullable=True),
    sa.Column('crm_record_id', sa.String(), nullable=True),
    sa.Column('workflow_id', sa.String(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('idempotency_key')
    )
    op.create_index(op.f('ix_crm_writes_contact_id'), 'crm_writes', ['contact_id'], unique=False)
    op.create_index(op.f('ix_crm_writes_status'), 'crm_writes', ['status'], unique=False)

    op.create_table('crm_sync_state',
    sa.Column('provider', sa.String(length=40), nullable=False),
    sa.Column('cursor', sa.DateTime(timezone=True), nullable=True),
    sa.Column('deal_cursor', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_run_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_success_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.String(), nullable=True),
    sa.Column('contacts_read', sa.Integer(), nullable=False),
    sa.Column('contacts_changed', sa.Integer(), nullable=False),
    sa.Column('engagement_cursor', sa.Integer(), nullable=False),
    sa.Column('last_webhook_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resync_requested_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('provider')
    )
    op.create_table('crm_owners',
    sa.Column('provider', sa.String(length=40), nullable=False),
    sa.Column('crm_owner_id', sa.String(length=100), nullable=False),
    sa.Column('email', sa.String(), nullable=True),
    sa.Column('rep', sa.String(), nullable=False),
    sa.Column('imported_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('provider', 'crm_owner_id')
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('crm_owners')
    op.drop_table('crm_sync_state')
    op.drop_index(op.f('ix_crm_writes_status'), table_name='crm_writes')
    op.drop_index(op.f('ix_crm_writes_contact_id'), table_name='crm_writes')
    op.drop_table('crm_writes')
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_contacts_crm_id'))
        batch_op.drop_column('crm_id')
