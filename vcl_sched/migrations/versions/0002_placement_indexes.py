"""placement indexes: slaves in the spread and pack policies' order

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

Choosing a slave is `WHERE status = 'up' AND <fits> ORDER BY <policy key>, id LIMIT 1`; with these
indexes the database walks the slaves in policy order and stops at the first that fits, instead
of scanning and sorting every slave for every request.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("slaves", schema=None) as batch_op:
        batch_op.create_index("ix_slaves_spread", ["status", "cores_used", "id"], unique=False)
        batch_op.create_index("ix_slaves_pack", ["status", sa.text("(cores_total - cores_used)"), "id"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("slaves", schema=None) as batch_op:
        batch_op.drop_index("ix_slaves_pack")
        batch_op.drop_index("ix_slaves_spread")
