"""Several replicas as one service: /healthz, X-Forwarded-Host for GRUB, the
merged fleet view (-peers), and rolling out a data directory by symlink swap;
real servers on loopback (tests/e2e/test_replicas.py puts them behind nginx
and HAProxy)."""

import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from _bootcfg.guard import forwarded_host
from helpers import boot_json, get_from, write


# ---------------------------------------------------------------- /healthz

@pytest.mark.http
def test_healthz_says_ok_while_serving(serve, data_dir):
    s = serve("-data-path", str(data_dir))
    assert get_from(s, "127.0.0.1", "/healthz") == (200, "ok\n")


@pytest.mark.http
def test_healthz_is_503_when_the_data_directory_cannot_be_read(serve, data_dir, tmp_path):
    link = tmp_path / "current"
    os.symlink(str(data_dir), str(link))
    s = serve("-data-path", str(link))
    os.unlink(str(link))
    status, body = get_from(s, "127.0.0.1", "/healthz")
    assert status == 503 and "cannot be read" in body


@pytest.mark.cli
def test_healthz_is_503_while_stopping(start_server, data_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    with open(str(images / "big"), "wb") as f:
        f.truncate(128 << 20)
    s = start_server("-data-path", str(data_dir), "-images-path", str(images))
    kept = socket.create_connection((s.host, s.port), timeout=10)
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert kept.recv(4096).startswith(b"HTTP/1.1 200")
    slow = socket.create_connection((s.host, s.port), timeout=10)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.sendall(b"GET /images/big HTTP/1.1\r\nHost: x\r\n\r\n")   # in flight
    time.sleep(0.3)
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = kept.recv(4096)
    assert answer.startswith(b"HTTP/1.1 503") and b"stopping" in answer, answer


# ---------------------------------------------------------------- X-Forwarded-Host

@pytest.mark.parametrize("value, ok", [
    ("bootcfg.lan", True), ("bootcfg.lan:8080", True), ("10.0.0.10:8080", True),
    ("[2001:db8::10]:8080", True), ("10.0.2.2", True),
    ("", False), ("a b", False), ("host:0", False), ("host:99999", False),
    ("10.0.0.300", False), ("[zz::1]", False), ("evil.lan/x", False),
    ("a.lan, b.lan", False), ("host)/x", False), ("-bad.lan", False), ("x" * 300, False),
])
@pytest.mark.unit
def test_forwarded_host_is_a_host_or_nothing(value, ok):
    assert forwarded_host(value) == (value if ok else "")


@pytest.fixture
def grub_data(tmp_path):
    d = tmp_path / "data"
    write(str(d / "boot/default"), boot_json())
    return d


@pytest.mark.http
def test_grub_over_http_names_the_host_a_trusted_proxy_forwards(serve, grub_data):
    s = serve("-data-path", str(grub_data), "-trusted-proxies", "127.0.0.2")
    forwarded = "X-Forwarded-Host: boot.lan:8080\r\n"
    _, body = get_from(s, "127.0.0.2", "/grub?mac=52:54:00:00:00:01", forwarded)
    assert "linux (http,boot.lan:8080)'/images/k'" in body
    _, body = get_from(s, "127.0.0.2", "/grub/grub.cfg", forwarded)
    assert 'configfile "(http,boot.lan:8080)/grub?' in body
    # not from a trusted proxy, or not a host: the address the request came to
    for source, value in (("127.0.0.3", "boot.lan:8080"), ("127.0.0.2", "x)/evil")):
        _, body = get_from(s, source, "/grub?mac=52:54:00:00:00:01",
                           "X-Forwarded-Host: %s\r\n" % value)
        assert "linux (http,127.0.0.1:%d)'/images/k'" % s.port in body


# ---------------------------------------------------------------- the fleet view

@pytest.mark.cli
def test_status_merges_the_peers_and_names_one_that_does_not_answer(start_server, data_dir):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_url = "http://127.0.0.1:%d" % dead.getsockname()[1]
    dead.close()
    a = start_server("-data-path", str(data_dir))
    b = start_server("-data-path", str(data_dir), "-peers",
                     "http://127.0.0.1:%d,%s" % (a.port, dead_url))
    assert get_from(a, "127.0.0.10", "/ipxe?mac=52:54:00:00:00:0a")[0] == 200
    assert get_from(b, "127.0.0.11", "/ipxe?mac=52:54:00:00:00:0b")[0] == 200
    assert get_from(a, "127.0.0.12", "/ipxe?mac=52:54:00:00:00:0c")[0] == 200
    time.sleep(0.05)
    assert get_from(b, "127.0.0.13", "/ipxe?mac=52:54:00:00:00:0c")[0] == 200   # newer, on b
    started = time.monotonic()
    view = json.loads(get_from(b, "127.0.0.1", "/status.json")[1])
    assert time.monotonic() - started < 5
    seen = {m["mac"]: (m["client"], m["replica"]) for m in view["machines"]}
    name = socket.gethostname()
    assert seen == {"52:54:00:00:00:0a": ("127.0.0.10", "%s:%d" % (name, a.port)),
                    "52:54:00:00:00:0b": ("127.0.0.11", "%s:%d" % (name, b.port)),
                    "52:54:00:00:00:0c": ("127.0.0.13", "%s:%d" % (name, b.port))}
    assert view["problems"] == ["peer %s did not answer (Connection refused): its machines "
                                "are missing below" % dead_url]
    html = get_from(b, "127.0.0.1", "/status")[1]
    assert "<th>replica</th>" in html and "peer %s did not answer" % dead_url in html
    # a peer is asked for its own records only: a's view does not include b's
    local = json.loads(get_from(a, "127.0.0.1", "/status.json?local=1")[1])
    assert sorted(r["mac"] for r in local["records"]) == ["52:54:00:00:00:0a",
                                                          "52:54:00:00:00:0c"]


@pytest.mark.cli
def test_admin_allow_guards_the_peer_requests_too(start_server, data_dir):
    a = start_server("-data-path", str(data_dir), "-admin-allow", "10.9.9.9")
    b = start_server("-data-path", str(data_dir), "-peers", "http://127.0.0.1:%d" % a.port)
    view = json.loads(get_from(b, "127.0.0.1", "/status.json")[1])
    assert view["problems"] == ["peer http://127.0.0.1:%d did not answer (answered 403 "
                                "Forbidden): its machines are missing below" % a.port]


# ---------------------------------------------------------------- rolling out data

def git(*args, cwd):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                   check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.cli
def test_a_symlink_swap_rolls_out_a_new_commit_whole_within_a_second(start_server, tmp_path):
    """The README's rollout: each commit checked out into its own directory, then
    `ln -sfn` + `mv -T` swaps -data-path's symlink at once. Every answer while it
    happens is one commit's file, whole; the new one is served within a second."""
    repo = tmp_path / "repo"
    big = "x" * 200000               # a file long enough to be read in several chunks
    write(str(repo / "cloud/default"), "#cloud-config\nrelease: one\n#%s\n" % big)
    write(str(repo / "boot/default"), boot_json())
    git("init", "-q", cwd=str(repo))
    git("add", "-A", cwd=str(repo))
    git("commit", "-qm", "one", cwd=str(repo))
    write(str(repo / "cloud/default"), "#cloud-config\nrelease: two\n#%s\n" % big)
    git("commit", "-qam", "two", cwd=str(repo))
    releases = tmp_path / "releases"
    releases.mkdir()
    for rev, name in (("HEAD~1", "one"), ("HEAD", "two")):
        git("worktree", "add", "-q", "--detach", str(releases / name), rev, cwd=str(repo))
    os.symlink("releases/one", str(tmp_path / "current"))
    past = time.time() - 10
    for folder, _, names in os.walk(str(releases)):
        for n in names:
            os.utime(os.path.join(folder, n), (past, past))
    s = start_server("-data-path", str(tmp_path / "current"), "-log-level", "warning")
    wanted = {"#cloud-config\nrelease: %s\n#%s\n" % (r, big) for r in ("one", "two")}
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(get_from(s, "127.0.0.1", "/cloud"))

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    subprocess.run("ln -sfn releases/two current.new && mv -T current.new current",
                   shell=True, cwd=str(tmp_path), check=True)
    swapped = time.monotonic()
    while get_from(s, "127.0.0.1", "/cloud")[1] != "#cloud-config\nrelease: two\n#%s\n" % big:
        assert time.monotonic() - swapped < 1.0, "the new commit was not served within 1 s"
        time.sleep(0.02)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    assert len(seen) > 20
    assert all(status == 200 and body in wanted for status, body in seen), \
        [b[:40] for _, b in seen if b not in wanted][:3]
