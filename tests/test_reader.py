"""The lean request reader against the standard library's, request by request.

Each raw request is fed to bootcfg's Handler.parse_request and to
http.server.BaseHTTPRequestHandler.parse_request of the Python running the test,
on the same bytes. They must agree on accepting or refusing it (and the status),
on method, path, version, keep-alive and every header value, except on the
cases STRICTER names (bootcfg refuses what the standard library lets through)
and VERSION_DEPENDENT names (older Pythons differ among themselves).
"""

import http.server
import io
import random
import sys

import pytest

from _bootcfg.server import Handler, MAX_HEADER_BYTES
from test_robustness import fuzz_requests

pytestmark = pytest.mark.unit


class _Probe:
    """parse_request on raw bytes, recording what it would answer."""

    def __init__(self, raw):
        self.rfile = io.BytesIO(raw)
        self.wfile = io.BytesIO()
        self.raw_requestline = self.rfile.readline(65537)
        self.error = None
        self.client_address = ("192.0.2.1", 1)
        self.request_version = "HTTP/1.0"

    def send_error(self, code, message=None, explain=None):
        self.error = int(code)
        self.message = message or ""

    def log_message(self, *args):
        pass

    def log_request(self, *args):
        pass


class Ours(_Probe, Handler):
    pass


class Stdlib(_Probe, http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"


def outcome(cls, raw):
    p = cls.__new__(cls)
    _Probe.__init__(p, raw)
    if len(p.raw_requestline) > 65536:
        return {"ok": False, "error": 414}
    ok = p.parse_request()
    out = {"ok": bool(ok), "error": p.error}
    if p.error and cls is Ours and p.message.startswith(STRICTER_RULES):
        out["rule"] = [r for r in STRICTER_RULES if p.message.startswith(r)][0]
    if ok:
        out.update(command=p.command, path=p.path, version=p.request_version,
                   close=p.close_connection, continue_sent=b"100 Continue" in p.wfile.getvalue(),
                   headers={k.lower(): p.headers.get(k) for k in p.headers.keys()})
    return out


H = "Host: x\r\n"
VALID = [
    "GET / HTTP/1.1\r\n\r\n",
    "GET /ipxe?uuid=a&mac=b HTTP/1.1\r\nHost: bootcfg\r\n\r\n",
    "HEAD /cloud HTTP/1.0\r\n\r\n",
    "GET /cloud HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    "GET / HTTP/1.1\r\nCONNECTION: Close\r\n\r\n",
    "GET / HTTP/1.1\r\nconnection:keep-alive\r\n\r\n",
    "GET /\r\n\r\n",
    "GET / HTTP/1.1\nHost: x\n\n",
    "GET / HTTP/1.1\r\nHost:   spaced   \r\n\r\n",
    "GET / HTTP/1.1\r\nHost:\tx\t\r\n\r\n",
    "GET / HTTP/1.1\r\nX-Empty:\r\n\r\n",
    "GET / HTTP/1.1\r\nRange: bytes=0-1\r\nIf-None-Match: \"a\", \"b\"\r\n\r\n",
    "GET / HTTP/1.1\r\nA: 1\r\nA: 2\r\n\r\n",
    "GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
    "POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    "GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
    "GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n",
    "BREW /pot HTTP/1.1\r\n\r\n",
    "GET http://host:8080/ipxe?x=1 HTTP/1.1\r\n\r\n",
    "GET //double//slash HTTP/1.1\r\n\r\n",
    "GET / HTTP/1.9\r\n\r\n",
    "GET / HTTP/01.1\r\n\r\n",
    "GET   /   HTTP/1.1  \r\n\r\n",
    "GET / HTTP/1.1\r\nUser-Agent: iPXE/1.0.0+git-20190125\r\nHost: 10.0.2.2:8080\r\n\r\n",
    "GET / HTTP/1.1\r\n" + "".join("X-%d: %d\r\n" % (i, i) for i in range(100)) + "\r\n",
    "GET / HTTP/1.1\r\nX: " + "v" * 60000 + "\r\n\r\n",
    "GET /\xe9 HTTP/1.1\r\nX: caf\xe9\r\n\r\n",
]
INVALID = [
    "\r\n", "GARBAGE\r\n\r\n", "GET\r\n\r\n", "POST /\r\n\r\n", "GET / HTTP/2.0\r\n\r\n",
    "GET / HTTP/9.9\r\n\r\n", "GET / HTTP/1\r\n\r\n", "GET / HTTP/1.1.1\r\n\r\n",
    "GET / HTTP/x.y\r\n\r\n", "GET / FTP/1.1\r\n\r\n", "GET / HTTP/1.1 extra\r\n\r\n",
    "GET / HTTP/1.1\r\n" + "X: y\r\n" * 101 + "\r\n",
    "GET / HTTP/1.1\r\nX: " + "v" * 70000 + "\r\n\r\n",
    "GET /" + "a" * 70000 + " HTTP/1.1\r\n\r\n",
]
# bootcfg's refusals of what the standard library lets through, by the message
# each one answers with.
STRICTER_RULES = ("Obsolete line folding", "Bad header line", "Bare CR in a header line",
                  "Conflicting Content-Length", "Request headers too large")
# bootcfg refuses these on purpose; the standard library accepts them.
STRICTER = {
    "bare CR in a value": ("GET / HTTP/1.1\r\nConnection: close\r\x7f\r\n\r\n", 400),
    "a name that is not a token": ("GET / HTTP/1.1\r\nConnecti\x91n: close\r\n\r\n", 400),
    "obsolete line folding": ("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 400),
    "tab-folded line": ("GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n", 400),
    "space in a header name": ("GET / HTTP/1.1\r\nBad Name: x\r\nHost: y\r\n\r\n", 400),
    "space before the colon": ("GET / HTTP/1.1\r\nHost : y\r\n\r\n", 400),
    "control character in a name": ("GET / HTTP/1.1\r\nX\x01: y\r\n\r\n", 400),
    "a line without a colon": ("GET / HTTP/1.1\r\nnot a header\r\n\r\n", 400),
    "empty header name": ("GET / HTTP/1.1\r\n: x\r\n\r\n", 400),
    "conflicting Content-Length": (
        "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    "headers over 64 KiB in all": (
        "GET / HTTP/1.1\r\n" + ("X: " + "v" * 1000 + "\r\n") * 70 + "\r\n", 431),
}
# Where Pythons differ from one another (bootcfg takes the newest one's rule).
VERSION_DEPENDENT = {
    "sign in a version number": "GET / HTTP/1.+1\r\n\r\n",
    "an 11-digit version number": "GET / HTTP/" + "1" * 11 + ".1\r\n\r\n",   # 3.8: 505
    "non-ASCII digit in a version": "GET / HTTP/1.\u0661\r\n\r\n",
}


def cases():
    out = [("valid %d" % i, raw) for i, raw in enumerate(VALID)]
    out += [("invalid %d" % i, raw) for i, raw in enumerate(INVALID)]
    out += [("fuzzed %d" % i, raw.decode("latin-1")) for i, raw in enumerate(fuzz_requests(300))]
    rng = random.Random(7)
    for i in range(60):            # valid requests in random spellings
        headers = ["%s: %s\r\n" % (rng.choice(["Host", "HOST", "host", "X-A", "Range",
                                               "Connection", "If-None-Match"]),
                                   rng.choice(["x", " y ", "keep-alive", "close", "bytes=1-",
                                               "", "a b\tc"]))
                   for _ in range(rng.randint(0, 8))]
        out.append(("spelled %d" % i, "%s %s HTTP/1.%d\r\n%s\r\n" % (
            rng.choice(["GET", "HEAD", "DELETE"]), rng.choice(["/", "/ipxe?a=1&b=%20", "/x/y"]),
            rng.randint(0, 1), "".join(headers))))
    return out


def test_the_corpus_is_big_enough():
    assert len(cases()) >= 300


@pytest.mark.parametrize("name, raw", cases(), ids=[c[0] for c in cases()])
def test_same_as_the_standard_library(name, raw):
    """The same verdict and fields, or one of the named stricter refusals of a
    request the standard library takes."""
    data = raw.encode("latin-1") if isinstance(raw, str) else raw
    ours, theirs = outcome(Ours, data), outcome(Stdlib, data)
    if "rule" in ours and theirs["ok"]:
        return                    # counted below: stricter on purpose
    ours.pop("rule", None)
    assert ours == theirs


def test_fuzzed_differences_are_only_the_stricter_rules():
    """How many of the corpus bootcfg refuses on purpose, per rule (printed), and
    that most of it agrees outright."""
    same = stricter = 0
    rules = {}
    for name, raw in cases():
        data = raw.encode("latin-1") if isinstance(raw, str) else raw
        ours, theirs = outcome(Ours, data), outcome(Stdlib, data)
        if "rule" in ours and theirs["ok"]:
            stricter += 1
            rules[ours["rule"]] = rules.get(ours["rule"], 0) + 1
        else:
            same += 1
    assert same >= 250, (same, stricter, rules)


@pytest.mark.parametrize("name", sorted(STRICTER))
def test_stricter_where_the_standard_library_is_lax(name):
    raw, status = STRICTER[name]
    data = raw.encode("latin-1")
    assert outcome(Stdlib, data)["ok"], "the standard library refuses this now: not stricter"
    ours = outcome(Ours, data)
    assert ours.pop("rule") in STRICTER_RULES and ours == {"ok": False, "error": status}


@pytest.mark.parametrize("name", sorted(VERSION_DEPENDENT))
def test_version_dependent_cases_are_refused(name):
    data = VERSION_DEPENDENT[name].encode("utf-8")
    assert outcome(Ours, data) == {"ok": False, "error": 400}
    if sys.version_info >= (3, 10):
        assert outcome(Stdlib, data) == {"ok": False, "error": 400}


def test_header_limit_is_the_documented_one():
    assert MAX_HEADER_BYTES == 64 * 1024


def test_query_parsing_is_parse_qs_first_values():
    """split_target's own query parser against parse_qs(keep_blank_values=True),
    on 20,000 random queries of the characters that matter."""
    from urllib.parse import parse_qs
    from _bootcfg.server import split_target
    rng = random.Random(3)
    alphabet = ["a", "b", "=", "&", "+", "%20", "%2B", "%3D", "%26", "%zz", "%C3%A9", ";", "x"]
    for _ in range(20000):
        qs = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        want = {k: v[0] for k, v in parse_qs(qs, keep_blank_values=True).items()}
        assert split_target("/p?" + qs)[1] == want, qs
