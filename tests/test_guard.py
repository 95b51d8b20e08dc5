"""The guard (issue: no host can take the service away): the request-head
deadline, the per-client connection cap, idle connections making room at
-max-connections, the TFTP per-client cap and trusted proxies, against a real
server on loopback. Clients come from distinct loopback addresses (127.0.0.x),
as machines on a boot network do."""

import json
import os
import socket
import struct
import time

import pytest

from _bootcfg import settings
from _bootcfg.guard import Proxies, client_key
from helpers import read_head, read_to_close, write


def connect(server, source="127.0.0.1", timeout=5):
    return socket.create_connection((server.host, server.port), timeout=timeout,
                                    source_address=(source, 0))


def closed_by_server(sock, within=5.0):
    """True if the server closes `sock` (EOF or reset) within `within` seconds,
    reading and discarding anything it sends."""
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def trickle(sock, byte, count):
    """Send `byte` every 0.1 s, `count` times or until the server closes the
    connection (the idle limit never trips); then all it sent before closing."""
    try:
        for _ in range(count):
            sock.sendall(byte)
            time.sleep(0.1)
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.settimeout(5)
    return read_to_close(sock, must_close=True)


def get_on(sock, path="/", headers=""):
    sock.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (path, headers)).encode())
    head = read_head(sock)
    length = int([line.split(b":")[1] for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length")][0])
    body = head.split(b"\r\n\r\n", 1)[1]
    while len(body) < length:
        body += sock.recv(65536)
    return head.split(b" ")[1].decode(), body


def metric(server, name, **labels):
    want = name + ("{%s}" % ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
                   if labels else "")
    status, _, body = server.get("/metrics")
    for line in body.decode().splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


# ---------------------------------------------------------------- head deadline

@pytest.mark.http
def test_a_trickled_head_is_answered_408_at_the_deadline(serve, data_dir):
    s = serve("-data-path", str(data_dir), "-header-timeout", "1")
    c = connect(s)
    c.sendall(b"GET /ipxe?mac=52:54:00:89:d8:10 HTTP/1.1\r\n")
    started = time.monotonic()
    answer = trickle(c, b"X", 40)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"header_timeout" in answer
    assert time.monotonic() - started < 4.5
    assert s.wait_log(r'"GET /ipxe\?mac=52:54:00:89:d8:10" 408 ')
    assert metric(s, "bootcfg_connections_cut_total", reason="header_timeout") == 1


@pytest.mark.http
def test_a_trickled_request_line_is_closed_without_an_answer(serve, data_dir):
    s = serve("-data-path", str(data_dir), "-header-timeout", "1")
    c = connect(s)
    c.sendall(b"GE")
    assert trickle(c, b"T", 30) == b""
    assert s.wait_log(r"closed a connection whose request head took over 1 s")


@pytest.mark.http
def test_a_kept_alive_connection_waits_for_the_idle_limit_not_the_head_deadline(
        serve, data_dir):
    s = serve("-data-path", str(data_dir), "-header-timeout", "0.5", "-idle-timeout", "5")
    c = connect(s)
    assert get_on(c)[0] == "200"
    time.sleep(1.2)                    # idle, past the head deadline, within idle limit
    assert get_on(c)[0] == "200"
    c.sendall(b"GET / HTTP/1.1\r\n")   # a head begun later still has its deadline
    assert closed_by_server(c, within=3)


@pytest.mark.http
def test_with_the_head_deadline_off_a_trickle_is_not_cut(serve, data_dir):
    s = serve("-data-path", str(data_dir), "-header-timeout", "0", "-idle-timeout", "1")
    c = connect(s)
    c.sendall(b"GET / HTTP/1.1\r\n")
    for _ in range(25):                # 2.5 s, more than the idle limit in all
        c.sendall(b"X")
        time.sleep(0.1)
    c.sendall(b": y\r\n\r\n")
    assert read_head(c).startswith(b"HTTP/1.1 200")


@pytest.mark.http
def test_a_slow_tls_handshake_is_cut_at_the_head_deadline(serve, data_dir, tls_files):
    cert, key = tls_files
    s = serve("-data-path", str(data_dir), "-cert-file", cert, "-key-file", key,
              "-tls-address", "127.0.0.1:0", "-header-timeout", "1")
    tls_port = [port for scheme, port in s.listening() if scheme == "https"][0]
    c = socket.create_connection((s.host, tls_port), timeout=5)
    c.sendall(b"\x16\x03\x01")         # the start of a ClientHello, and nothing more
    started = time.monotonic()
    assert closed_by_server(c, within=5)
    assert time.monotonic() - started < 4
    deadline = time.monotonic() + 3
    while metric(s, "bootcfg_connections_cut_total", reason="header_timeout") != 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)


# ---------------------------------------------------------------- per client

@pytest.mark.http
def test_one_client_past_its_cap_loses_its_own_oldest_waiting_connection(serve, data_dir):
    s = serve("-data-path", str(data_dir), "-max-connections-per-client", "3")
    other = connect(s, "127.0.0.3")
    other.sendall(b"GET / HTTP/1.1\r\n")            # another client, mid-head
    mine = [connect(s, "127.0.0.2") for _ in range(3)]
    time.sleep(0.2)
    newest = connect(s, "127.0.0.2")
    assert closed_by_server(mine[0], within=3)       # the oldest made room
    assert get_on(newest)[0] == "200"
    for c in mine[1:]:
        assert get_on(c)[0] == "200"                 # the others are untouched
    other.sendall(b"Host: x\r\n\r\n")
    assert read_head(other).startswith(b"HTTP/1.1 200")
    assert metric(s, "bootcfg_connections_cut_total", reason="per_client") == 1
    assert not s.wait_log(r'127\.0\.0\.2 "-"', timeout=0.2)     # no access line


@pytest.mark.http
def test_a_flood_from_one_address_leaves_room_for_everyone_else(serve, data_dir):
    s = serve("-data-path", str(data_dir), "-max-connections", "20",
              "-max-connections-per-client", "5")
    flood = []
    for _ in range(60):
        c = connect(s, "127.0.0.2")
        try:
            c.sendall(b"GET / HTTP/1.1\r\n")
        except OSError:
            pass
        flood.append(c)
    time.sleep(0.3)
    for n in range(10):                              # ten machines, each served
        c = connect(s, "127.0.0.%d" % (10 + n))
        assert get_on(c, "/ipxe?mac=52:54:00:89:d8:10")[0] == "200"
    cut = metric(s, "bootcfg_connections_cut_total", reason="per_client")
    assert cut == 55
    lines = [line for line in s.log().splitlines() if "max-connections-per-client" in line]
    assert len(lines) == 1, lines                    # logged once a minute, not 55 times


@pytest.mark.http
def test_a_client_whose_connections_are_all_busy_is_refused_the_next(
        serve, data_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    with open(str(images / "big"), "wb") as f:
        f.truncate(256 << 20)
    s = serve("-data-path", str(data_dir), "-images-path", str(images),
              "-max-connections-per-client", "2")
    busy = []
    for _ in range(2):                 # downloads nobody reads: answering, not waiting
        c = connect(s, "127.0.0.2")
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.sendall(b"GET /images/big HTTP/1.1\r\nHost: x\r\n\r\n")
        busy.append(c)
    time.sleep(0.5)
    extra = connect(s, "127.0.0.2")
    assert closed_by_server(extra, within=3)
    assert get_on(connect(s, "127.0.0.3"))[0] == "200"
    assert s.wait_log(r"127\.0\.0\.2: refused a connection: -max-connections-per-client 2")


@pytest.mark.http
def test_trusted_proxies_have_no_cap(serve, data_dir):
    s = serve("-data-path", str(data_dir), "-max-connections-per-client", "2",
              "-trusted-proxies", "127.0.0.2/32")
    held = [connect(s, "127.0.0.2") for _ in range(6)]
    time.sleep(0.2)
    for c in held:
        assert get_on(c)[0] == "200"
    assert metric(s, "bootcfg_connections_cut_total", reason="per_client") == 0


@pytest.mark.unit
def test_ipv6_clients_are_counted_by_their_64():
    assert client_key("2001:db8:1:2::5") == client_key("2001:db8:1:2:ffff::9") \
        == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::5") != client_key("2001:db8:1:2::5")
    assert client_key("::ffff:10.0.0.5") == "10.0.0.5"
    assert client_key("10.0.0.5") == "10.0.0.5"


# ---------------------------------------------------------------- at max_connections

@pytest.mark.http
def test_idle_kept_alive_connections_make_room_at_max_connections(serve, data_dir):
    s = serve("-data-path", str(data_dir), "-max-connections", "3",
              "-max-connections-per-client", "0")
    idle = [connect(s, "127.0.0.%d" % (2 + n)) for n in range(2)]
    for c in idle:
        assert get_on(c)[0] == "200"
        time.sleep(0.05)
    mid = connect(s, "127.0.0.4")
    mid.sendall(b"GET / HTTP/1.1\r\n")               # mid-request: never taken
    time.sleep(0.2)
    new = connect(s, "127.0.0.5")
    assert get_on(new)[0] == "200"
    assert closed_by_server(idle[0], within=3)       # the longest idle went
    assert get_on(idle[1])[0] == "200"
    mid.sendall(b"Host: x\r\n\r\n")
    assert read_head(mid).startswith(b"HTTP/1.1 200")
    assert s.wait_log(r"127\.0\.0\.2: closed an idle kept-alive connection to make room")
    # (reading /metrics now would take a fourth connection, and close another)


@pytest.mark.http
def test_at_max_connections_with_nobody_idle_a_client_gets_503(serve, data_dir):
    s = serve("-data-path", str(data_dir), "-max-connections", "2",
              "-max-connections-per-client", "0")
    held = [connect(s, "127.0.0.%d" % (2 + n)) for n in range(2)]
    for c in held:
        c.sendall(b"GET / HTTP/1.1\r\n")
    time.sleep(0.2)
    extra = connect(s, "127.0.0.9")
    assert read_head(extra).startswith(b"HTTP/1.1 503")


# ---------------------------------------------------------------- trusted proxies

@pytest.mark.parametrize("peer, forwarded, client", [
    ("10.0.0.1", "192.0.2.7", "10.0.0.1"),                 # not a proxy: ignored
    ("127.0.0.2", "192.0.2.7", "192.0.2.7"),
    ("127.0.0.2", "192.0.2.7, 127.0.0.3", "192.0.2.7"),    # a chain of proxies
    ("127.0.0.2", "198.51.100.1, 192.0.2.7", "192.0.2.7"),  # forged left entry skipped
    ("127.0.0.2", "127.0.0.3, 127.0.0.4", "127.0.0.3"),    # all trusted: left-most
    ("127.0.0.2", "192.0.2.7, junk", "127.0.0.2"),         # unreadable: the proxy
    ("127.0.0.2", "[2001:db8::5]:4711", "2001:db8::5"),
    ("127.0.0.2", "192.0.2.7:4711", "192.0.2.7"),
    ("::ffff:127.0.0.2", "::ffff:192.0.2.7", "192.0.2.7"),
    ("127.0.0.2", "", "127.0.0.2"),
])
@pytest.mark.unit
def test_the_client_behind_trusted_proxies(peer, forwarded, client):
    proxies = Proxies(settings.networks("127.0.0.0/29"))       # as -trusted-proxies reads it
    assert proxies.client(peer, forwarded) == client


@pytest.mark.http
def test_forwarded_for_is_believed_from_a_trusted_proxy_only(serve, data_dir):
    s = serve("-data-path", str(data_dir), "-trusted-proxies", "127.0.0.2")
    for source, mac in (("127.0.0.2", "52:54:00:89:d8:10"), ("127.0.0.3", "52:54:00:89:d8:11")):
        c = connect(s, source)
        # HAProxy adds its own header line; nginx appends to the one it got.
        status, _ = get_on(c, "/ipxe?mac=" + mac,
                           "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 192.0.2.7\r\n")
        assert status == "200"
    assert s.wait_log(r' 192\.0\.2\.7 "GET /ipxe\?mac=52:54:00:89:d8:10" 200')
    assert s.wait_log(r' 127\.0\.0\.3 "GET /ipxe\?mac=52:54:00:89:d8:11" 200')
    assert not s.wait_log(r'203\.0\.113\.9 "GET', timeout=0.2)
    body = json.loads(s.get("/status.json")[2])
    clients = {m["mac"]: m["client"] for m in body["machines"]}
    assert clients == {"52:54:00:89:d8:10": "192.0.2.7", "52:54:00:89:d8:11": "127.0.0.3"}


# ---------------------------------------------------------------- TFTP

def tftp_rrq(address, name, source):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.settimeout(3)
    sock.sendto(struct.pack("!H", 1) + name.encode() + b"\0octet\0", address)
    return sock


@pytest.mark.http
def test_tftp_transfers_per_client(serve, data_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    write(str(images / "kernel"), "k" * 100000)
    s = serve("-data-path", str(data_dir), "-images-path", str(images),
              "-tftp-address", "127.0.0.1:0", "-tftp-transfers-per-client", "2")
    address = s.tftp_address
    stalled = [tftp_rrq(address, "kernel", "127.0.0.2") for _ in range(2)]
    for sock in stalled:                    # first blocks sent, never acknowledged
        assert struct.unpack("!H", sock.recvfrom(2048)[0][:2])[0] == 3
    refused = tftp_rrq(address, "kernel", "127.0.0.2").recvfrom(2048)[0]
    assert struct.unpack("!H", refused[:2])[0] == 5 and b"too many transfers" in refused
    other = tftp_rrq(address, "kernel", "127.0.0.3").recvfrom(2048)[0]
    assert struct.unpack("!H", other[:2])[0] == 3
    assert metric(s, "bootcfg_connections_cut_total", reason="tftp_per_client") == 1


@pytest.fixture
def tls_files(tmp_path):
    from helpers import need_tool
    need_tool("openssl", "apt-get install openssl")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    assert os.system("openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost "
                     "-keyout %s -out %s -days 1 2>/dev/null" % (key, cert)) == 0
    return cert, key
