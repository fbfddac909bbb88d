"""The tiny bootable test guest: a Debian kernel, a busybox initramfs and an empty qcow2 base.

Built by the project's own code from two Debian packages and cached under ``CACHE_DIR/guest/<key>/``
(``CACHE_DIR/guest/current`` points at the newest build):

- ``vmlinux``: the *uncompressed* ELF kernel, taken out of the package's bzImage (kernel.py).
- ``initrd.img``: a gzip'd newc cpio with a static busybox, the virtio modules and an ``/init`` that
  configures eth0 and answers on MARKER_PORT (initramfs.py).
- ``disk.qcow2``: a small empty qcow2 to use as a launch's backing image (build.py, with the download,
  the assembly and the cache).

domain.py writes a libvirt domain that boots it (the tests use it).

    from vcl_lab.guest import ensure_guest
    g = ensure_guest()                    # cold: 5-9 s here (downloads ~72 MB); cached: ~1 s (apt-cache)
    g.vmlinux, g.initrd, g.disk, g.cmdline, g.marker_port
    g.static_cmdline("192.168.0.10/24", "192.168.0.1")
"""

from vcl_lab.guest.build import Guest, GuestInputs, current_guest, ensure_guest, prune_guests, resolve_inputs
from vcl_lab.guest.domain import domain_xml
from vcl_lab.guest.initramfs import BOOTED_LINE, LEASE_RE, MARKER_PORT, MARKER_RE

__all__ = [
    "BOOTED_LINE",
    "LEASE_RE",
    "MARKER_PORT",
    "MARKER_RE",
    "Guest",
    "GuestInputs",
    "current_guest",
    "domain_xml",
    "ensure_guest",
    "prune_guests",
    "resolve_inputs",
]
