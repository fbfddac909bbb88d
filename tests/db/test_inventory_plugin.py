"""The vcl_slaves inventory plugin, run as admins run it: the real `ansible-inventory` (and `ansible`)
from the project directory, so ansible.cfg's collections path finds vcl.lab, against real SQLite and
PostgreSQL databases."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from vcl_sched import config, db, service
from vcl_sched.inventory import fetch_slaves, plain

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
BE = {"owner": "cs", "platform_value": 5, "register_as_slave": 1, "member": 1, "explain": False}


def run(argv, env=None, drop=()):
    environ = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true", **(env or {})}
    for name in drop:
        environ.pop(name, None)
    return subprocess.run(
        [str(a) for a in argv], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=600, check=False
    )


def listing(source, *args, env=None, drop=()):
    """`ansible-inventory -i SOURCE --list` as JSON (it must succeed)."""
    proc = run([BIN / "ansible-inventory", "-i", source, "--list", *args], env, drop)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def failure(source, env=None, drop=()):
    """The plugin's message when `ansible-inventory` fails on SOURCE."""
    proc = run([BIN / "ansible-inventory", "-i", source, "--list"], env, drop)
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "with 'auto' plugin:" in line]
    assert lines, proc.stderr
    return lines[0].split("with 'auto' plugin: ", 1)[1]


def groups_of(data):
    return {name: sorted(body.get("hosts", [])) for name, body in data.items() if name != "_meta"}


def write_config(directory: Path, body: str, name: str = "vcl_slaves.yml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(body)
    return path


def add_slaves(url):
    """To lab_db's s1 and s2 (up): s3 down, s2 draining, a VM on s1."""
    service.add_slave("s3", "10.77.0.23", 16, 32768, 500, status="down", url=url)
    service.set_slave_status("s2", "draining", url)
    assert service.request(cores=3, ram_mb=1024, disk_gb=7, hours=1, **BE, url=url)["slave"] == "s1"
    return url


@pytest.fixture
def slaves_db(lab_db):
    """The lab on SQLite and on PostgreSQL: s1 up with a VM on it, s2 draining, s3 down."""
    return add_slaves(lab_db)


@pytest.fixture
def sqlite_db(tmp_path, monkeypatch):
    """The same lab on SQLite only: most of the plugin does not depend on the backend, and each
    `ansible-inventory` run costs seconds."""
    url = f"sqlite:///{tmp_path}/vcl.sqlite"
    for name, value in (("VCL_DB_URL", url), ("VCL_NOW", "2026-11-22 10:00"), ("VCL_ACTOR", "pytest")):
        monkeypatch.setenv(name, value)
    service.init(url)
    service.configure({"private_pool": "10.77.1.16-10.77.1.30", "public_pool": "10.77.0.160-10.77.0.200"}, url)
    service.add_group("cs", url=url)
    service.add_slave("s1", "10.77.0.21", 8, 16384, 100, url=url)
    service.add_slave("s2", "10.77.0.22", 4, 8192, 100, url=url)
    return add_slaves(url)


def test_groups_and_hostvars(slaves_db, tmp_path):
    source = write_config(tmp_path / "inv", f"plugin: vcl.lab.vcl_slaves\ndb_url: {slaves_db}\n")
    data = listing(source)
    groups = groups_of(data)
    assert groups["vcl_registered"] == ["s1", "s2", "s3"]
    assert (groups["vcl_status_up"], groups["vcl_status_draining"], groups["vcl_status_down"]) == (
        ["s1"],
        ["s2"],
        ["s3"],
    )
    hostvars = data["_meta"]["hostvars"]
    assert plain(hostvars) == {s["name"]: s["vars"] for s in fetch_slaves(slaves_db)}
    s1 = plain(hostvars["s1"])
    assert s1["ansible_host"] == "10.77.0.21" and s1["vcl_status"] == "up"
    assert (s1["vcl_cores_total"], s1["vcl_cores_used"], s1["vcl_cores_free"]) == (8, 3, 5)
    assert (s1["vcl_ram_mb_used"], s1["vcl_disk_gb_free"]) == (1024, 93)
    assert s1["vcl_joined_at"] == "2026-11-22T10:00:00"
    # Strings from the database are data: ansible marks them as never to be templated.
    assert hostvars["s1"]["ansible_host"] == {"__ansible_unsafe": "10.77.0.21"}


def test_status_groups_exist_even_when_empty(sqlite_db, tmp_path):
    service.set_slave_status("s2", "up", sqlite_db)
    service.set_slave_status("s3", "up", sqlite_db)
    source = write_config(tmp_path / "inv", f"plugin: vcl.lab.vcl_slaves\ndb_url: {sqlite_db}\n")
    data = listing(source)
    assert {"vcl_registered", "vcl_status_up", "vcl_status_down", "vcl_status_draining"} <= set(data["all"]["children"])
    assert groups_of(data)["vcl_status_up"] == ["s1", "s2", "s3"]
    assert not data.get("vcl_status_down", {}).get("hosts")


def test_db_url_comes_from_vcl_db_url_when_the_config_has_none(slaves_db, tmp_path):
    # The db_url fixture exported VCL_DB_URL=slaves_db.
    assert os.environ["VCL_DB_URL"] == slaves_db
    source = write_config(tmp_path / "inv", "plugin: vcl.lab.vcl_slaves\n", name="lab.vcl_slaves.yaml")
    assert groups_of(listing(source))["vcl_registered"] == ["s1", "s2", "s3"]


def test_without_db_url_or_vcl_db_url_the_vcl_default_is_used(tmp_path):
    source = write_config(tmp_path / "inv", "plugin: vcl.lab.vcl_slaves\n")
    default = config.default_db_url()
    path = default.removeprefix("sqlite:///")
    if Path(path).exists():  # a lab on this machine: the plugin reads it
        names = [s["name"] for s in fetch_slaves(default)]
        assert groups_of(listing(source, drop=["VCL_DB_URL"])).get("vcl_registered", []) == names
    else:
        assert (
            failure(source, drop=["VCL_DB_URL"]) == f"{source}: db_url: no lab database at {path} (run `vcl db init`,"
            " or set db_url or VCL_DB_URL to the lab's database)"
        )
        assert not Path(path).exists()


def test_compose_groups_and_keyed_groups(sqlite_db, tmp_path):
    source = write_config(
        tmp_path / "inv",
        f"""plugin: vcl.lab.vcl_slaves
db_url: {sqlite_db}
compose:
  vcl_ram_gb_free: vcl_ram_mb_free // 1024
  vcl_label: inventory_hostname ~ '@' ~ ansible_host
groups:
  vcl_has_room: vcl_status == 'up' and vcl_cores_free >= 4
  vcl_big: vcl_cores_total >= 16
keyed_groups:
  - key: vcl_status
    prefix: state
  - key: vcl_cores_total | string
    prefix: cores
    parent_group: vcl_by_cores
""",
    )
    data = listing(source)
    groups = groups_of(data)
    assert groups["vcl_has_room"] == ["s1"]  # 5 free cores, up; s3 has 16 free but is down
    assert groups["vcl_big"] == ["s3"]
    assert (groups["state_up"], groups["state_draining"], groups["state_down"]) == (["s1"], ["s2"], ["s3"])
    assert (groups["cores_8"], groups["cores_4"], groups["cores_16"]) == (["s1"], ["s2"], ["s3"])
    assert sorted(data["vcl_by_cores"]["children"]) == ["cores_16", "cores_4", "cores_8"]
    s1 = plain(data["_meta"]["hostvars"]["s1"])
    assert s1["vcl_ram_gb_free"] == (16384 - 1024) // 1024
    assert s1["vcl_label"] == "s1@10.77.0.21"
    assert groups["vcl_status_up"] == ["s1"]  # the plugin's own groups are still there


def test_strict_false_skips_a_failing_expression_and_strict_true_fails(sqlite_db, tmp_path):
    body = f"""plugin: vcl.lab.vcl_slaves
db_url: {sqlite_db}
compose:
  vcl_rack: rack_of_slave.name
groups:
  vcl_in_rack: rack_of_slave is defined and rack_of_slave.name == 'a'
"""
    source = write_config(tmp_path / "lenient", body + "strict: false\n")
    data = listing(source)
    assert "vcl_rack" not in plain(data["_meta"]["hostvars"]["s1"])
    assert groups_of(data).get("vcl_in_rack", []) == []
    source = write_config(tmp_path / "strict", body + "strict: true\n")
    message = failure(source)
    assert "Could not set vcl_rack for host s1" in message and "rack_of_slave" in message


def test_cache_serves_the_stored_answer_until_flushed(sqlite_db, tmp_path):
    cache_dir = tmp_path / "cache"
    source = write_config(
        tmp_path / "inv",
        f"""plugin: vcl.lab.vcl_slaves
db_url: {sqlite_db}
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: {cache_dir}
cache_timeout: 3600
""",
    )
    first = listing(source)
    assert groups_of(first)["vcl_registered"] == ["s1", "s2", "s3"]
    assert len(list(cache_dir.iterdir())) == 1  # one key for this source and database

    service.add_slave("s4", "10.77.0.24", 4, 4096, 50, url=sqlite_db)
    service.set_slave_status("s2", "up", sqlite_db)
    cached = listing(source)
    assert cached == first  # served from the cache: the database was not read

    fresh = listing(source, "--flush-cache")
    assert groups_of(fresh)["vcl_registered"] == ["s1", "s2", "s3", "s4"]
    assert groups_of(fresh)["vcl_status_up"] == ["s1", "s2", "s4"]
    assert listing(source) == fresh  # the flush stored the new answer

    service.set_slave_status("s4", "down", sqlite_db)
    without_cache = write_config(tmp_path / "nocache", f"plugin: vcl.lab.vcl_slaves\ndb_url: {sqlite_db}\n")
    assert groups_of(listing(without_cache))["vcl_status_down"] == ["s3", "s4"]


def test_cache_key_follows_the_database(sqlite_db, tmp_path):
    """The same config file pointed (through VCL_DB_URL) at another database is not served the
    first database's slaves."""
    other = f"sqlite:///{tmp_path}/other.sqlite"
    service.init(other)
    service.add_slave("elsewhere", "10.88.0.1", 2, 2048, 20, url=other)
    source = write_config(
        tmp_path / "inv",
        f"""plugin: vcl.lab.vcl_slaves
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: {tmp_path}/cache
""",
    )
    assert groups_of(listing(source))["vcl_registered"] == ["s1", "s2", "s3"]
    assert groups_of(listing(source, env={"VCL_DB_URL": other}))["vcl_registered"] == ["elsewhere"]


def test_merges_with_a_static_hosts_yml_in_the_same_directory(sqlite_db, tmp_path):
    inv = tmp_path / "site"
    write_config(
        inv,
        """all:
  vars:
    lab_subnet: 10.77.0.0/24
  children:
    vcl_master:
      hosts:
        master:
          ansible_host: 10.77.0.10
    vcl_slaves:
      hosts:
        s1:
          ansible_host: 10.77.0.21
          lab_uplink: eth0
        s2:
          ansible_host: 10.77.0.22
          lab_uplink: eth1
""",
        name="hosts.yml",
    )
    write_config(inv, f"plugin: vcl.lab.vcl_slaves\ndb_url: {sqlite_db}\n")
    data = listing(inv)
    groups = groups_of(data)
    assert groups["vcl_slaves"] == ["s1", "s2"] and groups["vcl_master"] == ["master"]
    assert groups["vcl_registered"] == ["s1", "s2", "s3"]  # s3 is in the database only
    assert groups["vcl_status_up"] == ["s1"] and groups["vcl_status_draining"] == ["s2"]
    hostvars = plain(data["_meta"]["hostvars"])
    assert hostvars["s1"]["lab_uplink"] == "eth0" and hostvars["s1"]["vcl_cores_free"] == 5
    assert hostvars["s1"]["ansible_host"] == "10.77.0.21"
    assert "vcl_status" not in hostvars["master"]
    # One host per name: the static and the database entries are the same host.
    proc = run([BIN / "ansible", "-i", inv, "vcl_slaves:&vcl_status_up", "--list-hosts"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["hosts", "(1):", "s1"]


def test_database_strings_are_never_templated(sqlite_db, tmp_path):
    # Written behind the service layer's back (it would refuse the address): what someone with write access to
    # the database could store. Templated, it would show root's home directory; the plugin leaves the row out,
    # and the values it does hand over are marked unsafe.
    payload = "{{ lookup('env', 'HOME') }}"
    with db.engine(sqlite_db).begin() as conn:
        conn.execute(text("UPDATE slaves SET address = :a WHERE name = 's3'"), {"a": payload})
    source = write_config(
        tmp_path / "inv",
        f"""plugin: vcl.lab.vcl_slaves
db_url: {sqlite_db}
compose:
  vcl_address_copy: ansible_host
""",
    )
    proc = run([BIN / "ansible-inventory", "-i", source, "--list"])
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert "s3" not in data["_meta"]["hostvars"] and os.environ.get("HOME", "/root") not in proc.stdout
    assert "slave 's3' is left out: address:" in proc.stderr.replace("\n", " ")
    assert data["_meta"]["hostvars"]["s1"]["ansible_host"] == {"__ansible_unsafe": "10.77.0.21"}


@pytest.mark.parametrize(("column", "value", "why"), [
    ("name", "localhost", "name:"), ("name", "all", "name:"), ("name", "ungrouped", "name:"),
    ("name", "vcl_registered", "name:"), ("name", "bad_name", "name:"), ("address", "127.0.0.1", "address:"),
    ("address", "0.0.0.0", "address:"), ("address", "169.254.1.1", "address:"), ("address", "224.0.0.1", "address:"),
    ("address", "255.255.255.255", "address:")])
def test_rows_that_would_break_every_play_are_left_out_and_reported(sqlite_db, tmp_path, column, value, why):
    with db.engine(sqlite_db).begin() as conn:
        conn.execute(text(f"UPDATE slaves SET {column} = :v WHERE name = 's3'"), {"v": value})
    source = write_config(tmp_path / "inv", f"plugin: vcl.lab.vcl_slaves\ndb_url: {sqlite_db}\n")
    proc = run([BIN / "ansible-inventory", "-i", source, "--list"])
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert sorted(data["vcl_registered"]["hosts"]) == ["s1", "s2"]
    assert "is left out: " + why in proc.stderr.replace("\n", " ")


LAB_NETWORK = {"lab_subnet": "10.77.0.0/24", "vm_subnet": "10.77.1.0/24", "lab_gateway": "10.77.0.1",
               "vm_gateway": "10.77.1.1", "master_address": "10.77.0.10"}  # fmt: skip


@pytest.mark.parametrize(("value", "why"), [
    ("10.78.0.23", "is outside lab_subnet 10.77.0.0/24"), ("10.77.0.255", "network or broadcast address"),
    ("10.77.0.1", "the lab_gateway setting's address"), ("10.77.0.10", "the master_address setting's address"),
    ("10.77.1.23", "is outside lab_subnet"), ("10.77.0.190", "is in public_pool"),
])  # fmt: skip
def test_rows_outside_the_lab_networks_are_left_out_and_reported(slaves_db, tmp_path, value, why):
    """The database's settings know the lab's networks: a row written around `vcl slave add` (which refuses these
    addresses) with an address outside lab_subnet, a gateway's, the master's or a pool's is no inventory host."""
    service.configure(LAB_NETWORK, slaves_db)
    with db.engine(slaves_db).begin() as conn:
        conn.execute(text("UPDATE slaves SET address = :v WHERE name = 's3'"), {"v": value})
    source = write_config(tmp_path / "inv", f"plugin: vcl.lab.vcl_slaves\ndb_url: {slaves_db}\n")
    proc = run([BIN / "ansible-inventory", "-i", source, "--list"])
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert sorted(data["vcl_registered"]["hosts"]) == ["s1", "s2"] and "s3" not in data["_meta"]["hostvars"]
    message = " ".join(proc.stderr.split())
    assert f"slave 's3' is left out: address: {value} " in message and why in message, proc.stderr


def test_the_cache_keeps_the_networks_the_rows_were_checked_against(sqlite_db, tmp_path):
    service.configure(LAB_NETWORK, sqlite_db)
    source = write_config(tmp_path / "inv", f"""plugin: vcl.lab.vcl_slaves
db_url: {sqlite_db}
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: {tmp_path}/cache
cache_timeout: 3600
""")  # fmt: skip
    first = listing(source)
    assert groups_of(first)["vcl_registered"] == ["s1", "s2", "s3"]
    (stored,) = (tmp_path / "cache").iterdir()
    entry = json.loads(stored.read_text())  # the jsonfile cache plugin's wrapper around the plugin's JSON
    assert json.loads(entry["__payload__"])["network"]["lab_subnet"] == "10.77.0.0/24"
    # A cache written by an older plugin (a bare list of slaves, unchecked) is read again from the database.
    entry["__payload__"] = json.dumps([{"name": "ghost", "vars": {"ansible_host": "10.77.0.99"}}])
    stored.write_text(json.dumps(entry))
    assert groups_of(listing(source))["vcl_registered"] == ["s1", "s2", "s3"]


CONFIG_ERRORS = [
    (
        "plugin: vcl.lab.vcl_slaves\ndb_ur: sqlite:////x\n",
        r"unknown option\(s\) 'db_ur'; known options: cache, cache_connection, .*db_url",
    ),
    ("plugin: vcl.lab.vcl_slaves\ndb_url: sqlite:////x\nstrict: maybe\n", r"strict: 'maybe' is not a boolean"),
    ("plugin: vcl.lab.vcl_slaves\ncache: sometimes\n", r"cache: 'sometimes' is not a boolean"),
    ("plugin: vcl.lab.vcl_slaves\ndb_url: [1]\n", r"Config 'db_url' .* has an invalid value"),
    ("plugin: vcl.lab.vcl_slaves\ncompose: [1]\n", r"Config 'compose' .* has an invalid value"),
    (
        "plugin: vcl.lab.vcl_slaves\ncache: true\ncache_plugin: ansible.builtin.jsonfile\n",
        r"Required config '_uri' for '[a-z_.]*jsonfile' cache plugin not provided",
    ),
    ("plugin: vcl.lab.vcl_slaves\ndb_url: not a url\n", r"db_url: 'not a url' is not a database URL"),
    (
        "plugin: vcl.lab.vcl_slaves\ndb_url: mysql://vcl:pw@dbhost/vcl\n",
        r"db_url: unsupported database 'mysql' in mysql://vcl:\*\*\*@dbhost/vcl",
    ),
    ("plugin: vcl.lab.vcl_slaves\ndb_url: 'sqlite://'\n", r"db_url: 'sqlite://' names no database file"),
    (
        "plugin: vcl.lab.vcl_slaves\ndb_url: sqlite:///{tmp}/missing/vcl.sqlite\n",
        r"db_url: no lab database at {tmp}/missing/vcl.sqlite \(run `vcl db init`",
    ),
    ("plugin: vcl.lab.vcl_slaves\ndb_url: sqlite:///{tmp}/inv/vcl_slaves.yml\n", r"is not a SQLite database"),
    (
        "plugin: vcl.lab.vcl_slaves\ndb_url: postgresql+psycopg://vcl:s3cret@127.0.0.1:1/vcl\n",
        r"cannot read the lab database \(postgresql\+psycopg://vcl:\*\*\*@127.0.0.1:1/vcl\): connection failed",
    ),
]


@pytest.mark.parametrize(("body", "message"), CONFIG_ERRORS, ids=[str(i) for i in range(len(CONFIG_ERRORS))])
def test_bad_config_is_a_clear_error(tmp_path, body, message):
    source = write_config(tmp_path / "inv", body.replace("{tmp}", str(tmp_path)))
    got = failure(source, drop=["VCL_DB_URL"])
    assert got.startswith(f"{source}: "), got
    assert re.search(message.replace("{tmp}", str(tmp_path)), got), got
    assert "s3cret" not in got
    assert not (tmp_path / "missing").exists()


def test_a_database_without_the_schema(db_url, tmp_path):
    db.downgrade(db_url, "base")
    source = write_config(tmp_path / "inv", f"plugin: vcl.lab.vcl_slaves\ndb_url: {db_url}\n")
    assert failure(source) == f"{source}: the lab database is not initialised: run `vcl db init`"


def test_vcl_sched_not_importable_says_how_to_install_it(tmp_path):
    """A Python that has ansible-core but not vcl_sched: a venv that sees this venv's site-packages
    through a .pth line (the editable install's own .pth there is not processed, since that
    directory is not a site directory of the new venv)."""
    other = tmp_path / "venv"
    subprocess.run([Path(sys.base_prefix) / "bin" / "python3", "-m", "venv", "--without-pip", other], check=True)
    site = next((other / "lib").glob("python3*/site-packages"))
    ours = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"))
    (site / "ansible_only.pth").write_text(f"{ours}\n")
    python = other / "bin" / "python"
    source = write_config(tmp_path / "inv", "plugin: vcl.lab.vcl_slaves\ndb_url: sqlite:////nowhere.sqlite\n")
    proc = run([python, BIN / "ansible-inventory", "-i", source, "--list"])
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    message = next(line for line in proc.stderr.splitlines() if "with 'auto' plugin:" in line)
    assert (
        f"{source}: the vcl_slaves inventory needs the vcl_sched package in the Python that runs Ansible"
        f" ({python}): install the VCL checkout into it, e.g. `{python} -m pip install /path/to/vcl`"
    ) in message
    assert "No module named 'vcl_sched'" in message


def test_ignores_files_with_other_names(sqlite_db, tmp_path):
    source = write_config(tmp_path / "inv", f"plugin: vcl.lab.vcl_slaves\ndb_url: {sqlite_db}\n", name="slaves.yml")
    message = failure(source)
    assert "could not be verified by inventory plugin 'vcl.lab.vcl_slaves'" in message


def test_ansible_doc_renders_the_documentation():
    proc = run([BIN / "ansible-doc", "-t", "inventory", "vcl.lab.vcl_slaves"])
    assert proc.returncode == 0, proc.stderr
    for word in ("db_url", "VCL_DB_URL", "keyed_groups", "cache_plugin", "vcl_status_draining"):
        assert word in proc.stdout


def test_the_sample_config_reads_the_vcl_db_url_database(sqlite_db):
    data = listing(ROOT / "inventory" / "sample" / "vcl_slaves.yml")
    assert groups_of(data)["vcl_registered"] == ["s1", "s2", "s3"]
