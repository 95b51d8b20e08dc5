"""The read-only TFTP server: real UDP on loopback, driven by a client written
here to the RFCs (so it can lose packets, repeat ACKs and vanish on purpose) and
by real clients (curl, busybox tftp)."""

import os
import socket
import struct
import subprocess
import threading
import time

import pytest

from _bootcfg.app import App, make_store
from _bootcfg.tftp import TftpServer
from helpers import MAC1, UUID1, boot_json, need_tool, settle, write

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6


def rrq(name, mode="octet", **options):
    return struct.pack("!H", RRQ) + name.encode() + b"\0" + mode.encode() + b"\0" + b"".join(
        k.encode() + b"\0" + str(v).encode() + b"\0" for k, v in options.items())


class Client:
    """A TFTP client: one transfer, from a fresh UDP port."""

    def __init__(self, address, timeout=5):
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)
        self.peer = None

    def send_request(self, packet):
        self.sock.sendto(packet, self.address)

    def recv(self):
        data, peer = self.sock.recvfrom(70000)
        if self.peer is None:
            self.peer = peer
        return data

    def ack(self, block):
        self.sock.sendto(struct.pack("!HH", ACK, block & 0xFFFF), self.peer)

    def get(self, name, window=1, **options):
        """(bytes, options the server accepted) of a whole file; raises
        FileNotFoundError-like AssertionError on a TFTP error."""
        if window > 1:
            options["windowsize"] = window
        self.send_request(rrq(name, **options))
        blksize, accepted, out, expected = 512, {}, [], 1
        first = self.recv()
        if first[:2] == struct.pack("!H", OACK):
            fields = first[2:].split(b"\0")[:-1]
            accepted = {fields[i].decode(): fields[i + 1].decode()
                        for i in range(0, len(fields), 2)}
            blksize = int(accepted.get("blksize", 512))
            window = int(accepted.get("windowsize", 1))
            self.ack(0)
            packet = self.recv()
        else:
            packet = first
        in_window = 0
        while True:
            opcode, number = struct.unpack("!HH", packet[:4])
            assert opcode != ERROR, packet[4:-1].decode()
            assert opcode == DATA
            if number == expected & 0xFFFF:
                out.append(packet[4:])
                expected += 1
                in_window += 1
                last = len(packet) - 4 < blksize
                if last or in_window == window:
                    self.ack(expected - 1)
                    in_window = 0
                if last:
                    return b"".join(out), accepted
            packet = self.recv()

    def close(self):
        self.sock.close()


@pytest.fixture
def tree(tmp_path):
    d, img = tmp_path / "data", tmp_path / "images"
    write(str(d / "boot/default"), boot_json(
        kernel="/images/vmlinuz", initrd=["/images/initrd.gz"],
        cmdline=["console=ttyS0", "a=x;y", "url=http://h/c?uuid=${uuid}&mac=${mac:hexhyp}"]))
    write(str(d / "boot/mac/52-54-00-00-00-77"), boot_json(kernel="http://elsewhere/vmlinuz"))
    write(str(img / "vmlinuz"), os.urandom(300000))
    write(str(img / "initrd.gz"), b"initrd")
    write(str(img / "shimx64.efi"), b"shim")
    write(str(img / "exact512"), b"x" * 1024)
    write(str(img / "small"), os.urandom(20000))
    write(str(tmp_path / "secret"), b"SECRET")
    os.symlink(str(tmp_path / "secret"), str(img / "escape"))
    settle(d)
    return d, img


@pytest.fixture
def tftpd(tree):
    """A TftpServer in this process with small timeouts; .address, .server."""
    servers = []

    def start(**limits):
        d, img = tree
        limits = dict({"tftp_timeout": 0.2, "tftp_retries": 3}, **limits)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        app = App(make_store(str(d)), str(img))
        srv = TftpServer(sock, app, limits)
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()
        srv.address, srv.app_ = sock.getsockname(), app
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.stop(grace=2)


def get(srv, name, **options):
    c = Client(srv.address)
    try:
        return c.get(name, **options)[0]
    finally:
        c.close()


def error_of(srv, packet):
    c = Client(srv.address)
    try:
        c.send_request(packet)
        reply = c.recv()
        assert reply[:2] == struct.pack("!H", ERROR), reply[:20]
        return struct.unpack("!H", reply[2:4])[0], reply[4:-1].decode()
    finally:
        c.close()


@pytest.mark.http
def test_names(tftpd, tree):
    srv = tftpd()
    img = tree[1]
    assert get(srv, "shimx64.efi") == b"shim"                # beside shim, at the root
    assert get(srv, "images/vmlinuz") == (img / "vmlinuz").read_bytes()
    assert get(srv, "assets/vmlinuz") == (img / "vmlinuz").read_bytes()   # matchbox's name
    assert get(srv, "/vmlinuz") == (img / "vmlinuz").read_bytes()
    first = get(srv, "grub/grub.cfg").decode()
    assert first.startswith("# bootcfg") and '"(tftp,$net_default_server)/grub?' in first
    answer = get(srv, "grub?uuid=%s&mac=52:54:00:00:00:01&hostname=h&serial=s" % UUID1)
    assert answer.decode().splitlines()[1:] == [
        "linux (tftp,$net_default_server)'/images/vmlinuz' 'console=ttyS0' 'a=x;y' "
        "'url=http://h/c?uuid=%s&mac=52-54-00-00-00-01'" % UUID1,
        "initrd (tftp,$net_default_server)'/images/initrd.gz'", "boot"]
    assert get(srv, "boot.ipxe").startswith(b"#!ipxe")
    assert get(srv, "ipxe?mac=" + MAC1).startswith(b"#!ipxe\nkernel /images/vmlinuz")


@pytest.mark.parametrize("options, blksize", [
    ({}, 512), ({"blksize": 1468}, 1468), ({"blksize": 8}, 8), ({"blksize": 65464}, 65464),
    ({"blksize": 7}, 512), ({"blksize": "big"}, 512), ({"tsize": 0}, 512),
    ({"timeout": 3, "blksize": 1024}, 1024),
])
@pytest.mark.http
def test_options(tftpd, tree, options, blksize):
    srv = tftpd()
    c = Client(srv.address)
    data, accepted = c.get("small", **options)
    c.close()
    assert data == (tree[1] / "small").read_bytes()
    assert int(accepted.get("blksize", 512)) == blksize
    if "tsize" in options:
        assert accepted["tsize"] == "20000"
    if "timeout" in options:
        assert accepted["timeout"] == "3"


@pytest.mark.http
@pytest.mark.parametrize("window", [1, 4, 16, 64])
def test_windowsize(tftpd, tree, window):
    srv = tftpd()
    c = Client(srv.address)
    data, accepted = c.get("vmlinuz", window=window, blksize=1024)
    c.close()
    assert data == (tree[1] / "vmlinuz").read_bytes()
    assert accepted.get("windowsize", "1") == str(window)


@pytest.mark.http
def test_exact_multiple_of_the_block_ends_with_an_empty_block(tftpd):
    assert get(tftpd(), "exact512") == b"x" * 1024


@pytest.mark.http
def test_100_mib_with_512_byte_blocks_rolls_over(tftpd, tmp_path):
    """204,801 blocks of 512 bytes: the 16-bit block number wraps three times."""
    big = tmp_path / "images" / "big"
    with open(str(big), "wb") as f:
        for i in range(100):
            f.write(bytes([i]) * (1 << 20))
    srv = tftpd()
    c = Client(srv.address)
    data, accepted = c.get("big", window=64, tsize=0)
    c.close()
    assert accepted["tsize"] == str(100 << 20) and "blksize" not in accepted
    assert len(data) == 100 << 20 and data == big.read_bytes()


@pytest.mark.cli
def test_a_real_client_across_the_rollover(tftpd, tmp_path):
    """curl, one block at a time, past block 65,535."""
    curl = need_tool("curl", "apt-get install curl")
    path = tmp_path / "images" / "rollover"
    path.write_bytes(os.urandom(65536 * 512 + 1000))
    srv = tftpd()
    out = tmp_path / "got"
    subprocess.run([curl, "-sS", "--max-time", "120", "-o", str(out),
                    "tftp://127.0.0.1:%d/rollover" % srv.address[1]], check=True)
    assert out.read_bytes() == path.read_bytes()


@pytest.mark.cli
def test_busybox_tftp_with_blksize(tftpd, tree, tmp_path):
    busybox = need_tool("busybox", "apt-get install busybox-static")
    srv = tftpd()
    out = tmp_path / "bb"
    subprocess.run([busybox, "tftp", "-g", "-b", "1400", "-r", "images/vmlinuz",
                    "-l", str(out), "127.0.0.1", str(srv.address[1])], check=True, timeout=30)
    assert out.read_bytes() == (tree[1] / "vmlinuz").read_bytes()


@pytest.mark.parametrize("name", [
    "../secret", "images/../../secret", "escape", "images/escape", "..", "/../secret",
    "a\\..\\..\\secret", "%2e%2e/secret", "images/%2e%2e/%2e%2e/secret", "grub/../../secret",
    "assets/../../secret", "assets/escape",
])
@pytest.mark.http
def test_traversal_refused(tftpd, name):
    code, message = error_of(tftpd(), rrq(name))
    assert code in (1, 2) and "SECRET" not in message


@pytest.mark.http
def test_errors(tftpd):
    srv = tftpd()
    assert error_of(srv, rrq("missing"))[0] == 1
    assert error_of(srv, rrq("vmlinuz", mode="mail"))[0] == 4
    code, message = error_of(srv, struct.pack("!H", WRQ) + b"f\0octet\0")
    assert code == 2 and "read-only" in message
    code, message = error_of(srv, rrq("grub?mac=52:54:00:00:00:77"))
    assert code == 0 and "kernel" in message and "http://" in message
    code, message = error_of(srv, rrq("grub?mac=" + MAC1))     # no uuid to fill ${uuid}
    assert code == 0 and "${uuid}" in message
    assert error_of(srv, b"\x00\x01junk")[0] == 4


@pytest.mark.http
def test_duplicate_acks_do_not_resend_and_lost_blocks_are_resent(tftpd):
    srv = tftpd(tftp_timeout=0.5)
    c = Client(srv.address, timeout=3)
    c.send_request(rrq("vmlinuz"))
    assert struct.unpack("!HH", c.recv()[:4]) == (DATA, 1)
    c.ack(1)
    assert struct.unpack("!HH", c.recv()[:4]) == (DATA, 2)
    c.ack(1)                      # a duplicate ACK: no second block 2 (no Sorcerer's Apprentice)
    c.ack(1)
    c.sock.settimeout(0.3)
    with pytest.raises(socket.timeout):
        c.recv()
    c.sock.settimeout(3)
    started = time.monotonic()    # block 2 is "lost": it comes again after the timeout
    assert struct.unpack("!HH", c.recv()[:4]) == (DATA, 2)
    assert 0.1 < time.monotonic() - started < 1.5
    c.close()


@pytest.mark.http
def test_a_vanished_client_frees_its_slot(tftpd):
    srv = tftpd(tftp_timeout=0.1, tftp_retries=2)
    c = Client(srv.address)
    c.send_request(rrq("vmlinuz"))
    c.recv()
    c.close()                     # gone without a word
    deadline = time.monotonic() + 3
    while srv.transfers:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    metrics = srv.app_.metrics.render({"load_errors_total": 0, "stale": 0}).decode()
    assert 'bootcfg_requests_total{route="tftp:images",status="200"} 1' in metrics


@pytest.mark.http
def test_transfers_are_bounded(tftpd):
    """200 clients at once against a limit of 50: 50 transfers run, the rest get
    an error at once; once they end, new transfers are served."""
    srv = tftpd(tftp_transfers=50, tftp_transfers_per_client=0, tftp_timeout=0.3,
                tftp_retries=1)          # all 200 come from one address
    clients = [Client(srv.address) for _ in range(200)]
    for c in clients:
        c.send_request(rrq("vmlinuz"))
    kinds = {DATA: 0, ERROR: 0}
    for c in clients:
        kinds[struct.unpack("!H", c.recv()[:2])[0]] += 1
        c.close()
    assert kinds == {DATA: 50, ERROR: 150}
    assert srv.transfers <= 50
    deadline = time.monotonic() + 5
    while srv.transfers:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert get(srv, "shimx64.efi") == b"shim"


@pytest.mark.http
def test_served_by_the_cli_logged_and_counted(serve, tree):
    d, img = tree
    s = serve("-data-path", str(d), "-images-path", str(img), "-tftp-address", "127.0.0.1:0")
    host, port = s.tftp_address
    c = Client((host, port))
    assert c.get("initrd.gz")[0] == b"initrd"
    c.close()
    assert s.wait_log(r'127\.0\.0\.1 "RRQ initrd.gz" 200 6B [\d.]+ms uuid=- mac=- file=images')
    error_of(type("S", (), {"address": (host, port)}), rrq("nope"))
    assert s.wait_log(r'"RRQ nope" 404')
    metrics = s.get("/metrics")[2].decode()
    assert 'bootcfg_requests_total{route="tftp:images",status="200"} 1' in metrics
    assert 'bootcfg_response_bytes_total{route="tftp:images"} 6' in metrics
