"""End-to-end helpers: a QEMU guest (SeaBIOS or OVMF, with Debian's iPXE ROM)
with a watchdog, `-no-reboot` and its serial console streamed to a file, and the
verdict check that shows console and bootcfg log when it fails."""

import json
import os
import re
import subprocess
import time

import pytest

from helpers import IN_CI, write

HERE = os.path.dirname(os.path.abspath(__file__))
OVMF = "/usr/share/ovmf/OVMF.fd"
IPXE_ROM = "/usr/lib/ipxe/qemu/efi-virtio.rom"       # BIOS + EFI iPXE for virtio-net
INSTALL = ("apt-get install qemu-system-x86 ipxe-qemu ovmf busybox-static dnsmasq ipxe "
           "iproute2, then python3 tests/e2e/assets.py")
GUEST_TIMEOUT = float(os.environ.get("E2E_GUEST_TIMEOUT", "240"))
# Console lines that end a boot early: no need to wait for the watchdog.
FAILURES = (r"No bootable device|Kernel panic|E2E-RESULT: |Unable to mount root"
            r"|bootcfg: no boot script|EFI Shell|Boot Failed")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\r")


def missing(what):
    message = "end-to-end: %s is missing (%s)" % (what, INSTALL)
    if IN_CI:
        pytest.fail(message + "; .ci/run must install it")
    pytest.skip(message)


class Guest:
    """One QEMU machine. `firmware` is "bios" (SeaBIOS) or "efi" (OVMF)."""

    def __init__(self, qemu, workdir, name, mac, netdev, firmware="bios", uuid=None,
                 wrap=()):
        self.name = name
        self.console = os.path.join(str(workdir), "%s.console" % name)
        machine = ["-machine", "pc,graphics=off"] if firmware == "bios" else \
            ["-machine", "q35", "-bios", OVMF]
        cmd = list(wrap) + [qemu, "-accel", "tcg", "-m", "384", "-nodefaults",
                            "-display", "none", "-monitor", "none", "-no-reboot",
                            "-serial", "file:" + self.console, "-boot", "n"] + machine + [
            "-netdev", "%s,id=n0" % netdev,
            # QEMU's default option ROM for virtio-net is IPXE_ROM (qemu -L help
            # lists /usr/lib/ipxe/qemu). Naming it in romfile= stops SeaBIOS from
            # booting it, so it is left implicit.
            "-device", "virtio-net-pci,netdev=n0,mac=%s,bootindex=1" % mac]
        if uuid:
            cmd += ["-smbios", "type=1,uuid=%s" % uuid]
        self.cmd = cmd
        self.started = time.monotonic()
        self._output = None
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def text(self):
        try:
            with open(self.console, "rb") as f:
                return ANSI.sub("", f.read().decode("utf-8", "replace"))
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern, timeout=GUEST_TIMEOUT, fail=FAILURES):
        """The first match of `pattern` (re.S) on the console; None as soon as the
        guest stops, prints one of `fail`, or the watchdog fires."""
        rx, bad = re.compile(pattern, re.S), re.compile(fail) if fail else None
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            m = rx.search(text)
            if m:
                return m
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return rx.search(self.text())
            if bad is not None and bad.search(text):
                time.sleep(0.5)              # let the console catch up for the report
                return rx.search(self.text())
            time.sleep(0.2)

    def stop(self):
        """Kill the guest (if running); returns what QEMU printed."""
        if self._output is None:
            if self.proc.poll() is None:
                self.proc.kill()
            out = self.proc.communicate()[0]
            self._output = out.decode("utf-8", "replace") if out else ""
        return self._output

    def tail(self, lines=40):
        return "\n".join(self.text().splitlines()[-lines:])


def verdict(guest, server, pattern, timeout=GUEST_TIMEOUT, fail=FAILURES):
    """Wait for `pattern` on the guest console; on failure the assertion shows the
    console tail and bootcfg's log."""
    m = guest.wait_for(pattern, timeout, fail)
    if m is None:
        elapsed = time.monotonic() - guest.started
        state = "exited %s after %.0fs" % (guest.proc.returncode, elapsed) \
            if guest.proc.poll() is not None else "stopped after %.0fs" % elapsed
        qemu_out = guest.stop()
        raise AssertionError(
            "guest %s never printed %r (%s)\n---- guest console (tail) ----\n%s\n"
            "---- qemu ----\n%s\n---- bootcfg log (tail) ----\n%s"
            % (guest.name, pattern, state, guest.tail(), qemu_out[-2000:],
               "\n".join(server.log().splitlines()[-30:])))
    return m


def cloud_of(match_text):
    m = re.search(r"E2E-CLOUD-BEGIN\n(.*?)\nE2E-CLOUD-END", match_text, re.S)
    return m.group(1) if m else None


def boot_config(path, base_url, tag):
    """A boot config for the test kernel; `tag` shows up on the guest's cmdline."""
    write(path, json.dumps({
        "kernel": "/images/vmlinuz",
        "initrd": ["/images/initrd.gz"],
        "cmdline": {"console": "ttyS0", "panic": "-1", "loglevel": "4",
                    "e2e.machine": tag,
                    "cloud-config-url": base_url + "/cloud?uuid=${uuid}&mac=${mac:hexhyp}"},
    }))
