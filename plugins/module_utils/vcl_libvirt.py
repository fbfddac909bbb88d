# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""What vcl_domain and vcl_domains share: libvirt URIs, state names, a running domain's VNC port."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S*$")
STATE_NAMES = {
    0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "shutoff", 6: "crashed",
    7: "pmsuspended",
}  # fmt: skip


def state_name(dom) -> str:
    return STATE_NAMES.get(dom.state()[0], "nostate")


def vnc_port(dom, errors: tuple[type[BaseException], ...]) -> int | None:
    """The VNC port libvirt gave a running domain (autoport), from its live XML; ``errors`` are the
    binding's exceptions to treat as "no port" (libvirt.libvirtError: the domain may vanish meanwhile)."""
    try:
        root = ET.fromstring(dom.XMLDesc(0))  # noqa: S314  (libvirt's own output)
    except (ET.ParseError, *errors):
        return None
    for graphics in root.iter("graphics"):
        if graphics.get("type") == "vnc":
            port = graphics.get("port", "-1")
            return int(port) if port.isdigit() and int(port) > 0 else None
    return None
