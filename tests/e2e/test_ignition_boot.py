"""The real Ignition client provisions from bootcfg: Debian's `ignition` binary in
the guest's initramfs reads ignition.config.url from the kernel command line
bootcfg gave it, fetches the machine's config and the shared fragment it merges,
and writes their files into a tmpfs root. A machine whose config bootcfg refuses
sees Ignition fail, and nothing of that config is applied."""

import json
import re
import uuid as uuidlib

import pytest

from e2e_helpers import verdict
from helpers import IN_CI, write

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def ignition_initrd(guest_images):
    from assets import IGNITION, prepare_ignition
    import os
    if not os.path.exists(IGNITION):
        from e2e_helpers import missing
        missing(IGNITION + " (apt-get install ignition)")
    try:
        return prepare_ignition()
    except OSError as e:
        if IN_CI:
            raise
        pytest.skip("cannot build ignition.gz: %s" % e)


def ignition_boot_config(path, base):
    write(path, json.dumps({
        "kernel": "/images/vmlinuz",
        "initrd": ["/images/initrd.gz", "/images/ignition.gz"],
        "cmdline": {"console": "ttyS0", "panic": "-1", "loglevel": "4",
                    "flatcar.first_boot": "1",
                    "ignition.config.url": base + "/ignition?uuid=${uuid}&mac=${mac:hexhyp}",
                    "e2e.fetch_timeout": "10s"},
    }))


def files_of(text):
    return dict(re.findall(r"^E2E-FILE: (\S+) ?(.*?)\s*$", text, re.M))


def test_ignition_provisions_and_refuses(e2e_server, guests, ignition_initrd):
    token = uuidlib.uuid4().hex[:12]
    d, base = e2e_server.data, e2e_server.base
    ignition_boot_config(str(d / "boot/default"), base)
    write(str(d / "ignition/shared/role.ign"), json.dumps({
        "ignition": {"version": "3.3.0"},
        "storage": {"files": [{"path": "/etc/role", "mode": 420,
                               "contents": {"source": "data:,web-" + token}}]}}))
    write(str(d / "ignition/mac/52-54-00-e2-00-21"), json.dumps({
        "ignition": {"version": "3.3.0", "config": {"merge": [
            {"source": base + "/ignition/shared/role.ign"}]}},
        "storage": {"files": [{"path": "/etc/machine-name", "mode": 420,
                               "contents": {"source": "data:,node-" + token}}]}}))
    # refused by bootcfg: a relative path (ignition-validate: "path not absolute")
    write(str(d / "ignition/mac/52-54-00-e2-00-22"), json.dumps({
        "ignition": {"version": "3.3.0"},
        "storage": {"files": [
            {"path": "/etc/applied", "contents": {"source": "data:,should-not-exist"}},
            {"path": "etc/relative", "contents": {"source": "data:,x"}}]}}))
    net = "user,bootfile=http://10.0.2.2:%d/boot.ipxe" % e2e_server.port
    good = guests("ignition-good", "52:54:00:e2:00:21", net)
    bad = guests("ignition-refused", "52:54:00:e2:00:22", net)

    verdict(good, e2e_server, r"E2E-IGNITION-END")
    good.stop()
    text = good.text()
    assert "E2E-IGNITION: ok" in text, good.tail()
    written = files_of(text)
    assert written.get("/etc/machine-name") == "node-" + token, written
    assert written.get("/etc/role") == "web-" + token, written       # the merged fragment
    assert re.search(r"E2E-CMDLINE: .*ignition\.config\.url=http://10\.0\.2\.2:\d+/ignition"
                     r"\?uuid=[0-9a-f-]+&mac=52-54-00-e2-00-21", text)
    assert e2e_server.wait_log(r'"GET /ignition\?uuid=\S*&mac=52-54-00-e2-00-21" 200 .*'
                               r"file=ignition/mac/52-54-00-e2-00-21")
    assert e2e_server.wait_log(r'"GET /ignition/shared/role.ign" 200')

    verdict(bad, e2e_server, r"E2E-IGNITION-END", timeout=150)
    bad.stop()
    text = bad.text()
    assert "E2E-IGNITION: failed" in text, bad.tail()
    assert files_of(text) == {}, "nothing of a refused config may be applied"
    assert "should-not-exist" not in text.replace("data:,should-not-exist", "")
    assert e2e_server.wait_log(r'"GET /ignition\?\S*mac=52-54-00-e2-00-22" 500 .*\(invalid\)')
