"""persistent disks, quotas and captured images (SPEC §10)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

- disks: a user's kept disk of one image (its file's generation, size and checksum; a keep in progress reserves
  its size in incoming_*); unique per (user, image).
- users.disk_quota_gb, groups.disk_quota_gb: a quota of their own (None: the lab's settings).
- images.owner_id: who captured it; image_groups: the groups an image is for (none: every group).
- reservations.keep_disks, instances.keep_disk: keep the disk at stop and start from it; instances.launched_from:
  the image files the VM was launched from. A user's disk of an image is used by one live VM at a time (a unique
  index).
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

LIVE_KEEP = "state IN ('pending', 'running', 'suspended') AND keep_disk = 1 AND user_id IS NOT NULL"


def upgrade() -> None:
    op.create_table(
        "disks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("base_file", sa.Text(), nullable=False),
        sa.Column("base_kernel", sa.Text(), nullable=True),
        sa.Column("base_ramdisk", sa.Text(), nullable=True),
        sa.Column("base_cmdline", sa.Text(), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("incoming_bytes", sa.BigInteger(), nullable=True),
        sa.Column("incoming_instance", sa.Integer(), nullable=True),
        sa.Column("incoming_until", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_disks_user_id_users")),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_disks_image_id_images")),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"], name=op.f("fk_disks_group_id_groups")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_disks")),
    )
    op.create_index("uq_disks_user_image", "disks", ["user_id", "image_id"], unique=True)
    op.create_index("ix_disks_group_id", "disks", ["group_id"], unique=False)
    op.create_table(
        "image_groups",
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_image_groups_image_id_images"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"], name=op.f("fk_image_groups_group_id_groups"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("image_id", "group_id", name=op.f("pk_image_groups")),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("disk_quota_gb", sa.Float(), nullable=True))
    with op.batch_alter_table("groups", schema=None) as batch_op:
        batch_op.add_column(sa.Column("disk_quota_gb", sa.Float(), nullable=True))
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(op.f("fk_images_owner_id_users"), "users", ["owner_id"], ["id"],
                                    ondelete="SET NULL")
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("keep_disks", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("keep_disk", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("launched_from", sa.Text(), nullable=True))
        batch_op.create_index("uq_instances_live_keep", ["user_id", "image_id"], unique=True,
                              sqlite_where=sa.text(LIVE_KEEP), postgresql_where=sa.text(LIVE_KEEP))


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_index("uq_instances_live_keep")
        batch_op.drop_column("launched_from")
        batch_op.drop_column("keep_disk")
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_column("keep_disks")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("fk_images_owner_id_users"), type_="foreignkey")
        batch_op.drop_column("owner_id")
    with op.batch_alter_table("groups", schema=None) as batch_op:
        batch_op.drop_column("disk_quota_gb")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("disk_quota_gb")
    op.drop_table("image_groups")
    op.drop_index("ix_disks_group_id", table_name="disks")
    op.drop_index("uq_disks_user_image", table_name="disks")
    op.drop_table("disks")
