"""Shipping: the single file, the Python floor, systemd units, socket activation
and readiness notification."""

import ast
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import ROOT, IN_CI, need_tool

BUILD = os.path.join(ROOT, "scripts", "build-single-file")
UNITS = os.path.join(ROOT, "contrib", "systemd")


def runtime_modules():
    """Every runtime file setup.cfg installs, as absolute paths."""
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    files = [os.path.join(ROOT, m + ".py") for m in cfg["options"]["py_modules"].split()]
    for package in cfg["options"]["packages"].split():
        files += sorted(glob.glob(os.path.join(ROOT, package, "*.py")))
    return files


def module_name(path):
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def imports_of(path):
    """The modules a file imports, by full name (`from _bootcfg import app` counts
    as _bootcfg.app)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {node.module + "." + a.name for a in node.names}
    return found


@pytest.fixture(scope="module")
def single_file(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("dist") / "bootcfg")
    subprocess.run([sys.executable, BUILD, "-o", out], check=True, stdout=subprocess.PIPE)
    return out


@pytest.mark.cli
def test_build_is_reproducible(single_file, tmp_path):
    again = str(tmp_path / "bootcfg")
    time.sleep(1.1)   # a timestamp leaking into the archive would now differ
    subprocess.run([sys.executable, BUILD, "-o", again], check=True, stdout=subprocess.PIPE)
    with open(single_file, "rb") as a, open(again, "rb") as b:
        assert a.read() == b.read()


@pytest.mark.cli
def test_single_file_runs_alone(single_file, tmp_path):
    """Copied away from the source tree, run with a clean interpreter path."""
    lone = str(tmp_path / "bootcfg")
    shutil.copy(single_file, lone)
    with open(lone, "rb") as f:
        assert f.readline() == b"#!/usr/bin/env python3\n"
    assert os.access(lone, os.X_OK)
    out = subprocess.run([lone, "--version"], cwd=str(tmp_path), stdout=subprocess.PIPE,
                         text=True, env={"PATH": os.environ["PATH"]})
    assert out.stdout.startswith("bootcfg ")
    import zipfile
    names = set(zipfile.ZipFile(lone).namelist())
    assert names == {"__main__.py"} | {os.path.relpath(m, ROOT) for m in runtime_modules()}


@pytest.mark.unit
def test_every_runtime_module_is_shipped():
    shipped = {os.path.relpath(m, ROOT) for m in runtime_modules()}
    on_disk = {os.path.relpath(p, ROOT) for p in
               glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "_*", "*.py"))}
    assert on_disk == shipped, "a runtime module is missing from setup.cfg"
    # the card's three top-level modules, and one private package for the rest
    assert {m for m in shipped if "/" not in m} == {"bootcfg.py", "store.py", "render.py"}


@pytest.mark.unit
def test_import_graph():
    """The seams, by what each module imports: the server knows no app, store or
    renderer; store and render know neither the server nor the app; only the CLI
    imports the CLI; nothing outside the CLI starts from a tool."""
    graph = {module_name(p): imports_of(p) for p in runtime_modules()}
    app_side = {"store", "render", "_bootcfg.app", "_bootcfg.images", "_bootcfg.check",
                "_bootcfg.explain", "_bootcfg.metrics"}
    assert not graph["_bootcfg.server"] & (app_side | {"bootcfg"}), graph["_bootcfg.server"]
    ours = ("_bootcfg", "bootcfg", "store", "render")

    def modules(imported):      # `from m import name` counts as m
        return {m if m in graph else m.rsplit(".", 1)[0] for m in imported
                if m.startswith(ours)} - {"_bootcfg"}

    # The modules below the store: the identity, the settings table and the file
    # cache, which import nothing of ours but each other. Store and render may use
    # those, and nothing else.
    base = {"_bootcfg.machine", "_bootcfg.settings", "_bootcfg.files"}
    for name in base:
        assert modules(graph[name]) <= base, (name, graph[name])
    for pure in ("store", "render"):
        assert modules(graph[pure]) <= base, (pure, graph[pure])
    # Nobody but the CLI imports the HTTP server (for a number or anything else).
    assert {name for name, imported in graph.items() if "_bootcfg.server" in imported} \
        <= {"bootcfg"}
    for name, imported in graph.items():
        if name != "bootcfg":
            assert "bootcfg" not in imported, "%s imports the CLI" % name
    for name in ("_bootcfg.app", "_bootcfg.answers", "_bootcfg.images"):
        assert "_bootcfg.server" not in graph[name], "%s imports the HTTP server" % name
    assert "_bootcfg.app" in graph["_bootcfg.explain"] or \
        "_bootcfg.answers" in graph["_bootcfg.explain"]


@pytest.mark.cli
def test_pip_install_puts_only_the_card_and_one_package(tmp_path):
    """`pip install .` into a target directory: the three top-level modules, the
    private package, and pip's metadata; nothing named like other projects."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, str(src), ignore=shutil.ignore_patterns(
        ".git", ".venv*", ".cache", "dist", "build", "*.egg-info", "__pycache__", "tests",
        "bench"))
    target = tmp_path / "site"
    try:    # both here: build with them instead of fetching them into a fresh env
        import setuptools  # noqa: F401
        import wheel  # noqa: F401
        isolation = ["--no-build-isolation"]
    except ImportError:
        isolation = []
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--no-compile"] + isolation + ["--target", str(target), str(src)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert out.returncode == 0, out.stdout
    top = {n for n in os.listdir(str(target)) if not n.endswith(".dist-info")}
    assert top == {"bootcfg.py", "store.py", "render.py", "_bootcfg", "bin"}, top
    assert sorted(os.listdir(str(target / "_bootcfg"))) == sorted(
        os.path.basename(m) for m in runtime_modules() if "/_bootcfg/" in m)
    run = subprocess.run([sys.executable, "-c", "import bootcfg, sys; "
                          "sys.exit(bootcfg.main(['--version']))"],
                         env=dict(os.environ, PYTHONPATH=str(target)), cwd=str(tmp_path),
                         stdout=subprocess.PIPE, text=True)
    assert run.stdout.startswith("bootcfg ")


@pytest.mark.unit
@pytest.mark.parametrize("path", runtime_modules(), ids=os.path.basename)
def test_runtime_code_parses_as_python_3_8(path):
    with open(path) as f:
        ast.parse(f.read(), path, feature_version=(3, 8))


@pytest.mark.unit
@pytest.mark.parametrize("path", runtime_modules(), ids=os.path.basename)
def test_runtime_imports_only_stdlib(path):
    local = {module_name(m).split(".")[0] for m in runtime_modules()}
    stdlib = getattr(sys, "stdlib_module_names", None)
    if stdlib is None:
        pytest.skip("sys.stdlib_module_names needs Python 3.10+")
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        for name in names:
            top = name.split(".")[0]
            assert top in stdlib or top in local, "%s imports %s" % (path, name)


def pythons():
    """Python 3.8 and the newest Python pyenv has (3.8-3.13 here)."""
    root = subprocess.run(["pyenv", "root"], stdout=subprocess.PIPE, text=True).stdout.strip() \
        if shutil.which("pyenv") else os.path.expanduser("~/.pyenv")
    found = {}
    for exe in glob.glob(os.path.join(root, "versions", "3.*", "bin", "python3")):
        m = re.search(r"/3\.(\d+)\.(\d+)/", exe)
        if m:
            found[(3, int(m.group(1)), int(m.group(2)))] = exe
    return found


def listening_port(proc):
    """The port from bootcfg's "listening on" line on proc's stderr, or None."""
    for line in proc.stderr:
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
        if m:
            return int(m.group(1))
    return None


@pytest.mark.cli
@pytest.mark.parametrize("which", ["oldest", "newest"])
def test_single_file_on_python_floor_and_newest(single_file, data_dir, which):
    found = pythons()
    wanted = [v for v in found if v[:2] == (3, 8)] if which == "oldest" else sorted(found)[-1:]
    if not wanted:
        if IN_CI:
            pytest.fail("pyenv has no Python %s" % ("3.8" if which == "oldest" else "3.x"))
        pytest.skip("pyenv has no Python 3.8")
    exe = found[max(wanted)]
    proc = subprocess.Popen([exe, single_file, "-address", "127.0.0.1:0", "-data-path",
                             str(data_dir)], stderr=subprocess.PIPE, text=True)
    try:
        port = listening_port(proc)
        assert port, "did not start under %s" % exe
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/ipxe?mac=52:54:00:89:d8:10")
        r = c.getresponse()
        assert r.status == 200 and b"tag=mac1" in r.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


# ---------------------------------------------------------------- systemd

@pytest.fixture
def fake_root(tmp_path, single_file):
    """A root with the units installed as the README says, the single file at
    /usr/local/bin/bootcfg and the host's own unit directory for dependencies."""
    root = tmp_path / "root"
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/bootcfg").mkdir(parents=True)
    shutil.copy(single_file, str(root / "usr/local/bin/bootcfg"))
    for unit in ("bootcfg.service", "bootcfg.socket", "bootcfg-tftp.socket"):
        shutil.copy(os.path.join(UNITS, unit), str(root / "etc/systemd/system" / unit))
    shutil.copy(os.path.join(UNITS, "bootcfg.env"), str(root / "etc/bootcfg/bootcfg.env"))
    # The targets the units order against come from the host; its unit links are
    # absolute (/lib/systemd/...), so the root gets a merged-/usr /lib link too.
    shutil.copytree("/usr/lib/systemd/system", str(root / "usr/lib/systemd/system"),
                    symlinks=True)
    os.symlink("usr/lib", str(root / "lib"))
    return root


def verify(root):
    tool = need_tool("systemd-analyze", "apt-get install systemd")
    return subprocess.run([tool, "verify", "--root=%s" % root,
                           "/etc/systemd/system/bootcfg.service",
                           "/etc/systemd/system/bootcfg.socket",
                           "/etc/systemd/system/bootcfg-tftp.socket"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.cli
def test_units_verify(fake_root):
    out = verify(fake_root)
    assert out.returncode == 0 and out.stdout == "", out.stdout
    # and the check can fail: a misspelt directive is reported
    unit = fake_root / "etc/systemd/system/bootcfg.service"
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHomes=yes"))
    assert "Unknown key 'ProtectHomes'" in verify(fake_root).stdout
    os.unlink(str(fake_root / "usr/local/bin/bootcfg"))
    assert "/usr/local/bin/bootcfg is not executable" in verify(fake_root).stdout


@pytest.mark.cli
def test_security_exposure_is_ok():
    tool = need_tool("systemd-analyze", "apt-get install systemd")
    out = subprocess.run([tool, "security", "--offline=yes",
                          os.path.join(UNITS, "bootcfg.service")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    m = re.search(r"Overall exposure level for bootcfg.service: ([\d.]+) (\w+)", out.stdout)
    assert m, out.stdout[-2000:]
    assert m.group(2) in ("SAFE", "OK"), m.group(0)
    page = open(os.path.join(ROOT, "docs", "install.md")).read()
    assert "exposure level %s %s" % (m.group(1), m.group(2)) in page


@pytest.mark.cli
def test_socket_activation(single_file, data_dir, tmp_path):
    tool = need_tool("systemd-socket-activate", "apt-get install systemd")
    ports = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        ports.append(s.getsockname()[1])
        s.close()
    args = [tool]
    for p in ports:
        args += ["-l", "127.0.0.1:%d" % p]
    log = open(str(tmp_path / "log"), "w+")
    proc = subprocess.Popen(args + [single_file, "-data-path", str(data_dir),
                                    "-address", "127.0.0.1:1"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        import http.client
        for port in ports:          # the first connection starts bootcfg; both sockets serve
            deadline = time.monotonic() + 10
            while True:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    c.request("GET", "/cloud?mac=52:54:00:89:d8:10")
                    r = c.getresponse()
                    break
                except ConnectionRefusedError:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            assert r.status == 200 and r.read() == b"#cloud-config\nhostname: mac1\n"
            c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(10)
    log.seek(0)
    text = log.read()
    assert "using 2 socket(s) from systemd" in text, text
    assert rc == 0, text


@pytest.mark.cli
def test_socket_activation_serves_tftp_on_a_datagram_socket(single_file, data_dir, tmp_path):
    """bootcfg-tftp.socket's way: systemd opens the UDP port and passes it in; the
    first datagram starts bootcfg, which answers it over TFTP."""
    tool = need_tool("systemd-socket-activate", "apt-get install systemd")
    images = tmp_path / "images"
    images.mkdir()
    (images / "shimx64.efi").write_bytes(b"shim-bytes" * 100)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    log = open(str(tmp_path / "log"), "w+")
    proc = subprocess.Popen([tool, "--datagram", "-l", "127.0.0.1:%d" % port, single_file,
                             "-data-path", str(data_dir), "-images-path", str(images),
                             "-address", "127.0.0.1:0"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.settimeout(10)
        time.sleep(0.2)
        c.sendto(b"\x00\x01shimx64.efi\x00octet\x00", ("127.0.0.1", port))
        data, peer = c.recvfrom(2000)
        assert data[:4] == b"\x00\x03\x00\x01" and data[4:] == b"shim-bytes" * 51 + b"sh"
        c.sendto(b"\x00\x04\x00\x01", peer)
        data, _ = c.recvfrom(2000)
        assert data[:4] == b"\x00\x03\x00\x02" and len(data) == 4 + 1000 - 512
        c.sendto(b"\x00\x04\x00\x02", peer)
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(10)
    log.seek(0)
    text = log.read()
    assert "using 1 socket(s) from systemd (0 TCP, 1 UDP for TFTP)" in text, text
    assert re.search(r'"RRQ shimx64.efi" 200 1000B', text), text
    assert rc == 0, text


@pytest.mark.cli
def test_ready_and_stopping_notifications(data_dir, tmp_path):
    from helpers import bootcfg_command
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    env = dict(os.environ, NOTIFY_SOCKET=path)
    proc = subprocess.Popen(bootcfg_command() + ["-address", "127.0.0.1:0", "-data-path",
                                                 str(data_dir)],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        first = sock.recv(4096).decode()
        assert first.split("\n")[0] == "READY=1"
        # READY is only sent once the port accepts connections
        port = listening_port(proc)
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096).decode() == "STOPPING=1"
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()


@pytest.mark.http
def test_notify_abstract_socket():
    from _bootcfg import systemd as systemd_integration
    name = "bootcfg-test-%d" % os.getpid()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    old = os.environ.get("NOTIFY_SOCKET")
    os.environ["NOTIFY_SOCKET"] = "@" + name
    try:
        assert systemd_integration.notify("READY=1")
        assert sock.recv(100) == b"READY=1"
    finally:
        if old is None:
            del os.environ["NOTIFY_SOCKET"]
        else:
            os.environ["NOTIFY_SOCKET"] = old
        sock.close()
    monkeypatch_free = os.environ.pop("NOTIFY_SOCKET", None)
    try:
        assert systemd_integration.notify("READY=1") is False
    finally:
        if monkeypatch_free is not None:
            os.environ["NOTIFY_SOCKET"] = monkeypatch_free


@pytest.mark.unit
def test_listen_fds_for_another_process_are_ignored(monkeypatch):
    from _bootcfg import systemd as systemd_integration
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert systemd_integration.listen_sockets() == []
    assert "LISTEN_FDS" not in os.environ
