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
import re
import shutil
import stat
import subprocess
import sys
import tempfile

from assets import CACHE, Cpio, log

PACKAGES = ("grub-efi-arm64-signed:arm64", "busybox-static:arm64")
KERNEL_PACKAGE = "linux-image-cloud-arm64:arm64"
ARM64_INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
echo "E2E-ARM64: $(/bin/busybox uname -m) $(/bin/busybox cat /proc/cmdline)"
/bin/busybox poweroff -f
"""
OUT = ("grubnetaa64.efi", "arm64/vmlinuz", "arm64/initrd.gz")


def kernel_package():
    out = subprocess.run(["apt-cache", "depends", KERNEL_PACKAGE], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    m = re.search(r"Depends: (linux-image-\S+-cloud-arm64)", out)
    if not m:
        raise RuntimeError("apt-cache depends %s names no kernel (did `dpkg "
                           "--add-architecture arm64` and `apt-get update` run?):\n%s"
                           % (KERNEL_PACKAGE, out))
    return m.group(1) + ":arm64"


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
        names = list(PACKAGES) + [kernel_package()]
        log("downloading " + " ".join(names))
        subprocess.run(["apt-get", "download", "-q"] + names, cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        tree = os.path.join(tmp, "tree")
        for deb in glob.glob(os.path.join(tmp, "*.deb")):
            subprocess.run(["dpkg-deb", "-x", deb, tree], check=True)
        with open(os.path.join(tree, "bin", "busybox"), "rb") as f:
            initrd = build_initrd(f.read())
        sources = {
            "grubnetaa64.efi": os.path.join(tree, "usr/lib/grub/arm64-efi-signed",
                                            "grubnetaa64.efi.signed"),
            "arm64/vmlinuz": glob.glob(os.path.join(tree, "boot", "vmlinuz-*"))[0],
        }
        for name, path in paths.items():
            tmp_out = path + ".tmp"
            if name in sources:
                shutil.copyfile(sources[name], tmp_out)
            else:
                with open(tmp_out, "wb") as f:
                    f.write(initrd)
            os.replace(tmp_out, path)
    with open(stamp, "w") as f:
        f.write(key)
    return paths


if __name__ == "__main__":
    for path in prepare_arm64().values():
        print(path)
    sys.exit(0)
