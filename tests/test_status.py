"""/status and /status.json: boot tracking as a person would check it. Simulated
machines boot from distinct loopback addresses (127.0.0.x) over real HTTP; the
page is rendered by headless Chromium and checked in its DOM."""

import http.client
import json
import os
import re
import subprocess
import time

import pytest

from _bootcfg.app import STEPS
from _bootcfg.answers import Request, Response
from _bootcfg.shared import Shared
from _bootcfg.status import Tracker
from helpers import IN_CI, MAC1, ROOT, boot_json, settle, write

XSS = "<script>alert(1)</script>"


@pytest.fixture
def fleet(tmp_path):
    d, img = tmp_path / "data", tmp_path / "images"
    cfg = boot_json(kernel="/images/vmlinuz", initrd=["/images/initrd.gz"],
                    cmdline=["console=ttyS0",
                             "cloud-config-url=http://bootcfg:8080/cloud?mac=${mac:hexhyp}"])
    write(str(d / "boot/default"), cfg)
    write(str(d / "boot/mac/52-54-00-aa-00-09"), '{"kernel": "/k", "cmdline": ["a\\u0001"]}')
    write(str(d / "cloud/default"), "#cloud-config\n")
    write(str(img / "vmlinuz"), os.urandom(2 << 20))
    write(str(img / "initrd.gz"), os.urandom(16 << 20))    # more than socket buffers hold
    settle(d)
    return d, img


def get(server, path, client="127.0.0.1", conn=None):
    c = conn or http.client.HTTPConnection(server.host, server.port, timeout=10,
                                           source_address=(client, 0))
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    if conn is None:
        c.close()
    return r.status, body


def boot(server, client, mac, hostname="", steps=("chain", "script", "kernel", "initrd",
                                                  "cloud")):
    """One simulated machine on one keep-alive connection, as iPXE does it."""
    c = http.client.HTTPConnection(server.host, server.port, timeout=10,
                                   source_address=(client, 0))
    q = "uuid=&mac=%s&hostname=%s&arch=x86_64&platform=efi" % (
        mac.replace(":", "-"), hostname.replace("<", "%3C").replace(">", "%3E")
        .replace("(", "%28").replace(")", "%29").replace("/", "%2F"))
    paths = {"chain": "/boot.ipxe", "script": "/ipxe?" + q, "kernel": "/images/vmlinuz",
             "initrd": "/images/initrd.gz", "cloud": "/cloud?mac=" + mac}
    out = [get(server, paths[s], conn=c)[0] for s in steps]
    c.close()
    return out


def cut_off(server, client, path):
    """A download the machine abandons after its first bytes."""
    import socket
    s = socket.create_connection((server.host, server.port), source_address=(client, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    s.recv(1000)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()


def storm(server):
    """Machines in every state: handed off, cut off mid-initrd, no config, invalid
    config, a hostile hostname, and one still at its kernel."""
    for i in range(2, 6):
        assert boot(server, "127.0.0.%d" % i, "52:54:00:aa:00:%02x" % i,
                    hostname="node%d" % i) == [200] * 5
    boot(server, "127.0.0.6", "52:54:00:aa:00:06", steps=("chain", "script", "kernel"))
    cut_off(server, "127.0.0.6", "/images/initrd.gz")
    os.unlink(str(server.data / "boot/default"))
    time.sleep(0.15)          # seen within file_check_seconds (0.1 s)
    assert boot(server, "127.0.0.7", "52:54:00:aa:00:07", steps=("chain", "script")) == \
        [200, 404]
    write(str(server.data / "boot/default"), boot_json(
        kernel="/images/vmlinuz", initrd=["/images/initrd.gz"],
        cmdline=["cloud-config-url=http://bootcfg:8080/cloud?mac=${mac:hexhyp}"]))
    settle(server.data)
    assert boot(server, "127.0.0.9", "52:54:00:aa:00:09", steps=("chain", "script")) == \
        [200, 500]
    assert boot(server, "127.0.0.10", "52:54:00:aa:00:0a", hostname=XSS) == [200] * 5
    assert boot(server, "127.0.0.11", "52:54:00:aa:00:0b",
                steps=("chain", "script", "kernel")) == [200] * 3


def wait_for_cut_off(server):
    """The abandoned download is recorded once the server's send fails."""
    deadline = time.monotonic() + 10
    while True:
        doc, by_mac = machines_by_mac(server)
        if by_mac.get("52:54:00:aa:00:06", {}).get("state") == "failed":
            return doc, by_mac
        assert time.monotonic() < deadline, by_mac.get("52:54:00:aa:00:06")
        time.sleep(0.05)


def machines_by_mac(server):
    status, body = get(server, "/status.json")
    assert status == 200
    doc = json.loads(body)
    return doc, {m["mac"]: m for m in doc["machines"]}


@pytest.mark.http
def test_states_and_problems_in_json(serve, fleet):
    d, img = fleet
    s = serve("-data-path", str(d), "-images-path", str(img))
    s.data = d
    storm(s)
    doc, by_mac = wait_for_cut_off(s)
    for i in range(2, 6):
        m = by_mac["52:54:00:aa:00:%02x" % i]
        assert m["state"] == "handed off" and m["hostname"] == "node%d" % i, m
        assert [st["step"] for st in m["steps"]] == [
            "chainload", "boot script", "kernel", "initrd initrd.gz", "cloud-config"]
        assert m["expected"] == ["kernel", "initrd initrd.gz", "cloud-config"]
        assert m["client"] == "127.0.0.%d" % i and m["arch"] == "x86_64"
    assert "initrd initrd.gz: cut off" in by_mac["52:54:00:aa:00:06"]["problem"]
    assert by_mac["52:54:00:aa:00:07"]["state"] == "failed"
    assert "boot script: 404" in by_mac["52:54:00:aa:00:07"]["problem"]
    bad = by_mac["52:54:00:aa:00:09"]
    assert bad["state"] == "failed" and "cmdline[0]" in bad["problem"] and \
        "control character" in bad["problem"]
    assert by_mac["52:54:00:aa:00:0a"]["hostname"] == XSS
    assert by_mac["52:54:00:aa:00:0b"]["state"] == "booting"
    assert doc["counts"] == {"booting": 1, "handed off": 5, "stuck": 0, "failed": 3}
    assert doc["machines"][0]["mac"] == "52:54:00:aa:00:0b"     # newest activity first
    _, body = get(s, "/status.json?state=failed")
    assert {m["mac"] for m in json.loads(body)["machines"]} == {
        "52:54:00:aa:00:06", "52:54:00:aa:00:07", "52:54:00:aa:00:09"}
    _, body = get(s, "/status.json?q=node3")
    assert [m["hostname"] for m in json.loads(body)["machines"]] == ["node3"]
    _, body = get(s, "/status.json?limit=2&offset=2")
    assert len(json.loads(body)["machines"]) == 2


@pytest.mark.http
def test_stuck_after(serve, fleet):
    d, img = fleet
    s = serve("-data-path", str(d), "-images-path", str(img), "-stuck-after", "0.3")
    boot(s, "127.0.0.20", "52:54:00:aa:00:20", steps=("chain", "script", "kernel"))
    time.sleep(0.5)
    m = machines_by_mac(s)[1]["52:54:00:aa:00:20"]
    assert m["state"] == "stuck" and "waiting for initrd initrd.gz, cloud-config" in m["problem"]


@pytest.mark.http
def test_page_escapes_and_forbids_scripts(serve, fleet):
    d, img = fleet
    s = serve("-data-path", str(d), "-images-path", str(img))
    boot(s, "127.0.0.10", "52:54:00:aa:00:0a", hostname=XSS)
    conn = s.connect()
    conn.request("GET", "/status")
    r = conn.getresponse()
    page = r.read().decode()
    conn.close()
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/html")
    csp = r.getheader("Content-Security-Policy")
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert XSS not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page.lower() and "http://" not in page.split("</style>")[0]
    assert '<meta http-equiv="refresh"' in page


@pytest.mark.http
def test_admin_allow(serve, fleet):
    d, img = fleet
    s = serve("-data-path", str(d), "-images-path", str(img), "-admin-allow",
              "127.0.0.1/32,10.0.0.0/8")
    for path in ("/status", "/status.json", "/metrics"):
        assert get(s, path, client="127.0.0.1")[0] == 200
        status, body = get(s, path, client="127.0.0.5")
        assert status == 403 and b"-admin-allow" in body
    assert get(s, "/ipxe?mac=" + MAC1, client="127.0.0.5")[0] == 200


@pytest.mark.unit
def test_admin_allow_maps_ipv4_on_a_dual_stack_socket():
    from _bootcfg.app import App
    import ipaddress
    app = App(None, admin_allow=[ipaddress.ip_network("192.0.2.0/24")])
    assert app.admin_allowed("::ffff:192.0.2.7") and app.admin_allowed("192.0.2.8")
    assert not app.admin_allowed("::ffff:198.51.100.1") and not app.admin_allowed("::1")


@pytest.mark.unit
@pytest.mark.parametrize("shared", [False, True], ids=["one process", "shared ring"])
def test_records_are_bounded_with_100000_machines(shared):
    t = Tracker(Shared(1) if shared else None, max_machines=10000)
    resp = Response(200)
    for i in range(100000):
        mac = "52:54:%02x:%02x:%02x:%02x" % (i >> 24 & 255, i >> 16 & 255, i >> 8 & 255,
                                            i & 255)
        resp.machine = ("", mac)
        t.observe("script", "/ipxe", Request("GET", "/ipxe", {}, {}, "10.%d.%d.%d" % (
            i >> 16 & 255, i >> 8 & 255, i & 255)), resp, 100, 0.1)
        if i % 2000 == 1999:
            t.view()
    records = t.view()
    t.close()
    assert len(records) == 10000 and len(t._client_machine) <= 20000
    assert records[-1]["mac"] == "52:54:00:01:86:9f"              # the newest kept


def chromium():
    for name in ("chromium", "chromium-browser"):
        path = subprocess.run(["sh", "-c", "command -v " + name], stdout=subprocess.PIPE,
                              text=True).stdout.strip()
        if path:
            return path
    if IN_CI:
        pytest.fail("chromium is not installed; .ci/run must install it")
    pytest.skip("chromium is not installed (apt-get install chromium)")


BOOT_STEPS = [      # route, path, query, status, machine, matched, expects, sent, problem
    ("/boot.ipxe", "/boot.ipxe", {}, 200, ("", ""), "", (), 120, ""),
    ("/ipxe", "/ipxe", {"hostname": "web\x01" + XSS, "serial": "S" * 40}, 200,
     ("", "52:54:00:aa:00:01"), "boot/default",
     (("kernel", "/images/vmlinuz"), ("initrd initrd.gz", "/images/initrd.gz"),
      ("cloud-config", "/cloud")), 900, ""),
    ("/images/", "/images/vmlinuz", {}, 200, ("", ""), "images", (), 2 << 20, ""),
    ("/images/", "/images/initrd.gz", {}, 200, ("", ""), "images", (), -1, ""),
    ("/cloud", "/cloud", {}, 404, ("", "52:54:00:aa:00:02"), "no match", (), 30,
     "no cloud config"),
    ("/ipxe", "/ipxe", {}, 500, ("", "52:54:00:aa:00:03"), "boot/mac/x (invalid)", (), 40,
     "boot/mac/x: line 1: bad\tjson"),
]


def replay(tracker, steps, monkeypatch):
    clock = iter(1000.0 + i / 8 for i in range(1000))        # exact in "%.3f"
    monkeypatch.setattr(time, "time", lambda: next(clock))
    for route, path, query, status, machine, matched, expects, sent, problem in steps:
        resp = Response(status, body=b"x" * max(sent, 1), matched=matched, machine=machine)
        tracker.observe(STEPS[route], route, Request("GET", path, query, {}, "127.0.0.9"),
                        resp, sent,
                        1.25, expects, problem)
    monkeypatch.undo()
    return tracker.view()


@pytest.mark.unit
def test_one_process_and_the_shared_ring_make_the_same_records(monkeypatch):
    """One process keeps events as they came and cleans them when /status is read;
    workers write them as text to shared memory. The records must not differ."""
    local = replay(Tracker(None), BOOT_STEPS, monkeypatch)
    assert local == replay(Tracker(Shared(1, ring_events=64)), BOOT_STEPS, monkeypatch)
    assert [r["key"] for r in local] == ["52:54:00:aa:00:0%d" % i for i in (1, 2, 3)]
    assert local[0]["hostname"] == "web\\x01" + XSS


@pytest.mark.unit
def test_an_event_too_long_for_the_ring_is_shortened_not_lost(monkeypatch):
    steps = [(route, path, dict(query, serial="S" * 400) if query else query, status,
              machine, matched, expects, sent, problem * 40)
             for route, path, query, status, machine, matched, expects, sent, problem
             in BOOT_STEPS]
    records = replay(Tracker(Shared(1, ring_events=64)), steps, monkeypatch)
    assert [r["key"] for r in records] == ["52:54:00:aa:00:0%d" % i for i in (1, 2, 3)]
    assert records[0]["serial"].startswith("SSSS") and records[0]["serial"].endswith("...")
    assert records[2]["attempt"]["steps"][0]["problem"].startswith("boot/mac/x: line 1")


@pytest.mark.cli
def test_the_page_in_a_real_browser(start_server, fleet, tmp_path):
    """Headless Chromium loads /status after the storm: the rendered DOM shows each
    machine's state and problem, the hostile hostname as text and no script ran;
    a screenshot is kept for people (tests/artifacts/status.png)."""
    browser = chromium()
    d, img = fleet
    s = start_server("-data-path", str(d), "-images-path", str(img))
    s.data = d
    storm(s)
    wait_for_cut_off(s)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--user-data-dir=%s" % (tmp_path / "profile")]
    url = "http://127.0.0.1:%d/status" % s.port
    dom = subprocess.run([browser] + flags + ["--dump-dom", url], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=60).stdout.decode()
    assert 'id="count-handed-off">5<' in dom and 'id="count-failed">3<' in dom, dom[:3000]
    rows = {key: cls for cls, key in re.findall(r'<tr class="([a-z-]+)" data-key="([^"]+)"',
                                                 dom)}
    assert rows["52:54:00:aa:00:02"] == "handed-off"
    assert rows["52:54:00:aa:00:06"] == "failed" and rows["52:54:00:aa:00:07"] == "failed"
    assert rows["52:54:00:aa:00:09"] == "failed" and rows["52:54:00:aa:00:0b"] == "booting"
    row9 = dom[dom.index('data-key="52:54:00:aa:00:09"'):]
    assert "control character" in row9[:row9.index("</tr>")]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom and "<script>alert" not in dom
    art = os.path.join(ROOT, "tests", "artifacts")
    os.makedirs(art, exist_ok=True)
    shot = os.path.join(art, "status.png")
    subprocess.run([browser] + flags + ["--screenshot=" + shot, "--window-size=1400,900",
                                        "--hide-scrollbars", url],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert os.path.getsize(shot) > 10000


@pytest.mark.cli
def test_one_view_across_workers_and_after_a_replacement(start_server, fleet):
    """Records made through one worker are seen through every other, and survive
    the replacement of the worker that made them; /metrics sums every worker."""
    import signal
    d, img = fleet
    s = start_server("-data-path", str(d), "-images-path", str(img), "-workers", "3")
    assert s.wait_log("3 worker processes")
    for i in range(2, 12):        # new connections: spread over the workers
        boot(s, "127.0.0.%d" % i, "52:54:00:bb:00:%02x" % i)
    time.sleep(0.5)               # each worker shares its events every 0.2 s
    seen = set()
    for _ in range(30):           # every worker answers with all ten machines
        doc, by_mac = machines_by_mac(s)
        assert doc["counts"]["handed off"] == 10, doc["counts"]
    time.sleep(1.2)               # counters are republished every second
    pids = subprocess.run(["pgrep", "-P", str(s.proc.pid)], stdout=subprocess.PIPE,
                          text=True).stdout.split()
    for pid in pids:
        os.kill(int(pid), signal.SIGKILL)
    assert s.wait_log(r"replacing it", timeout=5)
    time.sleep(1.5)
    for _ in range(10):
        doc, _ = machines_by_mac(s)
        assert doc["counts"]["handed off"] == 10, doc["counts"]
        metrics = get(s, "/metrics")[1].decode()
        n = re.search(r'bootcfg_requests_total\{route="/ipxe",status="200"\} (\d+)', metrics)
        seen.add(int(n.group(1)))
    assert seen == {10}, seen     # totals over all workers, across the replacement
