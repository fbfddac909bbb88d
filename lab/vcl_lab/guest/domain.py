"""A libvirt domain for the test guest: software emulation, the kernel booted directly (used by the tests)."""

from __future__ import annotations

from xml.etree import ElementTree as ET


def domain_xml(
    name: str,
    *,
    kernel: str,
    initrd: str,
    cmdline: str,
    serial_log: str,
    bridge: str = "br0",
    mac: str | None = None,
    disk: str | None = None,
    memory_mib: int = 192,
    on_reboot: str = "destroy",
) -> str:
    """A minimal ``qemu`` (software emulation) domain booting the guest's kernel directly.

    ACPI on (a poweroff hangs without it), no USB, one virtio NIC on ``bridge``, the serial console in a
    file (``serial_log``), an optional virtio disk (a qcow2 overlay of disk.qcow2). Paths are on
    the libvirt host. A guest that panics (panic=-1) reboots, which ``on_reboot=destroy`` ends."""
    dom = ET.Element("domain", type="qemu")
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = str(memory_mib)
    ET.SubElement(dom, "vcpu").text = "1"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_el, "kernel").text = kernel
    ET.SubElement(os_el, "initrd").text = initrd
    ET.SubElement(os_el, "cmdline").text = cmdline
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(dom, "clock", offset="utc")
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = on_reboot
    ET.SubElement(dom, "on_crash").text = "destroy"
    devices = ET.SubElement(dom, "devices")
    if disk:
        disk_el = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk_el, "driver", name="qemu", type="qcow2")
        ET.SubElement(disk_el, "source", file=disk)
        ET.SubElement(disk_el, "target", dev="vda", bus="virtio")
    iface = ET.SubElement(devices, "interface", type="bridge")
    if mac:
        ET.SubElement(iface, "mac", address=mac)
    ET.SubElement(iface, "source", bridge=bridge)
    ET.SubElement(iface, "model", type="virtio")
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=serial_log)
    ET.SubElement(serial, "target", port="0")
    # No USB controller: the kernel's USB handoff quirk costs ~0.45 s under emulation.
    ET.SubElement(devices, "controller", type="usb", model="none")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")
