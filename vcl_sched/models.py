"""The lab database (SPEC §2) as SQLAlchemy 2 models.

The schema is owned by Alembic migrations in ``vcl_sched/migrations``; these models are what the
migrations must produce (a test compares them). Allocation safety does not rest on application
code alone: uniqueness of MACs and addresses is enforced by constraints, and every capacity claim
is a compare-and-swap on ``slaves.generation``.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Names of constraints are fixed so that migrations can refer to them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    pass


Base.metadata.naming_convention = NAMING


class SlaveStatus(enum.StrEnum):
    UP = "up"
    DOWN = "down"
    DRAINING = "draining"


class InstanceState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUSPENDED = "suspended"
    STOPPED = "stopped"
    FAILED = "failed"
    LOST = "lost"


class InstanceKind(enum.StrEnum):
    BE = "BE"  # best effort: may be suspended for a reservation or a higher-priority request
    AR = "AR"  # advance reservation


class UserRole(enum.StrEnum):
    ADMIN = "admin"  # the lab: everything
    TEACHER = "teacher"  # books sessions for the groups they own, manages their members, sees their seats
    STUDENT = "student"  # uses seats of their groups, requests best-effort VMs, sees only their own VMs


class AuthSource(enum.StrEnum):
    LOCAL = "local"  # an Argon2 hash in users.password_hash
    LDAP = "ldap"  # a bind to the college's directory (settings ldap_url, ldap_user_dn)


class ReservationState(enum.StrEnum):
    ACCEPTED = "accepted"
    REFUSED = "refused"
    ACTIVE = "active"
    DONE = "done"
    CANCELLED = "cancelled"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Stored as plain strings with a CHECK constraint: portable, and readable in a SQL shell.
    return Enum(cls, name=name, native_enum=False, values_callable=lambda e: [m.value for m in e],
                validate_strings=True, length=16)


class Group(Base):
    __tablename__ = "groups"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    # Migration 0004: the teacher who owns the group (books its sessions, manages its members); None: admins only.
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    # Migration 0005: GB of persistent disks charged to this group; None: the lab's disk_quota_group_gb.
    disk_quota_gb: Mapped[float | None] = mapped_column(Float, nullable=True)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # How many requests this user made without registering the client as a slave (SPEC §3.4).
    declines: Mapped[int] = mapped_column(Integer, default=0)
    registered_slave: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    # Migration 0004: people (SPEC §7). A user named in a request for the first time is a student without a
    # password: they cannot log in until an admin sets one (or LDAP knows them).
    role: Mapped[UserRole] = mapped_column(_enum(UserRole, "user_role"), default=UserRole.STUDENT,
                                           server_default=UserRole.STUDENT.value)
    auth: Mapped[AuthSource] = mapped_column(_enum(AuthSource, "auth_source"), default=AuthSource.LOCAL,
                                             server_default=AuthSource.LOCAL.value)
    password_hash: Mapped[str | None] = mapped_column(Text, nullable=True)  # Argon2id, never printed or logged
    # Migration 0005: GB of persistent disks this user may keep; None: the lab's disk_quota_user_gb.
    disk_quota_gb: Mapped[float | None] = mapped_column(Float, nullable=True)


class Membership(Base):
    __tablename__ = "memberships"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True)


class Slave(Base):
    __tablename__ = "slaves"
    # Migration 0002: indexes in each placement policy's order, so choosing a slave walks an index
    # and stops at the first that fits (the expressions must match the ORDER BY that claims.order_by
    # derives from placement.POLICIES exactly; tests/db/test_placement_sql.py checks SQLite's plan).
    __table_args__ = (
        CheckConstraint("cores_used >= 0 AND cores_used <= cores_total", name="cores"),
        CheckConstraint("ram_mb_used >= 0 AND ram_mb_used <= ram_mb_total", name="ram"),
        CheckConstraint("disk_gb_used >= 0 AND disk_gb_used <= disk_gb_total", name="disk"),
        Index("ix_slaves_spread", "status", "cores_used", "id"),
        Index("ix_slaves_pack", "status", text("(cores_total - cores_used)"), "id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    address: Mapped[str] = mapped_column(String(45), unique=True)
    cores_total: Mapped[int] = mapped_column(Integer)
    cores_used: Mapped[int] = mapped_column(Integer, default=0)
    ram_mb_total: Mapped[int] = mapped_column(Integer)
    ram_mb_used: Mapped[int] = mapped_column(Integer, default=0)
    disk_gb_total: Mapped[int] = mapped_column(Integer)
    disk_gb_used: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[SlaveStatus] = mapped_column(_enum(SlaveStatus, "slave_status"), default=SlaveStatus.UP)
    # Bumped by every claim and release: a claim is `UPDATE ... WHERE generation = N` (compare-and-swap).
    generation: Mapped[int] = mapped_column(Integer, default=0)
    joined_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    # Migration 0006 (SPEC §9): a client PC its owner lends to the pool. ``lend_state`` is None for the lab's own
    # slaves; ``lent`` while it takes VMs (best-effort ones, and seats whose window ends by ``lend_until``);
    # ``reclaiming`` while its VMs move away (status draining); ``gone`` when it was switched off without notice
    # (status draining: it gets no VM when it answers again, until its owner lends it again).
    lent_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    lend_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    lend_state: Mapped[str | None] = mapped_column(String(16), nullable=True)


class Image(Base):
    __tablename__ = "images"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    disk_file: Mapped[str] = mapped_column(Text)
    kernel: Mapped[str | None] = mapped_column(Text, nullable=True)
    ramdisk: Mapped[str | None] = mapped_column(Text, nullable=True)
    cmdline: Mapped[str | None] = mapped_column(Text, nullable=True)
    default_cores: Mapped[int] = mapped_column(Integer, default=1)
    default_ram_mb: Mapped[int] = mapped_column(Integer, default=512)
    default_disk_gb: Mapped[int] = mapped_column(Integer, default=2)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    # Migration 0004: PfV of requests for this image made by people who are not admins (SPEC §3), set by admins;
    # used within 0..platform_value_max.
    platform_value: Mapped[float] = mapped_column(Float, default=5.0, server_default="5")
    # Migration 0005: who captured it (a teacher may capture new versions of their own images), and the groups it
    # is for (image_groups: none means every group).
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)


class ImageGroup(Base):
    """An image is for these groups only (a captured image, SPEC §10); an image without rows is for every group."""

    __tablename__ = "image_groups"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True)


class Disk(Base):
    """A user's persistent disk of one image (SPEC §10, the seed's PersistentDiskImage): the qcow2 overlay a VM
    left, kept in the master's disk store as ``disk_store/USER_ID/ID-GENERATION.qcow2`` over the image version it
    was made from (``base_*``, which stays in the store while a disk needs it). One disk per user and image.

    A keep is two short transactions around the copy: ``incoming_*`` reserves the new size against the quotas
    while the copy runs (and names the instance); the commit bumps ``generation`` (a new file: the previous
    generation stays whole until the new one is checked and recorded)."""

    __tablename__ = "disks"
    __table_args__ = (Index("uq_disks_user_image", "user_id", "image_id", unique=True),
                      Index("ix_disks_group_id", "group_id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"))  # the group its usage is charged to
    base_file: Mapped[str] = mapped_column(Text)
    base_kernel: Mapped[str | None] = mapped_column(Text, nullable=True)
    base_ramdisk: Mapped[str | None] = mapped_column(Text, nullable=True)
    base_cmdline: Mapped[str | None] = mapped_column(Text, nullable=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)  # 0: no file yet (the first keep is running)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    incoming_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    incoming_instance: Mapped[int | None] = mapped_column(Integer, nullable=True)
    incoming_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class Series(Base):
    """A weekly session (SPEC §4): the reservations with this ``series_id`` are its occurrences, each admitted
    by the same rules as a single booking."""

    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    weekdays: Mapped[str] = mapped_column(String(32))  # "mon,wed"
    weeks: Mapped[int] = mapped_column(Integer)
    first_start: Mapped[datetime] = mapped_column(DateTime)
    hours: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Reservation(Base):
    __tablename__ = "reservations"
    __table_args__ = (Index("ix_reservations_state_start", "state", "start"),
                      Index("ix_reservations_series_id", "series_id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"), nullable=True)
    seats: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # N seats of (cores, RAM)
    cores: Mapped[int] = mapped_column(Integer)  # per seat
    ram_mb: Mapped[int] = mapped_column(Integer)  # per seat
    requested_start: Mapped[datetime] = mapped_column(DateTime)
    start: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    end: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    hours: Mapped[float] = mapped_column(Float)
    platform_value: Mapped[float] = mapped_column(Float)
    register_as_slave: Mapped[int] = mapped_column(Integer)
    member: Mapped[int] = mapped_column(Integer)
    priority: Mapped[float] = mapped_column(Float)
    rescheduled: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[ReservationState] = mapped_column(_enum(ReservationState, "reservation_state"))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    # Migration 0004: every seat is started ``prelaunch_lead_minutes`` before the window opens (1), or when a
    # member takes it (0); an occurrence of a weekly series.
    prelaunch: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # Migration 0005: every seat keeps its holder's disk (and starts from it).
    keep_disks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    series_id: Mapped[int | None] = mapped_column(ForeignKey("series.id"), nullable=True)


# A live seat is an AR instance that is pending, running or suspended. One member holds at most one live seat of a
# reservation, and a seat number is live at most once: the database refuses a second, whatever the code does.
LIVE_SEAT = text("state IN ('pending', 'running', 'suspended') AND reservation_id IS NOT NULL")
# A user's disk of an image is used by one live VM at a time.
LIVE_KEEP = text("state IN ('pending', 'running', 'suspended') AND keep_disk = 1 AND user_id IS NOT NULL")


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (Index("ix_instances_state", "state"), Index("ix_instances_reservation_id", "reservation_id"),
                      Index("uq_instances_live_seat", "reservation_id", "seat", unique=True,
                            sqlite_where=LIVE_SEAT, postgresql_where=LIVE_SEAT),
                      Index("uq_instances_seat_holder", "reservation_id", "user_id", unique=True,
                            sqlite_where=text(f"{LIVE_SEAT.text} AND user_id IS NOT NULL"),
                            postgresql_where=text(f"{LIVE_SEAT.text} AND user_id IS NOT NULL")),
                      Index("uq_instances_live_keep", "user_id", "image_id", unique=True,
                            sqlite_where=LIVE_KEEP, postgresql_where=LIVE_KEEP))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"), nullable=True)
    slave_id: Mapped[int | None] = mapped_column(ForeignKey("slaves.id"), nullable=True)
    reservation_id: Mapped[int | None] = mapped_column(ForeignKey("reservations.id"), nullable=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    cores: Mapped[int] = mapped_column(Integer)
    ram_mb: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer)
    mac: Mapped[str | None] = mapped_column(String(17), nullable=True)
    private_ip: Mapped[str | None] = mapped_column(String(45), nullable=True)
    public_ip: Mapped[str | None] = mapped_column(String(45), nullable=True)
    console_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    state: Mapped[InstanceState] = mapped_column(_enum(InstanceState, "instance_state"))
    kind: Mapped[InstanceKind] = mapped_column(_enum(InstanceKind, "instance_kind"))
    priority: Mapped[float] = mapped_column(Float)
    register_as_slave: Mapped[int] = mapped_column(Integer, default=0)
    seat: Mapped[int | None] = mapped_column(Integer, nullable=True)  # AR: which seat of its reservation
    hours: Mapped[int | None] = mapped_column(Integer, nullable=True)  # BE: asked for; the end is fixed at launch
    # A request put back in the queue after its slave died: its first instance (its place in the queue).
    requeued_from: Mapped[int | None] = mapped_column(Integer, nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)  # a launch in progress
    lease_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    ends_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    # Migration 0005: keep the VM's disk when it stops (1), and start from the user's kept disk of its image; the
    # image files it was launched from (JSON: disk_file, kernel, ramdisk, cmdline), what its overlay is backed by.
    keep_disk: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    launched_from: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Migration 0006 (SPEC §9): a served request with register_as_slave=1 owes its user's PC to the pool: None
    # until the user is asked, then ``lent``, ``declined`` or ``unreachable``. ``moving_to``: the slave whose room
    # a move off a reclaimed PC holds (the instance stays on its slave until the move is recorded).
    lend_answer: Mapped[str | None] = mapped_column(String(16), nullable=True)
    moving_to: Mapped[int | None] = mapped_column(Integer, nullable=True)
    moving_hold: Mapped[str | None] = mapped_column(String(8), nullable=True)  # "run": cores, RAM, disk; "disk"


class AddressPair(Base):
    """One (public IP, private IP) pair from the configured pools; taken by at most one instance.

    Allocation is `UPDATE ... SET instance_id = :i WHERE id = :id AND instance_id IS NULL`; the unique
    constraints on instance_id and mac make a double allocation impossible even if code were wrong.
    """

    __tablename__ = "address_pairs"
    __table_args__ = (Index("ix_address_pairs_free", "instance_id", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    private_ip: Mapped[str] = mapped_column(String(45), unique=True)
    public_ip: Mapped[str] = mapped_column(String(45), unique=True)
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("instances.id"), nullable=True, unique=True)
    mac: Mapped[str | None] = mapped_column(String(17), nullable=True, unique=True)
    # Given back while the master may still carry that instance's DHCP host, alias and DNAT chain: the pair
    # is free only once they are confirmed gone (lifecycle.net_gone).
    stale_instance: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)


class Setting(Base):
    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)  # JSON


class Lock(Base):
    """Named rows that PostgreSQL transactions lock `FOR UPDATE` to serialise a whole decision
    (calendar admission, address pool rewrite). SQLite gets the same from `BEGIN IMMEDIATE`."""

    __tablename__ = "locks"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)


class AuditLog(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_object", "object_type", "object_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime)
    actor: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(32))
    before: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON of the changed fields
    after: Mapped[str | None] = mapped_column(Text, nullable=True)


LOCK_NAMES = ("calendar", "addresses", "disks", "lending")
