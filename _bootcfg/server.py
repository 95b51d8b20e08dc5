"""The HTTP server: a ThreadingHTTPServer subclass and its request handler.

HTTP/1.1 keep-alive, idle timeout, connection limit, access log, HTTPS and a
graceful stop, on the standard library's documented hooks. It knows nothing of
configs: `BootServer(address, app, limits, tls)` hands each request to
`app(request) -> Response` and tells the app what went out (`app.record`,
`app.connection`). Every answer, the standard library's own protocol errors
included, leaves through `Handler._answer`: one head, one access line, one count.
"""

import email.utils
import http.server
import io
import logging
import socket
import ssl
import struct
import sys
import time
from urllib.parse import urlsplit

from _bootcfg import __version__, settings
from _bootcfg.answers import (PROTOCOL_KINDS, REASONS, Refusal, Request, parse_query,
                              printable, refused)
from _bootcfg.guard import Connections, Cut, client_key, forwarded_host
from _bootcfg.machine import plain_address

log = logging.getLogger("bootcfg")
access = logging.getLogger("bootcfg.access")

# The limits' defaults (and the reason for each) are the settings table's.
LIMITS = settings.LIMITS

# Status lines, and the Server and Date lines (Date changes once a second, so
# both are formatted once a second): most of every answer's head.
_STATUS_LINES = {code: "HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in REASONS.items()}
_SERVER_DATE = [0, ""]


def _server_and_date():
    now = int(time.time())
    cached = _SERVER_DATE
    if cached[0] != now:
        cached[:] = [now, "Server: bootcfg/%s\r\nDate: %s\r\n"
                     % (__version__, email.utils.formatdate(now, usegmt=True))]
    return cached[1]


def head_bytes(resp, close):
    """Status line and headers of an HTTP/1.1 answer, ending in the blank line."""
    parts = [_STATUS_LINES.get(resp.status) or "HTTP/1.1 %d Status\r\n" % resp.status,
             _server_and_date()]
    for name, value in resp.headers:
        parts += (name, ": ", value, "\r\n")
    if resp.status != 304:
        parts.append("Content-Length: %d\r\n" % resp.length)
    if close:
        parts.append("Connection: close\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1", "replace")


class Handler(http.server.BaseHTTPRequestHandler):
    """One connection. GET and HEAD go to the app; the standard library parses
    the request and keeps the connection alive until `timeout`."""

    protocol_version = "HTTP/1.1"
    # Errors for requests without a version get a status line, not HTTP/0.9 bytes.
    default_request_version = "HTTP/1.0"
    disable_nagle_algorithm = True
    # HTTPS: buffer the response so headers and a small body go out in one send()
    # (a plain connection writes head and small body as one, unbuffered).
    wbufsize = 64 * 1024
    _started = None

    @property
    def timeout(self):
        # The socket timeout StreamRequestHandler.setup() applies: the idle limit.
        return self.server.limits["idle_timeout"]

    def setup(self):
        server = self.server
        self.conn = server.connections.conn(self.request)
        # The client as logs, /status and -bind-configs know it: the peer, or
        # behind a trusted proxy the address it forwarded (set per request).
        self.peer = self.client = plain_address(self.client_address[0])
        tls = isinstance(self.request, ssl.SSLSocket)
        if tls:
            # The whole handshake has one deadline (the ssl module's timeout covers
            # do_handshake as a whole): the head deadline if it is on.
            self.request.settimeout(server.limits["header_timeout"] or self.timeout)
            try:
                self.request.do_handshake()
            except OSError as e:
                if self.conn.cut:
                    raise Cut(self.conn.cut) from None
                if isinstance(e, socket.timeout) and server.limits["header_timeout"]:
                    server.app.connection_cut("header_timeout")
                    raise Cut("header_timeout") from None
                raise
            super().setup()                 # which sets the idle timeout again
        else:
            self._setup_plain()
        self.reader = _HeadReader(self.connection, self.conn, server, kernel=not tls)
        self.rfile = io.BufferedReader(self.reader, io.DEFAULT_BUFFER_SIZE)
        # The address this connection arrived at (not the listening wildcard).
        self.local_address = self.connection.getsockname()[:2]
        # Whether access lines are logged, looked up once per connection.
        self.log_access = access.isEnabledFor(logging.INFO)

    def _setup_plain(self):
        """StreamRequestHandler.setup() for a plain TCP connection, with the idle
        limit kept by the kernel (SO_RCVTIMEO/SO_SNDTIMEO on a blocking socket)
        instead of a Python socket timeout, which polls before every recv and send:
        two system calls, and two hand-overs of the interpreter lock, per request.
        A file answer switches to the Python timeout while sendfile runs."""
        sock = self.connection = self.request
        timeval = _timeval(self.timeout)
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        if self.disable_nagle_algorithm:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.wfile = _KernelTimedWriter(sock)

    def handle(self):
        try:
            super().handle()
        except Cut:
            self.close_connection = True    # cut by the guard: no answer, no line

    def finish(self):
        try:
            super().finish()
        except OSError:
            if not self.conn.cut:
                raise

    def parse_request(self):
        """The request line (already in raw_requestline) and the headers, read from
        the buffered socket into a small case-insensitive mapping.

        It replaces the standard library's parse_request, whose header parsing
        through the email package was half of each request's CPU. The rules are
        the standard library's (414 and 431 limits, 505/400 for versions,
        keep-alive, HTTP/1.0 and 0.9, Expect: 100-continue), and stricter where it
        is lax: obsolete line folding, a header name with a space or control
        character and conflicting Content-Length headers get 400, and headers
        over MAX_HEADER_BYTES in all get 431. tests/test_reader.py compares both
        on hundreds of requests."""
        self._started = time.perf_counter()
        self.command = None
        self.request_version = version = self.default_request_version
        self.close_connection = True
        requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        self.requestline = requestline
        words = requestline.split()
        if not words:
            return False
        if len(words) >= 3:
            version = words[-1]
            number = _KNOWN_VERSIONS.get(version) or _version(version)
            if number is None:
                self.send_error(400, "Bad request version (%r)" % version)
                return False
            if number >= (1, 1):
                self.close_connection = False
            if number >= (2, 0):
                self.send_error(505, "Invalid HTTP version (%s)" % version[5:])
                return False
            self.request_version = version
        if not 2 <= len(words) <= 3:
            self.send_error(400, "Bad request syntax (%r)" % requestline)
            return False
        command, path = words[:2]
        if len(words) == 2:
            self.close_connection = True
            if command != "GET":
                self.send_error(400, "Bad HTTP/0.9 request type (%r)" % command)
                return False
        self.command, self.path = command, path
        if path.startswith("//"):
            self.path = "/" + path.lstrip("/")    # as the standard library does (gh-87389)
        try:
            headers, problem = read_headers(self.rfile)
        except HeadTimeout:
            self.send_error(408, "Request head not received within %g s (header_timeout)"
                            % self.server.limits["header_timeout"])
            return False
        if problem is not None:
            self.send_error(*problem)
            return False
        self.headers = headers
        conntype = headers.get("connection", "").lower()
        if conntype == "close":
            self.close_connection = True
        elif conntype == "keep-alive":
            self.close_connection = False
        if headers.get("expect", "").lower() == "100-continue" and \
                self.request_version >= "HTTP/1.1":
            return self.handle_expect_100()
        return True

    def do_GET(self):
        self._head_arrived()
        self._route(send_body=True)

    def do_HEAD(self):
        self._head_arrived()
        self._route(send_body=False)

    def _head_arrived(self):
        """A whole request head is in: the head deadline stops, the guard may no
        longer cut this connection, and the client is known."""
        self.reader.head_done()
        proxies = self.server.proxies
        self.forwarded_host = ""
        if proxies is not None and self.conn.exempt:
            self.client = proxies.client(self.peer, self.headers.get("x-forwarded-for"))
            self.forwarded_host = forwarded_host(self.headers.get("x-forwarded-host"))

    def __getattr__(self, name):
        # handle_one_request looks up do_<METHOD>; every method but GET and HEAD,
        # known or invented, gets 405 with Allow rather than the stdlib's 501.
        if name.startswith("do_"):
            return self._refuse_method
        raise AttributeError(name)

    def _refuse_method(self):
        # A body we will not read would be parsed as the next request: close.
        self._head_arrived()
        self.close_connection = True
        self._answer(refused(Refusal("bad method", "method %s not allowed; use GET or HEAD"
                                     % printable(self.command, 40),
                                     headers=[("Allow", "GET, HEAD")])), send_body=True)

    def send_error(self, code, message=None, explain=None):
        # The standard library's own protocol errors (400, 414, 431, 505) arrive
        # here; they are answered, logged and counted like every other answer.
        self.close_connection = True
        kind = PROTOCOL_KINDS.get(code, "bad request")
        text = "%d %s" % (code, message or REASONS.get(code, "error"))
        self._answer(refused(Refusal(kind, text)), send_body=self.command != "HEAD")

    def _route(self, send_body):
        server = self.server
        server.request_started()
        try:
            if self.headers.get("Content-Length", "0").strip() not in ("", "0") or \
                    "Transfer-Encoding" in self.headers:
                self.close_connection = True  # we do not read request bodies
            req = None
            try:
                path, query = split_target(self.path)
            except Refusal as e:
                self.close_connection = True
                resp = refused(e)
            else:
                req = Request(self.command, path, query, self.headers,
                              self.client, self.local_address,
                              self.path.partition("?")[2], self.forwarded_host)
                resp = server.app(req)
            self._answer(resp, send_body, req)
        finally:
            server.request_finished()

    def _answer(self, resp, send_body, req=None):
        """Send `resp`, then count and log it: the one way out of this handler."""
        started = self._started or time.perf_counter()
        self._started = None
        if self.server.stopping:
            self.close_connection = True
        sent = self._send(resp, send_body and resp.status != 304)
        self.server.app.record(resp, sent, req, (time.perf_counter() - started) * 1000)
        if self.log_access:                     # -log-level warning: no line to build
            self._log_access(resp, sent, started)
        self.server.connections.waiting(self.conn)

    def _send(self, resp, send_body):
        """Write the answer; returns body bytes sent (-1 if the client went away)."""
        sent = 0
        try:
            head = head_bytes(resp, self.close_connection)
            if not send_body:
                self.wfile.write(head)
            elif resp.file is not None:
                f, offset, count = resp.file
                self.wfile.write(head)
                self.wfile.flush()              # headers first, then the file
                sent = self._sendfile(f, offset, count) if count else 0
            elif len(resp.body) <= 64 * 1024:
                self.wfile.write(head + resp.body)      # one send for a small answer
                sent = len(resp.body)
            else:
                self.wfile.write(head)
                self.wfile.write(resp.body)
                sent = len(resp.body)
            self.wfile.flush()
        except (ConnectionError, TimeoutError, socket.timeout) as e:
            self.close_connection = True
            log.info("%s went away during %s: %s", self.client,
                     self._request_text(), e.__class__.__name__)
            sent = -1
        finally:
            if resp.file is not None:
                resp.file[0].close()
        return sent

    def _sendfile(self, f, offset, count):
        """socket.sendfile with the idle limit: on a plain connection the kernel's
        send timeout would make it wait forever (it selects without a timeout
        when a send would block), so the Python timeout applies meanwhile."""
        sock = self.connection
        if sock.gettimeout() is not None:
            return sock.sendfile(f, offset, count)
        sock.settimeout(self.timeout)
        try:
            return sock.sendfile(f, offset, count)
        finally:
            sock.settimeout(None)

    def _request_text(self):
        """`METHOD path` as it can be logged, or what arrived of the request line."""
        if self.command and getattr(self, "path", None) is not None:
            return "%s %s" % (printable(self.command, 40), printable(self.path))
        raw = getattr(self, "raw_requestline", b"") or b""
        return printable(raw.decode("latin-1").rstrip("\r\n")) or "-"

    def _log_access(self, resp, sent, started):
        ms = (time.perf_counter() - started) * 1000
        client = self.client
        request = self._request_text()
        uuid, mac = resp.machine or ("", "")
        fields = {"client": client, "method": self.command or None,
                  "path": printable(self.path) if self.command else None,
                  "request": request, "status": resp.status,
                  "bytes": sent if sent >= 0 else None, "aborted": sent < 0,
                  "ms": round(ms, 2), "uuid": uuid or None, "mac": mac or None,
                  "file": resp.matched or None}
        access.info('%s "%s" %d %s %.1fms uuid=%s mac=%s file=%s', client, request,
                    resp.status, "%dB" % sent if sent >= 0 else "aborted", ms, uuid or "-",
                    mac or "-", resp.matched or "-", extra={"fields": fields})

    def log_request(self, code="-", size="-"):
        pass    # every answer is logged by _answer, after its body is sent

    def log_message(self, format, *args):
        log.debug("%s: %s", self.client, format % args)


def _timeval(seconds):
    return struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))


class HeadTimeout(socket.timeout):
    """The request head did not arrive within header_timeout. A socket.timeout,
    so the standard library closes the connection when it comes before a
    request line; after one, parse_request answers 408."""


class _HeadReader(io.RawIOBase):
    """The raw reader of a connection; the server reads only request heads (it
    takes no request bodies). The first byte of a head starts its deadline
    (limits["header_timeout"]); while a head is incomplete each recv waits at
    most until that deadline, and past it HeadTimeout is raised. A plain socket
    keeps its timeout in the kernel (SO_RCVTIMEO, `kernel`): a recv that times
    out fails with EAGAIN, raised as socket.timeout. A recv that ends because
    the guard cut the connection raises Cut."""

    def __init__(self, sock, conn, server, kernel):
        self._sock, self._conn, self._server, self._kernel = sock, conn, server, kernel
        self._idle = server.limits["idle_timeout"]
        self._header = server.limits["header_timeout"]

    def readable(self):
        return True

    def readinto(self, buffer):
        conn = self._conn
        if conn.head_deadline is not None:
            remaining = conn.head_deadline - time.monotonic()
            if remaining <= 0:
                self._expired()
            if remaining < self._idle:
                self._set_timeout(max(remaining, 0.001))
                conn.timeout_changed = True
        try:
            n = self._sock.recv_into(buffer)
        except (BlockingIOError, socket.timeout):
            if conn.head_deadline is not None and time.monotonic() >= conn.head_deadline:
                self._expired()
            raise socket.timeout("timed out") from None
        except OSError:
            if conn.cut:
                raise Cut(conn.cut) from None
            raise
        if not n:
            if conn.cut:
                raise Cut(conn.cut)
        elif conn.head_deadline is None and self._header:
            conn.head_deadline = time.monotonic() + self._header
        return n

    def _expired(self):
        server = self._server
        server.app.connection_cut("header_timeout")
        server.connections.throttled.warn(
            self._conn.key, "header_timeout", "%s: closed a connection whose request head "
            "took over %g s (header_timeout)", self._conn.key, self._header)
        raise HeadTimeout("request head not received within %g s" % self._header)

    def head_done(self):
        """The head arrived: no deadline until the next one begins."""
        conn = self._conn
        conn.head_deadline = None
        self._server.connections.serving(conn)
        if conn.timeout_changed:
            conn.timeout_changed = False
            self._set_timeout(self._idle)

    def _set_timeout(self, seconds):
        if self._kernel:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(seconds))
        else:
            self._sock.settimeout(seconds)


class _KernelTimedWriter(io.RawIOBase):
    """Unbuffered writes to a blocking socket with SO_SNDTIMEO: sendall, with
    EAGAIN (the kernel's send timeout) raised as socket.timeout."""

    def __init__(self, sock):
        self._sock = sock

    def writable(self):
        return True

    def write(self, data):
        try:
            self._sock.sendall(data)
        except BlockingIOError:
            raise socket.timeout("timed out") from None
        return len(data)


# More than this in header lines (100 lines of 64 KiB passed before) is 431.
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_LINES = 100          # the blank line included, as the standard library counts
MAX_LINE = 65536
# RFC 9110 5.6.2: a header name is a token.
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                   b"abcdefghijklmnopqrstuvwxyz")


class Headers(dict):
    """Request headers: lowercase name -> the first value. get() and `in` take
    any case, as http.client.HTTPMessage's do."""

    __slots__ = ()

    def get(self, name, default=None):
        return dict.get(self, name.lower(), default)

    def __contains__(self, name):
        return dict.__contains__(self, name.lower())

    def __getitem__(self, name):
        return dict.__getitem__(self, name.lower())


_KNOWN_VERSIONS = {"HTTP/1.1": (1, 1), "HTTP/1.0": (1, 0)}


def _version(text):
    """(major, minor) of "HTTP/x.y", or None."""
    if not text.startswith("HTTP/"):
        return None
    parts = text[5:].split(".")
    if len(parts) != 2 or not all(p.isdigit() and p.isascii() and len(p) <= 10
                                  for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def read_headers(rfile):
    """(Headers, None) or (None, (status, message)) for the header block."""
    headers = Headers()
    total = lines = 0
    length = None
    while True:
        line = rfile.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            return None, (431, "Line too long")
        lines += 1
        if lines > MAX_HEADER_LINES:
            return None, (431, "Too many headers")
        if line in (b"\r\n", b"\n", b""):
            return headers, None
        total += len(line)
        if total > MAX_HEADER_BYTES:
            return None, (431, "Request headers too large")
        if line[0] in (0x20, 0x09):
            return None, (400, "Obsolete line folding is not accepted")
        name, colon, value = line.partition(b":")
        if not colon or not name or not _TOKEN.issuperset(name):
            return None, (400, "Bad header line %r" % line[:80])
        value = value[:-2] if value.endswith(b"\r\n") else value.rstrip(b"\n")
        if b"\r" in value:
            return None, (400, "Bare CR in a header line")
        key = name.decode("ascii").lower()
        value = value.lstrip(b" \t").decode("iso-8859-1")
        if key == "content-length":
            if length is not None and value != length:
                return None, (400, "Conflicting Content-Length headers")
            length = value
        if key not in headers:
            dict.__setitem__(headers, key, value)
        elif key == "x-forwarded-for":      # each proxy may add its own line
            dict.__setitem__(headers, key, dict.get(headers, key) + ", " + value)


def split_target(target):
    """(path, query dict) from a request target; absolute-form is accepted.
    Raises Refusal (400) for anything else."""
    if not target.startswith("/"):
        if not target.lower().startswith(("http://", "https://")):
            raise Refusal("bad request", "request target must start with /")
        parts = urlsplit(target)
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    path, _, qs = target.partition("?")
    return path, parse_query(qs)


def listen(address, family=socket.AF_INET, backlog=LIMITS["listen_backlog"]):
    """A listening TCP socket on `address`; an IPv6 one takes IPv4 clients too.
    Raises OSError."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class BootServer(http.server.ThreadingHTTPServer):
    """A thread per connection, bounded by limits["max_connections"], answering
    with `app` on a listening socket (see `listen`; or one systemd passed, or the
    master's with -workers).

    With `tls` (an ssl.SSLContext) every connection is HTTPS; the handshake runs
    in the connection's own thread, so a slow client cannot stall accept()."""

    daemon_threads = True

    def __init__(self, sock, app, limits=None, tls=None, proxies=None):
        self.app = app
        self.limits = dict(LIMITS, **(limits or {}))
        self.tls = tls
        self.proxies = proxies          # guard.Proxies (-trusted-proxies) or None
        self.address_family = sock.family
        self.stopping = False
        self.connections = Connections(self.limits["max_connections_per_client"],
                                       self.limits["max_connections"], proxies,
                                       app.connection_cut)
        self._in_flight = []
        super().__init__(sock.getsockname(), Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()
        self.server_name, self.server_port = self.server_address[:2]

    def get_request(self):
        sock, address = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True,
                                        do_handshake_on_connect=False)
        return sock, address

    @property
    def open_connections(self):
        return self.connections.open

    def process_request(self, request, client_address):
        conn, refusal = self.connections.admit(request, client_address[0])
        if refusal == "per_client":
            # Its own connections are all busy being answered: this one is not
            # admitted, and gets no answer (a flood gets no lines either).
            self.app.connection_cut("per_client")
            key = client_key(client_address[0])
            self.connections.throttled.warn(
                key, refusal, "%s: refused a connection: -max-connections-per-client %d "
                "reached, none of them waiting", key, self.limits["max_connections_per_client"])
            self.shutdown_request(request)
            return
        if refusal:
            log.warning("%s refused: %d connections open (max_connections)",
                        plain_address(client_address[0]), self.connections.open)
            self._refuse_busy(request)
            return
        self.app.connection(+1)
        try:
            super().process_request(request, client_address)
        except RuntimeError as e:  # the system will not start another thread
            self._connection_done(request)
            log.error("%s refused: %s", client_address[0], e)
            self._refuse_busy(request)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connection_done(request)

    def _connection_done(self, request):
        self.connections.closed(request)
        self.app.connection(-1)

    def _refuse_busy(self, request):
        resp = refused(Refusal("busy", "503 server busy, try again",
                               headers=[("Retry-After", "1")]))
        sent = -1
        try:
            request.settimeout(1)
            request.sendall(head_bytes(resp, close=True) + resp.body)
            sent = len(resp.body)
        except OSError:
            pass
        self.app.record(resp, sent)
        self.shutdown_request(request)

    # Requests in flight, for a graceful stop: appending to and popping from a list
    # are atomic under the GIL, so no lock is taken per request.
    def request_started(self):
        self._in_flight.append(None)

    def request_finished(self):
        self._in_flight.pop()

    @property
    def busy(self):
        return len(self._in_flight)

    def handle_error(self, request, client_address):
        e = sys.exc_info()[1]
        if isinstance(e, Cut):
            return                          # counted and logged when it was cut
        if isinstance(e, ssl.SSLError):
            log.info("%s: TLS failed: %s", client_address[0], e.reason or e)
        elif isinstance(e, (ConnectionError, TimeoutError, socket.timeout)):
            log.info("%s went away: %s", client_address[0], e.__class__.__name__)
        else:
            log.exception("internal error serving %s", client_address[0])

    def stop(self, grace=None):
        """Stop accepting, then give in-flight requests `grace` seconds
        (limits["stop_grace"] by default)."""
        self.stopping = True
        self.server_close()
        deadline = time.monotonic() + (self.limits["stop_grace"] if grace is None else grace)
        while self.busy and time.monotonic() < deadline:
            time.sleep(0.05)
