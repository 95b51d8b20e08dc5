"""scripts/get-flatcar against a local mirror of the Flatcar release layout, served
by bootcfg itself (it answers Range requests, which resuming needs)."""

import hashlib
import os
import subprocess
import sys
import tarfile

import pytest

from helpers import ROOT, need_tool, write

pytestmark = pytest.mark.cli

SCRIPT = os.path.join(ROOT, "scripts", "get-flatcar")
VERSION = "4152.2.0"
FILES = {"flatcar_production_pxe.vmlinuz": os.urandom(300_000),
         "flatcar_production_pxe_image.cpio.gz": os.urandom(500_000)}


def digests(name, data):
    return ("# MD5 HASH\n%s  %s\n# SHA1 HASH\n%s  %s\n# SHA512 HASH\n%s  %s\n" % (
        hashlib.md5(data).hexdigest(), name, hashlib.sha1(data).hexdigest(), name,
        hashlib.sha512(data).hexdigest(), name))


@pytest.fixture
def gnupg(tmp_path):
    """A throwaway GNUPGHOME with a signing key; returns (env, sign(path, clear))."""
    gpg = need_tool("gpg", "apt-get install gnupg")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = dict(os.environ, GNUPGHOME=str(home))
    subprocess.run([gpg, "--batch", "--passphrase", "", "--quick-gen-key",
                    "bootcfg test signer <test@bootcfg.invalid>", "ed25519", "sign", "never"],
                   env=env, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def sign(path, clear=True):
        mode = ["--clearsign"] if clear else ["--armor", "--detach-sign"]
        subprocess.run([gpg, "--batch", "--yes"] + mode + ["-o", path + ".asc", path],
                       env=env, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    return env, sign


@pytest.fixture
def mirror(tmp_path, serve):
    """Release layout: stable/amd64-usr/{current/version.txt, VERSION/<files>}."""
    root = tmp_path / "mirror"
    rel = root / "stable/amd64-usr"
    write(str(rel / "current/version.txt"),
          "FLATCAR_BUILD=4152\nFLATCAR_VERSION=%s\nFLATCAR_VERSION_ID=%s\n" % (VERSION, VERSION))
    for name, data in FILES.items():
        write(str(rel / VERSION / name), data)
        write(str(rel / VERSION / (name + ".DIGESTS")), digests(name, data))
    (tmp_path / "data").mkdir()
    server = serve("-data-path", str(tmp_path / "data"), "-images-path", str(root))
    server.release = rel
    server.base = "http://127.0.0.1:%d/images/stable/amd64-usr" % server.port
    return server


def run(mirror, dest, *args, env=None):
    return subprocess.run([sys.executable, SCRIPT, "--base-url", mirror.base, "--dest",
                           str(dest)] + list(args), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=60)


def fetched(dest):
    out = {}
    for name in FILES:
        path = dest / "flatcar" / VERSION / name
        out[name] = path.read_bytes() if path.exists() else None
    return out


def test_fetch_current_without_gpg(mirror, tmp_path):
    dest = tmp_path / "images"
    out = run(mirror, dest, "--no-gpg")
    assert out.returncode == 0, out.stderr
    assert fetched(dest) == FILES
    assert os.readlink(str(dest / "flatcar/current")) == VERSION
    assert not list((dest / "flatcar" / VERSION).glob("*.part"))
    again = run(mirror, dest, "--no-gpg")
    assert again.returncode == 0 and again.stdout.count("already there") == 2


def test_example_configs_point_at_fetched_paths(mirror, tmp_path, serve):
    """The bundled data/ boots what get-flatcar produces, served through the
    `current` link by bootcfg."""
    import json
    dest = tmp_path / "images"
    assert run(mirror, dest, "--no-gpg").returncode == 0
    server = serve("-data-path", os.path.join(ROOT, "data"), "-images-path", str(dest))
    for kind_dir in ("default", "uuid", "mac"):
        base = os.path.join(ROOT, "data/boot", kind_dir)
        paths = [base] if kind_dir == "default" else \
            [os.path.join(base, n) for n in os.listdir(base)]
        for path in paths:
            cfg = json.load(open(path))
            if not cfg["kernel"].startswith("/images/flatcar/"):
                continue                  # the Fedora CoreOS example: not Flatcar's files
            for url in [cfg["kernel"]] + cfg["initrd"]:
                status, _, body = server.get(url)
                assert status == 200 and body == FILES[os.path.basename(url)], url


@pytest.mark.parametrize("clear", [True, False], ids=["clearsigned", "detached"])
def test_fetch_with_signature(mirror, tmp_path, gnupg, clear):
    env, sign = gnupg
    for name in FILES:
        sign(str(mirror.release / VERSION / (name + ".DIGESTS")), clear)
    dest = tmp_path / "images"
    out = run(mirror, dest, "--version", VERSION, env=env)
    assert out.returncode == 0, out.stderr
    assert fetched(dest) == FILES


def test_unknown_signing_key_is_an_error(mirror, tmp_path, gnupg):
    env, sign = gnupg
    for name in FILES:
        sign(str(mirror.release / VERSION / (name + ".DIGESTS")))
    empty = tmp_path / "empty-gnupg"
    empty.mkdir(mode=0o700)
    out = run(mirror, tmp_path / "images", env=dict(env, GNUPGHOME=str(empty)))
    assert out.returncode == 1 and "Import Flatcar's image signing key" in out.stderr
    assert fetched(tmp_path / "images") == {n: None for n in FILES}


def test_tampered_digests_fail_the_signature(mirror, tmp_path, gnupg):
    env, sign = gnupg
    name = "flatcar_production_pxe.vmlinuz"
    path = mirror.release / VERSION / (name + ".DIGESTS")
    sign(str(path), clear=False)
    path.write_text(digests(name, b"an attacker's kernel"))
    out = run(mirror, tmp_path / "images", env=env)
    assert out.returncode == 1 and "bad signature" in out.stderr


def test_corrupted_file_is_rejected(mirror, tmp_path):
    name = "flatcar_production_pxe_image.cpio.gz"
    bad = bytearray(FILES[name])
    bad[1000] ^= 0xFF
    (mirror.release / VERSION / name).write_bytes(bytes(bad))
    dest = tmp_path / "images"
    out = run(mirror, dest, "--no-gpg")
    assert out.returncode == 1 and "SHA-512 mismatch" in out.stderr and name in out.stderr
    assert not (dest / "flatcar" / VERSION / name).exists()
    assert not (dest / "flatcar" / VERSION / (name + ".part")).exists()
    assert not (dest / "flatcar/current").exists()


def test_resume_from_part_file(mirror, tmp_path):
    dest = tmp_path / "images"
    name = "flatcar_production_pxe_image.cpio.gz"
    part = dest / "flatcar" / VERSION / (name + ".part")
    write(str(part), FILES[name][:200_000])
    out = run(mirror, dest, "--no-gpg")
    assert out.returncode == 0, out.stderr
    assert fetched(dest) == FILES
    assert mirror.wait_log(r'"GET /images/stable/amd64-usr/%s/%s" 206 300000B' % (VERSION, name))


def test_bad_part_file_starts_over(mirror, tmp_path):
    dest = tmp_path / "images"
    name = "flatcar_production_pxe.vmlinuz"
    write(str(dest / "flatcar" / VERSION / (name + ".part")), b"garbage" * 1000)
    out = run(mirror, dest, "--no-gpg")
    assert out.returncode == 0, out.stderr
    assert fetched(dest) == FILES


def test_pack_for_air_gapped_site(mirror, tmp_path):
    dest = tmp_path / "images"
    tarball = tmp_path / "flatcar.tar.gz"
    out = run(mirror, dest, "--no-gpg", "--pack", str(tarball))
    assert out.returncode == 0, out.stderr
    site = tmp_path / "site"
    with tarfile.open(str(tarball)) as tar:
        names = tar.getnames()
        assert {"flatcar/current", "flatcar/%s" % VERSION} <= set(names)
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(str(site), **safe)
    assert os.readlink(str(site / "flatcar/current")) == VERSION
    assert fetched(site) == FILES


@pytest.mark.parametrize("args, message", [
    (["--version", "latest"], "expected current or a number"),
    (["--version", "9999.0.0"], "HTTP 404"),
])
def test_bad_version(mirror, tmp_path, args, message):
    out = run(mirror, tmp_path / "images", "--no-gpg", *args)
    assert out.returncode == 1 and message in out.stderr
