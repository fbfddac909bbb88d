"""people and classes: roles and passwords, group owners, weekly series, prelaunch, one live seat each

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

- users.role (admin, teacher, student), users.auth (local, ldap), users.password_hash (Argon2id).
- groups.owner_id: the teacher who owns the group.
- images.platform_value: PfV of requests by people who are not admins (SPEC §3).
- series: a weekly session; reservations.series_id names its occurrences.
- reservations.prelaunch: seats started before the window opens (1, what every reservation did before) or
  when a member takes one (0).
- instances: a unique index on the live seats of a reservation (a seat number once) and on their holders
  (a member once).
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

LIVE_SEAT = "state IN ('pending', 'running', 'suspended') AND reservation_id IS NOT NULL"


def _enum(name: str, values: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, length=16)


def upgrade() -> None:
    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("weekdays", sa.String(length=32), nullable=False),
        sa.Column("weeks", sa.Integer(), nullable=False),
        sa.Column("first_start", sa.DateTime(), nullable=False),
        sa.Column("hours", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"], name=op.f("fk_series_group_id_groups")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_series_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_series")),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("role", _enum("user_role", ("admin", "teacher", "student")),
                                      nullable=False, server_default="student"))
        batch_op.add_column(sa.Column("auth", _enum("auth_source", ("local", "ldap")), nullable=False,
                                      server_default="local"))
        batch_op.add_column(sa.Column("password_hash", sa.Text(), nullable=True))
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("platform_value", sa.Float(), nullable=False, server_default="5"))
    with op.batch_alter_table("groups", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(op.f("fk_groups_owner_id_users"), "users", ["owner_id"], ["id"],
                                    ondelete="SET NULL")
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prelaunch", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("series_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(op.f("fk_reservations_series_id_series"), "series", ["series_id"], ["id"])
        batch_op.create_index("ix_reservations_series_id", ["series_id"], unique=False)
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.create_index("uq_instances_live_seat", ["reservation_id", "seat"], unique=True,
                              sqlite_where=sa.text(LIVE_SEAT), postgresql_where=sa.text(LIVE_SEAT))
        holder = f"{LIVE_SEAT} AND user_id IS NOT NULL"
        batch_op.create_index("uq_instances_seat_holder", ["reservation_id", "user_id"], unique=True,
                              sqlite_where=sa.text(holder), postgresql_where=sa.text(holder))


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_index("uq_instances_seat_holder")
        batch_op.drop_index("uq_instances_live_seat")
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_index("ix_reservations_series_id")
        batch_op.drop_constraint(op.f("fk_reservations_series_id_series"), type_="foreignkey")
        batch_op.drop_column("series_id")
        batch_op.drop_column("prelaunch")
    with op.batch_alter_table("groups", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("fk_groups_owner_id_users"), type_="foreignkey")
        batch_op.drop_column("owner_id")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("platform_value")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("password_hash")
        batch_op.drop_column("auth")
        batch_op.drop_column("role")
    op.drop_table("series")
