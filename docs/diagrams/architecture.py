"""Draw docs/diagrams/architecture.svg: VCL's parts and the way of a reservation (docs/architecture.md).

Python's standard library only, so the picture can be redrawn wherever the project's Python runs:

    .venv/bin/python docs/diagrams/architecture.py          # writes architecture.svg beside this file
    .venv/bin/python docs/diagrams/architecture.py --png    # and architecture.png (needs rsvg-convert,
                                                            # Debian's librsvg2-bin)

The layout is written by hand: three columns (controller, master, slave), the lab LAN under them, the
clients below it, the numbered steps of a reservation as arrows, and their legend at the bottom.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from xml.sax.saxutils import escape

HERE = Path(__file__).resolve().parent
WIDTH, HEIGHT = 1320, 930
FONT = "DejaVu Sans, Verdana, Arial, sans-serif"
MONO = "DejaVu Sans Mono, Consolas, monospace"

# fill, stroke of each kind of host
CONTROLLER = ("#e8f0fb", "#3b6db3")
MASTER = ("#fdf1e4", "#c07a2c")
SLAVE = ("#e9f6ea", "#3f8f4a")
CLIENT = ("#f3ecfa", "#7b54a8")
LAN = ("#ececec", "#8a8a8a")
INK = "#222222"
STEP = "#b3262d"  # the numbered steps of a reservation

# Average advance of a DejaVu Sans glyph, in ems: enough to warn when a line will not fit its box.
EM_WIDTH = 0.54


class Drawing:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.problems: list[str] = []

    def add(self, element: str) -> None:
        self.parts.append(element)

    def region(self, x: int, y: int, w: int, h: int, colours: tuple[str, str], title: str, *, stacked=False) -> None:
        fill, stroke = colours
        if stacked:  # one of many: a second sheet behind it
            self.add(f'<rect x="{x + 8}" y="{y + 8}" width="{w}" height="{h}" rx="14" fill="{fill}" '
                     f'stroke="{stroke}" stroke-width="1.5"/>')
        self.add(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="14" fill="{fill}" stroke="{stroke}" '
                 f'stroke-width="2"/>')
        self.text(x + 14, y + 22, title, size=15, weight="bold", colour=stroke, width=w - 20)

    def box(self, x: int, y: int, w: int, h: int, title: str, lines: list[str], colours: tuple[str, str], *,
            dashed=False, mono_from=1) -> None:
        """A component: a bold title and smaller lines, centred; lines from index mono_from on in monospace
        when they look like paths or commands (they start with / or a backtick-free command word)."""
        fill, stroke = colours
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        self.add(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8" fill="{fill}" stroke="{stroke}" '
                 f'stroke-width="1.5"{dash}/>')
        total = 17 + 15 * len(lines)
        top = y + (h - total) / 2 + 13
        self.text(x + w / 2, top, title, size=14, weight="bold", anchor="middle", width=w - 12)
        for i, line in enumerate(lines):
            mono = i + 1 >= mono_from and line.startswith(("/", "~", "ansible-", "vcl "))
            self.text(x + w / 2, top + 17 + 15 * i, line, size=12, anchor="middle", mono=mono, width=w - 12)

    def database(self, x: int, y: int, w: int, h: int, title: str, lines: list[str], colours: tuple[str, str]) -> None:
        fill, stroke = colours
        ry = 10
        self.add(f'<path d="M{x},{y + ry} v{h - 2 * ry} a{w / 2},{ry} 0 0 0 {w},0 v{-(h - 2 * ry)}" fill="{fill}" '
                 f'stroke="{stroke}" stroke-width="1.5"/>')
        self.add(f'<ellipse cx="{x + w / 2}" cy="{y + ry}" rx="{w / 2}" ry="{ry}" fill="{fill}" stroke="{stroke}" '
                 f'stroke-width="1.5"/>')
        top = y + 2 * ry + 16
        self.text(x + w / 2, top, title, size=14, weight="bold", anchor="middle", width=w - 12)
        for i, line in enumerate(lines):
            self.text(x + w / 2, top + 17 + 15 * i, line, size=12, anchor="middle", width=w - 12,
                      mono=line.startswith(("/", "VCL_")))

    def text(self, x: float, y: float, content: str, *, size=12, weight="normal", anchor="start", colour=INK,
             mono=False, width: float | None = None, italic=False) -> None:
        advance = 0.68 if mono else EM_WIDTH
        if width is not None and len(content) * size * advance > width:
            self.problems.append(f"too wide for {width:.0f}px: {content!r}")
        style = ' font-style="italic"' if italic else ""
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" font-family="{MONO if mono else FONT}" font-size="{size}" '
                 f'font-weight="{weight}" text-anchor="{anchor}" fill="{colour}"{style}>{escape(content)}</text>')

    def arrow(self, points: list[tuple[float, float]], *, colour=STEP, dashed=False, both=False) -> None:
        dash = ' stroke-dasharray="7 5"' if dashed else ""
        start = ' marker-start="url(#head-start)"' if both else ""
        marker = "head-step" if colour == STEP else "head-ink"
        path = " ".join(f"{'M' if i == 0 else 'L'}{px},{py}" for i, (px, py) in enumerate(points))
        self.add(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2.2"{dash}{start} '
                 f'marker-end="url(#{marker})"/>')

    def badge(self, x: float, y: float, label: str) -> None:
        self.add(f'<circle cx="{x}" cy="{y}" r="11" fill="{STEP}"/>')
        self.text(x, y + 4.5, label, size=13, weight="bold", anchor="middle", colour="#ffffff")

    def label(self, x: float, y: float, content: str, *, anchor="start", width: float | None = None) -> None:
        """Text on a white band, so it stays readable over lines."""
        self.text(x, y, content, size=12, anchor=anchor, colour=STEP, width=width, italic=True)

    def svg(self) -> str:
        defs = (
            "<defs>"
            f'<marker id="head-step" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{STEP}"/></marker>'
            f'<marker id="head-ink" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{INK}"/></marker>'
            f'<marker id="head-start" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{INK}"/></marker>'
            "</defs>"
        )
        body = "\n".join(self.parts)
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}">\n'
            "<!-- Generated by docs/diagrams/architecture.py: edit that, not this file. -->\n"
            f"{defs}\n"
            f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>\n'
            f"{body}\n</svg>\n"
        )


def draw() -> Drawing:
    d = Drawing()
    d.text(WIDTH / 2, 24, "VCL: the parts of a lab and the way of a reservation", size=18, weight="bold",
           anchor="middle")

    # --- the three columns -------------------------------------------------------------------------
    cx, mx, sx, top, bottom = 20, 470, 920, 60, 520
    col_w, inner, inner_w = 380, 15, 350
    d.region(cx, top, col_w, bottom - top, CONTROLLER, "Controller")
    d.region(mx, top, col_w, bottom - top, MASTER, "Master (group vcl_master)")
    d.region(sx, top, col_w, bottom - top, SLAVE, "Slaves (group vcl_slaves)", stacked=True)

    # Controller
    x = cx + inner
    d.box(x, 92, inner_w, 62, "Lab admin, cron or AWX",
          ["ansible-playbook vcl.lab.reserve ...", "vcl reserve --run · vcl launch ID"],
          ("#ffffff", CONTROLLER[1]))
    d.box(x, 180, inner_w, 104, "Collection vcl.lab",
          ["playbooks: site, reserve, launch, stop, dispatch ...", "roles: network ssh ntp kvm dhcpd nat vcl_master",
           "role vm: launch stop suspend resume net", "action plugins · inventory plugin vcl_slaves"],
          ("#ffffff", CONTROLLER[1]))
    d.box(x, 312, inner_w, 72, "vcl_sched (Python package)",
          ["priorities, placement, calendar, preemption", "claims and bookings · the vcl command"],
          ("#ffffff", CONTROLLER[1]))
    d.database(x + 25, 408, inner_w - 50, 100, "Lab database",
               ["SQLite (default) or PostgreSQL", "VCL_DB_URL"], ("#ffffff", CONTROLLER[1]))

    # Master: rows line up with the slave's where an arrow joins them
    x = mx + inner
    d.box(x, 92, inner_w, 62, "NAT (iptables)",
          ["MASQUERADE · one DNAT chain VCL-VM-ID per VM", "/etc/iptables/rules.v4"], ("#ffffff", MASTER[1]))
    d.box(x, 164, inner_w, 62, "Public aliases on the uplink",
          ["PUBLIC/32, one file per VM:", "/etc/network/interfaces.d/vcl-vm-ID"], ("#ffffff", MASTER[1]))
    d.box(x, 236, inner_w, 62, "dhcpd (ISC)",
          ["/etc/dhcp/dhcpd.conf includes", "/etc/dhcp/dhcpd.vcl-vms.conf (host vm-ID)"], ("#ffffff", MASTER[1]))
    d.box(x, 308, inner_w, 48, "NTP (chrony)", ["serves the lab; stratum 10 without upstream"],
          ("#ffffff", MASTER[1]))
    d.box(x, 366, inner_w, 62, "Image store", ["/var/lib/vcl/images/NAME[/VERSION]/"], ("#ffffff", MASTER[1]))
    d.box(x, 438, inner_w, 70, "vcl-dispatch.timer (1 min by default)",
          ["ansible-playbook vcl.lab.dispatch", "/opt/vcl/venv · /opt/vcl/collections"], ("#ffffff", MASTER[1]))

    # Slave
    x = sx + inner
    d.box(x, 92, inner_w, 62, "libvirtd + QEMU", ["domain type kvm (VT-x/AMD-V) or qemu"], ("#ffffff", SLAVE[1]))
    d.box(x, 164, inner_w, 62, "br0 holds the uplink", ["the VMs sit on the lab LAN"], ("#ffffff", SLAVE[1]))
    d.box(x, 236, inner_w, 62, "VM vcl-ID",
          ["MAC 52:54:00:..., its private address by DHCP", "VNC console on the slave's address"],
          ("#ffffff", SLAVE[1]), dashed=True)
    d.box(x, 308, inner_w, 48, "Registered in the database", ["by site.yml: cores and RAM from facts, disk from df"],
          ("#ffffff", SLAVE[1]))
    d.box(x, 366, inner_w, 62, "Image cache", ["/var/lib/vcl/images/NAME[/VERSION]/"], ("#ffffff", SLAVE[1]))
    d.box(x, 438, inner_w, 70, "Overlays and serial logs",
          ["/var/lib/vcl/instances/vcl-ID.qcow2", "/var/lib/vcl/instances/vcl-ID.log"], ("#ffffff", SLAVE[1]))

    # --- the lab LAN and the clients ---------------------------------------------------------------
    lan_y = 544
    d.add(f'<rect x="20" y="{lan_y}" width="{WIDTH - 40}" height="30" rx="6" fill="{LAN[0]}" stroke="{LAN[1]}"/>')
    d.text(40, lan_y + 20, "lab LAN (lab_subnet) · the VMs' private network (lab_vm_subnet) on the same wire, "
           "the master its router", size=13, width=mx + 350 - 50)
    for px in (cx + col_w / 2, mx + 320, sx + col_w / 2):
        d.add(f'<line x1="{px}" y1="{bottom}" x2="{px}" y2="{lan_y}" stroke="{LAN[1]}" stroke-width="3"/>')
    d.region(mx, 604, col_w, 92, CLIENT, "Clients (group vcl_clients)")
    d.text(mx + col_w / 2, 652, "students' and teachers' PCs reach a VM", size=12, anchor="middle")
    d.text(mx + col_w / 2, 668, "at its PUBLIC address (site.yml configures", size=12, anchor="middle")
    d.text(mx + col_w / 2, 684, "nothing on them)", size=12, anchor="middle")

    # --- the way of a reservation -------------------------------------------------------------------
    # 1: the admin runs the playbook
    d.arrow([(cx + 195, 154), (cx + 195, 180)])
    d.badge(cx + 215, 167, "1")
    # the collection's action plugins import vcl_sched
    d.arrow([(cx + 195, 284), (cx + 195, 312)], colour=INK, dashed=True)
    d.text(cx + 205, 302, "imports", size=11, colour=INK, italic=True)
    # 2: the claim, one transaction
    d.arrow([(cx + 195, 384), (cx + 195, 408)])
    d.badge(cx + 215, 396, "2")
    # 3: the master's part of a launch, over ssh
    d.add(f'<path d="M{mx + 8},96 v204" fill="none" stroke="{STEP}" stroke-width="2.2"/>')
    d.arrow([(cx + inner + inner_w, 232), (mx + 8, 232)])
    d.badge(cx + col_w + 45, 232, "3")
    # 5: the slave's part, over ssh, above everything
    d.arrow([(cx + 340, 180), (cx + 340, 46), (sx + 300, 46), (sx + 300, 92)])
    d.badge(mx + col_w / 2, 46, "5")
    # 4: the image, from the store to the slave's cache, only when the cache lacks it
    d.arrow([(mx + inner + inner_w, 397), (sx + inner, 397)])
    d.badge(mx + col_w + 35, 397, "4")
    # 6: the VM asks the master's dhcpd for its address
    d.arrow([(sx + inner, 267), (mx + inner + inner_w, 267)])
    d.badge(mx + col_w + 35, 267, "6")
    # 7: a client reaches the public address, DNAT sends it on to the private one
    d.arrow([(mx + 360, 604), (mx + 360, 516)])
    d.badge(mx + 340, 590, "7")
    d.arrow([(mx + inner + inner_w, 123), (sx + inner, 250)], dashed=True)
    d.badge(mx + col_w + 35, 178, "7")

    # --- legend ---------------------------------------------------------------------------------------
    steps = [
        ("1", "reserve.yml: vcl_reserve checks every input and records the request (start=now: best effort, "
              "placed at once when it fits; a date: an advance reservation)."),
        ("2", "launch (role vm): vcl_instance place claims a slave's cores, RAM, disk, a MAC and a (public, "
              "private) address pair in one transaction, unless the request holds them already."),
        ("3", "vcl_vm_net on the master: the VM's DHCP host entry (checked with dhcpd -t, given to dhcpd over "
              "OMAPI), its public alias and its DNAT chain, in one task."),
        ("4", "When the slave's cache lacks the image, the master copies it there with rsync."),
        ("5", "vcl_domain on the slave: a qcow2 overlay on the cached image, the domain defined (validated) and "
              "started; the database records it running."),
        ("6", "The VM boots and takes its private address from the master's dhcpd (its MAC's host entry)."),
        ("7", "A client connects to the VM's PUBLIC address; the master DNATs it to the PRIVATE address over the "
              "LAN, to the VM on the slave's br0."),
    ]
    y = 728
    for number, words in steps:
        d.badge(36, y - 4, number)
        d.text(56, y, words, size=13, width=WIDTH - 80)
        y += 24
    d.text(36, y + 6, "Not drawn: site.yml bootstraps every host over ssh (roles network, ssh, ntp, kvm, dhcpd, nat, "
           "vcl_master) and registers the slaves;", size=12, colour="#555555", width=WIDTH - 60, italic=True)
    d.text(36, y + 22, "reconcile.yml compares the database with each slave's libvirt; the master's dispatch timer "
           "runs dispatch.yml with VCL_DB_URL from /etc/vcl/dispatch.env.", size=12, colour="#555555", width=WIDTH - 60,
           italic=True)
    return d


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png", action="store_true", help="also write architecture.png with rsvg-convert")
    parser.add_argument("--out", type=Path, default=HERE, help="directory to write into (default: beside this file)")
    args = parser.parse_args(argv)
    drawing = draw()
    for problem in drawing.problems:
        print(f"architecture.py: {problem}", file=sys.stderr)
    svg = args.out / "architecture.svg"
    svg.write_text(drawing.svg(), encoding="utf-8")
    print(svg)
    if args.png:
        rsvg = shutil.which("rsvg-convert")
        if rsvg is None:
            print("architecture.py: --png needs rsvg-convert (apt-get install librsvg2-bin)", file=sys.stderr)
            return 1
        png = args.out / "architecture.png"
        subprocess.run([rsvg, "--format", "png", "--output", str(png), str(svg)], check=True)
        print(png)
    return 1 if drawing.problems else 0


if __name__ == "__main__":
    sys.exit(main())
