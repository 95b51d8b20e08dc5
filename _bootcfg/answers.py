"""What passes between the HTTP server and the application, and the one place a
failure becomes a status.

A route handler returns a Response or raises Refusal(kind, message); the server
raises the same Refusal for what it refuses itself (a malformed target, a method
other than GET/HEAD, too many connections) and for the protocol errors the
standard library detects (414, 431, 505). `STATUS` is the only table of statuses
the program chooses; every error body is plain text, never HTML.
"""

from typing import NamedTuple, Tuple
from urllib.parse import unquote

# Every status bootcfg answers other than 200/206/304, by the kind of failure.
STATUS = {
    "bad request": 400,      # malformed target, MAC in a path, NUL or '..' in a path
    "forbidden": 403,        # an image path outside the images directory; -admin-allow
    "not bound": 403,        # -bind-configs: a config asked for by another machine
    "not found": 404,        # no such endpoint, no such image, image serving off
    "no match": 404,         # no config for this machine and no default
    "bad method": 405,       # anything but GET and HEAD
    "line too long": 414,    # request line over 64 KiB (the standard library's limit)
    "timeout": 408,          # the request head did not arrive within header_timeout
    "range": 416,            # a Range that starts past the end of the file
    "headers too large": 431,  # more header lines than the standard library allows
    "invalid config": 500,   # the machine's config exists and never loaded
    "internal": 500,         # a bug: the log has the traceback
    "busy": 503,             # max_connections reached
    "stopping": 503,         # /healthz after SIGTERM: the balancer takes this replica out
    "unhealthy": 503,        # /healthz: the data directory cannot be read
    "bad version": 505,      # an HTTP version other than 1.x
}

# The standard library's own error codes, as kinds of the table above.
PROTOCOL_KINDS = {400: "bad request", 408: "timeout", 414: "line too long",
                  431: "headers too large", 505: "bad version", 501: "bad method",
                  405: "bad method"}

REASONS = {200: "OK", 206: "Partial Content", 304: "Not Modified", 400: "Bad Request",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout",
           414: "URI Too Long", 416: "Range Not Satisfiable",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable", 505: "HTTP Version Not Supported"}


class Refusal(Exception):
    """A request that gets no ordinary answer. `kind` is a key of STATUS; the
    message is the body; `headers` are added (Allow, Content-Range, Retry-After);
    `matched` and `machine` go to the access line, `lookup` to /metrics."""

    def __init__(self, kind, message, headers=(), matched="", machine=("", ""), problem="",
                 lookup=None):
        super().__init__(message)
        if kind not in STATUS:
            raise ValueError("unknown refusal kind %r" % kind)
        self.kind, self.message, self.headers = kind, message, list(headers)
        self.matched, self.machine = matched, machine
        self.problem = problem      # the reason, for /status (the body may not say it)
        self.lookup = lookup

    @property
    def status(self):
        return STATUS[self.kind]


class Request(NamedTuple):
    method: str
    path: str            # as sent, before percent-decoding, without the query
    query: dict          # name -> first value, percent-decoded
    headers: object      # a case-insensitive mapping (http.client.HTTPMessage)
    client: str = ""     # the peer's address
    local: Tuple = ()    # (address, port) the request arrived on
    raw_query: str = ""  # the query string as sent (templates' request.raw_query)
    forwarded_host: str = ""   # X-Forwarded-Host from a trusted proxy, when valid


class Response:
    """What a route handler returns. `file` is (open file, offset, count) for
    answers sent with sendfile; `matched` and `machine` go to the access log;
    `route` names the route for /metrics (set by the app), and `lookup` the
    (config kind, what matched) of a machine answered: uuid, mac, default,
    shared, none or invalid."""

    __slots__ = ("status", "body", "file", "headers", "length", "matched", "machine",
                 "route", "step", "expects", "problem", "lookup")

    def __init__(self, status=200, body=b"", content_type="text/plain; charset=utf-8",
                 headers=(), file=None, matched="", machine=("", ""), lookup=None):
        self.status, self.body, self.file = status, body, file
        self.headers = [("Content-Type", content_type)] + list(headers)
        self.length = file[2] if file else len(body)
        self.matched = matched
        self.machine = machine      # (uuid, mac), canonical or ""
        self.lookup = lookup
        self.route = "other"
        self.step = ""              # what /status records of it (the route's `records`)
        self.expects = ()           # boot scripts: the steps this boot should take next
        self.problem = ""


def refused(refusal):
    """The plain-text Response for a Refusal: the one way an error is answered."""
    resp = Response(refusal.status, (refusal.message + "\n").encode("utf-8", "replace"),
                    headers=refusal.headers, matched=refusal.matched,
                    machine=refusal.machine, lookup=refusal.lookup)
    resp.problem = refusal.problem or refusal.message
    return resp


def parse_query(qs):
    """name -> first value of a query string, for HTTP targets and TFTP names
    alike: parse_qs(keep_blank_values=True) without its generality: '&'
    separates, '+' is a space, %XX is decoded."""
    query = {}
    if qs:
        for part in qs.split("&"):
            if not part:
                continue
            name, _, value = part.partition("=")
            if "+" in name or "%" in name:
                name = unquote(name.replace("+", " "))
            if name not in query:
                query[name] = unquote(value.replace("+", " ")) \
                    if "+" in value or "%" in value else value
    return query


def printable(text, limit=300):
    """Request text as it can be logged: no control characters, bounded."""
    out = "".join(c if 0x20 <= ord(c) < 0x7F else "\\x%02x" % (ord(c) & 0xFF) for c in text)
    return out if len(out) <= limit else out[:limit] + "..."
