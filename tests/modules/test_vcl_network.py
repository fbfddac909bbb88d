"""plugins/modules/vcl_network.py against the real kernel, inside a network namespace this test creates.

The module runs as a module process with its arguments file (what Ansible's wrapper hands it), inside the
namespace (`ip netns exec`), so it sees only the namespace's interfaces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
MODULE = "ansible_collections.vcl.lab.plugins.modules.vcl_network"  # run the collection way (python -m)
ENV = {**os.environ, "PYTHONPATH": str(REPO / "collections")}


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, text=True, capture_output=True, check=check)


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.fail("network namespace tests need root", pytrace=False)
    name = "vcltn-" + uuid.uuid4().hex[:6]
    sh("ip", "netns", "add", name)
    try:
        ns = ("ip", "netns", "exec", name)
        sh(*ns, "ip", "link", "set", "lo", "up")
        sh(*ns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "lan0")
        sh(*ns, "ip", "link", "set", "lan0", "up")
        sh(*ns, "ip", "link", "set", "eth0", "address", "02:00:00:aa:bb:01", "up")
        sh(*ns, "ip", "address", "add", "10.250.0.21/24", "dev", "eth0")
        sh(*ns, "ip", "route", "add", "default", "via", "10.250.0.1", "dev", "eth0")
        yield name
    finally:
        sh("ip", "netns", "delete", name, check=False)


def run_module(ns: str, tmp_path: Path, check_mode: bool = False, **args) -> dict:
    args_file = tmp_path / f"args-{uuid.uuid4().hex[:6]}.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check_mode}}))
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", MODULE, str(args_file)],
        text=True,
        capture_output=True,
        env=ENV,
    )
    return json.loads(proc.stdout)


def ip_json(ns: str, *args: str):
    return json.loads(sh("ip", "netns", "exec", ns, "ip", "-j", *args).stdout)


def addresses(ns: str, dev: str) -> set[str]:
    data = ip_json(ns, "address", "show", "dev", dev)
    return {f"{a['local']}/{a['prefixlen']}" for e in data for a in e["addr_info"] if a["family"] == "inet"}


def test_bridge_takes_over_the_uplink_and_a_second_run_changes_nothing(netns, tmp_path):
    args = {"uplink": "eth0", "bridge": "br0", "address": "10.250.0.21/24", "gateway": "10.250.0.1"}
    first = run_module(netns, tmp_path, **args)
    assert first.get("changed") is True, first
    link = ip_json(netns, "-d", "link", "show", "dev", "eth0")[0]
    bridge = ip_json(netns, "-d", "link", "show", "dev", "br0")[0]
    assert link["master"] == "br0"
    assert bridge["address"] == "02:00:00:aa:bb:01", "the bridge keeps the uplink's MAC (neighbours' caches stay right)"
    assert bridge["linkinfo"]["info_data"]["stp_state"] == 0
    assert addresses(netns, "br0") == {"10.250.0.21/24"}
    assert addresses(netns, "eth0") == set()
    routes = ip_json(netns, "-4", "route", "show", "default")
    assert [(r["gateway"], r["dev"]) for r in routes] == [("10.250.0.1", "br0")]

    second = run_module(netns, tmp_path, **args)
    assert second.get("changed") is False and second["commands"] == [], second


def test_extra_addresses_are_added_and_stale_ones_in_managed_ranges_removed(netns, tmp_path):
    base = {"uplink": "eth0", "address": "10.250.0.21/24", "gateway": "10.250.0.1",
            "managed_ranges": ["10.250.0.160-10.250.0.223"]}  # fmt: skip
    sh("ip", "netns", "exec", netns, "ip", "address", "add", "10.250.0.99/32", "dev", "eth0")  # not ours: kept
    sh("ip", "netns", "exec", netns, "ip", "address", "add", "10.250.0.170/32", "dev", "eth0")  # ours, stale
    result = run_module(netns, tmp_path, **base, addresses=["10.250.1.1/24", "10.250.0.160/32", "10.250.0.161/32"])
    assert result["changed"] is True, result
    assert addresses(netns, "eth0") == {
        "10.250.0.21/24", "10.250.1.1/24", "10.250.0.160/32", "10.250.0.161/32", "10.250.0.99/32",
    }  # fmt: skip
    again = run_module(netns, tmp_path, **base, addresses=["10.250.1.1/24", "10.250.0.160/32", "10.250.0.161/32"])
    assert again["changed"] is False, again
    fewer = run_module(netns, tmp_path, **base, addresses=["10.250.1.1/24", "10.250.0.161/32"])
    assert fewer["commands"] == ["address del 10.250.0.160/32 dev eth0"], fewer
    assert "10.250.0.160/32" not in addresses(netns, "eth0")


def test_check_mode_reports_without_changing(netns, tmp_path):
    result = run_module(netns, tmp_path, check_mode=True, uplink="eth0", bridge="br0", address="10.250.0.21/24")
    assert result["changed"] is True and "link set dev eth0 master br0" in result["commands"], result
    assert sh("ip", "netns", "exec", netns, "ip", "link", "show", "br0", check=False).returncode != 0


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"uplink": "eth0", "address": "10.250.0.300/24"}, "address"),
        ({"uplink": "eth0; reboot", "address": "10.250.0.21/24"}, "uplink"),
        ({"uplink": "eth0", "address": "10.250.0.21/24", "gateway": "nope"}, "gateway"),
        ({"uplink": "eth0", "address": "10.250.0.21/24", "managed_ranges": ["10.0.0.9-10.0.0.1"]}, "managed_ranges"),
        ({"uplink": "eth9", "address": "10.250.0.21/24"}, "uplink"),
    ],
)
def test_bad_input_names_the_field_and_changes_nothing(netns, tmp_path, args, field):
    before = sh("ip", "netns", "exec", netns, "ip", "-j", "address", "show").stdout
    result = run_module(netns, tmp_path, **args)
    assert result.get("failed") is True and result["msg"].startswith(f"{field}:"), result
    assert sh("ip", "netns", "exec", netns, "ip", "-j", "address", "show").stdout == before
