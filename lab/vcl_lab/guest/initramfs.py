"""The test guest's initramfs: a newc cpio written here (no host ``cpio``), holding a static busybox, the
kernel modules to load and an ``/init`` that prints ``vcl-guest: booted``, configures eth0 (``vcl.ip=ADDR/PREFIX``
[``vcl.gw=ADDR``] on the kernel command line, else DHCP with busybox udhcpc), prints ``vcl-guest: lease <ip>``
once and answers every TCP connection on MARKER_PORT with one line ``vcl-guest ready <ip> <mac>``.

With ``vcl.fill=PCT`` (0..45) it writes PCT % of its RAM with non-zero data before it answers, so a saved guest
carries that much memory (bench/lend.py).

With ``vcl.try=KIND:ARG[:ARG...][,...]`` on the command line the guest is hostile: once it has its address it
runs each attempt (TRY_SCRIPT: reach a host's port, take another address or MAC, claim an address by ARP,
answer DHCP) and prints one ``vcl-guest: try ...`` line per attempt (TRY_RE), then ``vcl-guest: tries done``.
The attempts are data the script parses, never commands it runs.

BOOTED_LINE, LEASE_RE and MARKER_RE are that contract as the tests read it.
"""

from __future__ import annotations

import re

MARKER_PORT = 80

BOOTED_LINE = "vcl-guest: booted"
#: The serial console's line once eth0 has an address (DHCP lease or vcl.ip=): group 1 is the address.
LEASE_RE = re.compile(r"^vcl-guest: lease (\d+\.\d+\.\d+\.\d+)\s*$", re.MULTILINE)
#: What each connection to MARKER_PORT reads: groups are the address and the MAC.
MARKER_RE = re.compile(r"^vcl-guest ready (\d+\.\d+\.\d+\.\d+) ([0-9a-f]{2}(?::[0-9a-f]{2}){5})\s*$", re.MULTILINE)
#: One hostile attempt's outcome: the attempt as given (KIND:ARGS) and connected (a TCP connection was made and
#: the peer spoke first), answered (the host refused: the packet reached it), blocked (no answer) or sent
#: (an attempt nothing answers: ARP claims, the DHCP server; the test watches the wire for those).
TRY_RE = re.compile(r"^vcl-guest: try (\S+) (connected|answered|blocked|sent|bad)\s*$", re.MULTILINE)
TRIES_DONE = "vcl-guest: tries done"

INIT_SCRIPT = r"""#!/bin/sh
# /init of the vcl test guest (written by vcl_lab.guest.initramfs). Busybox only; never exits.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
echo "vcl-guest: booted"
say() { echo "vcl-guest: $*"; }
hang() { say "error: $*"; while :; do sleep 3600; done; }
mkdir -p /run/vcl /tmp
while read -r mod; do
    insmod "/lib/modules/$mod" || say "error: insmod $mod failed"
done </etc/vcl/modules
i=0
while [ ! -e /sys/class/net/eth0 ]; do
    i=$((i + 1))
    [ "$i" -gt 300 ] && hang "no eth0 after 30 s"
    usleep 100000
done
STATIC=
GW=
TRY=
FILL=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vcl.ip=*) STATIC="${arg#vcl.ip=}" ;;
        vcl.gw=*) GW="${arg#vcl.gw=}" ;;
        vcl.try=*) TRY="${arg#vcl.try=}" ;;
        vcl.fill=*) FILL="${arg#vcl.fill=}" ;;
    esac
done
ip link set lo up
ip link set eth0 up
MAC=$(cat /sys/class/net/eth0/address)
if [ -n "$STATIC" ]; then
    ip addr add "$STATIC" dev eth0 || hang "bad vcl.ip=$STATIC"
    [ -n "$GW" ] && { ip route add default via "$GW" || say "error: bad vcl.gw=$GW"; }
    IP="${STATIC%/*}"
else
    # Wait for the carrier (virtio_net reports it a moment after probing): sent before, the first
    # DISCOVER could be dropped and udhcpc would retry only 2 s later. Not operstate: the kernel's
    # link watch updates that up to 1 s late although packets already flow.
    i=0
    while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ "$i" -lt 100 ]; do
        i=$((i + 1))
        usleep 50000
    done
    # Foreground (-f) in a background job: it keeps renewing; its script writes /run/vcl/ip.
    udhcpc -f -i eth0 -s /etc/vcl/udhcpc.sh -t 4 -T 2 -A 2 >/dev/null 2>&1 &
    while [ ! -s /run/vcl/ip ]; do usleep 100000; done
    IP=$(cat /run/vcl/ip)
fi
# vcl.fill=PCT (benchmarks): PCT % of the guest's RAM (at most 45: the root file system is a tmpfs of half the RAM)
# written with non-zero data before the marker answers, so a saved guest carries that much memory.
if echo "$FILL" | grep -Eq '^[0-9]{1,2}$' && [ "$FILL" -le 45 ]; then
    KB=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
    yes vcl-fill | head -c $((KB / 100 * FILL * 1024)) >/run/vcl/fill || say "error: cannot fill $FILL %"
    say "filled $FILL % of $((KB / 1024)) MB"
elif [ -n "$FILL" ]; then
    say "error: bad vcl.fill=$FILL (0..45)"
fi
echo "vcl-guest ready $IP $MAC" >/run/vcl/marker
# One line per connection, as many connections as come (-ll); restarted should nc ever stop.
(while :; do nc -ll -p 80 -e /etc/vcl/marker.sh; usleep 500000; done) </dev/null >/dev/null 2>&1 &
say "lease $IP"
# The disk's note (persistent disks): the first 64 bytes of /dev/vda hold "vcl-disk FIRST-MAC BOOTS". Every boot
# counts itself there, the first boot of a disk names its own MAC; port 81 answers with the note. A VM started
# from a kept disk thus tells which VM made the disk and how many boots it has seen.
if [ -b /dev/vda ]; then
    set -- $(dd if=/dev/vda bs=64 count=1 2>/dev/null | tr -d '\000' | head -n 1)
    if [ "$1" = vcl-disk ] && echo "$2" | grep -Eq '^[0-9a-f]{2}(:[0-9a-f]{2}){5}$' \
            && echo "$3" | grep -Eq '^[0-9]{1,9}$'; then
        FIRST=$2; BOOTS=$(($3 + 1))
    else
        FIRST=$MAC; BOOTS=1
    fi
    printf '%-63s\n' "vcl-disk $FIRST $BOOTS" | dd of=/dev/vda bs=64 count=1 conv=notrunc,fsync 2>/dev/null \
        || say "error: cannot write the disk's note"
    echo "vcl-disk $FIRST $BOOTS" >/run/vcl/disk
    (while :; do nc -ll -p 81 -e /etc/vcl/disk.sh; usleep 500000; done) </dev/null >/dev/null 2>&1 &
    say "disk $FIRST $BOOTS"
fi
[ -n "$TRY" ] && /etc/vcl/try.sh "$TRY" "$IP" &
while :; do wait; sleep 3600; done
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
# udhcpc event script of the vcl test guest: apply address and router, record the address.
case "$1" in
    deconfig)
        ip addr flush dev "$interface"
        ip link set "$interface" up
        ;;
    bound|renew)
        [ "$(cat /run/vcl/ip 2>/dev/null)" = "$ip" ] || ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface" 2>/dev/null
        if [ -n "$router" ]; then
            ip route del default 2>/dev/null
            for r in $router; do ip route add default via "$r" dev "$interface" && break; done
        fi
        echo "$ip" >/run/vcl/ip.new && mv /run/vcl/ip.new /run/vcl/ip
        ;;
esac
exit 0
"""

MARKER_SCRIPT = "#!/bin/sh\ncat /run/vcl/marker\n"
DISK_SCRIPT = "#!/bin/sh\ncat /run/vcl/disk\n"
#: The port that answers with the disk's note, and the note: groups are the MAC of the disk's first boot and the
#: number of boots the disk has seen.
DISK_PORT = 81
DISK_RE = re.compile(r"^vcl-disk ([0-9a-f]{2}(?::[0-9a-f]{2}){5}) ([0-9]+)\s*$", re.MULTILINE)

TRY_SCRIPT = r"""#!/bin/sh
# The hostile test guest's attempts (vcl_lab.guest.initramfs): $1 is vcl.try= (KIND:ARG... separated by ','),
# $2 the guest's own address. Each attempt prints "vcl-guest: try ATTEMPT RESULT". Only these kinds:
#   tcp:HOST:PORT            connect (connected: the peer spoke; answered: refused; blocked: nothing came back)
#   spoof:ADDR:HOST:PORT     the same from ADDR, an address that is not the guest's (added, then removed)
#   mac:MAC:HOST:PORT        the same with the interface's MAC changed to MAC (then put back)
#   arp:ADDR                 claim ADDR with unsolicited ARP replies (sent)
#   dhcpd:FIRST:LAST:SECONDS answer DHCP, offering FIRST..LAST, for SECONDS (sent)
say() { echo "vcl-guest: $*"; }
ok_addr() { echo "$1" | grep -Eq '^[0-9]{1,3}(\.[0-9]{1,3}){3}$'; }
ok_port() { echo "$1" | grep -Eq '^[0-9]{1,5}$'; }
connect() {  # HOST PORT -> connected | answered | blocked
    out=$(timeout 6 nc -w 3 "$1" "$2" </dev/null 2>/tmp/try.err | head -c 64)
    if [ -n "$out" ]; then echo connected
    elif grep -qi refused /tmp/try.err; then echo answered
    else echo blocked; fi
}
SELF="$2"
MAC0=$(cat /sys/class/net/eth0/address)
IFS_SAVED="$IFS"
IFS=,
for attempt in $1; do
    IFS="$IFS_SAVED"
    kind="${attempt%%:*}"
    rest="${attempt#*:}"
    a="${rest%%:*}"; rest2="${rest#*:}"
    b="${rest2%%:*}"; rest3="${rest2#*:}"
    c="${rest3%%:*}"
    case "$kind" in
        tcp)
            if ok_addr "$a" && ok_port "$b"; then say "try $attempt $(connect "$a" "$b")"
            else say "try $attempt bad"; fi ;;
        spoof)
            if ok_addr "$a" && ok_addr "$b" && ok_port "$c"; then
                ip addr add "$a/32" dev eth0
                ip route add "$b/32" dev eth0 src "$a" 2>/dev/null || ip route replace "$b/32" dev eth0 src "$a"
                say "try $attempt $(connect "$b" "$c")"
                ip route del "$b/32" 2>/dev/null
                ip addr del "$a/32" dev eth0
            else say "try $attempt bad"; fi ;;
        mac)
            m=$(echo "$rest" | cut -d: -f1-6); h=$(echo "$rest" | cut -d: -f7); p=$(echo "$rest" | cut -d: -f8)
            if echo "$m" | grep -Eq '^[0-9a-f]{2}(:[0-9a-f]{2}){5}$' && ok_addr "$h" && ok_port "$p"; then
                ip link set eth0 address "$m"
                say "try $attempt $(connect "$h" "$p")"
                ip link set eth0 address "$MAC0"
            else say "try $attempt bad"; fi ;;
        arp)
            if ok_addr "$a"; then arping -U -c 3 -s "$a" -I eth0 "$a" >/dev/null 2>&1; say "try $attempt sent"
            else say "try $attempt bad"; fi ;;
        dhcpd)
            if ok_addr "$a" && ok_addr "$b" && ok_port "$c"; then
                printf 'start %s\nend %s\ninterface eth0\nlease_file /tmp/udhcpd.leases\n' "$a" "$b" >/tmp/udhcpd.conf
                printf 'option subnet 255.255.255.0\noption router %s\n' "$SELF" >>/tmp/udhcpd.conf
                touch /tmp/udhcpd.leases
                (timeout "$c" udhcpd -f /tmp/udhcpd.conf >/dev/null 2>&1 &)
                say "try $attempt sent"
            else say "try $attempt bad"; fi ;;
        *) say "try $attempt bad" ;;
    esac
    IFS=,
done
IFS="$IFS_SAVED"
say "tries done"
"""


S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = 0o040000, 0o100000, 0o120000, 0o020000


class CpioWriter:
    """A newc ("070701") cpio archive, as the kernel unpacks an initramfs. Deterministic: owner root,
    mtime 0, inode numbers in order of addition. Parents must be added before their children."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._ino = 0
        self._names: set[str] = set()
        self._closed = False

    def _entry(self, name: str, mode: int, data: bytes = b"", *, nlink: int = 1, rdev: tuple[int, int] = (0, 0)):
        if self._closed:
            raise ValueError("archive already finished")
        name = name.strip("/")
        if not name or name in self._names:
            raise ValueError(f"bad or duplicate cpio entry name: {name!r}")
        parent = name.rpartition("/")[0]
        if parent and parent not in self._names:
            raise ValueError(f"cpio entry {name!r} added before its directory {parent!r}")
        self._names.add(name)
        self._ino += 1
        self._chunks.append(self._header(self._ino, mode, len(data), nlink, rdev, name))
        self._chunks.append(data + _pad4(len(data)))

    @staticmethod
    def _header(ino: int, mode: int, size: int, nlink: int, rdev: tuple[int, int], name: str) -> bytes:
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
        return header + _pad4(len(header))

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, S_IFDIR | mode, nlink=2)

    def add_dirs(self, name: str, mode: int = 0o755) -> None:
        """Add ``name`` and any missing parents."""
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            path = "/".join(parts[:i])
            if path not in self._names:
                self.add_dir(path, mode)

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, S_IFREG | mode, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._entry(name, S_IFLNK | 0o777, target.encode())

    def add_char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        if not self._closed:
            self._chunks.append(self._header(0, 0, 0, 1, (0, 0), "TRAILER!!!"))
            self._closed = True
        return b"".join(self._chunks)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def build_initramfs(busybox: bytes, kernel_release: str, modules: list[tuple[str, bytes]]) -> bytes:
    """The guest's initramfs as an uncompressed newc cpio. ``modules``: (relative path, bytes) in load order."""
    cpio = CpioWriter()
    for d in ("bin", "dev", "etc", "etc/vcl", "proc", "sys", "run", "tmp", "root"):
        cpio.add_dir(d, 0o1777 if d == "tmp" else 0o755)
    # The kernel opens /dev/console for /init before /init can mount devtmpfs.
    cpio.add_char_device("dev/console", 5, 1)
    cpio.add_char_device("dev/null", 1, 3, 0o666)
    cpio.add_file("bin/busybox", busybox, 0o755)
    cpio.add_symlink("bin/sh", "busybox")
    cpio.add_file("init", INIT_SCRIPT.encode(), 0o755)
    cpio.add_file("etc/vcl/udhcpc.sh", UDHCPC_SCRIPT.encode(), 0o755)
    cpio.add_file("etc/vcl/marker.sh", MARKER_SCRIPT.encode(), 0o755)
    cpio.add_file("etc/vcl/disk.sh", DISK_SCRIPT.encode(), 0o755)
    cpio.add_file("etc/vcl/try.sh", TRY_SCRIPT.encode(), 0o755)
    base = f"lib/modules/{kernel_release}"
    listing = []
    for rel, data in modules:
        path = f"{base}/{rel}"
        cpio.add_dirs(path.rpartition("/")[0])
        cpio.add_file(path, data)
        listing.append(f"{kernel_release}/{rel}")
    cpio.add_file("etc/vcl/modules", "".join(f"{m}\n" for m in listing).encode())
    return cpio.finish()
