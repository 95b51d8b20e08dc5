"""The application: bootcfg's routes, and the state they answer from.

`App(store, images_root)` is called as `app(request) -> Response` by the HTTP
server, by `bootcfg explain` and by tests, all the same way. It owns the store, the
images root, the counters and the route table; it never touches a socket. Handlers
return a Response or raise Refusal; `__call__` is the one place a failure becomes
a status (answers.STATUS), including a bug (500, traceback in the log).

The server tells the app what happened on the wire through `record(response,
sent)` (after each answer, with the body bytes sent or -1 if the client went away)
and `connection(delta)` (a connection opened or closed).
"""

import functools
import ipaddress
import json
import logging
import os
from typing import NamedTuple
import time
from urllib.parse import unquote, urlsplit

import render
import store
from _bootcfg import (__version__, files, fleet, groups, ignition, images, machine,
                      metrics, status_page, template)
from _bootcfg.answers import Refusal, Response, printable, refused
from _bootcfg.status import Tracker

log = logging.getLogger("bootcfg")

IDENTITY = ("bootcfg %s\n" % __version__).encode()


class Route(NamedTuple):
    """One endpoint and its policy. `kind`: chainload, boot script, config, file,
    admin page or service. `access`: who may call it: open, machine token, admin
    read (-admin-allow), admin write. `bound`: with -bind-configs only the
    machine holding the client's address gets the answer. `records`: what
    /status records of it (chain, script, config, file, or nothing). `speaks`:
    grub when GRUB runs the body, so errors must be GRUB commands. `prefix`: the
    path is a prefix. `tftp`: its name over TFTP. `arg`: given to the handler."""
    path: str
    handler: str
    kind: str
    access: str = "open"
    bound: bool = False
    records: str = ""
    speaks: str = "text"
    prefix: bool = False
    tftp: str = ""
    arg: str = ""


# Every endpoint. A new one is one line here (and its handler, a method of App).
ROUTES = (
    Route("/", "identity", "service"),
    Route("/healthz", "healthz", "service"),
    Route("/boot.ipxe", "chainload", "chainload", records="chain", tftp="boot.ipxe"),
    # old dnsmasq proxy-DHCP appends ".0"
    Route("/boot.ipxe.0", "chainload", "chainload", records="chain"),
    Route("/ipxe", "ipxe", "boot script", records="script", tftp="ipxe"),
    Route("/pixiecore/v1/boot/", "pixiecore", "boot script", records="script", prefix=True),
    Route("/grub", "grub", "boot script", records="script", speaks="grub", tftp="grub"),
    Route("/grub/grub.cfg", "grub_first", "chainload", records="chain", speaks="grub",
          tftp="grub/grub.cfg"),
    Route("/cloud", "config", "config", bound=True, records="config", arg="cloud"),
    Route("/ignition", "config", "config", bound=True, records="config", arg="ignition"),
    Route("/generic", "config", "config", bound=True, records="config", arg="generic"),
    Route("/metadata", "config", "config", bound=True, records="config", arg="metadata"),
    Route("/ignition/shared/", "ignition_shared", "config", bound=True, records="config",
          prefix=True),
    Route("/images/", "image", "file", records="file", prefix=True),
    Route("/assets/", "image", "file", records="file", prefix=True),   # matchbox's name
    Route("/metrics", "metrics_page", "admin page", access="admin read"),
    Route("/status", "status_html", "admin page", access="admin read"),
    Route("/status.json", "status_json", "admin page", access="admin read"),
)
# Image files over TFTP: whatever name no route has (<file> or images/<file>).
TFTP_IMAGES = Route("tftp:images", "tftp_image", "file", records="file")
NO_ROUTE = Route("other", "no_route", "service")
# What /status records of each route's answers, by route name (HTTP and TFTP).
STEPS = dict([(r.path, r.records) for r in ROUTES + (TFTP_IMAGES,) if r.records] +
             [("tftp:" + r.tftp, r.records) for r in ROUTES if r.tftp and r.records])
# Machine facts a GRUB or iPXE query may carry, besides uuid and mac.
FACTS = ("hostname", "serial", "domain", "arch", "platform")

# The parse function of each kind of file the store reads (None: bytes as-is);
# "profile:<kind>" is for the files profiles name, which may be templates.
PARSERS = {"boot": render.parse_boot_config, "cloud": None,
           "ignition": ignition.parse_ignition,
           "group": groups.parse_group, "profile": groups.parse_profile,
           "profile:cloud": template.parse_file, "profile:generic": template.parse_file,
           "profile:ignition": ignition.parse_ignition_template}

# Rendering is pure, so a config renders once until it changes (a changed file
# parses to a new BootConfig, which is a new key).
render_ipxe = functools.lru_cache(maxsize=4096)(render.render_ipxe)
render_pixiecore = functools.lru_cache(maxsize=4096)(render.render_pixiecore)


def make_store(data_root, limits=None, clock=None):
    """The FileStore the server, `check` and `explain` all read through (`clock`:
    a files.FakeClock in tests)."""
    return store.FileStore(data_root, PARSERS, limits, clock or files.SYSTEM_CLOCK)


class App:
    """`tracker` records boot progress (default: this process only); `admin_allow`
    is a list of ip_network: only those clients may read /status, /status.json and
    /metrics (None: everyone); `bindings` (a leases.Bindings: -bind-configs) binds
    configs to the machine holding the client's address (None: no binding);
    `peers` are the base URLs of the other replicas whose records /status merges
    (fleet.py), `replica` this one's name there."""

    def __init__(self, data_store, images_root=None, counters=None, tracker=None,
                 admin_allow=None, bindings=None, peers=(), replica="", peer_timeout=2.0):
        self.store = data_store
        self.images_root = images_root
        self.metrics = counters or metrics.Metrics(__version__)
        self.tracker = tracker or Tracker()
        self.admin_allow = admin_allow
        self.bindings = bindings
        self.stopping = False       # set on SIGTERM: /healthz answers 503
        self.peers, self.replica, self.peer_timeout = list(peers), replica, peer_timeout
        self.routes, self.prefix_routes, self.tftp_routes = {}, [], {}
        for route in ROUTES:
            self.add_route(route)

    def add_route(self, route, handler=None):
        """Serve `route` with `handler` (default: the method it names; with
        route.arg, called as handler(req, arg))."""
        if handler is None:
            handler = getattr(self, route.handler)
            if route.arg:
                handler = functools.partial(handler, kind=route.arg)
        if route.prefix:
            self.prefix_routes = [(r, h) for r, h in self.prefix_routes
                                  if r.path != route.path] + [(route, handler)]
        else:
            self.routes[route.path] = (route, handler)
        if route.tftp:
            self.tftp_routes[route.tftp] = (route._replace(path="tftp:" + route.tftp),
                                            handler)

    # ------------------------------------------------------------ the seam

    def __call__(self, req):
        """The answer to one request; the route's name is on it for /metrics."""
        route, handler = self.find_route(req.path)
        if route.access == "admin read" and not self.admin_allowed(req.client):
            handler = self.not_admin
        resp = self.answer(route, handler, req)
        if resp.status >= 400 and route.speaks == "grub":
            # GRUB runs any body it gets as a script: make the error one it shows.
            resp.body = render.grub_echo(resp.body.decode("utf-8", "replace"))
            resp.length = len(resp.body)
        return resp

    def tftp(self, req):
        """The answer to a TFTP read request (`req.path` is the file name without
        leading slashes, `req.method` "RRQ"); the route is named tftp:<name>.
        Over TFTP an error is an error packet, never a script."""
        route, handler = self.tftp_routes.get(req.path) or (TFTP_IMAGES, self.tftp_image)
        return self.answer(route, handler, req)

    def answer(self, route, handler, req):
        """handler(req), with every failure made a status: the one place."""
        try:
            resp = handler(req)
        except Refusal as e:
            resp = refused(e)
        except Exception:
            log.exception("internal error on %s %s", req.method, printable(req.path, 200))
            resp = refused(Refusal("internal",
                                   "internal error; the server log has the traceback"))
        resp.route = route.path
        resp.step = route.records
        return resp

    def close(self):
        """Stop every thread the app started (status flush, metrics publishing,
        lease files followed); the server calls it once it has stopped."""
        self.tracker.close()
        self.metrics.close()
        if self.bindings is not None:
            self.bindings.close()

    def no_route(self, req):
        raise Refusal("not found", "no such endpoint: %s" % req.path[:200])

    def not_admin(self, req):
        raise Refusal("forbidden", "%s is for the networks in -admin-allow" % req.path)

    def tftp_image(self, req):
        if self.images_root is None:
            raise Refusal("not found", "no such file (image serving is off)")
        first = None
        prefix = req.path.split("/", 1)[0] + "/"
        for name in (req.path, req.path[len(prefix):] if
                     prefix in ("images/", "assets/") else None):
            if not name:
                continue
            try:
                status, headers, file = images.serve(self.images_root, name, {})
            except Refusal as e:
                if e.kind == "forbidden":
                    log.warning("refused TFTP image %s: %s", printable(req.path), e.message)
                    raise
                first = first or e
                continue
            return Response(status, file=file, matched="images")
        raise first or Refusal("not found", "no such file")

    def find_route(self, path):
        """(Route, handler): an exact path, else the first prefix; NO_ROUTE and
        no_route when nothing matches."""
        found = self.routes.get(path)
        if found is not None:
            return found
        for route, handler in self.prefix_routes:
            if path.startswith(route.path):
                return route, handler
        return NO_ROUTE, self.no_route

    def record(self, resp, sent, req=None, ms=0.0):
        """An answer went out (`sent` body bytes, -1 when the client went away)
        for `req` (None for what the server refused before parsing a request)."""
        self.metrics.request(resp.route, resp.status, sent, resp.lookup)
        if resp.step:
            self.tracker.observe(resp.step, resp.route, req, resp, sent, ms, resp.expects,
                                 resp.problem)

    def admin_allowed(self, client):
        if self.admin_allow is None:
            return True
        canonical = machine.client_address(client)
        if canonical is None:
            return False
        address = ipaddress.ip_address(canonical)
        return any(address in net for net in self.admin_allow)

    def connection(self, delta):
        self.metrics.connection(delta)

    def connection_cut(self, reason):
        """The guard closed or refused a connection without an answer."""
        self.metrics.cut(reason)

    # ------------------------------------------------------------ routes

    def identity(self, req):
        return Response(body=IDENTITY)

    def healthz(self, req):
        """For load balancers: 200 while this replica serves and can read its data
        directory; 503 once it is stopping (so draining takes it out) or when the
        directory is unreadable."""
        if self.stopping:
            raise Refusal("stopping", "stopping: finishing the requests in flight")
        root = self.store.root
        if not (os.path.isdir(root) and os.access(root, os.R_OK | os.X_OK)):
            raise Refusal("unhealthy", "data directory %s cannot be read" % root)
        return Response(body=b"ok\n", headers=[("Cache-Control", "no-store")])

    def chainload(self, req):
        return Response(body=render.render_chainload())

    def ipxe(self, req):
        labels, machine = machine_labels(req)
        match = self.lookup("boot", labels)
        resp = Response(body=render_ipxe(match.value), matched=matched_text(match),
                        machine=machine, lookup=("boot", match.how))
        resp.expects = expected_steps(match.value, req)
        return resp

    def config(self, req, kind):
        """/cloud, /ignition, /generic and /metadata: select, bind, fill, answer."""
        labels, machine_keys = self.config_labels(req)
        match = self.bound(self.lookup(kind, labels), labels)
        content_type = "text/plain; charset=utf-8"
        if kind == "metadata":
            body = groups.env_lines(groups.variables(match.group, labels, req.raw_query))
        elif kind == "ignition":
            cfg = match.value
            if isinstance(cfg, ignition.IgnitionTemplate):
                cfg = self.fill(kind, match, labels, req)
            body, content_type = cfg.data, ignition.CONTENT_TYPE
        elif kind == "cloud" and match.group is None:
            body = match.value          # a seed cloud-config: served as it is
        else:
            body = self.fill(kind, match, labels, req)
        return Response(body=body, content_type=content_type, matched=matched_text(match),
                        machine=machine_keys, lookup=(kind, match.how))

    # ------------------------------------------------------------ -bind-configs

    def config_labels(self, req):
        """machine_labels for a config request; with -bind-configs the client must
        hold a current lease, a `mac` asked for must be that lease's, and without
        one the lease's MAC is the machine's. Raises Refusal (403)."""
        labels, machine = machine_labels(req)
        if self.bindings is None:
            return labels, machine
        own = self.bindings.mac_of(req.client)
        if own is None:
            raise self.unbound("no_lease", "%s holds no current DHCP lease; with "
                               "-bind-configs configs go only to their own machine"
                               % req.client, ("", ""))
        asked = labels.get("mac")
        if asked is None:
            labels["mac"] = own
            machine = (machine[0], own)
        elif asked != own:
            raise self.unbound("other_mac", "mac=%s is not the machine at %s (that is %s); "
                               "with -bind-configs configs go only to their own machine"
                               % (asked, req.client, own), ("", own))
        return labels, machine

    def bound(self, match, labels):
        """`match` itself, unless -bind-configs is on and bind_policy refuses the
        keys that selected it (403)."""
        if self.bindings is None:
            return match
        keys = {name for name, _ in match.group.selector} if match.group is not None \
            else {match.how}
        refusal = bind_policy(keys)
        if refusal is not None:
            reason, why = refusal
            raise self.unbound(reason, "%s is %s; with -bind-configs select it by mac"
                               % (match.path, why), ("", labels["mac"]),
                               matched_text(match))
        return match

    def unbound(self, reason, message, machine, matched=""):
        """The 403 of -bind-configs, counted by reason; the refused step goes to
        the requesting machine's record (its lease's MAC), or its address."""
        self.metrics.refused_unbound(reason)
        return Refusal("not bound", message, machine=machine,
                       matched=(matched + " (not bound)") if matched else "not bound")

    def fill(self, kind, match, labels, req):
        """The profile's template (match.value) filled with the winning group's
        variables; one that cannot be filled for this group is 500 (logged,
        named)."""
        tpl = match.value
        try:
            if isinstance(tpl, ignition.IgnitionTemplate):
                return filled_ignition(tpl, match.group)
            return tpl.render(groups.variables(match.group, labels, req.raw_query)
                              ).encode("utf-8")
        except (template.TemplateError, render.ConfigError) as e:
            problem = "%s for %s: %s" % (match.path, match.group_path, e)
            log.warning("%s", problem, extra={"fields": {"file": match.path,
                                                        "reason": str(e)}})
            raise Refusal("invalid config", "%s cannot be used for %s; the server log says "
                          "why" % (match.path, match.group_path),
                          matched=matched_text(match) + " (invalid)",
                          machine=(labels.get("uuid", ""), labels.get("mac", "")),
                          problem=problem, lookup=(kind, "invalid")) from None

    def ignition_shared(self, req):
        if self.bindings is not None and self.bindings.mac_of(req.client) is None:
            raise self.unbound("no_lease", "%s holds no current DHCP lease; with "
                               "-bind-configs shared fragments go to lease holders only"
                               % req.client, ("", ""))
        name = unquote(req.path[len("/ignition/shared/"):])
        try:
            found = self.store.shared("ignition", name)
        except ValueError as e:
            raise Refusal("bad request", str(e)) from None
        if found.error is not None:
            raise Refusal("invalid config",
                          "%s cannot be used; the server log says why" % found.error.path,
                          matched=found.error.path + " (invalid)",
                          lookup=("ignition", "invalid"))
        if found.match is None:
            raise Refusal("not found", "no shared Ignition fragment ignition/shared/%s"
                          % name, matched="no match", lookup=("ignition", "none"))
        return Response(body=found.match.value.data, content_type=ignition.CONTENT_TYPE,
                        matched=found.match.path, lookup=("ignition", "shared"))

    def grub(self, req):
        """The machine's GRUB answer, from the same boot config as /ipxe. Over TFTP
        bare /paths live on GRUB's own $net_default_server; over HTTP on the
        address this request arrived at (never its Host header)."""
        labels, (uuid, mac) = machine_labels(req)
        match = self.lookup("boot", labels)
        facts = {name: req.query.get(name, "") for name in FACTS}
        keys = machine.split_query(req.query)[1]
        facts.update(uuid=machine.uuid_spelling(keys.get("uuid")),
                     mac=machine.mac_spelling(keys.get("mac")))
        over_tftp = req.method == "RRQ"
        try:
            body = render.render_grub(match.value, facts, grub_device(req), not over_tftp)
        except render.GrubError as e:
            log.warning("%s: no GRUB answer%s for uuid=%s mac=%s: %s", matched_text(match),
                        " over TFTP" if over_tftp else "", uuid or "-", mac or "-", e)
            raise Refusal("invalid config", "%s: %s" % (match.path, e),
                          matched=matched_text(match) + " (not for GRUB)",
                          machine=(uuid, mac), lookup=("boot", match.how)) from None
        resp = Response(body=body, matched=matched_text(match), machine=(uuid, mac),
                        lookup=("boot", match.how))
        resp.expects = expected_steps(match.value, req)
        return resp

    def grub_first(self, req):
        return Response(body=render.render_grub_first(grub_device(req)))

    def pixiecore(self, req):
        raw = req.path[len("/pixiecore/v1/boot/"):]
        if "%" in raw:
            raw = unquote(raw)
        try:
            mac = machine.mac_key(raw)
        except ValueError as e:
            raise Refusal("bad request", str(e)) from None
        if mac is None:
            raise Refusal("bad request", "placeholder MAC %s names no machine" % raw)
        match = self.lookup("boot", {"mac": mac})
        resp = Response(body=render_pixiecore(match.value),
                        content_type="application/json", matched=matched_text(match),
                        lookup=("boot", match.how),
                        machine=("", mac))
        # Pixiecore downloads kernel and initrd from its own address: not expected.
        resp.expects = expected_steps(match.value, req, files=False)
        return resp

    def fleet_records(self):
        """(records, problems): this replica's, merged with its peers' (-peers)."""
        records, problems = self.tracker.view(), self.problems()
        if self.peers:
            others, missing = fleet.ask_peers(self.peers, self.peer_timeout)
            records = fleet.merge(records, self.replica, others)
            problems += missing
        return records, problems

    def status_html(self, req):
        records, problems = self.fleet_records()
        body = status_page.render_html(records, self.tracker.stuck_after,
                                       time.time(), req.query, problems=problems)
        return Response(body=body, content_type="text/html; charset=utf-8",
                        headers=[("Content-Security-Policy", status_page.CSP),
                                 ("Cache-Control", "no-store"),
                                 ("X-Content-Type-Options", "nosniff")])

    def status_json(self, req):
        if req.query.get("local") == "1":           # a peer asking: never merged
            return Response(body=fleet.export_local(self.tracker.view(), self.replica),
                            content_type="application/json",
                            headers=[("Cache-Control", "no-store")])
        records, problems = self.fleet_records()
        body = status_page.render_json(records, self.tracker.stuck_after,
                                       time.time(), req.query, problems)
        return Response(body=body, content_type="application/json",
                        headers=[("Cache-Control", "no-store")])

    def problems(self):
        """What /status shows above the machines: group files that never parsed."""
        broken = getattr(getattr(self.store, "groups", None), "broken", {})
        return ["%s never parsed (%s): catch-all answers get 500 until it is fixed"
                % (path, reason) for path, reason in sorted(broken.items())]

    def metrics_page(self, req):
        return Response(body=self.metrics.render(self.store.stats()),
                        content_type=metrics.CONTENT_TYPE)

    def image(self, req):
        if self.images_root is None:
            raise Refusal("not found", "image serving is off: no images directory")
        try:
            # /images/x and /assets/x (matchbox's name) are the same file.
            status, headers, file = images.serve(self.images_root, req.path.split("/", 2)[2],
                                                 req.headers)
        except Refusal as e:
            if e.kind == "forbidden":
                log.warning("refused image %s: %s", printable(req.path), e.message)
            raise
        resp = Response(status, file=file, matched="images")
        resp.headers = headers
        return resp

    # ------------------------------------------------------------ lookups

    def lookup(self, kind, labels):
        """The store's match for a machine with `labels`, or Refusal: no match
        (404) or a config that exists and never loaded (500; the store has logged
        why). The answer built from a match carries lookup=(kind, match.how),
        counted when it is recorded."""
        found = self.store.select(kind, labels)
        uuid, mac = labels.get("uuid"), labels.get("mac")
        machine = (uuid or "", mac or "")
        if found.error is not None:
            raise Refusal("invalid config",
                          "%s cannot be used; the server log says why" % found.error.path,
                          matched=found.error.path + " (invalid)", machine=machine,
                          problem="%s: %s" % (found.error.path, found.error.reason),
                          lookup=(kind, "invalid"))
        if found.match is None:
            last = found.trail[-1] if found.trail else None
            if last is not None and last.how == "group":
                message = "%s matches uuid=%s mac=%s, and %s" % (
                    last.path, uuid or "-", mac or "-", last.detail)
                matched = "%s (%s)" % (last.path, last.detail)
            else:
                message = "no %s config for uuid=%s mac=%s and no %s/default" % (
                    kind, uuid or "-", mac or "-", kind)
                matched = "no match"
            raise Refusal("no match", message, matched=matched, machine=machine,
                          lookup=(kind, "none"))
        return found.match


def matched_text(match):
    """What the access log and /status name: the file, and for a group answer
    the group and profile too."""
    if match.group is None:
        return match.path
    return "%s (group %s, profile %s)" % (match.path, match.group_path, match.group.profile)


def filled_ignition(tpl, group):
    """The Ignition config a template gives one group, validated (once per
    template version and group values). Ignition templates may not use
    `request`, so the values are the group's alone. Raises TemplateError or
    ConfigError."""
    values = groups.variables(group, {}, "")
    del values["request"]
    return _filled_ignition(tpl, json.dumps(values, sort_keys=True))


@functools.lru_cache(maxsize=4096)
def _filled_ignition(tpl, values_json):
    return ignition.parse_ignition(tpl.render(json.loads(values_json)))


def bind_policy(keys):
    """The one rule of -bind-configs for a config selected by the label names
    `keys` (a group's selector, or a seed file's "uuid"/"mac"/"default"): None
    when the lease holder may have it, else (reason, why). A UUID is in no
    lease, so nothing ties a config selected by UUID alone to the client. The
    server (App.bound) and `check -bind-configs` both ask it."""
    if "uuid" in keys and "mac" not in keys:
        return "uuid_only", "selected by UUID alone, which no DHCP lease names"
    return None


CONFIG_URLS = {"cloud-config-url": ("cloud-config", "/cloud"),
               "ignition.config.url": ("ignition", "/ignition"),
               "flatcar.config.url": ("ignition", "/ignition"),
               "coreos.config.url": ("ignition", "/ignition")}


def expected_steps(cfg, req, files=True):
    """[(step, path)] a machine given `cfg` should fetch from this bootcfg next: the
    kernel and initrds served here (bare /images/ paths, or URLs on the host the
    request came to; not with files=False) and a cloud-config or Ignition config
    at /cloud, /ignition."""
    host = (req.headers.get("Host") or "") if req.headers else ""
    return _expected_steps(cfg, (host, req.forwarded_host), req.local[:2], files)


@functools.lru_cache(maxsize=4096)
def _expected_steps(cfg, hosts, local, files):
    mine = (set(hosts) | {"%s:%s" % local if local else ""}) - {""}
    out = []
    downloads = [("kernel", cfg.kernel)] + [("initrd " + u.rsplit("/", 1)[-1], u)
                                            for u in cfg.initrd] if files else []
    for step, url in downloads:
        parts = urlsplit(url) if "://" in url else None
        if parts is None and url.startswith(("/images/", "/assets/")):
            out.append((step, url.split("?", 1)[0]))
        elif parts is not None and parts.netloc in mine and \
                parts.path.startswith(("/images/", "/assets/")):
            out.append((step, parts.path))
    for arg in cfg.args:
        name, _, value = arg.partition("=")
        if name in CONFIG_URLS and "://" in value:
            step, path = CONFIG_URLS[name]
            if urlsplit(value).path == path:
                out.append((step, path))
    return tuple(out)


def grub_device(req):
    """Where GRUB finds bare /paths: over TFTP, the server GRUB booted from (its
    own variable); over HTTP, the host a trusted proxy says the machine asked
    (X-Forwarded-Host: so GRUB's kernel and initrd fetches go through the
    balancer too), else the address and port this request arrived at."""
    if req.method == "RRQ" or not req.local:
        return "(tftp,$net_default_server)"
    if req.forwarded_host:
        return "(http,%s)" % req.forwarded_host
    host, port = req.local[0], req.local[1]
    if host.startswith("::ffff:"):
        host = host[len("::ffff:"):]
    return "(http,%s:%d)" % ("[%s]" % host if ":" in host else host, port)


def machine_labels(req):
    """(labels, (uuid, mac)): every non-empty query parameter, uuid and mac (in
    any case) canonical through machine.labels; a malformed or placeholder key is
    dropped with a warning, so the machine still matches by its other key or the
    default."""
    labels, found = machine.labels(req.query)
    for name, reason in found.problems:
        log.warning("ignoring %s in query: %s", name, reason)
    return labels, (found.uuid, found.mac)
