"""promises: blocks of seats, launch leases, requested hours, requeues, quarantined addresses

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

- reservations.seats: a reservation books N seats of (cores, RAM); each seat is one VM (kind AR).
- instances.seat: which seat of its reservation an AR instance is (a relaunch after a loss keeps it).
- instances.hours: the hours a best-effort request asked for; its end is fixed when it launches.
- instances.requeued_from: the first instance of a request that went back to the queue after its slave
  died; its queue position (first come, first served) is that instance's.
- instances.lease_owner / lease_until: a launch in progress (one launch per instance).
- address_pairs.stale_instance: a pair given back while the master may still carry the entries of that
  instance (DHCP host, alias, DNAT chain); it is not free until they are confirmed gone.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seats", sa.Integer(), nullable=False, server_default="1"))
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seat", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("hours", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("requeued_from", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("lease_until", sa.DateTime(), nullable=True))
        batch_op.create_index("ix_instances_reservation_id", ["reservation_id"], unique=False)
    with op.batch_alter_table("address_pairs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stale_instance", sa.Integer(), nullable=True))
        batch_op.create_index("ix_address_pairs_stale_instance", ["stale_instance"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("address_pairs", schema=None) as batch_op:
        batch_op.drop_index("ix_address_pairs_stale_instance")
        batch_op.drop_column("stale_instance")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_index("ix_instances_reservation_id")
        for column in ("lease_until", "lease_owner", "requeued_from", "hours", "seat"):
            batch_op.drop_column(column)
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_column("seats")
