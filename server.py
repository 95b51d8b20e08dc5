"""The HTTP server: a ThreadingHTTPServer subclass and its request handler.

HTTP/1.1 keep-alive, idle timeout, connection limit, access log, HTTPS, and
graceful stop, on the stdlib's documented hooks. What to answer is not decided
here: BootServer.dispatch (wired to bootcfg's route table) maps a Request to a
Response. No configs, no rendering.
"""

import http.server
import logging
import socket
import socketserver
import ssl
import sys
import threading
import time
from typing import NamedTuple
from urllib.parse import parse_qs, urlsplit

import metrics

log = logging.getLogger("bootcfg")
access = logging.getLogger("bootcfg.access")

# Every tunable limit of the server, with why its default is safe.
LIMITS = {
    # Seconds a connection may sit idle (or stall mid-request) before it is closed.
    # iPXE reuses a connection within milliseconds between script, kernel and
    # initrd; 30 s is generous for that and still frees threads of dead clients.
    "idle_timeout": 30.0,
    # Connections served at once (one thread each). A boot storm of a few racks is
    # a few hundred; past this a client gets an immediate 503 rather than the
    # server growing threads without bound.
    "max_connections": 1024,
    # Listen backlog: a rack powering on at once connects in the same millisecond.
    "listen_backlog": 128,
    # Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    "stop_grace": 5.0,
}

_DATE_CACHE = [0, ""]


class HTTPError(Exception):
    """An answer other than 200, raised by a route handler."""

    def __init__(self, status, message, headers=()):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, list(headers)


class Request(NamedTuple):
    method: str
    path: str            # as sent, before percent-decoding, without the query
    query: dict          # name -> first value, percent-decoded
    headers: object      # http.client.HTTPMessage
    server: "BootServer"


class Response:
    """What a route handler returns. `file` is (open file, offset, count) for
    answers sent with sendfile; `matched` and `machine` go to the access log."""

    def __init__(self, status=200, body=b"", content_type="text/plain; charset=utf-8",
                 headers=(), file=None, matched="", machine=""):
        self.status, self.body, self.file = status, body, file
        self.headers = [("Content-Type", content_type)] + list(headers)
        self.length = file[2] if file else len(body)
        self.matched = matched
        self.machine = machine      # (uuid, mac), canonical or ""
        self.route = "other"        # route name for /metrics, set by dispatch


def text_response(status, message, matched="", machine=""):
    """A plain-text answer (every error body is one of these, never HTML)."""
    return Response(status, (message + "\n").encode("utf-8", "replace"),
                    matched=matched, machine=machine)


class Handler(http.server.BaseHTTPRequestHandler):
    """One connection. GET and HEAD go through the route table; the stdlib does
    the parsing, keep-alive and the idle timeout (`timeout`)."""

    protocol_version = "HTTP/1.1"
    # Errors for requests without a version get a status line, not HTTP/0.9 bytes.
    default_request_version = "HTTP/1.0"
    sys_version = ""
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = "text/plain; charset=utf-8"
    disable_nagle_algorithm = True
    # Buffer the response so headers and a small body go out in one send(); _send
    # flushes after each answer (and before sendfile).
    wbufsize = 64 * 1024
    _in_route = False

    @property
    def timeout(self):
        # The socket timeout StreamRequestHandler.setup() applies: idle limit.
        return LIMITS["idle_timeout"]

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(LIMITS["idle_timeout"])
            self.request.do_handshake()
        super().setup()

    def do_GET(self):
        self._serve(send_body=True)

    def do_HEAD(self):
        self._serve(send_body=False)

    def _refuse_method(self):
        self._in_route = True
        started = time.perf_counter()
        # A body we will not read would be parsed as the next request: close.
        self.close_connection = True
        resp = text_response(405, "method %s not allowed; use GET or HEAD" % self.command)
        resp.headers.append(("Allow", "GET, HEAD"))
        sent = self._send(resp, send_body=True)
        self._log_access(resp, sent, started)

    def __getattr__(self, name):
        # handle_one_request looks up do_<METHOD>; every method but GET and HEAD,
        # known or invented, gets 405 with Allow rather than the stdlib's 501.
        if name.startswith("do_"):
            return self._refuse_method
        raise AttributeError(name)

    def _serve(self, send_body):
        self._in_route = True
        started = time.perf_counter()
        self.server.request_started()
        try:
            if self.headers.get("Content-Length", "0").strip() not in ("", "0") or \
                    "Transfer-Encoding" in self.headers:
                self.close_connection = True  # we do not read request bodies
            try:
                path, query = split_target(self.path)
            except ValueError as e:
                resp = text_response(400, str(e))
                self.close_connection = True
            else:
                resp = self.server.dispatch(
                    Request(self.command, path, query, self.headers, self.server))
            if self.server.stopping:
                self.close_connection = True
            sent = self._send(resp, send_body)
            self._log_access(resp, sent, started)
        finally:
            self.server.request_finished()

    def _send(self, resp, send_body):
        """Write the answer; returns body bytes sent (-1 if the client went away)."""
        sent = 0
        try:
            self.send_response(resp.status)
            for name, value in resp.headers:
                self.send_header(name, value)
            if resp.status != 304:
                self.send_header("Content-Length", str(resp.length))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if send_body and resp.status != 304:
                if resp.file is not None:
                    f, offset, count = resp.file
                    self.wfile.flush()          # headers first, then the file
                    sent = self.connection.sendfile(f, offset, count) if count else 0
                else:
                    self.wfile.write(resp.body)
                    sent = len(resp.body)
            self.wfile.flush()   # headers and body leave in one write
        except (ConnectionError, TimeoutError, socket.timeout) as e:
            self.close_connection = True
            log.info("%s went away during %s %s: %s", self.address_string(),
                     self.command, _printable(self.path), e.__class__.__name__)
            sent = -1
        finally:
            if resp.file is not None:
                resp.file[0].close()
        return sent

    def _log_access(self, resp, sent, started):
        self.server.metrics.request(resp.route, resp.status, sent)
        if not access.isEnabledFor(logging.INFO):
            return          # -log-level warning: no line to build
        ms = (time.perf_counter() - started) * 1000
        path = _printable(self.path)
        uuid, mac = resp.machine or ("", "")
        fields = {"client": self.address_string(), "method": self.command, "path": path,
                  "status": resp.status, "bytes": sent if sent >= 0 else None,
                  "aborted": sent < 0, "ms": round(ms, 2), "uuid": uuid or None,
                  "mac": mac or None, "file": resp.matched or None}
        access.info('%s "%s %s" %d %s %.1fms uuid=%s mac=%s file=%s',
                    self.address_string(), self.command, path, resp.status,
                    "%dB" % sent if sent >= 0 else "aborted", ms, uuid or "-", mac or "-",
                    resp.matched or "-", extra={"fields": fields})

    def version_string(self):
        return "bootcfg/" + self.server.version

    def date_time_string(self, timestamp=None):
        # The Date header changes once a second; format it once a second.
        if timestamp is not None:
            return super().date_time_string(timestamp)
        now = int(time.time())
        cached = _DATE_CACHE
        if cached[0] != now:
            cached[:] = [now, super().date_time_string(now)]
        return cached[1]

    def address_string(self):
        return self.client_address[0]

    def log_request(self, code="-", size="-"):
        # Called by send_response. Our routes log their own line after the body is
        # sent; this logs the answers the stdlib gives itself (400, 414, 431, 505).
        if not self._in_route:
            line = _printable(getattr(self, "requestline", "") or "-")
            self.server.metrics.request("other", code, 0)
            access.info('%s "%s" %s', self.address_string(), line, code,
                        extra={"fields": {"client": self.address_string(), "request": line,
                                          "status": int(code) if str(code).isdigit() else code}})

    def log_error(self, format, *args):
        log.debug("%s: %s", self.address_string(), format % args)

    def log_message(self, format, *args):
        log.debug("%s: %s", self.address_string(), format % args)


def split_target(target):
    """(path, query dict) from a request target; absolute-form is accepted."""
    if not target.startswith("/"):
        if not target.lower().startswith(("http://", "https://")):
            raise ValueError("request target must start with /")
        parts = urlsplit(target)
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    path, _, qs = target.partition("?")
    query = {}
    for name, values in parse_qs(qs, keep_blank_values=True).items():
        query[name] = values[0]
    return path, query


class BootServer(http.server.ThreadingHTTPServer):
    """A thread per connection, bounded by LIMITS["max_connections"]. Subclasses
    say what to answer (dispatch(request) -> Response) and set `version`."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LIMITS["listen_backlog"]
    version = "0"

    def dispatch(self, req):
        raise NotImplementedError

    def __init__(self, address, data_store, images_root=None, family=socket.AF_INET,
                 sock=None, counters=None, tls=None):
        """Bind `address`, or with `sock` serve an already listening socket (one
        systemd passed). Servers sharing one store share `counters` too. With `tls`
        (an ssl.SSLContext) every connection is HTTPS; the handshake runs in the
        connection's own thread, so a slow client cannot stall accept()."""
        self.tls = tls
        self.address_family = sock.family if sock is not None else family
        self.store = data_store
        self.images_root = images_root
        self.metrics = counters or metrics.Metrics(self.version)
        self.stopping = False
        self.open_connections = 0
        self.busy = 0
        self._count_lock = threading.Lock()
        super().__init__(address, Handler, bind_and_activate=sock is None)
        if sock is not None:
            self.socket.close()
            self.socket = sock
            self.server_address = sock.getsockname()
            self.server_name, self.server_port = self.server_address[:2]

    def server_bind(self):
        # Not HTTPServer.server_bind: its getfqdn() can wait on DNS for seconds on
        # an air-gapped host.
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def get_request(self):
        sock, address = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True,
                                        do_handshake_on_connect=False)
        return sock, address

    def process_request(self, request, client_address):
        with self._count_lock:
            full = self.open_connections >= LIMITS["max_connections"]
            if not full:
                self.open_connections += 1
        if full:
            log.warning("%s refused: %d connections open (max_connections)",
                        client_address[0], self.open_connections)
            self._refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)
        except RuntimeError as e:  # the system will not start another thread
            self._connection_done()
            log.error("%s refused: %s", client_address[0], e)
            self._refuse_busy(request)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connection_done()

    def _connection_done(self):
        with self._count_lock:
            self.open_connections -= 1

    def _refuse_busy(self, request):
        body = b"503 server busy, try again\n"
        try:
            request.settimeout(1)
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                            b"Content-Type: text/plain\r\nConnection: close\r\n"
                            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        except OSError:
            pass
        self.shutdown_request(request)

    def request_started(self):
        with self._count_lock:
            self.busy += 1

    def request_finished(self):
        with self._count_lock:
            self.busy -= 1

    def handle_error(self, request, client_address):
        e = sys.exc_info()[1]
        if isinstance(e, ssl.SSLError):
            log.info("%s: TLS failed: %s", client_address[0], e.reason or e)
        elif isinstance(e, (ConnectionError, TimeoutError, socket.timeout)):
            log.info("%s went away: %s", client_address[0], e.__class__.__name__)
        else:
            log.exception("internal error serving %s", client_address[0])

    def stop(self, grace=None):
        """Stop accepting, then give in-flight requests `grace` seconds
        (LIMITS["stop_grace"] by default)."""
        self.stopping = True
        self.server_close()
        deadline = time.monotonic() + (LIMITS["stop_grace"] if grace is None else grace)
        while self.busy and time.monotonic() < deadline:
            time.sleep(0.05)


def _printable(text, limit=300):
    """A request path as it can be logged: no control characters, bounded."""
    out = "".join(c if 0x20 <= ord(c) < 0x7F else "\\x%02x" % (ord(c) & 0xFF) for c in text)
    return out if len(out) <= limit else out[:limit] + "..."
