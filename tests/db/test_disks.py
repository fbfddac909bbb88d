"""Persistent disks, quotas and captured images (issue 16, SPEC §10) on SQLite and PostgreSQL: a VM that keeps its
disk starts the user's next launch of the image from it (over the image version it was made from, even once the
image moved on); keeps are checked against the user's and the group's quotas in the same transaction that reserves
the size, one VM at a time uses a disk, a failed keep gives everything back, and who may do what (SPEC §7)."""

from __future__ import annotations

import contextlib
import json
import threading

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import func, select

from vcl_sched import acting, db, disks, lifecycle, people, service
from vcl_sched.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from vcl_sched.models import AuditLog, Disk, Image, Instance

MB = 1024 ** 2
GB = 1024 ** 3
V1 = "/var/lib/vcl/images/lab/v1/disk.qcow2"
V2 = "/var/lib/vcl/images/lab/v2/disk.qcow2"
SHA = "a" * 64


@pytest.fixture
def school(db_url):
    """Two slaves, teacher tina owning cs101 (students ann, bob), teacher tom owning ma201 (student eve), image lab
    (v1, with a kernel and an initrd beside its disk) and image other."""
    return _school(db_url)


def _school(db_url):
    service.configure({"private_pool": "10.77.1.16-10.77.1.45", "public_pool": "10.77.0.160-10.77.0.200",
                       "decline_limit": "1000"}, db_url)
    service.add_slave("s1", "10.77.0.21", 8, 16384, 100, url=db_url)
    service.add_slave("s2", "10.77.0.22", 4, 8192, 100, url=db_url)
    for name, role in (("tina", "teacher"), ("tom", "teacher"), ("ann", "student"), ("bob", "student"),
                       ("eve", "student")):
        people.add_user(name, role=role, url=db_url)
    people.add_group("cs101", owner="tina", url=db_url)
    people.add_group("ma201", owner="tom", url=db_url)
    people.add_members("cs101", ["ann", "bob"], url=db_url)
    people.add_members("ma201", ["eve"], url=db_url)
    service.add_image("lab", V1, kernel="/var/lib/vcl/images/lab/v1/vmlinux",
                      ramdisk="/var/lib/vcl/images/lab/v1/initrd.img", cmdline="console=ttyS0", url=db_url)
    service.add_image("other", "/var/lib/vcl/images/other/disk.qcow2", url=db_url)
    return db_url


def as_(name, url):
    return acting.acting(people.actor_for(name, url))


def info(base=V1, **over):
    return {"format": "qcow2", "virtual-size": 64 * MB, "backing-filename": base, "full-backing-filename": base,
            "backing-filename-format": "qcow2", "format-specific": {"type": "qcow2", "data": {}}, **over}


def launch(url, user="ann", image="lab", keep=True, owner="cs101"):
    """A best-effort VM of ``user`` that keeps its disk, placed and running; returns (id, launch spec)."""
    with as_(user, url):
        answer = service.request(owner=owner, cores=1, ram_mb=256, hours=1, image=image, keep_disk=keep, url=url)
    assert answer["decision"] == "place", answer
    spec = lifecycle.place(answer["id"], url=url)
    lifecycle.mark_running(answer["id"], url=url)
    return answer["id"], spec


def keep(url, iid, size, sha=SHA, base=V1):
    begun = disks.keep_begin(iid, size, url)
    return begun, disks.keep_commit(iid, begun["disk"], size, sha, info(base), url)


def counts(url):
    with db.read(url) as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in (Disk, Image, AuditLog))


def test_a_kept_disk_starts_the_next_launch_over_the_version_it_was_made_from(school):
    iid, spec = launch(school)
    assert spec["keep_disk"] and spec["kept_disk"] is None and spec["image_disk"] == V1
    assert lifecycle.describe(iid, school)["keep_disk"] is True  # what stop.yml reads to keep the disk
    begun, committed = keep(school, iid, 5 * MB)
    assert begun["incoming"].endswith(f"/{begun['disk']}.incoming") and begun["previous"] is None
    assert committed["generation"] == 1 and committed["path"] == begun["path"] and committed["remove"] is None
    assert committed["path"].startswith("/var/lib/vcl/disks/")
    assert committed["path"].endswith(f"/{begun['disk']}-1.qcow2")
    lifecycle.stop(iid, url=school)
    # The image moves on to v2; the disk stays on v1 (its base stays in the store while a disk needs it).
    service.ensure_image("lab", V2, kernel="/var/lib/vcl/images/lab/v2/vmlinux", url=school)
    iid2, spec2 = launch(school)
    assert spec2["kept_disk"] == {"id": begun["disk"], "path": committed["path"], "sha256": SHA,
                                  "size_bytes": 5 * MB, "generation": 1}
    assert spec2["image_disk"] == V1 and spec2["image_kernel"] == "/var/lib/vcl/images/lab/v1/vmlinux"
    assert spec2["image_ramdisk"] == "/var/lib/vcl/images/lab/v1/initrd.img"
    assert spec2["image_cmdline"] == "console=ttyS0"
    # Kept again: generation 2 replaces 1 (whose file the stop removes), still over v1.
    begun2, committed2 = keep(school, iid2, 6 * MB, sha="b" * 64)
    assert begun2["previous"] == committed["path"] and committed2["remove"] == committed["path"]
    assert committed2["generation"] == 2 and committed2["base_file"] == V1
    # A VM that does not keep its disk starts from the image's current version.
    lifecycle.stop(iid2, url=school)
    _, spec3 = launch(school, keep=False)
    assert spec3["kept_disk"] is None and spec3["image_disk"] == V2 and not spec3["keep_disk"]


def test_one_vm_at_a_time_uses_a_users_disk_of_an_image(school):
    iid, _ = launch(school)
    before = counts(school)
    with as_("ann", school), pytest.raises(ConflictError, match=rf"^keep_disk: instance {iid} already keeps"):
        service.request(owner="cs101", cores=1, ram_mb=256, hours=1, image="lab", keep_disk=True, url=school)
    assert counts(school) == before
    other, _ = launch(school, keep=False)
    with as_("ann", school), pytest.raises(ConflictError, match=rf"instance {iid} already keeps"):
        disks.set_keep(other, True, school)
    launch(school, image="other")  # another image: another disk
    launch(school, user="bob")  # another user
    with pytest.raises(ValidationError, match=r"^keep_disk: a disk is kept per user and image"):
        service.request(owner="cs101", cores=1, ram_mb=256, hours=1, keep_disk=True, url=school)


def test_quotas_of_the_user_and_the_group_are_checked_before_a_keep_and_deleting_frees_them(school):
    service.configure({"disk_quota_user_gb": "0.01", "disk_quota_group_gb": "0.015"}, school)  # ~10 MB, ~15 MB
    iid, _ = launch(school)
    before = counts(school)
    with pytest.raises(ValidationError, match=r"^quota: user ann would keep 0\.02 GB of disks, over the quota of"
                                              r" 0\.01 GB"):
        disks.keep_begin(iid, 20 * MB, school)
    assert counts(school) == before  # nothing written, not even the disk's row
    begun, _ = keep(school, iid, 8 * MB)
    lifecycle.stop(iid, url=school)
    bob, _ = launch(school, user="bob")
    with pytest.raises(ValidationError, match=r"^quota: group cs101 would keep"):
        disks.keep_begin(bob, 8 * MB, school)  # 8 + 8 MB > 15 MB for the group, 8 MB < 10 MB for bob
    disks.set_quota("1", group="cs101", url=school)
    keep(school, bob, 8 * MB)
    use = disks.usage(url=school)
    assert [(u["user"], u["used_bytes"], u["disks"]) for u in use["users"]] == [("ann", 8 * MB, 1), ("bob", 8 * MB, 1)]
    assert [(g["group"], g["used_bytes"], g["quota_gb"], g["own_quota"]) for g in use["groups"]] == [
        ("cs101", 16 * MB, 1.0, True)]
    with as_("ann", school):
        mine = disks.usage(url=school)
        assert [u["user"] for u in mine["users"]] == ["ann"] and mine["groups"] == []
        with pytest.raises(ForbiddenError, match=r"^user: ann may see only their own"):
            disks.usage(user="bob", url=school)
        deleted = disks.delete_disk(begun["disk"], school)
    assert deleted["deleted"] and set(deleted["files"]) == {deleted["path"], deleted["path"].rsplit("/", 1)[0]
                                                            + f"/{begun['disk']}.incoming"}
    assert disks.usage(user="ann", url=school)["users"][0]["used_bytes"] == 0


def test_a_keep_whose_run_died_gives_its_reservation_back_when_its_lease_ends(school, monkeypatch):
    """The run that began a keep died (the controller killed between the two transactions): the reserved size
    counts against the quotas while the keep's lease lasts, then no more; the next stop keeps the disk."""
    service.configure({"disk_quota_user_gb": "0.01"}, school)  # ~10 MB
    iid, _ = launch(school)
    other, _ = launch(school, image="other")
    begun = disks.keep_begin(iid, 8 * MB, school)  # ... and nothing more: the run is gone
    with pytest.raises(ValidationError, match=r"^quota: user ann"):
        disks.keep_begin(other, 4 * MB, school)
    with pytest.raises(ConflictError, match=rf"^disk: {begun['disk']} is in use by instance {iid}"):
        disks.delete_disk(begun["disk"], school)
    monkeypatch.setenv("VCL_NOW", "2026-11-22 12:01")  # the lease (2 hours) has ended
    assert disks.usage(user="ann", url=school)["users"][0]["used_bytes"] == 0
    disks.keep_begin(other, 4 * MB, school)
    assert disks.keep_begin(iid, 5 * MB, school)["disk"] == begun["disk"]  # the next stop keeps it (4 + 5 MB)


def test_a_vm_launched_before_its_image_files_were_recorded_cannot_start_keeping(school):
    iid, _ = launch(school, keep=False)
    with db.engine(school).begin() as conn:
        conn.exec_driver_sql("UPDATE instances SET launched_from = NULL")
    with pytest.raises(ConflictError, match=rf"^id: instance {iid} was launched before VCL recorded"):
        disks.set_keep(iid, True, school)


def test_a_failed_keep_gives_everything_back(school):
    iid, _ = launch(school)
    begun = disks.keep_begin(iid, 3 * MB, school)
    assert disks.usage(url=school)["users"][0]["used_bytes"] == 3 * MB  # reserved while the copy runs
    assert disks.keep_abort(iid, begun["disk"], school)["forgotten"]  # its first keep: the disk never existed
    assert disks.list_disks(url=school) == [] and disks.usage(url=school)["users"] == []
    _, first = keep(school, iid, 3 * MB)
    begun = disks.keep_begin(iid, 9 * MB, school)
    with pytest.raises(ValidationError, match=r"^info: the disk is backed by '/etc/shadow'"):
        disks.keep_commit(iid, begun["disk"], 9 * MB, "c" * 64, info(base="/etc/shadow"), school)
    row = disks.keep_abort(iid, begun["disk"], school)
    assert row["changed"] and not row["forgotten"]
    [disk] = disks.list_disks(url=school)
    assert (disk["generation"], disk["size_bytes"], disk["sha256"], disk["keeping"]) == (1, 3 * MB, SHA, None)
    assert disk["path"] == first["path"]
    assert not disks.keep_abort(iid, begun["disk"], school)["changed"]  # again: nothing left to give back


@pytest.mark.parametrize(("bad", "message"), [
    ({"format": "raw"}, "is 'raw', not qcow2"),
    ({"backing-filename": "json:{\"file.filename\":\"/etc/shadow\"}"}, "is backed by"),
    ({"full-backing-filename": "/root/x"}, "is backed by '/root/x'"),
    ({"backing-filename-format": "raw"}, "backing file format is not qcow2"),
    ({"format-specific": {"type": "qcow2", "data": {"data-file": "/dev/sda"}}}, "external data file"),
    ({"virtual-size": 0}, "no virtual size"),
])
def test_a_copy_that_is_not_a_qcow2_over_its_base_alone_is_never_kept(school, bad, message):
    iid, _ = launch(school)
    begun = disks.keep_begin(iid, MB, school)
    before = counts(school)
    with pytest.raises(ValidationError, match=rf"^info: .*{message.replace('(', '.').replace(')', '.')}"):
        disks.keep_commit(iid, begun["disk"], MB, SHA, info(**bad), school)
    assert counts(school) == before


def test_who_may_see_delete_keep_and_capture_disks(school):
    ann, _ = launch(school)
    keep(school, ann, MB)
    lifecycle.stop(ann, url=school)
    [disk] = disks.list_disks(url=school)
    with as_("bob", school):
        assert disks.list_disks(url=school) == []
        with pytest.raises(ForbiddenError, match=rf"^disk: {disk['id']} is not a disk of bob"):
            disks.delete_disk(disk["id"], school)
        with pytest.raises(ForbiddenError, match=r"^disk: bob may not capture"):
            disks.capture_begin(disk["id"], "mine", url=school)
    with as_("tom", school):
        assert disks.list_disks(url=school) == []
        with pytest.raises(ForbiddenError):
            disks.capture_commit(disk["id"], "mine", "/var/lib/vcl/images/mine/v1/disk.qcow2", url=school)
    with as_("tina", school):
        assert [d["id"] for d in disks.list_disks(url=school)] == [disk["id"]]
    with as_("ann", school), pytest.raises(ForbiddenError, match=r"^quota: only the lab's admins"):
        disks.set_quota(5, user="ann", url=school)
    with pytest.raises(NotFoundError, match=r"^disk: no disk 999"):
        disks.delete_disk(999, school)


def test_a_teachers_capture_is_a_new_image_for_their_group_and_a_disk_in_use_is_never_captured(school):
    ann, _ = launch(school)
    keep(school, ann, MB)
    [disk] = disks.list_disks(url=school)
    with as_("tina", school), pytest.raises(ConflictError, match=rf"^disk: {disk['id']} is in use"):
        disks.capture_begin(disk["id"], "week3", url=school)
    lifecycle.stop(ann, url=school)
    with as_("tina", school):
        where = disks.capture_begin(disk["id"], "week3", taken=["v1", "v3", "x7"], url=school)
        assert where["dir"] == "/var/lib/vcl/images/week3/v4" and where["source"] == disk["path"]
        assert where["files"] == {"disk_file": "/var/lib/vcl/images/week3/v4/disk.qcow2",
                                  "kernel": "/var/lib/vcl/images/week3/v4/vmlinux",
                                  "ramdisk": "/var/lib/vcl/images/week3/v4/initrd.img"}
        assert where["beside"] == {"/var/lib/vcl/images/week3/v4/vmlinux": "/var/lib/vcl/images/lab/v1/vmlinux",
                                 "/var/lib/vcl/images/week3/v4/initrd.img": "/var/lib/vcl/images/lab/v1/initrd.img"}
        with pytest.raises(ForbiddenError, match=r"^groups: tina does not own group ma201"):
            disks.capture_commit(disk["id"], "week3", where["files"]["disk_file"], groups="ma201", url=school)
        image = disks.capture_commit(disk["id"], "week3", where["files"]["disk_file"],
                                     kernel=where["files"]["kernel"], ramdisk=where["files"]["ramdisk"], ram_mb=128,
                                     url=school)
        assert image["groups"] == ["cs101"] and image["ram_mb"] == 128 and image["cmdline"] == "console=ttyS0"
        with pytest.raises(ForbiddenError, match=r"^image: lab exists and is not tina's"):
            disks.capture_begin(disk["id"], "lab", url=school)
        again = disks.capture_begin(disk["id"], "week3", taken=["v4"], url=school)  # her own image: a new version
        assert again["dir"] == "/var/lib/vcl/images/week3/v5"
    with as_("eve", school), pytest.raises(ForbiddenError, match=r"^image: week3 is not for group ma201"):
        service.request(owner="ma201", cores=1, ram_mb=128, hours=1, image="week3", url=school)
    with as_("bob", school):
        assert service.request(owner="cs101", cores=1, ram_mb=128, hours=1, image="week3",
                               url=school)["decision"] == "place"
    with as_("tom", school), pytest.raises(ForbiddenError, match=r"^image: week3 is not for group ma201"):
        service.reserve(owner="ma201", cores=1, ram_mb=128, hours=1, start="2026-11-30 10:00", image="week3",
                        url=school)


def test_a_session_that_keeps_disks_gives_every_seat_its_holders_disk(school, monkeypatch):
    with as_("tina", school):
        res = service.reserve(owner="cs101", cores=1, ram_mb=256, hours=2, start="2026-11-30 10:00", seats=2,
                              image="lab", keep_disks=True, url=school)
        assert res["state"] == "accepted" and res["keep_disks"]
        with pytest.raises(ValidationError, match=r"^keep_disks: a session keeps its seats' disks of an image"):
            service.reserve(owner="cs101", cores=1, ram_mb=256, hours=2, start="2026-11-30 10:00", keep_disks=True,
                            url=school)
    monkeypatch.setenv("VCL_NOW", "2026-11-30 09:50")
    [started] = lifecycle.start_due_reservations(url=school)
    with db.read(school) as s:
        rows = s.execute(select(Instance.keep_disk, Instance.user_id).where(
            Instance.id.in_(started["ids"]))).all()
    assert sorted(k for k, _ in rows) == [1, 1] and all(u is not None for _, u in rows)


def test_capture_and_keep_inputs_are_refused_naming_the_field(school):
    iid, _ = launch(school)
    before = counts(school)
    for call, field in ((lambda: disks.keep_begin(iid, -1, school), "size_bytes"),
                        (lambda: disks.keep_begin("x", 1, school), "id"),
                        (lambda: disks.keep_commit(iid, 1, 1, "NOTHEX", info(), school), "sha256"),
                        (lambda: disks.capture_begin(1, "../etc", url=school), "image"),
                        (lambda: disks.capture_begin(1, "ok", taken="v1", url=school), "taken"),
                        (lambda: disks.set_quota(-1, user="ann", url=school), "gb"),
                        (lambda: disks.set_quota(1, url=school), "user"),
                        (lambda: disks.set_keep(iid, "maybe", school), "keep")):
        with pytest.raises((ValidationError, NotFoundError)) as err:
            call()
        assert str(err.value).startswith(f"{field}: ")
    with pytest.raises(ValidationError, match=r"^disk_store: '/var/lib/vcl/images/d' must lie outside the image store"):
        service.configure({"disk_store": "/var/lib/vcl/images/d"}, school)
    assert counts(school) == before


def test_two_keeps_racing_for_one_quota_never_both_pass(school):
    """ann keeps the disks of two images at once; each fits her quota alone, not both: exactly one is reserved,
    whatever the interleaving (the `disks` lock on PostgreSQL, BEGIN IMMEDIATE on SQLite)."""
    service.configure({"disk_quota_user_gb": "0.01"}, school)  # ~10 MB
    a, _ = launch(school)
    b, _ = launch(school, image="other")
    outcomes, barrier = [], threading.Barrier(2)

    def go(iid):
        barrier.wait()
        try:
            disks.keep_begin(iid, 6 * MB, school)
            outcomes.append("ok")
        except ValidationError as err:
            outcomes.append(err.field)

    threads = [threading.Thread(target=go, args=(i,)) for i in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok", "quota"]
    assert disks.usage(url=school)["users"][0]["used_bytes"] == 6 * MB


class QuotaMachine(RuleBasedStateMachine):
    """Keeps begun, committed and aborted, disks deleted and VMs stopped in any order, by two users of one group:
    a user's (and the group's) usage never passes its quota (quotas are not lowered here), every disk's file is
    its generation's, and nothing is reserved once every keep has ended."""

    directory = None
    runs = 0

    def __init__(self):
        super().__init__()
        QuotaMachine.runs += 1
        self.url = _school_db(f"sqlite:///{self.directory}/machine-{self.runs}.sqlite")
        self.live: dict[int, str] = {}  # instance -> user
        self.begun: dict[int, int] = {}  # instance -> disk

    @rule(user=st.sampled_from(["ann", "bob"]), image=st.sampled_from(["lab", "other"]))
    def start(self, user, image):
        try:
            iid, _ = launch(self.url, user=user, image=image)
        except ConflictError:
            return
        self.live[iid] = user

    @precondition(lambda self: self.live)
    @rule(data=st.data(), size=st.integers(0, 12))
    def begin(self, data, size):
        iid = data.draw(st.sampled_from(sorted(self.live)))
        try:
            self.begun[iid] = disks.keep_begin(iid, size * MB, self.url)["disk"]
        except ValidationError as err:
            assert err.field == "quota"

    @precondition(lambda self: self.begun)
    @rule(data=st.data(), size=st.integers(0, 12), ok=st.booleans())
    def end(self, data, size, ok):
        iid = data.draw(st.sampled_from(sorted(self.begun)))
        disk = self.begun.pop(iid)
        if ok:
            with db.read(self.url) as s:
                reserved = s.get(Disk, disk).incoming_bytes
            disks.keep_commit(iid, disk, min(size * MB, reserved), SHA, info(base=_base_of(self.url, disk)),
                              self.url)
        else:
            disks.keep_abort(iid, disk, self.url)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def stop(self, data):
        iid = data.draw(st.sampled_from(sorted(self.live)))
        if iid in self.begun:
            disks.keep_abort(iid, self.begun.pop(iid), self.url)
        lifecycle.stop(iid, url=self.url)
        del self.live[iid]

    @rule(data=st.data())
    def delete(self, data):
        ids = [d["id"] for d in disks.list_disks(url=self.url)]
        if not ids:
            return
        with contextlib.suppress(ConflictError):
            disks.delete_disk(data.draw(st.sampled_from(ids)), self.url)

    @invariant()
    def within_quotas(self):
        use = disks.usage(url=self.url)
        for row in use["users"] + use["groups"]:
            assert row["used_bytes"] <= row["quota_gb"] * GB, row
        with db.read(self.url) as s:
            for d in s.scalars(select(Disk)):
                assert (d.generation == 0) == (d.sha256 is None)
                assert (d.incoming_instance is None) == (d.incoming_bytes is None)
                assert d.incoming_instance is None or d.incoming_instance in self.begun
            assert s.scalar(select(func.count()).select_from(Instance).where(
                Instance.keep_disk == 1, Instance.state == "running")) == len(self.live)


def _school_db(url):
    service.init(url)
    _school(url)
    service.configure({"disk_quota_user_gb": "0.02", "disk_quota_group_gb": "0.03"}, url)
    return url


def _base_of(url, disk_id):
    with db.read(url) as s:
        return s.get(Disk, disk_id).base_file


def test_quotas_hold_whatever_the_order_of_keeps_stops_and_deletes(tmp_path, monkeypatch):
    """On SQLite, a fresh database for every example (the concurrent cases are the racing test's, on both)."""
    monkeypatch.setenv("VCL_NOW", "2026-11-22 10:00")
    QuotaMachine.directory = tmp_path
    run = QuotaMachine.TestCase
    run.settings = settings(max_examples=25, stateful_step_count=20, deadline=None,
                            suppress_health_check=list(HealthCheck))
    run().runTest()


def test_the_keep_writes_its_audit_rows(school):
    iid, _ = launch(school)
    begun, _ = keep(school, iid, MB)
    with db.read(school) as s:
        rows = s.execute(select(AuditLog.action, AuditLog.after).where(AuditLog.object_type == "disk",
                                                                       AuditLog.object_id == begun["disk"])
                         .order_by(AuditLog.id)).all()
    assert [a for a, _ in rows] == ["create", "keep"]
    assert json.loads(rows[1][1])["instance"] == iid
