"""Every way a machine reaches bootcfg, on private boot networks (namespaces,
bridge, taps), with the recipes in contrib/dnsmasq used verbatim but for their
addresses:

1. UEFI firmware PXE (no iPXE ROM) -> TFTP ipxe.efi from dnsmasq -> iPXE -> bootcfg
   (bootcfg.conf);
2. UEFI HTTP Boot, no TFTP: the firmware downloads ipxe.efi from bootcfg's
   /images/ (bootcfg-httpboot.conf);
3. proxy-DHCP beside another DHCP server that owns the addresses: a BIOS machine
   (iPXE ROM) and a UEFI machine (firmware PXE) both boot (bootcfg-proxy.conf);
4. recipe mistakes, each with its own failure: without the user-class line iPXE
   is handed iPXE again and loops; without the client-architecture match a UEFI
   machine is handed the BIOS binary and the firmware refuses it.
"""

import os
import re
import shutil
import subprocess
import uuid as uuidlib

import pytest

from e2e_helpers import (TEST_NET, Guest, boot_config, cloud_of, missing, start_dnsmasq,
                         substitute, verdict)
from helpers import ROOT, ServerProcess, write

pytestmark = pytest.mark.e2e

RECIPES = os.path.join(ROOT, "contrib", "dnsmasq")
SERVER = TEST_NET + "1"
BASE = "http://%s:8080" % SERVER
IPXE_EFI = "/usr/lib/ipxe/ipxe.efi"
UNDIONLY = "/usr/lib/ipxe/undionly.kpxe"
# OVMF's fw_cfg switches: no PXE boot options, so HTTP Boot is tried first rather
# than after PXEv4 and PXEv6 time out (about two minutes under TCG).
NO_PXE = ["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n",
          "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n"]


def recipe(name, without=()):
    """contrib/dnsmasq/<name>, addresses substituted, minus lines containing any
    of `without` (the negative tests)."""
    text = substitute(open(os.path.join(RECIPES, name)).read())
    for fragment in without:
        lines = [ln for ln in text.splitlines() if fragment in ln and
                 not ln.lstrip().startswith("#")]
        assert lines, "%s has no line with %r" % (name, fragment)
        text = "\n".join(ln for ln in text.splitlines() if ln not in lines) + "\n"
    return text


class Net:
    """bootcfg and a dnsmasq on the namespace's bridge, and guests on its taps."""

    def __init__(self, ns, tmp_path, guest_images, conf):
        for f in (IPXE_EFI, UNDIONLY):
            if not os.path.exists(f):
                missing(f)
        self.ns, self.tmp = ns, tmp_path
        self.images = tmp_path / "images"
        self.images.mkdir()
        for name in ("vmlinuz", "initrd.gz"):     # copies: a symlink out is refused (403)
            shutil.copyfile(os.path.join(guest_images, name), str(self.images / name))
        shutil.copyfile(IPXE_EFI, str(self.images / "ipxe.efi"))
        self.data = tmp_path / "data"
        self.token = uuidlib.uuid4().hex[:12]
        boot_config(str(self.data / "boot/default"), BASE, "net")
        write(str(self.data / "cloud/default"), "#cloud-config\nhostname: net-%s\n" % self.token)
        self.dnsmasqs = [start_dnsmasq(ns, conf, tmp_path)]
        self.server = ServerProcess(["-address", SERVER + ":8080", "-data-path", str(self.data),
                                     "-images-path", str(self.images)],
                                    wrap=["ip", "netns", "exec", ns])
        self.guests = []

    def guest(self, qemu, name, mac, tap, firmware, extra=()):
        g = Guest(qemu, self.tmp, name, mac, "tap,ifname=%s,script=no,downscript=no" % tap,
                  firmware=firmware, wrap=["ip", "netns", "exec", self.ns], extra=extra)
        self.guests.append(g)
        return g

    def boots(self, g):
        """The guest's own cloud-config arrived; the dnsmasq log on failure."""
        try:
            m = verdict(g, self.server, r"E2E-CLOUD-BEGIN.*?E2E-CLOUD-END")
        except AssertionError as e:
            raise AssertionError("%s\n---- dnsmasq ----\n%s" % (
                e, self.dnsmasq_log()[-4000:])) from None
        assert cloud_of(m.group(0)) == "#cloud-config\nhostname: net-%s\n" % self.token
        g.stop()
        return g.text()

    def dnsmasq_log(self):
        out = []
        for d in self.dnsmasqs:
            if d.poll() is None:
                d.kill()
            out.append(d.communicate()[0].decode("utf-8", "replace"))
        self.dnsmasqs = []
        return "\n".join(out)

    def stop(self):
        for g in self.guests:
            g.stop()
        self.server.stop()
        for d in self.dnsmasqs:
            if d.poll() is None:
                d.kill()
            d.wait()


@pytest.fixture
def net(boot_netns, tmp_path, guest_images):
    made = []

    def start(conf):
        n = Net(boot_netns, tmp_path, guest_images, conf)
        made.append(n)
        return n

    yield start
    for n in made:
        n.stop()


def test_uefi_firmware_pxe_gets_ipxe_over_tftp(qemu, net):
    """Scenario 1: OVMF's own PXE client (the NIC has no option ROM) gets ipxe.efi
    from dnsmasq's TFTP; iPXE asks again as iPXE and boots from bootcfg."""
    n = net(recipe("bootcfg.conf"))
    g = n.guest(qemu, "uefi-pxe", "52:54:00:e2:04:01", "tap0", "efi-pxe")
    console = n.boots(g)
    assert "UEFI PXEv4" in console and "iPXE" in console
    assert "Filename: %s/boot.ipxe" % BASE in console
    for step in ("/boot.ipxe", "/ipxe?", "/images/vmlinuz", "/images/initrd.gz", "/cloud?"):
        assert n.server.wait_log(r'"GET %s\S*" 200' % re.escape(step)), step
    assert n.server.wait_log(r"platform=efi")


def test_uefi_http_boot_without_tftp(qemu, net):
    """Scenario 2: OVMF HTTP Boot: the firmware itself downloads ipxe.efi from
    bootcfg's /images/ (served as application/efi), which boots the machine."""
    n = net(recipe("bootcfg-httpboot.conf"))
    assert "enable-tftp" not in open(os.path.join(RECIPES, "bootcfg-httpboot.conf")).read()
    g = n.guest(qemu, "uefi-http", "52:54:00:e2:04:02", "tap0", "efi-pxe", extra=NO_PXE)
    console = n.boots(g)
    assert "HTTP" in console
    log = n.server.log()
    assert re.search(r'"(HEAD|GET) /images/ipxe.efi" 200', log), log
    for step in ("/boot.ipxe", "/ipxe?", "/images/vmlinuz", "/images/initrd.gz", "/cloud?"):
        assert n.server.wait_log(r'"GET %s\S*" 200' % re.escape(step)), step


def link_office_dhcp(ns, tmp_path):
    """A second namespace, the office's own DHCP server (10.231.0.2), joined to
    the boot network's bridge by a veth pair; it hands out addresses only."""
    office = ns + "-office"
    subprocess.run(["ip", "netns", "del", office], stderr=subprocess.DEVNULL)
    run = lambda *c: subprocess.run(c, check=True, stdout=subprocess.PIPE,  # noqa: E731
                                    stderr=subprocess.PIPE)
    run("ip", "netns", "add", office)
    run("ip", "-n", ns, "link", "add", "veth-office", "type", "veth", "peer", "name", "eth0",
        "netns", office)
    run("ip", "-n", ns, "link", "set", "veth-office", "master", "br-boot")
    run("ip", "-n", ns, "link", "set", "veth-office", "up")
    run("ip", "-n", office, "link", "set", "lo", "up")
    run("ip", "-n", office, "addr", "add", TEST_NET + "2/24", "dev", "eth0")
    run("ip", "-n", office, "link", "set", "eth0", "up")
    conf = ("port=0\nbind-interfaces\ninterface=eth0\n"
            "dhcp-range=%s100,%s199,255.255.255.0,1h\ndhcp-authoritative\n"
            % (TEST_NET, TEST_NET))
    return office, start_dnsmasq(office, conf, tmp_path, name="office-dhcp")


def test_proxy_dhcp_beside_another_dhcp_server(qemu, net, boot_netns, tmp_path):
    """Scenario 3: the office DHCP server owns the addresses; bootcfg's dnsmasq
    runs bootcfg-proxy.conf. A BIOS machine (iPXE ROM) and a UEFI machine (firmware
    PXE) both boot to their cloud-configs."""
    n = net(recipe("bootcfg-proxy.conf"))
    office, office_dhcp = link_office_dhcp(boot_netns, tmp_path)
    n.dnsmasqs.append(office_dhcp)
    try:
        bios = n.guest(qemu, "proxy-bios", "52:54:00:e2:05:01", "tap0", "bios")
        uefi = n.guest(qemu, "proxy-uefi", "52:54:00:e2:05:02", "tap1", "efi-pxe")
        for g in (bios, uefi):
            n.boots(g)
        log = n.dnsmasq_log()
        for mac in ("52:54:00:e2:05:01", "52:54:00:e2:05:02"):
            # the office server gave the address, bootcfg's dnsmasq only the boot file
            assert re.search(r"DHCPACK\(eth0\) %s1\d\d %s" % (re.escape(TEST_NET), mac), log)
            assert re.search(r"PXE\(br-boot\) (%s\S* )?%s proxy" % (re.escape(TEST_NET), mac),
                             log), mac
            assert not re.search(r"DHCPACK\(br-boot\) \S+ %s" % mac, log)
        assert n.server.wait_log(r"platform=pcbios") and n.server.wait_log(r"platform=efi")
    finally:
        subprocess.run(["ip", "netns", "pids", office], stdout=subprocess.PIPE)
        office_dhcp.kill()
        subprocess.run(["ip", "netns", "del", office])


def test_without_the_user_class_line_ipxe_loops(qemu, net):
    """Scenario 4a: bootcfg.conf without dhcp-userclass: iPXE is never told apart
    from the firmware, is handed ipxe.efi again and again, and never reaches bootcfg."""
    n = net(recipe("bootcfg.conf", without=["dhcp-userclass"]))
    g = n.guest(qemu, "loop", "52:54:00:e2:06:01", "tap0", "efi-pxe")
    # The iPXE that DHCP answered runs ipxe.efi again: the loop, seen at its first turn.
    m = g.wait_for(r"iPXE initialising.*?Filename: ipxe\.efi\s+tftp://\S+/ipxe\.efi\.\.\. ok"
                   r"\s+ipxe\.efi : \d+ bytes \[EFI\]\s+iPXE initialising", timeout=120,
                   fail=r"E2E-INIT|Kernel panic")
    g.stop()
    assert m, g.tail()
    assert n.server.wait_log(r'"GET /boot.ipxe', timeout=0.1) is None   # never reached bootcfg


def test_without_the_client_arch_match_uefi_gets_the_bios_binary(qemu, net):
    """Scenario 4b: bootcfg.conf without the client-arch lines: a UEFI machine is
    handed undionly.kpxe, a BIOS program, and the firmware refuses to run it."""
    n = net(recipe("bootcfg.conf", without=["option:client-arch"]))
    g = n.guest(qemu, "wrong-binary", "52:54:00:e2:06:02", "tap0", "efi-pxe")
    m = g.wait_for(r"undionly\.kpxe.*?(Load Error|failed to load|Unsupported|not found)",
                   timeout=120, fail=r"E2E-INIT|iPXE initialising")
    text = g.text()
    g.stop()
    assert m, text[-3000:]
    assert "E2E-INIT" not in text and "iPXE initialising" not in text
