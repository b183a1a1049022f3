"""The CRM sync records what its last run read and how long it took (crm_sync_state.last_sync_contacts,
last_sync_seconds): the import rate shown by GET /crm/status and /metrics.

Revision ID: 0008_crm_sync_rate
Revises: 0007_crm_send_cursor
Create Date: 2026-12-07 15:20:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0008_crm_sync_rate'
down_revision: Union[str, Sequence[str], None] = '0007_crm_send_cursor'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('crm_sync_state', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_sync_contacts', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('last_sync_seconds', sa.Float(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('crm_sync_state', schema=None) as batch_op:
        batch_op.drop_column('last_sync_seconds')
        batch_op.drop_column('last_sync_contacts')
