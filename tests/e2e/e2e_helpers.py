"""End-to-end helpers: a QEMU guest (SeaBIOS or OVMF, with Debian's iPXE ROM)
with a watchdog, `-no-reboot` and its serial console streamed to a file, and the
verdict check that shows console and bootcfg log when it fails."""

import contextlib
import json
import os
import re
import shutil
import subprocess
import time

import pytest

from helpers import IN_CI, write

HERE = os.path.dirname(os.path.abspath(__file__))
OVMF = "/usr/share/ovmf/OVMF.fd"
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"           # with a writable VARS copy
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
OVMF_CODE_SB = "/usr/share/OVMF/OVMF_CODE_4M.ms.fd"     # Secure Boot, Microsoft keys
OVMF_VARS_SB = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
AAVMF_CODE = "/usr/share/AAVMF/AAVMF_CODE.fd"           # arm64 UEFI (qemu-efi-aarch64)
AAVMF_VARS = "/usr/share/AAVMF/AAVMF_VARS.fd"
IPXE_ROM = "/usr/lib/ipxe/qemu/efi-virtio.rom"       # BIOS + EFI iPXE for virtio-net
INSTALL = ("apt-get install qemu-system-x86 ipxe-qemu ovmf busybox-static dnsmasq ipxe "
           "iproute2, then python3 tests/e2e/assets.py")
# Recipes in contrib/dnsmasq are written for 192.168.122.0/24; the tests run them
# verbatim but for that, on TEST_NET inside a namespace of their own.
RECIPE_NET = "192.168.122."
TEST_NET = "10.231.0."
GUEST_TIMEOUT = float(os.environ.get("E2E_GUEST_TIMEOUT", "240"))
# Console lines that end a boot early: no need to wait for the watchdog.
FAILURES = (r"No bootable device|Kernel panic|E2E-RESULT: |Unable to mount root"
            r"|bootcfg: no boot script|EFI Shell|Boot Failed|bootcfg: no GRUB answer"
            r"|bad shim signature|you need to load the kernel first")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\r")


def missing(what):
    message = "end-to-end: %s is missing (%s)" % (what, INSTALL)
    if IN_CI:
        pytest.fail(message + "; .ci/run must install it")
    pytest.skip(message)


class Guest:
    """One QEMU machine. `firmware` is "bios" (SeaBIOS + iPXE ROM), "efi" (OVMF +
    iPXE ROM), "efi-pxe" (OVMF's own PXE: the NIC has no option ROM) or
    "efi-secure" (as efi-pxe, with Secure Boot on and Microsoft's keys), or
    "arm64" (qemu-system-aarch64 -M virt with AAVMF and its own PXE). With
    `disk` (a raw image) the firmware tries that disk first, then the network, and
    a reboot restarts the machine instead of ending QEMU."""

    def __init__(self, qemu, workdir, name, mac, netdev, firmware="bios", uuid=None,
                 wrap=(), extra=(), disk=None):
        self.name = name
        self.console = os.path.join(str(workdir), "%s.console" % name)
        nic = "virtio-net-pci,netdev=n0,mac=%s,bootindex=1" % mac
        if firmware == "bios":
            machine = ["-machine", "pc,graphics=off"]
        elif firmware == "efi":
            machine = ["-machine", "q35", "-bios", OVMF]
        elif firmware == "arm64":
            qemu = shutil.which("qemu-system-aarch64") or "qemu-system-aarch64"
            own_vars = os.path.join(str(workdir), "%s.vars.fd" % name)
            shutil.copyfile(AAVMF_VARS, own_vars)
            machine = ["-machine", "virt", "-cpu", "cortex-a57",
                       "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + AAVMF_CODE,
                       "-drive", "if=pflash,format=raw,unit=1,file=" + own_vars,
                       "-device", "virtio-rng-pci"]
            nic += ",romfile="                        # no x86 iPXE ROM on arm64
        else:
            secure = firmware == "efi-secure"
            code, vars_ = (OVMF_CODE_SB, OVMF_VARS_SB) if secure else (OVMF_CODE, OVMF_VARS)
            own_vars = os.path.join(str(workdir), "%s.vars.fd" % name)
            shutil.copyfile(vars_, own_vars)          # each guest its own NVRAM
            machine = ["-machine", "q35,smm=on" if secure else "q35",
                       "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + code,
                       "-drive", "if=pflash,format=raw,unit=1,file=" + own_vars,
                       # OVMF's network stack wants entropy (HTTP Boot and TLS).
                       "-device", "virtio-rng-pci"]
            if secure:
                machine += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
            nic += ",romfile="                        # no iPXE: the firmware's own PXE
        order = ["-drive", "file=%s,format=raw,if=none,id=d0" % disk,
                 "-device", "virtio-blk-pci,drive=d0,bootindex=0"] if disk else \
            ["-no-reboot", "-boot", "n"]
        cmd = list(wrap) + [qemu, "-accel", "tcg", "-m", "512", "-nodefaults",
                            "-display", "none", "-monitor", "none",
                            "-serial", "file:" + self.console] + order + machine + [
            "-netdev", "%s,id=n0" % netdev,
            # QEMU's default option ROM for virtio-net is IPXE_ROM (qemu -L help
            # lists /usr/lib/ipxe/qemu). Naming it in romfile= stops SeaBIOS from
            # booting it, so it is left implicit for the iPXE machines.
            "-device", nic]
        if uuid:
            cmd += ["-smbios", "type=1,uuid=%s" % uuid]
        cmd += list(extra)
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


def substitute(text):
    """A recipe with only its addresses changed."""
    return text.replace(RECIPE_NET, TEST_NET)


def start_dnsmasq(ns, conf_text, tmp_path, name="dnsmasq"):
    """dnsmasq in namespace `ns` with `conf_text`, logging to its stdout; the
    caller kills it."""
    work = str(tmp_path)
    conf = write(os.path.join(work, "%s.conf" % name), conf_text)
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, "dnsmasq", "--keep-in-foreground", "--log-facility=-",
         "--log-dhcp", "--conf-file=" + conf,
         "--dhcp-leasefile=" + os.path.join(work, "%s.leases" % name),
         "--pid-file=" + os.path.join(work, "%s.pid" % name)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _sh(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@contextlib.contextmanager
def boot_network(ns, taps=4):
    """Network namespace `ns` with bridge br-boot (TEST_NET.1/24) and tap0..tapN on
    it; everything in it is killed and the namespace removed afterwards."""
    if os.geteuid() != 0:
        missing("root (network namespaces, bridges and taps)")
    for tool in ("ip", "dnsmasq"):
        if shutil.which(tool) is None:
            missing(tool)
    subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
    _sh("ip", "netns", "add", ns)
    try:
        n = ["ip", "-n", ns]
        _sh(*n, "link", "set", "lo", "up")
        _sh(*n, "link", "add", "br-boot", "type", "bridge")
        _sh(*n, "addr", "add", TEST_NET + "1/24", "dev", "br-boot")
        _sh(*n, "link", "set", "br-boot", "up")
        for i in range(taps):
            _sh(*n, "tuntap", "add", "dev", "tap%d" % i, "mode", "tap")
            _sh(*n, "link", "set", "tap%d" % i, "master", "br-boot")
            _sh(*n, "link", "set", "tap%d" % i, "up")
        yield ns
    finally:
        pids = subprocess.run(["ip", "netns", "pids", ns], stdout=subprocess.PIPE,
                              text=True).stdout.split()
        for pid in pids:
            subprocess.run(["kill", "-9", pid], stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "netns", "del", ns])
