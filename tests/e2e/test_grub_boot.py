r"""GRUB machines boot from bootcfg, on a private boot network (namespace, bridge,
taps) with dnsmasq running contrib/dnsmasq/bootcfg-secureboot.conf verbatim but
for its addresses: DHCP only; bootcfg serves TFTP (-tftp-address) and HTTP.

Secure Boot (OVMF with Microsoft's keys, Secure Boot on): the firmware loads
Debian's Microsoft-signed shim over TFTP, shim loads Debian's signed network GRUB
(which has no HTTP), GRUB reads grub/grub.cfg and the machine's answer over TFTP,
and boots Debian's signed cloud kernel. Three machines boot at once, each test
below checking one scenario of that run:

1. the Secure Boot chain reaches the machine's own cloud-config, whose URL
   carried its real uuid and mac, filled in by bootcfg;
2. a kernel whose signature was removed is refused by GRUB;
3. one machine is matched by SMBIOS UUID, one by MAC (a non-canonical file name);
4. arguments with ; $ # {} | & reach the kernel as written (', " and \ cannot:
   GRUB's linux command escapes them, so bootcfg refuses them in GRUB answers).

Without Secure Boot, an HTTP-speaking GRUB (grub-mkimage) proves the HTTP path:
it loads /grub/grub.cfg and /grub over HTTP, and the kernel and initrd from
(http,<bootcfg's address>:8080).
"""

import json
import os
import re
import shutil
import subprocess
import uuid as uuidlib

import pytest

from e2e_helpers import (TEST_NET, Guest, boot_network, missing, start_dnsmasq, substitute,
                         verdict)
from helpers import ROOT, ServerProcess, write

pytestmark = pytest.mark.e2e

RECIPE = os.path.join(ROOT, "contrib", "dnsmasq", "bootcfg-secureboot.conf")
SHIM = "/usr/lib/shim/shimx64.efi.signed"
SIGNED_GRUB = "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"
SERVER = TEST_NET + "1"
BASE = "http://%s:8080" % SERVER
UUID_MACHINE = "3f2a9c1e-7b4d-4e8a-9f10-2c6d8e0a1b55"
# GRUB's syntax characters. ' " and \ cannot reach a kernel through GRUB (its
# linux command escapes them); bootcfg refuses those for GRUB (tests/test_grub.py).
ODD_ARGS = ["semi=a;b", "dollar=$HOME", "hash=#not-a-comment", "braces={x}{y}",
            "all=$;#{}|&", "amp=a&&b"]


def need(*paths):
    for p in paths:
        if not os.path.exists(p):
            missing(p)


def images_dir(root, guest_images, grub):
    """An images directory: shim, a GRUB as grubx64.efi, kernel, initramfs and a
    copy of the kernel with its signature removed (sbattach --remove)."""
    os.makedirs(root, exist_ok=True)
    shutil.copyfile(SHIM, os.path.join(root, "shimx64.efi"))
    shutil.copyfile(grub, os.path.join(root, "grubx64.efi"))
    for name in ("vmlinuz", "initrd.gz"):
        shutil.copyfile(os.path.join(guest_images, name), os.path.join(root, name))
    unsigned = os.path.join(root, "vmlinuz-unsigned")
    shutil.copyfile(os.path.join(guest_images, "vmlinuz"), unsigned)
    subprocess.run(["sbattach", "--remove", unsigned], check=True,
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return root


def config(kernel="/images/vmlinuz", extra=()):
    return json.dumps({
        "kernel": kernel, "initrd": ["/images/initrd.gz"],
        "cmdline": ["console=ttyS0", "panic=-1", "loglevel=7"] + list(extra) + [
            "cloud-config-url=%s/cloud?uuid=${uuid}&mac=${mac:hexhyp}" % BASE]})


class Fleet:
    """bootcfg, dnsmasq and guests on one boot network; stops all of it."""

    def __init__(self, ns, workdir, images):
        self.ns, self.workdir = ns, workdir
        self.data = os.path.join(workdir, "data")
        os.makedirs(os.path.join(self.data, "boot"), exist_ok=True)
        self.dnsmasq = start_dnsmasq(ns, substitute(open(RECIPE).read()), workdir)
        self.server = ServerProcess(
            ["-address", SERVER + ":8080", "-tftp-address", SERVER + ":69",
             "-data-path", self.data, "-images-path", images],
            wrap=["ip", "netns", "exec", ns])
        self.guests = []

    def guest(self, qemu, name, mac, tap, firmware, uuid=None):
        g = Guest(qemu, self.workdir, name, mac, "tap,ifname=%s,script=no,downscript=no" % tap,
                  firmware=firmware, uuid=uuid, wrap=["ip", "netns", "exec", self.ns])
        self.guests.append(g)
        return g

    def stop(self):
        for g in self.guests:
            g.stop()
        self.server.stop()
        self.dnsmasq.kill()
        self.dnsmasq.wait()


def cmdline_of(console):
    m = re.search(r"^E2E-CMDLINE: (.*)$", console, re.M)
    return m.group(1).split() if m else None


@pytest.fixture(scope="module")
def secure_fleet(qemu, tmp_path_factory, guest_images):
    """The Secure Boot run: three machines at once; {name: console text}."""
    need(SHIM, SIGNED_GRUB, "/usr/share/OVMF/OVMF_CODE_4M.ms.fd")
    if shutil.which("sbattach") is None:
        missing("sbattach (apt-get install sbsigntool)")
    work = str(tmp_path_factory.mktemp("secureboot"))
    images = images_dir(os.path.join(work, "images"), guest_images, SIGNED_GRUB)
    token = uuidlib.uuid4().hex[:12]
    with boot_network("bootcfg-sb-%d" % os.getpid()) as ns:
        fleet = Fleet(ns, work, images)
        try:
            d = fleet.data
            write(os.path.join(d, "boot/uuid", UUID_MACHINE.upper()), config(extra=ODD_ARGS))
            write(os.path.join(d, "boot/mac/52-54-00-E2-02-0B"), config(extra=["by=mac"]))
            write(os.path.join(d, "boot/mac/52:54:00:e2:02:0c"),
                  config(kernel="/images/vmlinuz-unsigned"))
            write(os.path.join(d, "boot/default"), config(extra=["by=default-WRONG"]))
            write(os.path.join(d, "cloud/uuid", UUID_MACHINE),
                  "#cloud-config\nhostname: sb-uuid-%s\n" % token)
            write(os.path.join(d, "cloud/mac/52-54-00-e2-02-0b"),
                  "#cloud-config\nhostname: sb-mac-%s\n" % token)
            machines = {
                "uuid": fleet.guest(qemu, "sb-uuid", "52:54:00:e2:02:0a", "tap0",
                                    "efi-secure", uuid=UUID_MACHINE),
                "mac": fleet.guest(qemu, "sb-mac", "52:54:00:e2:02:0b", "tap1", "efi-secure"),
                "unsigned": fleet.guest(qemu, "sb-unsigned", "52:54:00:e2:02:0c", "tap2",
                                        "efi-secure"),
            }
            found = {}
            for name, g in machines.items():
                pattern = r"bad shim signature" if name == "unsigned" else r"E2E-CLOUD-END"
                fail = r"Kernel panic|E2E-RESULT: |EFI Shell" if name == "unsigned" else \
                    None
                try:
                    verdict(g, fleet.server, pattern, **({"fail": fail} if fail else {}))
                    found[name] = None
                except AssertionError as e:
                    found[name] = str(e)
                g.stop()
                found[name + ".console"] = g.text()
            found["log"] = fleet.server.log()
            write(os.path.join(work, "bootcfg.log"), found["log"])
            found["dnsmasq"] = ""
            found["token"] = token
        finally:
            fleet.stop()
            found["dnsmasq"] = fleet.dnsmasq.communicate()[0].decode("utf-8", "replace")[-3000:]
    return found


def ok(fleet, name):
    assert fleet[name] is None, fleet[name] + "\n---- dnsmasq ----\n" + fleet["dnsmasq"]
    return fleet[name + ".console"]


def test_secure_boot_chain_reaches_the_cloud_config(secure_fleet):
    """Scenario 1: shim -> signed GRUB -> signed kernel, all over bootcfg's TFTP;
    the kernel reports Secure Boot on; the cloud-config URL bootcfg filled in
    carried the machine's real uuid and mac."""
    console = ok(secure_fleet, "uuid")
    assert "Secure boot enabled" in console
    assert "E2E-CLOUD-BEGIN\n#cloud-config\nhostname: sb-uuid-%s\n" % secure_fleet["token"] \
        in console
    url = "%s/cloud?uuid=%s&mac=52-54-00-e2-02-0a" % (BASE, UUID_MACHINE)
    assert "E2E-URL: " + url in console
    log = secure_fleet["log"]
    for step in ("shimx64.efi", "grubx64.efi", "grub/grub.cfg", "grub?uuid=",
                 "images/vmlinuz", "images/initrd.gz"):
        assert re.search(r'"RRQ /?%s\S*" 200 \d+B' % re.escape(step), log), step
    assert '"GET /cloud?uuid=%s&mac=52-54-00-e2-02-0a" 200' % UUID_MACHINE in log


def test_secure_boot_refuses_an_unsigned_kernel(secure_fleet):
    """Scenario 2: the same chain with a kernel whose signature was removed: GRUB
    refuses it, and the machine never gets to Linux."""
    console = ok(secure_fleet, "unsigned")
    assert "bad shim signature" in console
    assert "E2E-INIT" not in console and "Linux version" not in console
    assert re.search(r'"RRQ /?images/vmlinuz-unsigned" 200', secure_fleet["log"])


def test_secure_boot_selects_by_uuid_and_by_mac(secure_fleet):
    """Scenario 3: one machine by its SMBIOS UUID (file named in upper case), one
    by MAC only (file named 52-54-00-E2-02-0B), booted at once."""
    token = secure_fleet["token"]
    by_uuid, by_mac = ok(secure_fleet, "uuid"), ok(secure_fleet, "mac")
    assert "hostname: sb-uuid-%s" % token in by_uuid
    assert "hostname: sb-mac-%s" % token in by_mac and "by=mac" in cmdline_of(by_mac)
    assert "by=default-WRONG" not in by_uuid + by_mac
    # QEMU has no SMBIOS serial (and the second machine no UUID): grub.cfg asks
    # anyway, and GRUB must not print an error for it.
    assert "error:" not in by_uuid + by_mac
    log = secure_fleet["log"]
    assert re.search(r'"RRQ /?grub\?uuid=%s&mac=52:54:00:e2:02:0a\S*" 200 .* file=boot/uuid/%s'
                     % (UUID_MACHINE, UUID_MACHINE.upper()), log)
    assert re.search(r'"RRQ /?grub\?uuid=0{8}-0{4}-0{4}-0{4}-0{12}&mac=52:54:00:e2:02:0b\S*" '
                     r"200 .* file=boot/mac/52-54-00-E2-02-0B", log)


def test_secure_boot_arguments_survive(secure_fleet):
    """Scenario 4: the config's arguments, with ; $ ' # and {}, are on the booted
    kernel's command line exactly as written, in order."""
    args = cmdline_of(ok(secure_fleet, "uuid"))
    assert args is not None
    wanted = ["console=ttyS0", "panic=-1", "loglevel=7"] + ODD_ARGS
    got = [a for a in args if a in wanted]
    assert got == wanted, args


def test_http_grub_boots_over_http(qemu, tmp_path, guest_images):
    """A GRUB with http (grub-mkimage, no Secure Boot): the firmware gets shim and
    this GRUB over bootcfg's TFTP; GRUB then loads /grub/grub.cfg, /grub, kernel
    and initrd over HTTP from the address the request came to."""
    from assets import prepare_grub_http
    need(SHIM, "/usr/share/OVMF/OVMF_CODE_4M.fd")
    if shutil.which("grub-mkimage") is None:
        missing("grub-mkimage (apt-get install grub-efi-amd64-bin grub-common)")
    images = images_dir(str(tmp_path / "images"), guest_images, prepare_grub_http())
    token = uuidlib.uuid4().hex[:12]
    with boot_network("bootcfg-gh-%d" % os.getpid()) as ns:
        fleet = Fleet(ns, str(tmp_path), images)
        try:
            write(os.path.join(fleet.data, "boot/default"), config(extra=["via=http"]))
            write(os.path.join(fleet.data, "cloud/default"),
                  "#cloud-config\nhostname: grub-http-%s\n" % token)
            g = fleet.guest(qemu, "grub-http", "52:54:00:e2:03:01", "tap0", "efi-pxe")
            verdict(g, fleet.server, r"E2E-CLOUD-END")
            console = g.text()
            log = fleet.server.log()
        finally:
            fleet.stop()
    assert "E2E-GRUB: a GRUB with http" in console
    # The test's own grub-mkimage GRUB has no video module (it says so); nothing
    # bootcfg sent may print an error.
    assert set(re.findall(r"error: .*", console)) <= {"error: no suitable video mode found."}
    assert "hostname: grub-http-%s" % token in console and "via=http" in cmdline_of(console)
    for step in ("GET /grub/grub.cfg", "GET /grub?uuid=", "GET /images/vmlinuz",
                 "GET /images/initrd.gz", "GET /cloud?uuid="):
        assert re.search(r'"%s\S*" 200' % re.escape(step), log), step
    assert not re.search(r'"RRQ /?(images/)?vmlinuz', log)   # the kernel came over HTTP
