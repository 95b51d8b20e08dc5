"""The arm64 machine's assets, from Debian's arm64 packages (`dpkg
--add-architecture arm64`, `apt-get update`, `apt-get download <name>:arm64`,
`dpkg-deb -x`), cached in .cache/e2e/ beside assets.py's:

    grubnetaa64.efi   Debian's signed arm64 network GRUB (grub-efi-arm64-signed)
    arm64/vmlinuz     Debian's arm64 cloud kernel (an uncompressed Image, EFI stub)
    arm64/initrd.gz   arm64 busybox (busybox-static) and an init that prints the
                      machine's architecture and kernel command line, then powers off

The paths are the bundled data's: data/profiles/arm64-live.json boots
/assets/arm64/vmlinuz and /assets/arm64/initrd.gz.

    python3 tests/e2e/arm64.py       # prepare (CI does this in .ci/run)
"""

import glob
import gzip
import hashlib
import os
import stat
import subprocess
import sys
import tempfile

from assets import CACHE, Cpio, kernel_package, log, put

PACKAGES = ("grub-efi-arm64-signed:arm64", "busybox-static:arm64")
KERNEL_PACKAGE = "linux-image-cloud-arm64:arm64"
ARM64_INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
echo "E2E-ARM64: $(/bin/busybox uname -m) $(/bin/busybox cat /proc/cmdline)"
/bin/busybox poweroff -f
"""
OUT = ("grubnetaa64.efi", "arm64/vmlinuz", "arm64/initrd.gz")


def build_initrd(busybox):
    cpio = Cpio()
    for d in ("bin", "dev", "proc", "sys"):
        cpio.add(d, stat.S_IFDIR | 0o755)
    cpio.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    cpio.add("bin/busybox", stat.S_IFREG | 0o755, busybox)
    cpio.add("init", stat.S_IFREG | 0o755, ARM64_INIT.encode())
    return gzip.compress(cpio.finish(), mtime=0)


def prepare_arm64():
    """{name: path} of the arm64 assets, downloaded and built once."""
    paths = {name: os.path.join(CACHE, name) for name in OUT}
    stamp = os.path.join(CACHE, "arm64", "stamp")
    key = hashlib.sha256(ARM64_INIT.encode()).hexdigest()
    if os.path.exists(stamp) and open(stamp).read() == key and \
            all(os.path.exists(p) for p in paths.values()):
        return paths
    os.makedirs(os.path.join(CACHE, "arm64"), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        os.chmod(tmp, 0o755)            # apt's _apt user writes the downloads here
        names = list(PACKAGES) + [kernel_package(KERNEL_PACKAGE, "arm64")]
        log("downloading " + " ".join(names))
        subprocess.run(["apt-get", "download", "-q"] + names, cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        tree = os.path.join(tmp, "tree")
        for deb in glob.glob(os.path.join(tmp, "*.deb")):
            subprocess.run(["dpkg-deb", "-x", deb, tree], check=True)
        with open(os.path.join(tree, "bin", "busybox"), "rb") as f:
            initrd = build_initrd(f.read())
        put(paths["grubnetaa64.efi"], src=os.path.join(
            tree, "usr/lib/grub/arm64-efi-signed", "grubnetaa64.efi.signed"))
        put(paths["arm64/vmlinuz"], src=glob.glob(os.path.join(tree, "boot", "vmlinuz-*"))[0])
        put(paths["arm64/initrd.gz"], initrd)
    with open(stamp, "w") as f:
        f.write(key)
    return paths


if __name__ == "__main__":
    for path in prepare_arm64().values():
        print(path)
    sys.exit(0)
