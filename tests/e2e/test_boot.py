"""Real firmware boots real Linux from bootcfg: each test is one scenario of the
end-to-end suite. Guests run under TCG (no KVM), a few seconds each.

User-mode networking: 10.0.2.2 inside the guest is the host's 127.0.0.1, and
QEMU's own DHCP hands iPXE `bootfile=http://10.0.2.2:PORT/boot.ipxe`.
"""

import pytest

import re
import time
import uuid as uuidlib

from e2e_helpers import boot_config, cloud_of, verdict
from helpers import write

pytestmark = pytest.mark.e2e

BIOS_UUID = "9b2e4f10-5c3a-4d7e-8f1b-2a6c9d0e1f23"


def user_net(server):
    return "user,bootfile=http://10.0.2.2:%d/boot.ipxe" % server.port


def nonce():
    return uuidlib.uuid4().hex[:12]


def test_bios_ipxe_chainload(e2e_server, guests):
    """Scenario 1: SeaBIOS + iPXE ROM chainloads boot.ipxe, boots the kernel and
    initramfs from /images, and the guest fetches its own cloud-config."""
    token = nonce()
    boot_config(str(e2e_server.data / "boot/default"), e2e_server.base, "bios")
    write(str(e2e_server.data / "cloud/mac/52-54-00-e2-00-01"),
          "#cloud-config\nhostname: bios-%s\n" % token)
    g = guests("bios", "52:54:00:e2:00:01", user_net(e2e_server), firmware="bios")
    m = verdict(g, e2e_server, r"E2E-CLOUD-BEGIN.*?E2E-CLOUD-END")
    assert cloud_of(m.group(0)) == "#cloud-config\nhostname: bios-%s\n" % token
    assert re.search(r"E2E-CMDLINE: .*e2e\.machine=bios", g.text())
    assert e2e_server.wait_log(r'"GET /images/initrd.gz" 200')
    # and /status saw it through: every expected step, handed off
    import json
    status, _, body = e2e_server.get("/status.json")
    machine = [m for m in json.loads(body)["machines"] if m["mac"] == "52:54:00:e2:00:01"][0]
    assert machine["state"] == "handed off", machine
    assert machine["expected"] == ["kernel", "initrd initrd.gz", "cloud-config"]
    assert machine["platform"] == "pcbios" and machine["arch"] == "x86_64"  # a 32-bit ROM, a 64-bit CPU


def test_uefi_boots_without_initrd_in_config(e2e_server, guests):
    """Scenario 2: OVMF + EFI iPXE. The config says nothing about initrd=; only
    bootcfg's initrd=<name> argument lets the EFI stub find the initramfs."""
    token = nonce()
    boot_config(str(e2e_server.data / "boot/default"), e2e_server.base, "efi")
    cfg = open(str(e2e_server.data / "boot/default")).read()
    assert "initrd=" not in cfg
    write(str(e2e_server.data / "cloud/default"), "#cloud-config\nhostname: efi-%s\n" % token)
    g = guests("efi", "52:54:00:e2:00:02", user_net(e2e_server), firmware="efi")
    m = verdict(g, e2e_server, r"E2E-CLOUD-BEGIN.*?E2E-CLOUD-END")
    assert cloud_of(m.group(0)) == "#cloud-config\nhostname: efi-%s\n" % token
    assert e2e_server.wait_log(r"platform=efi")


def test_selection_uuid_mac_default(e2e_server, guests):
    """Scenario 3: three machines at once. The UUID machine also has a MAC file
    and must get its UUID file; the MAC machine's file is named in upper case with
    hyphens; the unknown machine gets the default."""
    d, token = e2e_server.data, nonce()
    boot_config(str(d / "boot/default"), e2e_server.base, "default")
    boot_config(str(d / "boot/uuid" / BIOS_UUID.upper()), e2e_server.base, "by-uuid")
    boot_config(str(d / "boot/mac/52-54-00-E2-00-0A"), e2e_server.base, "uuid-machine-mac")
    boot_config(str(d / "boot/mac/52-54-00-E2-00-0B"), e2e_server.base, "by-mac")
    write(str(d / "cloud/default"), "#cloud-config\nhostname: default-%s\n" % token)
    write(str(d / "cloud/uuid" / BIOS_UUID), "#cloud-config\nhostname: uuid-%s\n" % token)
    write(str(d / "cloud/mac/52-54-00-E2-00-0A"), "#cloud-config\nhostname: WRONG\n")
    write(str(d / "cloud/mac/52-54-00-E2-00-0B"), "#cloud-config\nhostname: mac-%s\n" % token)
    net = user_net(e2e_server)
    machines = [
        (guests("by-uuid", "52:54:00:e2:00:0a", net, uuid=BIOS_UUID), "by-uuid", "uuid"),
        (guests("by-mac", "52:54:00:e2:00:0b", net), "by-mac", "mac"),
        (guests("unknown", "52:54:00:e2:00:0c", net), "default", "default"),
    ]
    for g, boot_tag, cloud_name in machines:
        m = verdict(g, e2e_server, r"E2E-CLOUD-BEGIN.*?E2E-CLOUD-END")
        g.stop()
        assert cloud_of(m.group(0)) == "#cloud-config\nhostname: %s-%s\n" % (cloud_name, token), \
            g.name
        assert re.search(r"E2E-CMDLINE: .*e2e\.machine=%s( |$)" % boot_tag, g.text(), re.M), \
            g.name


def test_refused_machine_fails_promptly(e2e_server, guests):
    """Scenario 5: no config for the machine and no default. iPXE's chain gets a
    404, the chainload script says so on the console, and the test sees it long
    before any watchdog."""
    boot_config(str(e2e_server.data / "boot/mac/52-54-00-e2-00-99"), e2e_server.base, "other")
    g = guests("refused", "52:54:00:e2:00:05", user_net(e2e_server))
    started = time.monotonic()
    m = verdict(g, e2e_server, r"bootcfg: no boot script for uuid \S+ mac 52:54:\s*00:e2:00:05",
                timeout=120, fail=r"No bootable device|E2E-INIT")
    seconds = time.monotonic() - started
    assert m and e2e_server.wait_log(r'"GET /ipxe\?\S+" 404 .* file=no match')
    print("refused machine reported after %.1fs" % seconds)
    assert "E2E-INIT" not in g.text()
