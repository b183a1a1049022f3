"""The enrollment's progress sequence: the number of the last report its workflow applied.

Reports (activities/progress.py) are applied once and in order by this number; existing rows
start at 0, so the next report of a running enrollment applies.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 11:08:13.196427

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('enrollments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('progress_seq', sa.Integer(), server_default='0', nullable=False))



def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('enrollments', schema=None) as batch_op:
        batch_op.drop_column('progress_seq')

