#!/usr/bin/env python3
"""Builds what the end-to-end guests boot, cached under .cache/e2e/:

    vmlinuz      a real Debian cloud kernel (apt-get download + dpkg-deb -x)
    initrd.gz    a busybox initramfs made here: loads virtio_net, gets an address
                 by DHCP, fetches the cloud-config-url from /proc/cmdline and
                 prints it on the serial console between markers, then powers off
    blk.gz       virtio_blk and what it needs, loaded by `load_blk` (for guests
                 with a disk: the install cycle, tests/e2e/disk.py)
    ignition.gz  a second initramfs, loaded after initrd.gz (the kernel unpacks
                 both into one root): the real Ignition client from Debian's
                 `ignition` package with the libraries it links, and a hook that
                 runs its fetch and files stages when ignition.config.url is on
                 the kernel command line, then prints what it wrote
                 (/etc/e2e-ignition.sh: `run_ignition PLATFORM`, also used by
                 the installed system's hook)

    python3 tests/e2e/assets.py      # prepare (CI does this in .ci/run)

Needs apt-get/dpkg-deb and Debian's busybox-static. Reruns reuse the cache.
"""

import glob
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(ROOT, ".cache", "e2e")
KERNEL_PACKAGE = "linux-image-cloud-amd64"
NET_MODULES = ("virtio_pci", "virtio_net")   # with everything they depend on
BLK_MODULES = ("virtio_blk",)
BUSYBOX = "/bin/busybox"

INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "E2E-INIT: started"
for m in $(cat /lib/modules/order); do
    insmod /lib/modules/$m.ko || echo "E2E-INIT: insmod $m failed"
done
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
ip link set lo up
ip link set eth0 up
if ! udhcpc -i eth0 -n -q -t 10 -T 2 -s /etc/udhcpc.script; then
    echo "E2E-RESULT: dhcp failed"
    poweroff -f
fi
for hook in /etc/e2e-hooks/*; do
    [ -f "$hook" ] && . "$hook"
done
url=$(sed -n 's/.*cloud-config-url=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "E2E-CMDLINE: $(cat /proc/cmdline)"
echo "E2E-URL: $url"
if wget -q -O /tmp/cloud "$url"; then
    echo "E2E-CLOUD-BEGIN"
    cat /tmp/cloud
    echo
    echo "E2E-CLOUD-END"
else
    echo "E2E-RESULT: fetch failed"
fi
poweroff -f
"""

UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
    bound|renew)
        ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}"
        [ -n "$router" ] && route add default gw "${router%% *}" dev "$interface"
        echo "E2E-DHCP: $interface $ip"
        ;;
esac
exit 0
"""


IGNITION = "/usr/lib/dracut/modules.d/30ignition/ignition"
IGNITION_RUN = r"""# run_ignition PLATFORM: the real Ignition client's fetch and files stages into
# a tmpfs root; prints its verdict, its own lines for the files it wrote, and
# the files, then powers off.
run_ignition() {
    mkdir -p /run /sysroot
    mount -t tmpfs tmpfs /run
    mount -t tmpfs tmpfs /sysroot
    mkdir -p /sysroot/etc/selinux
    printf "SELINUX=disabled\\nSELINUXTYPE=targeted\\n" > /sysroot/etc/selinux/config
    # Ignition's files stage ends by relabelling for SELinux with setfiles; this
    # guest has no SELinux, so that one step is a no-op here.
    export PATH=/usr/sbin:/usr/bin:/sbin:/bin
    printf '#!/bin/sh\nexit 0\n' > /usr/sbin/setfiles
    chmod 755 /usr/sbin/setfiles
    timeout=$(sed -n 's/.*e2e.fetch_timeout=\([^ ]*\).*/\1/p' /proc/cmdline)
    if /usr/bin/ignition -platform "$1" -stage fetch -log-to-stdout \
            -fetch-timeout "${timeout:-60s}" > /tmp/fetch.log 2>&1 &&
       /usr/bin/ignition -platform "$1" -stage files -root /sysroot -log-to-stdout \
            > /tmp/files.log 2>&1; then
        echo "E2E-IGNITION: ok"
        grep 'writing file' /tmp/files.log | sed 's/^/E2E-IGNITION-LOG: /'
    else
        echo "E2E-IGNITION: failed"
        tail -n 8 /tmp/fetch.log /tmp/files.log 2>/dev/null | sed 's/^/E2E-LOG: /'
    fi
    find /sysroot -type f ! -path /sysroot/etc/selinux/config | sort | while read f; do
        echo "E2E-FILE: ${f#/sysroot} $(head -c 200 "$f" | tr '\n' ' ')"
    done
    echo "E2E-IGNITION-END"
    poweroff -f
}
"""
IGNITION_HOOK = r"""# Runs the real Ignition client when the kernel command line asks for it.
if grep -q "ignition.config.url=" /proc/cmdline; then
    echo "E2E-CMDLINE: $(cat /proc/cmdline)"
    . /etc/e2e-ignition.sh
    run_ignition metal
fi
"""


def put(dst, data=None, src=None):
    """Write `data` (or copy the file `src`) to `dst` whole or not at all: a cached
    asset is never half-written when a build is interrupted."""
    tmp = dst + ".tmp"
    if src is not None:
        shutil.copyfile(src, tmp)
    else:
        with open(tmp, "wb") as f:
            f.write(data)
    os.replace(tmp, dst)


def log(msg):
    print("e2e assets: " + msg, file=sys.stderr)


def kernel_package(meta=KERNEL_PACKAGE, arch="amd64"):
    """The versioned kernel package the meta-package `meta` depends on, as
    `apt-get download` names it (with `:arch` for a foreign architecture)."""
    out = subprocess.run(["apt-cache", "depends", meta], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    m = re.search(r"Depends: (linux-image-\S+-cloud-%s)" % arch, out)
    if not m:
        raise RuntimeError("apt-cache depends %s names no kernel (for a foreign "
                           "architecture: did `dpkg --add-architecture %s` and `apt-get "
                           "update` run?):\n%s" % (meta, arch, out))
    return m.group(1) + (":" + arch if meta.endswith(":" + arch) else "")


def fetch_kernel(dest):
    """Extract the newest cloud kernel package into dest; returns its version."""
    package = kernel_package()
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)   # apt's _apt user writes the download here
        log("downloading " + package)
        subprocess.run(["apt-get", "download", "-q", package], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        deb = glob.glob(os.path.join(tmp, "*.deb"))[0]
        subprocess.run(["dpkg-deb", "-x", deb, dest], check=True)
    return package[len("linux-image-"):]


def module_files(tree, version):
    found = {}
    for path in glob.glob(os.path.join(tree, "lib/modules", version, "kernel/**/*.ko*"),
                          recursive=True):
        name = os.path.basename(path).split(".ko")[0].replace("-", "_")
        found[name] = path
    return found


def module_bytes(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    return data


def load_order(files, wanted):
    """Modules to insmod, dependencies first (from each module's modinfo)."""
    order = []

    def visit(name, chain=()):
        if name in order or name not in files:   # loaded already, or built in
            return
        if name in chain:
            raise RuntimeError("module dependency loop: %s" % " -> ".join(chain))
        m = re.search(rb"\0depends=([^\0]*)\0", b"\0" + module_bytes(files[name]))
        for dep in (m.group(1).decode().split(",") if m and m.group(1) else []):
            visit(dep.replace("-", "_"), chain + (name,))
        order.append(name)

    for name in wanted:
        visit(name)
    return order


class Cpio:
    """A newc cpio archive, written deterministically (fixed mtimes, inodes)."""

    def __init__(self):
        self.out = io.BytesIO()
        self.ino = 1

    def add(self, name, mode, data=b"", rdev=(0, 0)):
        self.ino += 1
        name_b = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(name_b), 0]
        self.out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + name_b)
        self._pad()
        self.out.write(data)
        self._pad()

    def _pad(self):
        self.out.write(b"\0" * (-self.out.tell() % 4))

    def finish(self):
        self.add("TRAILER!!!", 0)
        return self.out.getvalue()


def build_initramfs(modules):
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    cpio = Cpio()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp"):
        cpio.add(d, stat.S_IFDIR | 0o755)
    cpio.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    cpio.add("bin/busybox", stat.S_IFREG | 0o755, busybox)
    cpio.add("bin/sh", stat.S_IFLNK | 0o777, b"busybox")
    cpio.add("init", stat.S_IFREG | 0o755, INIT.encode())
    cpio.add("etc/udhcpc.script", stat.S_IFREG | 0o755, UDHCPC_SCRIPT.encode())
    for name, data in modules:
        cpio.add("lib/modules/%s.ko" % name, stat.S_IFREG | 0o644, data)
    cpio.add("lib/modules/order", stat.S_IFREG | 0o644,
             "".join(n + "\n" for n, _ in modules).encode())
    return gzip.compress(cpio.finish(), mtime=0)


# /etc/e2e-blk.sh: `load_blk` loads the disk modules and waits for /dev/vda.
BLK_LOADER = r"""load_blk() {
    for m in $(cat /lib/modules-blk/order); do
        insmod /lib/modules-blk/$m.ko || echo "E2E-INIT: insmod $m failed"
    done
    n=0
    while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
    [ -b /dev/vda ] || echo "E2E-RESULT: no disk /dev/vda"
}
"""


def build_blk(modules):
    """blk.gz: the disk modules (lib/modules-blk/, with their load order) and
    /etc/e2e-blk.sh."""
    cpio = Cpio()
    for d in ("etc", "lib", "lib/modules-blk"):
        cpio.add(d, stat.S_IFDIR | 0o755)
    for name, data in modules:
        cpio.add("lib/modules-blk/%s.ko" % name, stat.S_IFREG | 0o644, data)
    cpio.add("lib/modules-blk/order", stat.S_IFREG | 0o644,
             "".join(n + "\n" for n, _ in modules).encode())
    cpio.add("etc/e2e-blk.sh", stat.S_IFREG | 0o644, BLK_LOADER.encode())
    return gzip.compress(cpio.finish(), mtime=0)


def shared_libraries(binary):
    """[(path in the guest, real file)] of what `binary` links, loader included."""
    out = subprocess.run(["ldd", binary], check=True, stdout=subprocess.PIPE,
                         text=True).stdout
    found = []
    for line in out.splitlines():
        m = re.search(r"(/\S+) \(0x", line)
        if m:
            found.append((m.group(1).lstrip("/"), os.path.realpath(m.group(1))))
    return found


def build_ignition_initramfs():
    """The Ignition client, its libraries and the hook, as a second initramfs."""
    cpio = Cpio()
    dirs = {"etc", "etc/e2e-hooks", "usr", "usr/bin"}
    libs = shared_libraries(IGNITION)
    for guest, _ in libs:
        parts = guest.split("/")[:-1]
        dirs |= {"/".join(parts[:i + 1]) for i in range(len(parts))}
    for d in sorted(dirs):
        cpio.add(d, stat.S_IFDIR | 0o755)
    with open(IGNITION, "rb") as f:
        cpio.add("usr/bin/ignition", stat.S_IFREG | 0o755, f.read())
    for guest, real in libs:
        with open(real, "rb") as f:
            cpio.add(guest, stat.S_IFREG | 0o755, f.read())
    cpio.add("etc/e2e-hooks/ignition", stat.S_IFREG | 0o644, IGNITION_HOOK.encode())
    cpio.add("etc/e2e-ignition.sh", stat.S_IFREG | 0o644, IGNITION_RUN.encode())
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


def prepare_ignition():
    """Path of ignition.gz (needs Debian's `ignition` package), cached."""
    prepare()
    out = os.path.join(CACHE, "ignition.gz")
    with open(IGNITION, "rb") as f:
        key = hashlib.sha256(IGNITION_HOOK.encode() + IGNITION_RUN.encode() +
                             f.read()).hexdigest()
    stamp = out + ".stamp"
    if os.path.exists(stamp) and open(stamp).read() == key and os.path.exists(out):
        return out
    log("building ignition.gz from " + IGNITION)
    put(out, build_ignition_initramfs())
    with open(stamp, "w") as f:
        f.write(key)
    return out


GRUB_MODULES = ("efinet", "http", "tftp", "net", "linux", "normal", "configfile", "echo",
                "smbios", "regexp", "test", "true", "sleep", "halt", "reboot")
# The HTTP-speaking GRUB's own first words: go to bootcfg over HTTP, on the port
# the tests run it on, at the server DHCP named.
GRUB_HTTP_EARLY = """echo "E2E-GRUB: a GRUB with http, loading grub/grub.cfg over HTTP"
configfile (http,$net_default_server:8080)/grub/grub.cfg
"""


def prepare_grub_http():
    """grub-http.efi: an unsigned GRUB made with grub-mkimage from Debian's
    grub-efi-amd64-bin modules, http included (Debian's signed one has none)."""
    out = os.path.join(CACHE, "grub-http.efi")
    os.makedirs(CACHE, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        early = os.path.join(tmp, "early.cfg")
        with open(early, "w") as f:
            f.write(GRUB_HTTP_EARLY)
        subprocess.run(["grub-mkimage", "-O", "x86_64-efi", "-o", out + ".tmp", "-p", "/grub",
                        "-c", early] + list(GRUB_MODULES), check=True)
    os.replace(out + ".tmp", out)
    return out


def prepare():
    """Paths (vmlinuz, initrd.gz), built once and cached."""
    os.makedirs(CACHE, exist_ok=True)
    vmlinuz = os.path.join(CACHE, "vmlinuz")
    initrd = os.path.join(CACHE, "initrd.gz")
    blk = os.path.join(CACHE, "blk.gz")
    stamp = os.path.join(CACHE, "stamp")
    with open(BUSYBOX, "rb") as f:
        key = hashlib.sha256(INIT.encode() + UDHCPC_SCRIPT.encode() + BLK_LOADER.encode() +
                             f.read()).hexdigest()
    if os.path.exists(stamp) and open(stamp).read() == key and \
            all(os.path.exists(p) for p in (vmlinuz, initrd, blk)):
        return vmlinuz, initrd
    with tempfile.TemporaryDirectory(dir=CACHE) as tree:
        version = fetch_kernel(tree)
        files = module_files(tree, version)
        order = load_order(files, NET_MODULES)
        log("kernel %s, modules %s" % (version, " ".join(order)))
        image = build_initramfs([(n, module_bytes(files[n])) for n in order])
        blk_order = [n for n in load_order(files, BLK_MODULES) if n not in order]
        log("disk modules %s" % " ".join(blk_order) if blk_order else "virtio_blk is built in")
        blk_image = build_blk([(n, module_bytes(files[n])) for n in blk_order])
        put(vmlinuz, src=os.path.join(tree, "boot", "vmlinuz-" + version))
        put(initrd, image)
        put(blk, blk_image)
    with open(stamp, "w") as f:
        f.write(key)
    return vmlinuz, initrd


if __name__ == "__main__":
    for path in prepare():
        print(path)
    if os.path.exists(IGNITION) or "--ignition" in sys.argv:
        print(prepare_ignition())
