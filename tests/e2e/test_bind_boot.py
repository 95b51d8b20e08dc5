"""-bind-configs on a real boot network: in a network namespace with dnsmasq as
the DHCP server (the README's recipe), a QEMU machine running the real Ignition
client gets its Ignition config from bootcfg, bound by dnsmasq's leases file or
by the kernel's neighbor table; a second host on the same bridge (its own
namespace, address and MAC) asking for that machine's config by MAC, or for a
UUID-selected one, gets 403."""

import json
import os
import re
import subprocess
import uuid as uuidlib

import pytest

from e2e_helpers import TEST_NET, _sh, start_dnsmasq, substitute, verdict
from helpers import ROOT, write
from test_ignition_boot import files_of, ignition_boot_config, ignition_initrd  # noqa: F401

pytestmark = pytest.mark.e2e

RECIPE = os.path.join(ROOT, "contrib", "dnsmasq", "bootcfg.conf")
MAC, OTHER_UUID = "52:54:00:e2:00:31", "0b7e6c52-3f0a-4d8e-9a51-6c2f8e1d4b77"
INTRUDER_MAC, INTRUDER_IP = "52:54:00:e2:00:99", TEST_NET + "99"


@pytest.fixture
def intruder(boot_netns):
    """A second host on br-boot: its own namespace, address and MAC."""
    ns = boot_netns + "-intruder"
    subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
    _sh("ip", "netns", "add", ns)
    try:
        _sh("ip", "-n", boot_netns, "link", "add", "veth-b", "type", "veth", "peer",
            "name", "veth-i")
        _sh("ip", "-n", boot_netns, "link", "set", "veth-i", "netns", ns)
        _sh("ip", "-n", boot_netns, "link", "set", "veth-b", "master", "br-boot", "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        _sh("ip", "-n", ns, "link", "set", "veth-i", "address", INTRUDER_MAC)
        _sh("ip", "-n", ns, "addr", "add", INTRUDER_IP + "/24", "dev", "veth-i")
        _sh("ip", "-n", ns, "link", "set", "veth-i", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns])


def get_from_namespace(ns, url):
    """(status, body) of GET `url` from a process in namespace `ns`."""
    code = ("import sys, urllib.request, urllib.error\n"
            "try:\n    r = urllib.request.urlopen(sys.argv[1], timeout=10)\n"
            "    print(r.status); print(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code); print(e.read().decode())\n")
    out = subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", code, url],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=30).stdout
    status, _, body = out.partition("\n")
    assert status.isdigit(), out
    return int(status), body


@pytest.mark.parametrize("source", ["leases", "neighbors"])
def test_a_machine_gets_its_ignition_and_a_neighbor_gets_403(
        boot_netns, intruder, start_server, guests, guest_images, ignition_initrd,
        tmp_path, source):
    ns, in_ns = boot_netns, ["ip", "netns", "exec", boot_netns]
    dnsmasq = start_dnsmasq(ns, substitute(open(RECIPE).read()), tmp_path)
    try:
        leases = str(tmp_path / "dnsmasq.leases")
        for _ in range(100):                       # dnsmasq creates it as it starts
            if os.path.exists(leases):
                break
            subprocess.run(["sleep", "0.1"])
        token = uuidlib.uuid4().hex[:12]
        base = "http://%s1:8080" % TEST_NET
        data = tmp_path / "data"
        ignition_boot_config(str(data / "boot/default"), base)
        write(str(data / "ignition/mac" / MAC.replace(":", "-")), json.dumps({
            "ignition": {"version": "3.3.0"},
            "storage": {"files": [{"path": "/etc/secret", "mode": 384,
                                   "contents": {"source": "data:,token-" + token}}]}}))
        write(str(data / "ignition/uuid" / OTHER_UUID), json.dumps({
            "ignition": {"version": "3.3.0"}}))
        assert os.path.dirname(ignition_initrd) == guest_images
        server = start_server("-address", TEST_NET + "1:8080", "-data-path", str(data),
                              "-images-path", guest_images,
                              "-bind-configs", leases if source == "leases" else "neighbors",
                              wrap=in_ns)
        g = guests("bound-" + source, MAC, "tap,ifname=tap0,script=no,downscript=no",
                   uuid=str(uuidlib.uuid4()), wrap=in_ns)
        verdict(g, server, r"E2E-IGNITION-END")
        g.stop()
        text = g.text()
        assert "E2E-IGNITION: ok" in text, g.tail()
        assert files_of(text).get("/etc/secret") == "token-" + token
        m = server.wait_log(r'(\S+) "GET /ignition\?uuid=\S*&mac=52-54-00-e2-00-31" 200 .*'
                            r"file=ignition/mac/52-54-00-e2-00-31")
        assert m and m.group(1).startswith(TEST_NET), server.log()[-2000:]

        status, body = get_from_namespace(intruder, base + "/ignition?mac=" + MAC)
        assert status == 403, body
        assert "token-" not in body
        status, body = get_from_namespace(intruder, base + "/ignition?uuid=" + OTHER_UUID)
        assert status == 403, body
        if source == "leases":
            assert "%s holds no current DHCP lease" % INTRUDER_IP in body
        else:
            assert "selected by UUID alone" in body
            status, body = get_from_namespace(
                intruder, base + "/ignition?mac=" + MAC.replace(":", "-"))
            assert "(that is %s)" % INTRUDER_MAC in body
        # the boot script stays open: the firmware asks before any OS runs
        assert get_from_namespace(intruder, base + "/ipxe?mac=" + MAC)[0] == 200
        assert re.search(r"%s \"GET /ignition\?mac=%s\" 403" % (
            re.escape(INTRUDER_IP), re.escape(MAC)), server.log())
    finally:
        dnsmasq.kill()
        dnsmasq.wait()
