"""The install cycle's assets, built without mounting anything (a CI machine may
have no loop devices) and cached in .cache/e2e/ beside assets.py's:

    disk.gz       an initramfs piece loaded after initrd.gz, ignition.gz and blk.gz,
                  with two hooks:
                  - install (`e2e.install=URL` on the kernel command line): fetch
                    the installed system's Ignition config from bootcfg at URL,
                    write the OS image (`e2e.image=URL`) to /dev/vda and the config
                    at `e2e.config_mib=N` MiB, then reboot;
                  - installed (`e2e.config_disk=N`): read the config from the disk
                    at N MiB and run the real Ignition client on it.
    os-bios.img   the OS image the installer writes: an MBR with GRUB's boot.img,
                  GRUB i386-pc's core.img in the gap after it, one FAT partition
                  (mtools) with kernel, initramfs pieces and grub/grub.cfg, then
                  a MiB of zeros for the config
    os-efi.img    the same on GPT, the partition an EFI system partition with
                  GRUB x86_64-efi as EFI/BOOT/BOOTX64.EFI

Neither image holds a hostname or any machine's config: only bootcfg's answer
to the installer does. Needs grub-pc-bin, grub-efi-amd64-bin, mtools and fdisk.
"""

import gzip
import hashlib
import os
import shutil
import stat
import struct
import subprocess
import tempfile

from assets import CACHE, Cpio, prepare, prepare_ignition, put

MIB = 1 << 20

INSTALL_HOOK = r"""# The installer: what flatcar-install -i does, for the test's OS image.
url=$(sed -n 's/.*e2e.install=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$url" ]; then
    image=$(sed -n 's/.*e2e.image=\([^ ]*\).*/\1/p' /proc/cmdline)
    mib=$(sed -n 's/.*e2e.config_mib=\([0-9]*\).*/\1/p' /proc/cmdline)
    . /etc/e2e-blk.sh
    load_blk
    echo "E2E-INSTALL: fetching the installed config $url"
    if ! wget -q -O /tmp/installed.ign "$url"; then
        echo "E2E-RESULT: install failed: no installed config"
        poweroff -f
    fi
    if ! wget -q -O /tmp/os.img "$image"; then
        echo "E2E-RESULT: install failed: no OS image"
        poweroff -f
    fi
    dd if=/tmp/os.img of=/dev/vda bs=1M conv=fsync 2>/dev/null
    dd if=/tmp/installed.ign of=/dev/vda bs=1M seek="$mib" conv=fsync 2>/dev/null
    sync
    echo "E2E-INSTALL: done ($(wc -c < /tmp/installed.ign) bytes of config); rebooting"
    reboot -f
fi
"""

INSTALLED_HOOK = r"""# The installed system: its Ignition config comes from its own disk.
mib=$(sed -n 's/.*e2e.config_disk=\([0-9]*\).*/\1/p' /proc/cmdline)
if [ -n "$mib" ]; then
    echo "E2E-DISK: booted from disk: $(cat /proc/cmdline)"
    . /etc/e2e-blk.sh
    load_blk
    dd if=/dev/vda bs=1M skip="$mib" count=1 2>/dev/null | tr -d '\000' > /tmp/config.ign
    . /etc/e2e-ignition.sh
    export IGNITION_CONFIG_FILE=/tmp/config.ign
    run_ignition file
fi
"""

GRUB_CFG = """serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
echo "E2E-DISK: GRUB %(platform)s on the installed disk"
linux /vmlinuz console=ttyS0 panic=-1 loglevel=4 e2e.config_disk=%(config_mib)d
initrd /initrd.gz /ignition.gz /blk.gz /disk.gz
boot
"""
GRUB_MODULES = ("fat", "normal", "linux", "configfile", "echo", "serial", "terminal", "test")
FORMATS = {"bios": ("i386-pc", ["biosdisk", "part_msdos"], "(hd0,msdos1)/grub"),
           "efi": ("x86_64-efi", ["part_gpt"], "(hd0,gpt1)/grub")}


def build_disk_gz():
    cpio = Cpio()
    for d in ("etc", "etc/e2e-hooks"):
        cpio.add(d, stat.S_IFDIR | 0o755)
    cpio.add("etc/e2e-hooks/install", stat.S_IFREG | 0o644, INSTALL_HOOK.encode())
    cpio.add("etc/e2e-hooks/installed", stat.S_IFREG | 0o644, INSTALLED_HOOK.encode())
    return gzip.compress(cpio.finish(), mtime=0)


def run(*cmd, **kw):
    subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def fat_partition(path, size, files):
    """A FAT file system of `size` bytes at `path` holding {name in it: file}."""
    with open(path, "wb") as f:
        f.truncate(size)
    run("mformat", "-i", path, "-F", "-v", "E2EOS", "::")
    folders = sorted({os.path.dirname(name) for name in files} - {""})
    for folder in folders:
        parts = folder.split("/")
        for i in range(len(parts)):
            sub = "/".join(parts[:i + 1])
            subprocess.run(["mmd", "-D", "s", "-i", path, "::/" + sub],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for name, src in sorted(files.items()):
        run("mcopy", "-i", path, src, "::/" + name)


def build_image(platform, out):
    """os-<platform>.img; returns the MiB offset of its config area."""
    vmlinuz, initrd = prepare()
    pieces = {"vmlinuz": vmlinuz, "initrd.gz": initrd, "ignition.gz": prepare_ignition(),
              "blk.gz": os.path.join(CACHE, "blk.gz"), "disk.gz": prepare_disk_gz()}
    target, extra, prefix = FORMATS[platform]
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        grub = os.path.join(tmp, "grub.img")
        run("grub-mkimage", "-O", target, "-o", grub, "-p", prefix,
            *(extra + list(GRUB_MODULES)))
        size = sum(os.path.getsize(p) for p in pieces.values()) + os.path.getsize(grub)
        part_mib = size // MIB + 8           # FAT32 needs ~33 MiB at least
        part_mib = max(part_mib, 40)
        config_mib = 1 + part_mib
        files = dict(pieces)
        cfg = os.path.join(tmp, "grub.cfg")
        with open(cfg, "w") as f:
            f.write(GRUB_CFG % {"platform": target, "config_mib": config_mib})
        files["grub/grub.cfg"] = cfg
        if platform == "efi":
            files["EFI/BOOT/BOOTX64.EFI"] = grub
        part = os.path.join(tmp, "part.img")
        fat_partition(part, part_mib * MIB, files)
        disk = os.path.join(tmp, "disk.img")
        with open(disk, "wb") as f:
            f.truncate((config_mib + 2) * MIB)    # the config MiB, then GPT's backup
        table = ("label: dos\nstart=2048, size=%d, type=c, bootable\n" if platform == "bios"
                 else "label: gpt\nstart=2048, size=%d, "
                      "type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n") % (part_mib * 2048)
        run("sfdisk", "--no-reread", "--no-tell-kernel", disk, input=table.encode())
        with open(disk, "r+b") as f, open(part, "rb") as p:
            f.seek(MIB)
            shutil.copyfileobj(p, f)
            if platform == "bios":
                write_bios_boot(f, grub)
        os.replace(disk, out)
    return config_mib


def write_bios_boot(f, core_path):
    """GRUB's boot.img in the MBR (its code only: the partition table stays) and
    core.img in the sectors after it, as grub-bios-setup would for a disk it can
    open: boot.img reads sector 1 (its default kernel sector); core.img's first
    sector reads the rest, from the blocklist at its end, which grub-mkimage
    leaves for the installer to fill: start at sector 2."""
    with open("/usr/lib/grub/i386-pc/boot.img", "rb") as b:
        boot = b.read()
    with open(core_path, "rb") as c:
        core = bytearray(c.read())
    if len(core) > MIB - 512:
        raise RuntimeError("core.img (%d bytes) does not fit before the partition" % len(core))
    core[500:508] = struct.pack("<Q", 2)
    f.seek(0)
    f.write(boot[:440])
    f.seek(512)
    f.write(core)


def prepare_disk_gz():
    out = os.path.join(CACHE, "disk.gz")
    data = build_disk_gz()
    if not os.path.exists(out) or open(out, "rb").read() != data:
        put(out, data)
    return out


def prepare_os_image(platform):
    """(path of os-<platform>.img, MiB offset of its config area), cached."""
    out = os.path.join(CACHE, "os-%s.img" % platform)
    stamp = out + ".stamp"
    prepare()
    prepare_ignition()
    prepare_disk_gz()
    key = hashlib.sha256((GRUB_CFG + platform).encode())
    for name in ("vmlinuz", "initrd.gz", "ignition.gz", "blk.gz", "disk.gz"):
        path = os.path.join(CACHE, name)
        key.update(str(os.stat(path).st_mtime_ns if os.path.exists(path) else 0).encode())
    key = key.hexdigest()
    if os.path.exists(stamp) and os.path.exists(out):
        saved_key, _, mib = open(stamp).read().partition(" ")
        if saved_key == key:
            return out, int(mib)
    mib = build_image(platform, out)
    with open(stamp, "w") as f:
        f.write("%s %d" % (key, mib))
    return out, mib


if __name__ == "__main__":
    for platform in ("bios", "efi"):
        print(prepare_os_image(platform))
