"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-22 03:07:34.367702
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("object_type", sa.String(length=32), nullable=False),
        sa.Column("object_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("before", sa.Text(), nullable=True),
        sa.Column("after", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index("ix_audit_log_object", ["object_type", "object_id"], unique=False)

    op.create_table(
        "groups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_groups")),
        sa.UniqueConstraint("name", name=op.f("uq_groups_name")),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("disk_file", sa.Text(), nullable=False),
        sa.Column("kernel", sa.Text(), nullable=True),
        sa.Column("ramdisk", sa.Text(), nullable=True),
        sa.Column("cmdline", sa.Text(), nullable=True),
        sa.Column("default_cores", sa.Integer(), nullable=False),
        sa.Column("default_ram_mb", sa.Integer(), nullable=False),
        sa.Column("default_disk_gb", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("name", name=op.f("uq_images_name")),
    )
    op.create_table(
        "locks",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_locks")),
    )
    op.create_table(
        "settings",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_settings")),
    )
    op.create_table(
        "slaves",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=45), nullable=False),
        sa.Column("cores_total", sa.Integer(), nullable=False),
        sa.Column("cores_used", sa.Integer(), nullable=False),
        sa.Column("ram_mb_total", sa.Integer(), nullable=False),
        sa.Column("ram_mb_used", sa.Integer(), nullable=False),
        sa.Column("disk_gb_total", sa.Integer(), nullable=False),
        sa.Column("disk_gb_used", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum("up", "down", "draining", name="slave_status", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("joined_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("cores_used >= 0 AND cores_used <= cores_total", name=op.f("ck_slaves_cores")),
        sa.CheckConstraint("disk_gb_used >= 0 AND disk_gb_used <= disk_gb_total", name=op.f("ck_slaves_disk")),
        sa.CheckConstraint("ram_mb_used >= 0 AND ram_mb_used <= ram_mb_total", name=op.f("ck_slaves_ram")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slaves")),
        sa.UniqueConstraint("address", name=op.f("uq_slaves_address")),
        sa.UniqueConstraint("name", name=op.f("uq_slaves_name")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("declines", sa.Integer(), nullable=False),
        sa.Column("registered_slave", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("name", name=op.f("uq_users_name")),
    )
    op.create_table(
        "memberships",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"], ["groups.id"], name=op.f("fk_memberships_group_id_groups"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_memberships_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "group_id", name=op.f("pk_memberships")),
    )
    op.create_table(
        "reservations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("image_id", sa.Integer(), nullable=True),
        sa.Column("cores", sa.Integer(), nullable=False),
        sa.Column("ram_mb", sa.Integer(), nullable=False),
        sa.Column("requested_start", sa.DateTime(), nullable=False),
        sa.Column("start", sa.DateTime(), nullable=True),
        sa.Column("end", sa.DateTime(), nullable=True),
        sa.Column("hours", sa.Float(), nullable=False),
        sa.Column("platform_value", sa.Float(), nullable=False),
        sa.Column("register_as_slave", sa.Integer(), nullable=False),
        sa.Column("member", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.Column("rescheduled", sa.Integer(), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "accepted",
                "refused",
                "active",
                "done",
                "cancelled",
                name="reservation_state",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"], name=op.f("fk_reservations_group_id_groups")),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_reservations_image_id_images")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_reservations_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reservations")),
    )
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.create_index("ix_reservations_state_start", ["state", "start"], unique=False)

    op.create_table(
        "instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=True),
        sa.Column("slave_id", sa.Integer(), nullable=True),
        sa.Column("reservation_id", sa.Integer(), nullable=True),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("cores", sa.Integer(), nullable=False),
        sa.Column("ram_mb", sa.Integer(), nullable=False),
        sa.Column("disk_gb", sa.Integer(), nullable=False),
        sa.Column("mac", sa.String(length=17), nullable=True),
        sa.Column("private_ip", sa.String(length=45), nullable=True),
        sa.Column("public_ip", sa.String(length=45), nullable=True),
        sa.Column("console_port", sa.Integer(), nullable=True),
        sa.Column(
            "state",
            sa.Enum(
                "pending",
                "running",
                "suspended",
                "stopped",
                "failed",
                "lost",
                name="instance_state",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("kind", sa.Enum("BE", "AR", name="instance_kind", native_enum=False, length=16), nullable=False),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.Column("register_as_slave", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("ends_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"], name=op.f("fk_instances_group_id_groups")),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_instances_image_id_images")),
        sa.ForeignKeyConstraint(
            ["reservation_id"], ["reservations.id"], name=op.f("fk_instances_reservation_id_reservations")
        ),
        sa.ForeignKeyConstraint(["slave_id"], ["slaves.id"], name=op.f("fk_instances_slave_id_slaves")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_instances_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instances")),
    )
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.create_index("ix_instances_state", ["state"], unique=False)

    op.create_table(
        "address_pairs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("private_ip", sa.String(length=45), nullable=False),
        sa.Column("public_ip", sa.String(length=45), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=True),
        sa.Column("mac", sa.String(length=17), nullable=True),
        sa.ForeignKeyConstraint(["instance_id"], ["instances.id"], name=op.f("fk_address_pairs_instance_id_instances")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_address_pairs")),
        sa.UniqueConstraint("instance_id", name=op.f("uq_address_pairs_instance_id")),
        sa.UniqueConstraint("mac", name=op.f("uq_address_pairs_mac")),
        sa.UniqueConstraint("private_ip", name=op.f("uq_address_pairs_private_ip")),
        sa.UniqueConstraint("public_ip", name=op.f("uq_address_pairs_public_ip")),
    )
    with op.batch_alter_table("address_pairs", schema=None) as batch_op:
        batch_op.create_index("ix_address_pairs_free", ["instance_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("address_pairs", schema=None) as batch_op:
        batch_op.drop_index("ix_address_pairs_free")

    op.drop_table("address_pairs")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_index("ix_instances_state")

    op.drop_table("instances")
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_index("ix_reservations_state_start")

    op.drop_table("reservations")
    op.drop_table("memberships")
    op.drop_table("users")
    op.drop_table("slaves")
    op.drop_table("settings")
    op.drop_table("locks")
    op.drop_table("images")
    op.drop_table("groups")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_object")

    op.drop_table("audit_log")
