"""arm64 beside x86_64, from one data directory, on one boot network at once.

dnsmasq runs contrib/dnsmasq/bootcfg-mixed-arch.conf (addresses substituted) as
DHCP only; every boot file comes from bootcfg's TFTP. Three machines power on
together:

- arm64 (qemu-system-aarch64 -M virt, AAVMF): firmware PXE -> Debian's signed
  grubnetaa64.efi -> grub/grub.cfg -> its GRUB answer (arch=arm64) -> the
  bundled arm64 profile's kernel and busybox initramfs, all over TFTP;
- x86_64 UEFI (OVMF's own PXE): ipxe.efi over TFTP -> boot.ipxe -> /ipxe;
- BIOS with an iPXE ROM: boot.ipxe -> /ipxe.

The arm64 group and profile are the bundled data/ files, copied verbatim; the
x86_64 machines get the x86_64 group's profile."""

import json
import os
import re
import shutil
import time
import uuid as uuidlib

import pytest

from e2e_helpers import (AAVMF_CODE, TEST_NET, Guest, boot_network, missing, start_dnsmasq,
                         substitute, verdict)
from helpers import ROOT, ServerProcess, write

pytestmark = pytest.mark.e2e

RECIPE = os.path.join(ROOT, "contrib", "dnsmasq", "bootcfg-mixed-arch.conf")
SERVER = TEST_NET + "1"
BASE = "http://%s:8080" % SERVER
IPXE = {"undionly.kpxe": "/usr/lib/ipxe/undionly.kpxe", "ipxe.efi": "/usr/lib/ipxe/ipxe.efi"}
MACS = {"arm64": "52:54:00:e2:05:01", "uefi": "52:54:00:e2:05:02",
        "bios": "52:54:00:e2:05:03"}


@pytest.fixture(scope="module")
def arm64_assets():
    if shutil.which("qemu-system-aarch64") is None or not os.path.exists(AAVMF_CODE):
        missing("qemu-system-aarch64 and AAVMF (apt-get install qemu-system-arm "
                "qemu-efi-aarch64)")
    from arm64 import prepare_arm64
    try:
        return prepare_arm64()
    except (OSError, RuntimeError) as e:
        missing("the arm64 packages (dpkg --add-architecture arm64; apt-get update): %s" % e)


def images_dir(root, guest_images, arm64):
    for name, src in list(IPXE.items()) + [
            ("vmlinuz", os.path.join(guest_images, "vmlinuz")),
            ("initrd.gz", os.path.join(guest_images, "initrd.gz"))] + list(arm64.items()):
        dest = os.path.join(root, name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(src, dest)
    return root


def mixed_data(data, token):
    for rel in ("groups/arm64.json", "profiles/arm64-live.json"):
        dest = os.path.join(str(data), rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(os.path.join(ROOT, "data", rel), dest)
    write(os.path.join(str(data), "groups/x86_64.json"), json.dumps({
        "id": "x86_64", "profile": "x86-live", "selector": {"arch": "x86_64"}}))
    write(os.path.join(str(data), "profiles/x86-live.json"), json.dumps({
        "id": "x86-live", "boot": {
            "kernel": "/images/vmlinuz", "initrd": ["/images/initrd.gz"],
            "args": ["console=ttyS0", "panic=-1", "loglevel=4", "e2e.profile=x86_64",
                     "cloud-config-url=%s/cloud?uuid=${uuid}&mac=${mac:hexhyp}" % BASE]}}))
    write(os.path.join(str(data), "cloud/default"), "#cloud-config\nhostname: x86-%s\n" % token)


def test_arm64_and_x86_64_machines_boot_their_own_profiles_at_once(
        qemu, tmp_path, guest_images, arm64_assets):
    for path in IPXE.values():
        if not os.path.exists(path):
            missing(path + " (apt-get install ipxe)")
    work = str(tmp_path)
    images = images_dir(os.path.join(work, "images"), guest_images, arm64_assets)
    data = tmp_path / "data"
    token = uuidlib.uuid4().hex[:12]
    mixed_data(data, token)
    with boot_network("bootcfg-mixed-%d" % os.getpid()) as ns:
        in_ns = ["ip", "netns", "exec", ns]
        dnsmasq = start_dnsmasq(ns, substitute(open(RECIPE).read()), work)
        server = ServerProcess(["-address", SERVER + ":8080", "-tftp-address", SERVER + ":69",
                                "-data-path", str(data), "-images-path", images],
                               wrap=in_ns)
        guests = {}
        try:
            started = time.monotonic()
            for n, (name, firmware) in enumerate((("arm64", "arm64"), ("uefi", "efi-pxe"),
                                                  ("bios", "bios"))):
                guests[name] = Guest(qemu, work, "mixed-" + name, MACS[name],
                                     "tap,ifname=tap%d,script=no,downscript=no" % n,
                                     firmware=firmware, wrap=in_ns)
            m = verdict(guests["arm64"], server, r"E2E-ARM64: (\S+) (.*)")
            arm64_seconds = time.monotonic() - started
            guests["arm64"].stop()
            for name in ("uefi", "bios"):
                verdict(guests[name], server, r"E2E-CLOUD-END")
                guests[name].stop()
        finally:
            for g in guests.values():
                g.stop()
            server.stop()
            dnsmasq.kill()
            dnsmasq.wait()
    log = server.log()
    arm = guests["arm64"].text()
    assert m.group(1) == "aarch64"
    assert "console=ttyAMA0" in m.group(2) and "e2e.profile" not in m.group(2)
    assert "error:" not in arm, guests["arm64"].tail()
    for step in ("grubnetaa64.efi", "grub/grub.cfg", "grub?uuid=", "assets/arm64/vmlinuz",
                 "assets/arm64/initrd.gz"):
        assert re.search(r'"RRQ /?%s\S*" 200' % re.escape(step), log), step
    assert re.search(r'"RRQ /?grub\?\S*mac=%s\S*arch=arm64\S*" 200 .*\(group '
                     r"groups/arm64\.json, profile arm64-live\)" % MACS["arm64"], log), log
    for name in ("uefi", "bios"):
        text = guests[name].text()
        assert "e2e.profile=x86_64" in text and "hostname: x86-%s" % token in text, \
            guests[name].tail()
        hyphen = MACS[name].replace(":", "-")
        assert re.search(r'"GET /ipxe\?\S*mac=%s\S*arch=x86_64\S*" 200 .*\(group '
                         r"groups/x86_64\.json, profile x86-live\)" % hyphen, log), name
    assert re.search(r'"RRQ /?ipxe\.efi" 200', log)         # x86-64 UEFI, client arch 7
    kernel = re.search(r'"RRQ /?assets/arm64/vmlinuz" 200 (\d+)B ([\d.]+)ms', log)
    print("arm64: power-on to its init %.0f s; the %d MB kernel over bootcfg's TFTP "
          "in %.1f s" % (arm64_seconds, int(kernel.group(1)) >> 20,
                         float(kernel.group(2)) / 1000))
