"""The event inbox: an event accepted by POST /events waits "pending" until the router routed it.

``inbox_status`` (indexed: the sweep finds the pending ones) and ``routing`` (what routing did:
the enrollments started and told, read by ``?wait=true`` answers). Existing rows were routed when
they were stored and keep None.

Revision ID: 0003_event_inbox
Revises: 0002
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0003_event_inbox'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('inbox_status', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('routing', sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f('ix_events_inbox_status'), ['inbox_status'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_events_inbox_status'))
        batch_op.drop_column('routing')
        batch_op.drop_column('inbox_status')
