"""Server behaviour that needs its limits changed: a BootServer in this process
on a loopback port, with real sockets, given its limits as a value."""

import http.client
import socket
import threading
import time

import pytest

from _bootcfg import server
from _bootcfg.answers import Response
from _bootcfg.app import App, Route, make_store
from helpers import read_head, settle, write

pytestmark = pytest.mark.http


@pytest.fixture
def serve(data_dir):
    servers = []

    def start(app=None, **limits):
        app = app or App(make_store(str(data_dir)))
        srv = server.BootServer(server.listen(("127.0.0.1", 0)), app, limits)
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_limits_are_a_value_not_shared_state(serve):
    a, b = serve(max_connections=3), serve()
    assert a.limits["max_connections"] == 3
    assert b.limits["max_connections"] == server.LIMITS["max_connections"]
    with pytest.raises(TypeError):
        server.LIMITS["max_connections"] = 1     # the table of defaults is read-only


def connect(srv):
    return socket.create_connection(srv.server_address[:2], timeout=5)


def closed_within(sock, seconds):
    """True when the server closes within `seconds` (any unread body is drained)."""
    deadline = time.monotonic() + seconds
    try:
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if sock.recv(4096) == b"":
                return True
    except socket.timeout:
        return False


def test_idle_keep_alive_connection_closed(serve):
    srv = serve(idle_timeout=0.2)
    s = connect(srv)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_head(s).startswith(b"HTTP/1.1 200")
    assert closed_within(s, 3)


def test_stalled_request_closed(serve):
    srv = serve(idle_timeout=0.2)
    s = connect(srv)
    s.sendall(b"GET / HTTP/1.1\r\nHo")
    assert closed_within(s, 3)


@pytest.mark.parametrize("path", ["/images/big", "/cloud"])
def test_a_client_that_stops_reading_is_dropped_at_the_idle_timeout(serve, data_dir, tmp_path,
                                                                     path):
    """A client that asks for a big answer and never reads it holds its thread
    only until the idle limit: a file (sendfile) and an answer from memory."""
    write(str(tmp_path / "images/big"), b"\0" * (32 << 20))
    write(str(data_dir / "cloud/default"), "#cloud-config\n#" + "x" * (3 << 20) + "\n")
    settle(data_dir)
    srv = serve(App(make_store(str(data_dir)), images_root=str(tmp_path / "images")),
                idle_timeout=0.3)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(srv.server_address[:2])
    s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    deadline = time.monotonic() + 1
    while srv.open_connections == 0:              # seen, answering, stuck in a send
        assert time.monotonic() < deadline
        time.sleep(0.01)
    deadline = time.monotonic() + 5
    while srv.open_connections:
        assert time.monotonic() < deadline, "a client that does not read held on"
        time.sleep(0.02)
    s.close()


def test_nagle_off(serve, monkeypatch):
    seen = []
    setup = server.Handler.setup

    def recording_setup(self):
        setup(self)
        seen.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(server.Handler, "setup", recording_setup)
    srv = serve()
    c = http.client.HTTPConnection(*srv.server_address[:2], timeout=5)
    c.request("GET", "/")
    c.getresponse().read()
    c.close()
    assert seen and all(seen)


def test_connection_limit_answers_503(serve):
    srv = serve(max_connections=2)
    held = [connect(srv), connect(srv)]
    deadline = time.monotonic() + 2
    while srv.open_connections < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    extra = connect(srv)
    answer = read_head(extra)
    assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After" in answer
    held[0].close()
    while srv.open_connections >= 2:
        assert time.monotonic() < deadline + 2
        time.sleep(0.01)
    c = connect(srv)
    c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_head(c).startswith(b"HTTP/1.1 200")


def test_stop_lets_in_flight_requests_finish(serve, data_dir):
    started = threading.Event()

    def slow(req):
        started.set()
        time.sleep(0.8)
        return Response(body=b"finished\n")

    app = App(make_store(str(data_dir)))
    app.add_route(Route("/slow", "identity", "service"), slow)
    srv = serve(app)
    result = {}

    def client():
        c = http.client.HTTPConnection(*srv.server_address[:2], timeout=5)
        c.request("GET", "/slow")
        r = c.getresponse()
        result["answer"] = (r.status, r.read(), r.getheader("Connection"))

    t = threading.Thread(target=client)
    t.start()
    assert started.wait(5)
    srv.shutdown()
    srv.stop(grace=5)
    t.join(5)
    assert result["answer"] == (200, b"finished\n", "close")
    with pytest.raises(OSError):
        connect(srv)
