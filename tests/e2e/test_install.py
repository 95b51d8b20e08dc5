"""A machine's life on real firmware: install to disk, boot from it, reprovision.

The machine has a blank virtual disk and boots disk first, then network:

1. first power-on: the disk boots nothing, the firmware network-boots (iPXE),
   and bootcfg's group for its MAC answers the *install* profile;
2. the installer in the live image fetches the installed answer with the same
   query plus os=installed, writes the OS image and that config to the disk,
   and reboots;
3. the disk boots (GRUB from the disk); the real Ignition client applies the
   installed config read from the disk: its own line for the file it wrote is on
   the console, and the file holds the hostname from the group's metadata (the
   OS image holds none);
4. a second power-on boots from disk and never asks bootcfg: no access line
   between power-on and the verdict, and the machine's /status.json record is
   unchanged;
5. reprovision: the disk's first MiB wiped, the machine installs again.

BIOS (SeaBIOS + iPXE ROM, GRUB i386-pc on the disk) runs the whole cycle; UEFI
(OVMF + iPXE ROM, GRUB x86_64-efi on an EFI system partition) steps 1-3."""

import json
import os
import re
import shutil
import uuid as uuidlib

import pytest

from e2e_helpers import missing, verdict
from helpers import write

pytestmark = pytest.mark.e2e

MAC = {"bios": "52:54:00:e2:04:01", "efi": "52:54:00:e2:04:02"}
DISK_TOOLS = ("grub-mkimage", "mformat", "mcopy", "sfdisk")


@pytest.fixture(scope="session")
def os_images(guest_images):
    from assets import IGNITION
    for tool in DISK_TOOLS:
        if shutil.which(tool) is None:
            missing(tool + " (apt-get install grub-pc-bin grub-efi-amd64-bin mtools fdisk)")
    for path in ("/usr/lib/grub/i386-pc/boot.img", IGNITION):
        if not os.path.exists(path):
            missing(path + " (apt-get install grub-pc-bin ignition)")
    from disk import prepare_os_image
    return {platform: prepare_os_image(platform) for platform in ("bios", "efi")}


def install_data(data, base, platform, mac, hostname, config_mib):
    """The bundled example's shape: one group per stage of the machine's life,
    told apart by the os=installed label."""
    write(str(data / "profiles/install.json"), json.dumps({
        "id": "install", "name": "live image that installs to disk",
        "boot": {"kernel": "/images/vmlinuz",
                 "initrd": ["/images/initrd.gz", "/images/ignition.gz", "/images/blk.gz",
                            "/images/disk.gz"],
                 "args": ["console=ttyS0", "panic=-1", "loglevel=4",
                          "e2e.install=%s/ignition?uuid=${uuid}&mac=${mac:hexhyp}"
                          "&os=installed" % base,
                          "e2e.image=%s/images/os-%s.img" % (base, platform),
                          "e2e.config_mib=%d" % config_mib]}}))
    write(str(data / "profiles/installed.json"), json.dumps({
        "id": "installed", "name": "installed on disk: its Ignition config",
        "ignition_id": "installed.ign"}))
    write(str(data / "ignition/installed.ign"), json.dumps({
        "ignition": {"version": "3.3.0"},
        "storage": {"files": [{"path": "/etc/hostname", "mode": 420, "overwrite": True,
                               "contents": {"source": "data:,{{.hostname}}"}}]}}))
    write(str(data / "groups/install.json"), json.dumps({
        "id": "install", "profile": "install", "selector": {"mac": mac}}))
    write(str(data / "groups/installed.json"), json.dumps({
        "id": "installed", "profile": "installed",
        "selector": {"mac": mac, "os": "installed"}, "metadata": {"hostname": hostname}}))


def new_disk(path, size):
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def record_of(server, mac):
    machines = json.loads(server.get("/status.json")[2])["machines"]
    found = [m for m in machines if m.get("mac") == mac]
    return found[0] if found else None


def steps_1_to_3(server, guests, os_images, tmp_path, platform):
    """Power on with a blank disk; returns (guest, disk path, hostname)."""
    image, config_mib = os_images[platform]
    mac = MAC[platform]
    hostname = "node-%s-%s" % (platform, uuidlib.uuid4().hex[:8])
    install_data(server.data, server.base, platform, mac, hostname, config_mib)
    disk = new_disk(str(tmp_path / ("%s.disk" % platform)), os.path.getsize(image) + (8 << 20))
    net = "user,bootfile=http://10.0.2.2:%d/boot.ipxe" % server.port
    g = guests("install-" + platform, mac, net, firmware=platform, disk=disk)
    verdict(g, server, r"E2E-INSTALL: done")
    hyphen = mac.replace(":", "-")
    assert server.wait_log(r'"GET /ipxe\?\S*mac=%s\S*" 200 .*\(group groups/install\.json, '
                           r"profile install\)" % hyphen)
    assert server.wait_log(r'"GET /ignition\?uuid=\S*&mac=%s&os=installed" 200 .*'
                           r"ignition/installed\.ign \(group groups/installed\.json"
                           % hyphen)
    # 3: the machine reboots into its disk
    m = verdict(g, server, r"E2E-IGNITION-END")
    text = g.text()
    after = text[text.index("E2E-INSTALL: done"):]
    assert "E2E-DISK: GRUB %s on the installed disk" % (
        "i386-pc" if platform == "bios" else "x86_64-efi") in after
    assert "E2E-IGNITION: ok" in after, g.tail()
    assert re.search(r'E2E-IGNITION-LOG: .*writing file "/sysroot/etc/hostname"', after), \
        g.tail()
    assert "E2E-FILE: /etc/hostname %s" % hostname in after
    with open(image, "rb") as f:
        assert hostname.encode() not in f.read()
    assert m is not None
    return g, disk, hostname


def test_bios_machine_installs_boots_from_disk_and_reprovisions(
        e2e_server, guests, os_images, tmp_path):
    server = e2e_server
    mac = MAC["bios"]
    g, disk, hostname = steps_1_to_3(server, guests, os_images, tmp_path, "bios")
    g.proc.wait(60)                 # the installed system powers off after Ignition
    g.stop()

    # 4: a second power-on boots from the disk and never asks bootcfg
    before = record_of(server, mac)
    assert before is not None
    lines = len(server.lines)
    again = guests("installed-bios", mac, "user,bootfile=http://10.0.2.2:%d/boot.ipxe"
                   % server.port, firmware="bios", disk=disk)
    verdict(again, server, r"E2E-IGNITION-END")
    again.stop()
    text = again.text()
    # SeaBIOS booted the disk and never the NIC's iPXE ROM
    assert "Booting from Hard Disk" in text and "Booting from ROM" not in text, again.tail()
    assert "E2E-INSTALL" not in text
    assert "E2E-FILE: /etc/hostname %s" % hostname in text
    news = [line for line in server.lines[lines:]       # (this test's own reads aside)
            if '"GET ' in line and '"GET /status.json"' not in line]
    assert news == [], "the installed machine asked bootcfg:\n" + "\n".join(news)
    assert record_of(server, mac) == before

    # 5: reprovision: wipe the first MiB, and it installs again
    with open(disk, "r+b") as f:
        f.write(bytes(1 << 20))
    lines = len(server.lines)
    third = guests("reinstall-bios", mac, "user,bootfile=http://10.0.2.2:%d/boot.ipxe"
                   % server.port, firmware="bios", disk=disk)
    verdict(third, server, r"E2E-INSTALL: done")
    third.stop()
    assert server.wait_log(r'"GET /ignition\?uuid=\S*&mac=%s&os=installed" 200'
                           % mac.replace(":", "-"), start=lines)


def test_uefi_machine_installs_and_boots_from_disk(e2e_server, guests, os_images, tmp_path):
    g, _, _ = steps_1_to_3(e2e_server, guests, os_images, tmp_path, "efi")
    g.stop()
