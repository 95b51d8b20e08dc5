"""Abuse: traversal corpus, slow clients, fuzzed requests, aborted downloads,
config churn under load, SIGTERM under load. Each test fails if the protection
it names is removed."""

import http.client
import itertools
import os
import random
import re
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import render
from helpers import boot_json, raw_request as raw, write

SECRET = b"TOP-SECRET-MARKER-7f3a9c"


@pytest.fixture
def hostile_tree(tmp_path):
    """Roots with secrets just outside them, and symlinks pointing out."""
    srv = tmp_path / "srv"
    data, images = srv / "data", srv / "images"
    write(str(tmp_path / "secret.txt"), SECRET)
    write(str(srv / "secret.txt"), SECRET)
    write(str(data / "boot/default"), boot_json(tag="default"))
    write(str(data / "cloud/default"), "#cloud-config\nhostname: default\n")
    write(str(images / "os/vmlinuz"), b"kernel")
    write(str(images / "big"), os.urandom(4 << 20))
    os.symlink(str(srv / "secret.txt"), str(images / "escape"))
    os.symlink(str(srv), str(images / "escape-dir"))
    os.symlink("../secret.txt", str(images / "os/relative-escape"))
    return data, images, srv


def _serve_tree(start, tree):
    data, images, srv = tree
    server = start("-data-path", str(data), "-images-path", str(images))
    server.data, server.images, server.srv = data, images, srv
    return server


@pytest.fixture
def hostile(hostile_tree, serve):
    return _serve_tree(serve, hostile_tree)


def get_raw(server, target):
    return raw(server, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")


def status_of(answer):
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    return int(m.group(1)) if m else None


DOTS = ["..", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "%252e%252e", "%c0%ae%c0%ae",
        "%e0%80%ae%e0%80%ae", "..%00", "%2e%2e%00", "..%2f..", "%u002e%u002e"]
SEPS = ["/", "%2f", "%2F", "\\", "%5c", "%5C", "%252f", "//", "/./", "%c0%af"]


def traversal_corpus(srv):
    corpus = set()
    for dots, sep, depth in itertools.product(DOTS, SEPS, (1, 2, 4)):
        corpus.add((dots + sep) * depth + "secret.txt")
        corpus.add("os" + sep + (dots + sep) * depth + "secret.txt")
    corpus |= {"/etc/passwd", "%2fetc%2fpasswd", "/" + str(srv).lstrip("/") + "/secret.txt",
               str(srv) + "/secret.txt", "escape", "escape-dir/secret.txt",
               "os/relative-escape", "escape%00", "os/vmlinuz%00/../../secret.txt",
               "os/vmlinuz/../../secret.txt", "..", "../", "%2e%2e", ".", "./../secret.txt",
               "os/..%5c..%5csecret.txt", "file:///etc/passwd", "~/secret.txt"}
    return sorted(corpus)


@pytest.mark.http
def test_traversal_corpus_on_images(hostile):
    corpus = traversal_corpus(hostile.srv)
    assert len(corpus) >= 100
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: get_raw(hostile, b"/images/" + p.encode()), corpus))
    for path, answer in zip(corpus, answers):
        assert SECRET not in answer, path
        assert status_of(answer) in (400, 403, 404), (path, answer[:80])
    assert get_raw(hostile, b"/images/os/vmlinuz").endswith(b"kernel")
    assert "Traceback" not in hostile.log()


@pytest.mark.http
def test_traversal_corpus_in_parameters(hostile):
    corpus = traversal_corpus(hostile.srv)
    targets = []
    for p in corpus:
        q = p.replace("&", "%26").replace("#", "%23").replace(" ", "%20")
        targets += [b"/ipxe?uuid=%s&mac=%s" % (q.encode(), q.encode()),
                    b"/cloud?uuid=%s&mac=%s" % (q.encode(), q.encode()),
                    b"/pixiecore/v1/boot/" + q.encode()]
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda t: get_raw(hostile, t), targets))
    for target, answer in zip(targets, answers):
        assert SECRET not in answer, target
        expected = (400, 404) if target.startswith(b"/pixiecore") else (200,)
        assert status_of(answer) in expected, (target, answer[:80])
        if target.startswith(b"/cloud"):
            assert answer.endswith(b"hostname: default\n")


@pytest.mark.http
def test_slow_clients_do_not_block_new_ones(hostile):
    """500 connections trickling header bytes; a new client is still served
    within a second, and the thread count stays bounded."""
    socks = [socket.create_connection((hostile.host, hostile.port)) for _ in range(500)]
    for s in socks:
        s.sendall(b"GET / HTTP/1.1\r\n")
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            for s in socks:
                try:
                    s.sendall(b"X")
                except OSError:
                    pass
            stop.wait(0.2)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        time.sleep(0.5)
        # served beside 500 slow ones within the client's 1 s timeout, or it fails
        c = http.client.HTTPConnection(hostile.host, hostile.port, timeout=1)
        c.request("GET", "/ipxe")
        assert c.getresponse().status == 200
        threads = int(re.search(r"Threads:\s+(\d+)", open(
            "/proc/%d/status" % hostile.pid).read()).group(1))
        from _bootcfg.settings import LIMITS
        assert threads <= LIMITS["max_connections"] + 10
    finally:
        stop.set()
        t.join()
        for s in socks:
            s.close()


def fuzz_requests(n, seed=1234):
    rng = random.Random(seed)
    bases = [b"GET /ipxe?uuid=6c3f1e0a-4b7d-4e2a-9c1f-2a5b8d7e9f10&mac=52:54:00:89:d8:10 "
             b"HTTP/1.1\r\nHost: x\r\nConnection: close\r\n",
             b"GET /images/os/vmlinuz HTTP/1.1\r\nHost: x\r\nRange: bytes=0-3\r\n"
             b"Connection: close\r\n",
             b"HEAD /cloud?mac=52-54-00-89-d8-10 HTTP/1.0\r\n",
             b"GET /pixiecore/v1/boot/52:54:00:89:d8:10 HTTP/1.1\r\nConnection: close\r\n",
             b"POST /ipxe HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n"]
    junk = [b"\r\n", b"\n", b"\x00", b"\xff", b"%", b"%00", b"..", b" ", b"\t", b":",
            b"HTTP/1.1", b"Content-Length: -1\r\n", b"Transfer-Encoding: chunked\r\n",
            b"Range: bytes=999999999999999999999-\r\n", b"If-Modified-Since: \xff\r\n",
            b"A" * 5000, b"\r\n\r\n", b"?", b"&", b"=", b"#", b"\\", b"\x1b[31m"]
    out = []
    for _ in range(n):
        req = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            pos = rng.randrange(len(req) + 1)
            if op < 0.4:
                req[pos:pos] = rng.choice(junk)
            elif op < 0.7 and req:
                req[min(pos, len(req) - 1)] = rng.randrange(256)
            elif op < 0.85:
                del req[pos:pos + rng.randint(1, 20)]
            else:
                req[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 30)))
        if rng.random() < 0.95:
            req += b"\r\n\r\n"
        out.append(bytes(req))
    return out


@pytest.mark.http
def test_fuzzed_requests_get_4xx_or_close(hostile):
    requests_ = fuzz_requests(3000)

    def send(req):
        return raw(hostile, req, timeout=0.5)

    # Many at once: the 5% that never finish their head each hold a thread for
    # the client's 0.5 s timeout.
    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(send, requests_))
    codes = {}
    for req, answer in zip(requests_, answers):
        code = status_of(answer)
        if answer and code is None:
            pytest.fail("not an HTTP answer to %r: %r" % (req[:100], answer[:100]))
        if code is not None:
            assert code < 500 or code == 505, (req[:200], answer[:200])
        codes[code] = codes.get(code, 0) + 1
    assert sum(n for c, n in codes.items() if c and 400 <= c < 500) > 100
    assert get_raw(hostile, b"/ipxe").startswith(b"HTTP/1.1 200")
    assert "Traceback" not in hostile.log() and "internal error" not in hostile.log()


def process_counts(pid):
    fds = len(os.listdir("/proc/%d/fd" % pid))
    threads = int(re.search(r"Threads:\s+(\d+)", open("/proc/%d/status" % pid).read()).group(1))
    return fds, threads


@pytest.mark.http
def test_aborted_downloads_leak_nothing(hostile):
    pid = hostile.pid
    get_raw(hostile, b"/")
    before = process_counts(pid)

    def abort(_):
        s = socket.create_connection((hostile.host, hostile.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /images/big HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(2048)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(abort, range(1000)))
    deadline = time.monotonic() + 10
    while True:
        after = process_counts(pid)
        if after[0] <= before[0] + 1 and after[1] <= before[1] + 1:
            break
        assert time.monotonic() < deadline, "fds/threads %s -> %s" % (before, after)
        time.sleep(0.1)
    assert "Traceback" not in hostile.log()
    assert get_raw(hostile, b"/images/os/vmlinuz").endswith(b"kernel")


@pytest.mark.http
def test_config_churn_never_serves_partial_or_mixed(hostile):
    mac = "52:54:00:aa:bb:cc"
    boot_path = str(hostile.data / "boot/mac" / mac)
    cloud_path = str(hostile.data / "cloud/mac" / mac)
    versions = 10
    boots = [boot_json(cmdline=["v=%d" % i] + ["pad%d=%s" % (j, "x" * 200) for j in range(20)])
             for i in range(versions)]
    clouds = [("#cloud-config\nversion: %d\n" % i + "pad: %s\n" % ("y" * 4000) * 5)
              for i in range(versions)]
    scripts = {render.render_ipxe(render.parse_boot_config(b.encode())) for b in boots}
    cloud_bytes = {c.encode() for c in clouds}
    write(boot_path, boots[0])
    write(cloud_path, clouds[0])
    time.sleep(0.4)
    stop = threading.Event()
    seen_boot, seen_cloud, bad = set(), set(), []

    def reader(path, good, seen):
        c = http.client.HTTPConnection(hostile.host, hostile.port, timeout=10)
        while not stop.is_set():
            c.request("GET", path)
            r = c.getresponse()
            body = r.read()
            if r.status != 200 or body not in good:
                bad.append((path, r.status, body[:120]))
            seen.add(body)
        c.close()

    readers = [threading.Thread(target=reader, args=("/ipxe?mac=" + mac, scripts, seen_boot)),
                threading.Thread(target=reader, args=("/cloud?mac=" + mac, cloud_bytes,
                                                      seen_cloud))]
    for t in readers:
        t.start()
    try:
        for i in range(1, versions):
            if i % 2:            # atomic: write aside, rename over
                tmp = boot_path + ".tmp~"
                write(tmp, boots[i])
                os.replace(tmp, boot_path)
                write(cloud_path + ".tmp~", clouds[i])
                os.replace(cloud_path + ".tmp~", cloud_path)
            else:                # in place, in two halves with a pause between
                for path, text in ((boot_path, boots[i]), (cloud_path, clouds[i])):
                    with open(path, "w") as f:
                        f.write(text[:len(text) // 2])
                        f.flush()
                        time.sleep(0.02)
                        f.write(text[len(text) // 2:])
            # Past the store's settle time, so each version gets served; faster
            # churn freezes on the last good version, which is also correct.
            time.sleep(0.35)
    finally:
        stop.set()
        for t in readers:
            t.join(10)
    assert not bad, bad[:3]
    assert len(seen_boot) > 5 and len(seen_cloud) > 5, "the churn was not observed"


@pytest.mark.cli
def test_sigterm_under_load_finishes_in_flight(hostile_tree, start_server):
    hostile = _serve_tree(start_server, hostile_tree)
    size = os.path.getsize(str(hostile.images / "big"))
    s = socket.create_connection((hostile.host, hostile.port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.sendall(b"GET /images/big HTTP/1.1\r\nHost: x\r\n\r\n")
    got = s.recv(65536)
    hostile.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(OSError):                 # new connections are refused
        socket.create_connection((hostile.host, hostile.port), timeout=2).close()
    while True:                                  # the download in flight completes
        time.sleep(0.001)
        chunk = s.recv(262144)
        if not chunk:
            break
        got += chunk
    s.close()
    body = got.partition(b"\r\n\r\n")[2]
    assert len(body) == size
    assert hostile.proc.wait(10) == 0
