"""Tests that run real tools (iptables) inside a network namespace of their own.

They need root and `ip netns` (iproute2) with iptables; a namespace has its own netfilter tables, so
nothing here touches the machine's rules. Without root they fail and say why; they never skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest


def _netns():
    """A fresh network namespace (its own, empty netfilter tables); deleted afterwards."""
    missing = [tool for tool in ("ip", "iptables", "iptables-save", "iptables-restore") if not shutil.which(tool)]
    if os.geteuid() != 0 or missing:
        pytest.fail(f"netns tests need root and {missing or 'ip, iptables'}: run them as root", pytrace=False)
    name = f"vcltest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


@pytest.fixture
def netns():
    """A fresh network namespace (its own, empty netfilter tables); deleted afterwards."""
    yield from _netns()


@pytest.fixture
def client_netns():
    """A second namespace, for a DHCP client on the other end of a veth from ``netns``."""
    yield from _netns()
