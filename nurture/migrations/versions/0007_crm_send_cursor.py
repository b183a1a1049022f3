"""The CRM sync logs sends on the contact's CRM timeline too: where it stands in the send log
(crm_sync_state.send_cursor, the last message whose send was logged).

Revision ID: 0007_crm_send_cursor
Revises: 0006_console_users
Create Date: 2026-12-07 03:05:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0007_crm_send_cursor'
down_revision: Union[str, Sequence[str], None] = '0006_console_users'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('crm_sync_state', schema=None) as batch_op:
        batch_op.add_column(sa.Column('send_cursor', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('crm_sync_state', schema=None) as batch_op:
        batch_op.drop_column('send_cursor')
