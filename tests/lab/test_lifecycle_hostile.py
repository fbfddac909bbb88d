"""A hostile guest on the simulated lab (issue 12, SPEC §11): nothing it tries reaches the lab.

The lab is bootstrapped by site.yml (the slaves' nwfilter, the master's firewall). A victim VM (the plain test
guest) runs first; then a hostile VM of an image of the tests' own (the same guest, with ``vcl.try=`` attempts on
its command line) boots and tries to: reach the slaves' and the master's sshd, the victim's console port, the
victim directly, a lab host (the client) outside its NAT; take the victim's address or another one, another
MAC; claim the master's and the victim's addresses by ARP; answer DHCP. The guest prints what each attempt got
(connected / answered / blocked); a sniffer on the lab's host bridge (promiscuous) records every frame the
hostile guest's slave lets out, and a DHCP client on the client machine asks for a lease while the rogue server
runs. The test asserts that nothing got through, while the hostile VM's public address still serves the client
and its outbound NAT still reaches a host beyond the lab. The table of attempts is written to
bench/results/hostile_guest.json.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.lab.test_lifecycle import GROUP, must, newest, play, reserve
from vcl_lab import net
from vcl_lab.guest.initramfs import TRIES_DONE, TRY_RE
from vcl_lab.testing import REPO, Lab
from vcl_sched import service

pytestmark = pytest.mark.lab

BEYOND = "198.51.100.7"  # TEST-NET-2: an address beyond the lab, held by the client, routed by the master
LISTEN_PORT = 8099
PEERS_FILE = "/tmp/vcltest-hostile-peers"
PID_FILE = "/tmp/vcltest-hostile-listener.pid"
SPOOF_MAC = "52:54:00:66:66:66"
ETH_P_ALL = 0x0003
SOL_PACKET, PACKET_ADD_MEMBERSHIP, PACKET_MR_PROMISC = 263, 1, 1
# A banner on connect, and one line per caller in PEERS_FILE.
LISTENER = (
    "import socket,sys\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(16)\n"
    "while True:\n"
    "    c,a=s.accept()\n"
    "    open(sys.argv[2],'a').write(a[0]+'\\n')\n"
    "    try: c.sendall(b'vcltest-listener\\n')\n"
    "    except OSError: pass\n"
    "    c.close()\n"
)


class Sniffer:
    """Every frame on the lab's host bridge (promiscuous), kept for a later look; a background thread."""

    def __init__(self, bridge: str):
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((bridge, 0))
        index = socket.if_nametoindex(bridge)
        self.sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0,
                                                                             b""))
        self.sock.settimeout(0.5)
        self.frames: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                frame = self.sock.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            self.frames.append(frame)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def violations(frames: list[bytes], own_mac: str, own_ip: str, master_mac: str, lab: ipaddress.IPv4Network,
               vm: ipaddress.IPv4Network) -> list[str]:
    """What of the hostile guest's traffic (by its MAC or the MAC it tried) left its slave although the filter
    forbids it."""
    found = []
    for frame in frames:
        if len(frame) < 14:
            continue
        dst, src, kind = mac_text(frame[0:6]), mac_text(frame[6:12]), struct.unpack("!H", frame[12:14])[0]
        if src == SPOOF_MAC:
            found.append(f"a frame from the spoofed MAC {SPOOF_MAC} (type 0x{kind:04x})")
            continue
        if src != own_mac:
            continue
        if kind == 0x0806 and len(frame) >= 42:
            sender_mac, sender_ip = mac_text(frame[22:28]), socket.inet_ntoa(frame[28:32])
            if sender_mac != own_mac or sender_ip not in (own_ip, "0.0.0.0"):
                found.append(f"ARP claiming {sender_ip} at {sender_mac}")
        elif kind == 0x0800 and len(frame) >= 34:
            header = frame[14:]
            ihl = (header[0] & 0x0F) * 4
            proto, src_ip, dst_ip = header[9], socket.inet_ntoa(header[12:16]), socket.inet_ntoa(header[16:20])
            sport = dport = None
            if proto in (6, 17) and len(header) >= ihl + 4:
                sport, dport = struct.unpack("!HH", header[ihl:ihl + 4])
            dhcp_client = proto == 17 and sport == 68 and dport == 67
            if src_ip != own_ip and not (src_ip == "0.0.0.0" and dhcp_client):
                found.append(f"IPv4 from {src_ip} (not its address) to {dst_ip}")
            if proto == 17 and sport == 67:
                found.append(f"a DHCP server's answer to {dst_ip}")
            address = ipaddress.IPv4Address(dst_ip)
            if dst != master_mac and not dhcp_client and (address in lab or address in vm or address.is_multicast
                                                          or dst_ip == "255.255.255.255"):
                found.append(f"IPv4 straight to {dst_ip} ({dst}), not through the master")
        elif kind not in (0x0800, 0x0806):
            found.append(f"a frame of type 0x{kind:04x}")
    return found


def serial_log(lab: Lab, slave: str, vm_id: int) -> str:
    return lab.ssh(slave, "cat", f"/var/lib/vcl/instances/vcl-{vm_id}.log").stdout


@pytest.fixture(scope="module")
def hostile_lab(lab, tmp_path_factory):
    """The session lab bootstrapped by site.yml with this module's database; the client listens on its lab
    address and on BEYOND, which the master routes to it."""
    url = f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'vcl.sqlite'}"
    must(play(lab, url, "site"), "site.yml")
    service.add_group(GROUP, url=url)
    client_address = lab.addresses["client"]
    lab.ssh("client", "ip", "address", "replace", f"{BEYOND}/32", "dev", "lo")
    lab.ssh("master", "ip", "route", "replace", f"{BEYOND}/32", "via", client_address)
    lab.ssh("client", "rm", "-f", PEERS_FILE)
    started = lab.ssh("client", "start-stop-daemon", "--start", "--background", "--make-pidfile", "--pidfile",
                      PID_FILE, "--exec", "/usr/bin/python3", "--", "-c", LISTENER, str(LISTEN_PORT), PEERS_FILE)
    assert started.returncode == 0, started.stderr
    try:
        yield url
    finally:
        left = [str(i["id"]) for i in service.list_instances(url)]
        if left:
            play(lab, url, "stop", "-e", f"ids={','.join(left)}")
        lab.ssh("client", "start-stop-daemon", "--stop", "--oknodo", "--pidfile", PID_FILE, "--remove-pidfile")
        lab.ssh("client", "ip", "address", "del", f"{BEYOND}/32", "dev", "lo")
        lab.ssh("master", "ip", "route", "del", f"{BEYOND}/32")


def test_a_hostile_guest_reaches_nothing_of_the_lab(lab, hostile_lab):
    url = hostile_lab
    variables = yaml.safe_load(lab.inventory.read_text())["all"]["vars"]
    lab_net = ipaddress.IPv4Network(variables["lab_subnet"])
    vm_net = ipaddress.IPv4Network(variables["lab_vm_subnet"])
    vm_gateway = variables["lab_vm_gateway"]
    master, slaves, client = lab.addresses["master"], [lab.addresses[s] for s in lab.of_role("slave")], \
        lab.addresses["client"]
    master_mac = json.loads(lab.ssh("master", "ip", "-json", "link", "show", "dev", "eth0").stdout)[0]["address"]

    must(reserve(lab, url, "-e", "hours=1", "-e", "cores=1"), "the victim's launch")
    victim = newest(url)
    assert victim["state"] == "running" and victim["console_port"], victim
    victim_slave = lab.addresses[victim["slave"]]
    lab.marker(victim["public_ip"])

    guest = next(i for i in service.list_images(url) if i["name"] == "vcl-guest")
    free = [str(a) for a in vm_net.hosts()][-8:]  # addresses at the top of the VM network, outside the pool's use
    attempts = {
        **{f"tcp:{s}:22": "a slave's sshd" for s in slaves},
        f"tcp:{master}:22": "the master's sshd (lab address)",
        f"tcp:{vm_gateway}:22": "the master's sshd (VM-side address)",
        f"tcp:{victim_slave}:{victim['console_port']}": "another VM's console (VNC)",
        f"tcp:{victim['private_ip']}:80": "another VM directly",
        f"tcp:{client}:{LISTEN_PORT}": "a lab host outside its NAT",
        f"spoof:{victim['private_ip']}:{BEYOND}:{LISTEN_PORT}": "take another VM's address",
        f"spoof:{free[0]}:{BEYOND}:{LISTEN_PORT}": "take a free address",
        f"mac:{SPOOF_MAC}:{BEYOND}:{LISTEN_PORT}": "take another MAC",
        f"arp:{vm_gateway}": "claim the master's address by ARP",
        f"arp:{victim['private_ip']}": "claim another VM's address by ARP",
        f"dhcpd:{free[1]}:{free[4]}:120": "answer DHCP",
        f"tcp:{BEYOND}:{LISTEN_PORT}": "the outside, through its NAT (allowed)",
    }
    cmdline = f"{guest['cmdline']} vcl.try={','.join(attempts)}"
    service.add_image("vcl-hostile", guest["disk_file"], kernel=guest["kernel"], ramdisk=guest["ramdisk"],
                      cmdline=cmdline, cores=1, ram_mb=128, disk_gb=1, url=url)

    sniffer = Sniffer(net.bridge_name(lab.name))
    try:
        must(reserve(lab, url, "-e", "hours=1", "-e", "cores=1", "-e", "image=vcl-hostile"),
             "the hostile guest's launch")
        hostile = newest(url)
        assert hostile["state"] == "running", hostile
        deadline, log = time.monotonic() + 300, ""
        while time.monotonic() < deadline and TRIES_DONE not in log:
            time.sleep(3)
            log = serial_log(lab, hostile["slave"], hostile["id"])
        assert TRIES_DONE in log, log[-3000:]
        # A DHCP client on the client machine asks while the rogue server runs.
        probe = lab.ssh("client", "sh", "-c",
                        "ip link add link eth0 name vcltestdh type macvlan && ip link set vcltestdh up && "
                        "busybox udhcpc -n -q -f -t 4 -T 2 -i vcltestdh -s /bin/true 2>&1; "
                        "ip link del vcltestdh", timeout=60)
        time.sleep(2)
    finally:
        sniffer.close()

    results = dict(TRY_RE.findall(log))
    assert set(results) == set(attempts), log[-3000:]
    wire = violations(sniffer.frames, hostile["mac"], hostile["private_ip"], master_mac, lab_net, vm_net)
    # The sniffer saw the guest's allowed traffic (its DHCP, its way out through the master): it was listening.
    seen = sum(1 for frame in sniffer.frames if mac_text(frame[6:12]) == hostile["mac"])
    peers = lab.ssh("client", "cat", PEERS_FILE).stdout.split()
    dhcp_rogue = hostile["private_ip"] in probe.stdout
    # Still served: the client reads the hostile VM's marker through its public address.
    public_ok = lab.marker(hostile["public_ip"]).startswith(f"vcl-guest ready {hostile['private_ip']}")

    table = [{"attempt": a, "what": what, "guest saw": results[a],
              "got through": results[a] in ("connected", "answered")} for a, what in attempts.items()]
    table += [{"attempt": "wire", "what": "frames that left the slave against the filter", "guest saw": len(wire),
               "got through": bool(wire)},
              {"attempt": "dhcp probe", "what": "a lab DHCP client leased from the rogue", "guest saw": dhcp_rogue,
               "got through": dhcp_rogue}]
    results_dir = REPO / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    Path(results_dir / "hostile_guest.json").write_text(json.dumps(
        {"attempts": table, "wire": wire[:50], "frames seen": seen, "listener peers": peers,
         "public address serves": public_ok},
        indent=2))

    allowed = f"tcp:{BEYOND}:{LISTEN_PORT}"
    through = [row for row in table if row["got through"] and row["attempt"] != allowed]
    assert not through, json.dumps(table, indent=1)
    assert seen > 0, "the sniffer saw no frame of the hostile guest"
    assert not wire, wire[:20]
    assert results[allowed] == "connected", "outbound NAT to the host beyond the lab failed"
    # Every connection the listener saw came masqueraded as the master, never from a VM's address.
    assert peers and set(peers) == {master}, peers
    assert public_ok
    # The victim is untouched: its marker still answers through its public address, from its own address.
    assert lab.marker(victim["public_ip"]).startswith(f"vcl-guest ready {victim['private_ip']}")
