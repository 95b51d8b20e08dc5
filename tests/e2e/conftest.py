"""End-to-end fixtures: real QEMU guests booting from a real bootcfg.

Locally, missing tools skip these tests with an install hint; with CI=true they fail.
"""

import os
import shutil
import subprocess

import pytest

from e2e_helpers import IPXE_ROM, OVMF, Guest, boot_network, missing
from helpers import IN_CI


@pytest.fixture(scope="session")
def qemu():
    path = shutil.which("qemu-system-x86_64")
    if path is None:
        missing("qemu-system-x86_64")
    for f in (OVMF, IPXE_ROM, "/bin/busybox"):
        if not os.path.exists(f):
            missing(f)
    return path


@pytest.fixture(scope="session")
def guest_images(qemu):
    """Directory holding vmlinuz and initrd.gz, served as bootcfg's -images-path."""
    from assets import prepare
    try:
        vmlinuz, _ = prepare()
    except (OSError, subprocess.CalledProcessError, RuntimeError) as e:
        if IN_CI:
            raise
        pytest.skip("end-to-end: cannot build the guest kernel/initramfs: %s" % e)
    return os.path.dirname(vmlinuz)


@pytest.fixture
def guests(qemu, tmp_path):
    """guests(name, mac, netdev, firmware="bios", uuid=None, wrap=()) -> Guest;
    all are killed after the test."""
    started = []

    def start(name, mac, netdev, **kw):
        g = Guest(qemu, tmp_path, name, mac, netdev, **kw)
        started.append(g)
        return g

    yield start
    for g in started:
        g.stop()


@pytest.fixture
def e2e_server(start_server, tmp_path, guest_images):
    """bootcfg on 127.0.0.1 with an empty data dir; `.base` is its URL as guests
    see it. Tests add configs while it runs (hot reload is part of the check)."""
    data = tmp_path / "data"
    for d in ("boot/uuid", "boot/mac", "cloud/uuid", "cloud/mac"):
        (data / d).mkdir(parents=True)
    server = start_server("-data-path", str(data), "-images-path", guest_images)
    server.data = data
    server.base = "http://10.0.2.2:%d" % server.port
    return server


@pytest.fixture
def boot_netns(qemu):
    """A network namespace with bridge br-boot (TEST_NET.1/24) and tap0..tap3 on
    it: a private boot network for dnsmasq, bootcfg and guests."""
    with boot_network("bootcfg-e2e-%d" % os.getpid()) as ns:
        yield ns
