"""Scenario 4: the seed's network recipe, for real, in a network namespace made
by the test: a bridge and a tap device, dnsmasq as DHCP server running the
README's configuration (contrib/dnsmasq/bootcfg.conf, addresses substituted),
bootcfg listening on the bridge address, and a QEMU guest on the tap.

DHCP -> boot.ipxe -> /ipxe -> kernel + initrd -> DHCP again -> cloud-config.
"""

import pytest

import os
import re
import uuid as uuidlib

from e2e_helpers import TEST_NET, boot_config, cloud_of, start_dnsmasq, substitute, verdict
from helpers import ROOT, write

pytestmark = pytest.mark.e2e

RECIPE = os.path.join(ROOT, "contrib", "dnsmasq", "bootcfg.conf")


def test_recipe_is_what_readme_shows():
    """docs/network.md quotes the recipe; the test below runs the file itself."""
    readme = open(os.path.join(ROOT, "docs", "network.md")).read()
    recipe = open(RECIPE).read()
    for line in ("dhcp-userclass=set:ipxe,iPXE",
                 "dhcp-boot=tag:ipxe,http://192.168.122.1:8080/boot.ipxe",
                 "dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe"):
        assert line in recipe and line in readme


def test_dnsmasq_recipe_boots_a_machine(boot_netns, start_server, guests, guest_images,
                                        tmp_path):
    ns = boot_netns
    in_ns = ["ip", "netns", "exec", ns]
    recipe = substitute(open(RECIPE).read())
    assert re.search(r"^interface=br-boot$", recipe, re.M)
    dnsmasq = start_dnsmasq(ns, recipe, tmp_path)
    try:
        data = tmp_path / "data"
        token = uuidlib.uuid4().hex[:12]
        base = "http://%s1:8080" % TEST_NET
        boot_config(str(data / "boot/default"), base, "dnsmasq")
        write(str(data / "cloud/default"), "#cloud-config\nhostname: lan-%s\n" % token)
        server = start_server("-address", TEST_NET + "1:8080", "-data-path", str(data),
                              "-images-path", guest_images, wrap=in_ns)
        g = guests("lan", "52:54:00:e2:01:01", "tap,ifname=tap0,script=no,downscript=no",
                   wrap=in_ns)
        try:
            m = verdict(g, server, r"E2E-CLOUD-BEGIN.*?E2E-CLOUD-END")
        except AssertionError as e:
            dnsmasq.kill()
            raise AssertionError("%s\n---- dnsmasq ----\n%s" % (
                e, dnsmasq.communicate()[0].decode("utf-8", "replace")[-3000:])) from None
        assert cloud_of(m.group(0)) == "#cloud-config\nhostname: lan-%s\n" % token
        console = g.text()
        # iPXE got its address and the bootcfg URL from dnsmasq, not from QEMU.
        assert re.search(r"net0: %s\d+/255\.255\.255\.0" % re.escape(TEST_NET), console)
        assert "Filename: %s/boot.ipxe" % base in console
        assert "E2E-DHCP: eth0 %s" % TEST_NET in console
        for step in ("/boot.ipxe", "/ipxe?", "/images/vmlinuz", "/images/initrd.gz", "/cloud?"):
            assert server.wait_log(r'"GET %s\S*" 200' % re.escape(step)), step
    finally:
        dnsmasq.kill()
        dnsmasq.wait()
