"""lend your PC (SPEC §9)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

- slaves.lent_by, lend_until, lend_state: a client PC its owner lends to the pool, until when, and where the
  lending stands (lent, reclaiming, gone); None for the lab's own slaves.
- instances.lend_answer: what the user of a served request with register_as_slave=1 answered when asked to lend
  their PC (lent, declined, unreachable).
- instances.moving_to and moving_hold: the slave whose room a move off a reclaimed PC holds, and what it holds there
  (run: cores, RAM and disk; disk: the disk only, the VM stays suspended there).
- A lock row ``lending`` (db.upgrade adds it): enrolments, declines and moves are serialised on PostgreSQL.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _pack_index() -> None:
    """SQLite's batch mode copies the table and leaves out indexes on expressions (0002's pack index): make it
    again. PostgreSQL alters the table in place and keeps it."""
    if op.get_bind().dialect.name == "sqlite":
        op.create_index("ix_slaves_pack", "slaves", ["status", sa.text("(cores_total - cores_used)"), "id"],
                        unique=False)


def upgrade() -> None:
    with op.batch_alter_table("slaves", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lent_by", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("lend_until", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("lend_state", sa.String(length=16), nullable=True))
        batch_op.create_foreign_key(op.f("fk_slaves_lent_by_users"), "users", ["lent_by"], ["id"],
                                    ondelete="SET NULL")
    _pack_index()
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lend_answer", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("moving_to", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("moving_hold", sa.String(length=8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("moving_hold")
        batch_op.drop_column("moving_to")
        batch_op.drop_column("lend_answer")
    with op.batch_alter_table("slaves", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("fk_slaves_lent_by_users"), type_="foreignkey")
        batch_op.drop_column("lend_state")
        batch_op.drop_column("lend_until")
        batch_op.drop_column("lent_by")
    _pack_index()
