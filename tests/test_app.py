"""The App with a small fake store: which store outcome becomes which status, and
which machine keys reach the store. No server: the app is called directly, as
the server calls it."""

import pytest

from _bootcfg.answers import Request, Response
from _bootcfg.app import ROUTES, App, Route
from _bootcfg.server import split_target
from helpers import MAC1, UUID1
from render import BootConfig
from store import LoadError, Lookup, Match

pytestmark = pytest.mark.unit

CFG = BootConfig("/images/k", ("/images/i.gz",), ("quiet",))


class FakeStore:
    """Answers every lookup with one canned outcome and records what was asked."""

    def __init__(self, outcome):
        self.outcome = outcome
        self.asked = []

    def select(self, kind, labels):
        self.asked.append((kind, labels.get("uuid"), labels.get("mac")))
        if self.outcome == "match":
            value = CFG if kind == "boot" else b"#cloud-config\n"
            return Lookup(Match("%s/default" % kind, "default", value, False), ())
        if self.outcome == "error":
            return Lookup(None, (), LoadError("%s/uuid/x" % kind, "invalid JSON"))
        return Lookup(None, ())

    def stats(self):
        return {"load_errors_total": 0, "stale": 0}


def run(path, outcome="match", app=None):
    target_path, query = split_target(path)
    app = app or App(FakeStore(outcome))
    resp = app(Request("GET", target_path, query, {}, "192.0.2.1"))
    return resp, app.store.asked


@pytest.mark.parametrize("path, outcome, status", [
    ("/", "none", 200),
    ("/boot.ipxe", "none", 200),
    ("/boot.ipxe.0", "none", 200),
    ("/ipxe", "match", 200),
    ("/ipxe", "none", 404),
    ("/ipxe", "error", 500),
    ("/cloud", "match", 200),
    ("/cloud", "none", 404),
    ("/cloud", "error", 500),
    ("/pixiecore/v1/boot/" + MAC1, "match", 200),
    ("/pixiecore/v1/boot/" + MAC1, "none", 404),
    ("/pixiecore/v1/boot/" + MAC1, "error", 500),
    ("/pixiecore/v1/boot/not-a-mac", "match", 400),
    ("/pixiecore/v1/boot/", "match", 400),
    ("/pixiecore/v1/boot/00:00:00:00:00:00", "match", 400),
    ("/images/x", "match", 404),           # image serving off in this fake server
    ("/nothing", "match", 404),
    ("/ipxe/", "match", 404),
    ("/IPXE", "match", 404),
])
def test_status_by_outcome(path, outcome, status):
    resp, _ = run(path, outcome)
    assert resp.status == status
    assert resp.length == len(resp.body)
    assert resp.body.endswith(b"\n")


@pytest.mark.parametrize("query, asked", [
    ("uuid=%s&mac=%s" % (UUID1, MAC1), (UUID1, MAC1)),
    ("uuid=%s&mac=%s" % (UUID1.upper(), "52-54-00-89-D8-10"), (UUID1, MAC1)),
    ("mac=52%3A54%3A00%3A89%3AD8%3A10", (None, MAC1)),
    ("uuid=00000000-0000-0000-0000-000000000000&mac=" + MAC1, (None, MAC1)),
    ("uuid=../../etc/passwd&mac=" + MAC1, (None, MAC1)),
    ("uuid=%s&mac=../../x" % UUID1, (UUID1, None)),
    ("uuid=&mac=", (None, None)),
    ("hostname=a%20b%26c&serial=x", (None, None)),
    ("", (None, None)),
])
def test_machine_keys_reach_store_validated(query, asked):
    for endpoint, kind in (("/ipxe", "boot"), ("/cloud", "cloud")):
        resp, calls = run(endpoint + "?" + query)
        assert resp.status == 200
        assert calls == [(kind,) + asked]


def test_pixiecore_asks_by_mac_only():
    _, calls = run("/pixiecore/v1/boot/52%3A54%3A00%3A89%3AD8%3A10")
    assert calls == [("boot", None, MAC1)]


def test_500_names_file_not_reason():
    resp, _ = run("/ipxe?uuid=" + UUID1, "error")
    assert b"boot/uuid/x" in resp.body and resp.matched.startswith("boot/uuid/x")


def test_internal_error_is_500_not_a_crash():
    app = App(FakeStore("match"))

    def boom(req):
        raise RuntimeError("bug")
    app.add_route(Route("/", "identity", "service"), boom)
    resp, _ = run("/", app=app)
    assert resp.status == 500 and b"Traceback" not in resp.body and resp.route == "/"


def test_route_names_for_metrics():
    for path, route in [("/ipxe?mac=x", "/ipxe"), ("/images/a/b", "/images/"),
                        ("/pixiecore/v1/boot/" + MAC1, "/pixiecore/v1/boot/"),
                        ("/nope", "other")]:
        assert run(path)[0].route == route


def test_metrics_through_the_app_count_what_the_server_records():
    app = App(FakeStore("match"))
    app.connection(+1)
    resp, _ = run("/ipxe", app=app)
    app.record(resp, resp.length)
    page, _ = run("/metrics", app=app)
    text = page.body.decode()
    assert 'bootcfg_requests_total{route="/ipxe",status="200"} 1' in text
    assert "bootcfg_open_connections 1" in text
    assert "bootcfg_worker_restarts_total 0" in text


def test_a_new_endpoint_is_one_route_entry():
    app = App(FakeStore("match"))
    app.add_route(Route("/hello", "identity", "service"), lambda req: Response(body=b"hi\n"))
    assert run("/hello", app=app)[0].body == b"hi\n"


def test_every_route_says_its_kind_access_binding_and_step():
    kinds = {"chainload", "boot script", "config", "file", "admin page", "service"}
    for route in ROUTES:
        assert route.kind in kinds and route.access in (
            "open", "machine token", "admin read", "admin write"), route
        assert route.bound == (route.kind == "config"), route
        assert bool(route.records) == (route.kind in ("chainload", "boot script", "config",
                                                      "file")), route
    admin = {r.path for r in ROUTES if r.access == "admin read"}
    assert admin == {"/status", "/status.json", "/metrics"}
    assert {r.path for r in ROUTES if r.speaks == "grub"} == {"/grub", "/grub/grub.cfg"}


@pytest.mark.parametrize("target, path, query", [
    ("/ipxe?a=1&a=2&b=", "/ipxe", {"a": "1", "b": ""}),
    ("http://host:8080/cloud?mac=x", "/cloud", {"mac": "x"}),
    ("/p%2Fq", "/p%2Fq", {}),
])
def test_split_target(target, path, query):
    assert split_target(target) == (path, query)


def test_split_target_refuses_garbage():
    from _bootcfg.answers import Refusal
    with pytest.raises(Refusal) as e:
        split_target("*")
    assert e.value.status == 400
