#!/usr/bin/env python3
"""bootcfg: network-boot config server for bare-metal fleets.

Machines that PXE/iPXE boot (or ask Pixiecore) get the kernel, initrd, kernel
arguments and cloud-config meant for them, chosen by UUID, then MAC, then a default,
from a directory of plain files. Standard library only; Python 3.8+.

This module is the CLI and the route table. The HTTP server itself is server.py;
finding configs is store.py; turning them into bytes is render.py; serving image
files is images.py; systemd socket activation and readiness are
systemd_integration.py; `bootcfg check` and `explain` are check.py and explain.py.
"""

import argparse
import datetime
import functools
import json
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import types
from urllib.parse import unquote

import check
import explain
import images
import metrics
import render
import server
import store
import systemd_integration
# Re-exported: tests and tools reach the server's pieces through this module.
from server import (LIMITS, Handler, HTTPError, Request, Response,  # noqa: F401
                    _printable, split_target, text_response)

__version__ = "0.1.0"

log = logging.getLogger("bootcfg")
# Start and stop lines are shown at every -log-level: a logger's own level is the
# only one checked for its records, and this one is pinned to INFO.
lifecycle = logging.getLogger("bootcfg.lifecycle")
lifecycle.setLevel(logging.INFO)

IDENTITY = ("bootcfg %s\n" % __version__).encode()

# Rendering is pure, so a config renders once until it changes (a changed file
# parses to a new BootConfig, which is a new key).
render_ipxe = functools.lru_cache(maxsize=4096)(render.render_ipxe)
render_pixiecore = functools.lru_cache(maxsize=4096)(render.render_pixiecore)


# ---------------------------------------------------------------- route handlers

def handle_identity(req):
    return Response(body=IDENTITY)


def handle_chainload(req):
    return Response(body=render.render_chainload())


def handle_ipxe(req):
    uuid, mac = machine_from_query(req.query)
    match = _lookup(req, "boot", uuid, mac)
    return Response(body=render_ipxe(match.value), matched=match.path,
                    machine=_machine(uuid, mac))


def handle_cloud(req):
    uuid, mac = machine_from_query(req.query)
    match = _lookup(req, "cloud", uuid, mac)
    return Response(body=match.value, matched=match.path, machine=_machine(uuid, mac))


def handle_pixiecore(req):
    raw = unquote(req.path[len("/pixiecore/v1/boot/"):])
    try:
        mac = store.parse_mac(raw)
    except ValueError as e:
        raise HTTPError(400, str(e)) from None
    if mac is None:
        raise HTTPError(400, "placeholder MAC %s names no machine" % raw)
    match = _lookup(req, "boot", None, mac)
    return Response(body=render_pixiecore(match.value),
                    content_type="application/json", matched=match.path,
                    machine=_machine(None, mac))


def handle_metrics(req):
    srv = req.server
    body = srv.metrics.render(srv.open_connections, srv.store.stats())
    return Response(body=body, content_type=metrics.CONTENT_TYPE)


def handle_image(req):
    root = req.server.images_root
    if root is None:
        raise HTTPError(404, "image serving is off: no images directory")
    try:
        status, headers, file = images.serve(root, req.path[len("/images/"):], req.headers)
    except images.Refused as e:
        if e.status == 403:
            log.warning("refused image %s: %s", _printable(req.path), e.message)
        raise HTTPError(e.status, e.message, e.headers) from None
    resp = Response(status, file=file, matched="images")
    resp.headers = headers
    return resp


# Exact paths, then prefixes. A new endpoint is one line here.
ROUTES = {
    "/": handle_identity,
    "/boot.ipxe": handle_chainload,
    "/boot.ipxe.0": handle_chainload,     # dnsmasq's proxy-DHCP appends ".0"
    "/ipxe": handle_ipxe,
    "/cloud": handle_cloud,
    "/metrics": handle_metrics,
}
PREFIX_ROUTES = (
    ("/pixiecore/v1/boot/", handle_pixiecore),
    ("/images/", handle_image),
)


def find_route(path):
    """(route name, handler); the name is the ROUTES key or prefix, for metrics."""
    handler = ROUTES.get(path)
    if handler is not None:
        return path, handler
    for prefix, candidate in PREFIX_ROUTES:
        if path.startswith(prefix):
            return prefix, candidate
    return "other", None


def dispatch(req):
    """Run the route for a request: the one place failures become 4xx/5xx. The
    answer carries the route's name for /metrics."""
    route, handler = find_route(req.path)
    resp = answer(req, handler)
    resp.route = route
    return resp


def answer(req, handler):
    if handler is None:
        return text_response(404, "no such endpoint: %s" % req.path[:200])
    try:
        return handler(req)
    except HTTPError as e:
        resp = text_response(e.status, e.message)
        resp.headers += e.headers
        return resp
    except NoMatch as e:
        return text_response(404, str(e), matched="no match", machine=e.machine)
    except store.LoadError as e:
        # The store has logged the reason with the full path.
        return text_response(500, "%s cannot be used; the server log says why" % e.path,
                             matched=e.path + " (invalid)",
                             machine=getattr(e, "machine", ""))
    except Exception:
        log.exception("internal error on %s %s", req.method, req.path[:200])
        return text_response(500, "internal error; the server log has the traceback")


class NoMatch(Exception):
    def __init__(self, kind, machine):
        super().__init__("no %s config for uuid=%s mac=%s and no %s/default"
                         % (kind, machine[0] or "-", machine[1] or "-", kind))
        self.machine = machine


def machine_from_query(query):
    """Validated (uuid, mac) from a query; malformed values are ignored with a
    warning, so the machine still matches by its other key or the default."""
    keys = []
    for name in ("uuid", "mac"):
        raw = query.get(name, "")
        value = None
        if raw:
            try:
                value = store.KEY_PARSERS[name](raw)
            except ValueError as e:
                log.warning("ignoring %s in query: %s", name, e)
        keys.append(value)
    return tuple(keys)


def _lookup(req, kind, uuid, mac):
    found = req.server.store.lookup(kind, uuid, mac)
    how = found.match.how if found.match else "invalid" if found.error else "none"
    req.server.metrics.lookup(kind, how)
    if found.error is not None:
        found.error.machine = _machine(uuid, mac)
        raise found.error
    if found.match is None:
        raise NoMatch(kind, _machine(uuid, mac))
    return found.match


def _machine(uuid, mac):
    return (uuid or "", mac or "")


class BootServer(server.BootServer):
    """The HTTP server wired to this module's route table."""

    version = __version__

    def dispatch(self, req):
        return dispatch(req)


# ---------------------------------------------------------------- CLI

class UsageError(Exception):
    pass


def parse_address(text):
    """(host, port) from "host:port", "[v6]:port" or ":port" (all addresses)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError("address %r: expected host:port, [ipv6]:port or :port" % text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise UsageError("address %r: put an IPv6 address in brackets, e.g. [::]:8080"
                         % text)
    return host or "0.0.0.0", int(port)


def resolve_address(host, port):
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError("address %s: %s" % (host, e.strerror)) from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr[:2]


def one_of(*names):
    """An argparse type for a word from `names`, any case. A type, not `choices`,
    because argparse runs types on defaults too: a bad BOOTCFG_* value gets the
    same one-line error as a bad flag."""
    def word(text):
        if text.lower() not in names:
            raise argparse.ArgumentTypeError("invalid choice: %r (choose from %s)"
                                             % (text, ", ".join(names)))
        return text.lower()
    return word


def positive_int(text):
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("must be a whole number, 1 or more, not %r" % text)
    return int(text)


def build_parser(command="serve"):
    """The flags of `bootcfg` (serve), `bootcfg check` or `bootcfg explain`."""
    env = os.environ.get
    about = {
        "serve": "Network-boot config server: answers iPXE and Pixiecore with the boot "
                 "config and cloud-config for each machine (by UUID, then MAC, then "
                 "default) from a data directory. Also: `bootcfg check` validates a "
                 "data directory, `bootcfg explain` shows what one machine would get.",
        "check": "Validate a data directory as the server reads it; one line per "
                 "finding (path:line:col: error|warning: message). Exit 1 on errors.",
        "explain": "Show where bootcfg looks for one machine's configs, what it finds, "
                   "and the exact iPXE script, Pixiecore JSON and cloud-config it "
                   "would answer.",
    }[command]
    p = argparse.ArgumentParser(
        prog="bootcfg" if command == "serve" else "bootcfg " + command,
        allow_abbrev=False, description=about,
        epilog="Each flag also takes a single dash (-address=0.0.0.0:8080) and can be "
               "set by its BOOTCFG_* environment variable; the flag wins.")
    if command == "serve":
        p.add_argument("-address", "--address",
                       default=env("BOOTCFG_ADDRESS", "127.0.0.1:8080"),
                       help="listen address, host:port or [ipv6]:port "
                            "(BOOTCFG_ADDRESS; default %(default)s)")
    p.add_argument("-data-path", "--data-path", default=env("BOOTCFG_DATA_PATH", "./data"),
                   help="config directory (BOOTCFG_DATA_PATH; default %(default)s)")
    p.add_argument("-images-path", "--images-path", default=env("BOOTCFG_IMAGES_PATH"),
                   help="directory served under /images/ (BOOTCFG_IMAGES_PATH; default "
                        "./images, and image serving is off if it does not exist)")
    if command == "serve":
        p.add_argument("-cert-file", "--cert-file", default=env("BOOTCFG_CERT_FILE"),
                       help="TLS certificate chain (PEM) to serve HTTPS "
                            "(BOOTCFG_CERT_FILE)")
        p.add_argument("-key-file", "--key-file", default=env("BOOTCFG_KEY_FILE"),
                       help="TLS private key (PEM) (BOOTCFG_KEY_FILE)")
        p.add_argument("-tls-address", "--tls-address", default=env("BOOTCFG_TLS_ADDRESS"),
                       help="serve HTTPS here and plain HTTP on -address; without it, "
                            "-address serves HTTPS only (BOOTCFG_TLS_ADDRESS)")
        p.add_argument("-workers", "--workers", type=positive_int,
                       default=env("BOOTCFG_WORKERS", "1"),
                       help="processes serving the same sockets; two per CPU core is a "
                            "good start under load (BOOTCFG_WORKERS; default 1)")
        p.add_argument("-log-level", "--log-level",
                       type=one_of("debug", "info", "warning", "error"),
                       default=env("BOOTCFG_LOG_LEVEL", "info"),
                       help="debug, info, warning or error (BOOTCFG_LOG_LEVEL; default info)")
        p.add_argument("-log-format", "--log-format", type=one_of("text", "json"),
                       default=env("BOOTCFG_LOG_FORMAT", "text"),
                       help="text, or json: one object per line with the request's "
                            "fields (BOOTCFG_LOG_FORMAT; default text)")
    if command == "check":
        p.add_argument("-format", "--format", choices=("text", "json"), default="text",
                       help="text (default) or json")
    if command == "explain":
        p.add_argument("-uuid", "--uuid", default="", help="the machine's SMBIOS UUID")
        p.add_argument("-mac", "--mac", default="", help="the machine's MAC address")
        p.add_argument("-platform", "--platform", choices=("efi", "pcbios"),
                       help="the firmware, as iPXE's ${platform} reports it")
        p.add_argument("-show", "--show", choices=("ipxe", "pixiecore", "cloud"),
                       help="print only that answer's body, byte for byte")
    p.add_argument("-version", "--version", action="version",
                   version="bootcfg %s" % __version__)
    return p


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's
    structured `fields` (access lines: client, method, path, status, bytes, ms,
    uuid, mac, file; config warnings: file, reason)."""

    def format(self, record):
        when = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        obj = {"time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
               "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        obj.update(getattr(record, "fields", {}))
        if record.exc_info:
            obj["traceback"] = self.formatException(record.exc_info)
        return json.dumps(obj, separators=(",", ":"), default=str)


def setup_logging(level, fmt):
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter = JsonFormatter()
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def resolve_images(images_path):
    """The images root, None when serving is off; UsageError when a given path
    does not exist."""
    if images_path is None:
        if os.path.isdir("images"):
            return os.path.realpath("images")
        log.info("image serving is off: ./images does not exist (set -images-path)")
        return None
    if os.path.isdir(images_path):
        return os.path.realpath(images_path)
    raise UsageError("images directory %s does not exist" % images_path)


def resolve_data(data_path):
    data = os.path.abspath(data_path)
    if not os.path.isdir(data):
        raise UsageError("data directory %s does not exist (set -data-path or "
                         "BOOTCFG_DATA_PATH)" % data)
    return data


def make_store(data_path):
    return store.FileStore(data_path, {"boot": render.parse_boot_config, "cloud": None})


def open_servers(args):
    """Check the configuration and bind (or take the sockets systemd passed);
    raises UsageError with a one-line reason."""
    data = resolve_data(args.data_path)
    images_root = resolve_images(args.images_path)
    tls = tls_context(args.cert_file, args.key_file)
    plain_tls = tls if tls is not None and not args.tls_address else None
    data_store = make_store(data)
    counters = metrics.Metrics(__version__)
    inherited = systemd_integration.listen_sockets()
    if inherited:
        log.info("using %d socket(s) from systemd; -address is not used", len(inherited))
        servers = [BootServer(None, data_store, images_root, sock=s, counters=counters,
                              tls=plain_tls) for s in inherited]
    else:
        servers = [bind(args.address, data_store, images_root, counters, plain_tls)]
    if tls is not None and args.tls_address:
        servers.append(bind(args.tls_address, data_store, images_root, counters, tls))
    return servers


def bind(text, data_store, images_root, counters, tls):
    family, address = resolve_address(*parse_address(text))
    try:
        return BootServer(address, data_store, images_root, family, counters=counters,
                          tls=tls)
    except OSError as e:
        raise UsageError("cannot listen on %s: %s" % (text, e.strerror or e)) from None


def tls_context(cert_file, key_file):
    """An HTTPS server context (TLS 1.2 or newer), or None without a certificate."""
    if not cert_file and not key_file:
        return None
    if not cert_file or not key_file:
        raise UsageError("HTTPS needs both -cert-file and -key-file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as e:
        raise UsageError("cannot load certificate %s / key %s: %s"
                         % (cert_file, key_file, getattr(e, "strerror", None) or e)) from None
    return ctx


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        try:
            return COMMANDS[argv[0]](argv[1:])
        except UsageError as e:
            print("bootcfg %s: %s" % (argv[0], e), file=sys.stderr)
            return 2
    return serve(argv)


def tool_setup(command, argv):
    """(args, data root, images root or None) for `bootcfg check|explain`; their
    output is the answer, so the server's log lines are silenced."""
    args = build_parser(command).parse_args(argv)
    logging.getLogger("bootcfg").disabled = True
    logging.getLogger("bootcfg.store").disabled = True
    return args, resolve_data(args.data_path), resolve_images(args.images_path)


def run_check(argv):
    args, data, images_root = tool_setup("check", argv)
    findings = check.check(data, images_root)
    if args.format == "json":
        sys.stdout.write(check.to_json(findings))
    else:
        for f in findings:
            print(f.text())
    errors = sum(1 for f in findings if f.severity == "error")
    print("bootcfg check: %d error(s), %d warning(s)%s" % (
        errors, len(findings) - errors,
        "" if images_root else "; image paths not checked (no -images-path)"),
        file=sys.stderr)
    return 1 if errors else 0


def run_explain(argv):
    args, data, images_root = tool_setup("explain", argv)
    fs = make_store(data)
    host = types.SimpleNamespace(store=fs, images_root=images_root,
                                 metrics=metrics.Metrics(__version__))

    def make_request(path, query):
        return Request("GET", path, query, {}, host)

    if args.show:
        found = explain.answers(dispatch, make_request, args.uuid, args.mac)
        if args.show not in found:
            print("bootcfg explain: --show pixiecore needs --mac", file=sys.stderr)
            return 2
        resp = found[args.show][1]
        sys.stdout.buffer.write(resp.body)
        return 0 if resp.status == 200 else 1
    sys.stdout.write(explain.report(fs, dispatch, make_request, args.uuid, args.mac,
                                    args.platform))
    return 0


def serve(argv):
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        servers = open_servers(args)
    except UsageError as e:
        print("bootcfg: %s" % e, file=sys.stderr)
        return 2
    for srv in servers:
        host, port = srv.server_address[:2]
        lifecycle.info("bootcfg %s listening on %s://%s:%d/ data=%s images=%s",
                       __version__, "https" if srv.tls else "http",
                       "[%s]" % host if ":" in host else host, port,
                       srv.store.root, srv.images_root or "off")
    children = start_workers(servers, args.workers - 1)
    if children is None:                      # this process is a worker
        run(servers, [], worker=True)
        os._exit(0)
    if children:
        lifecycle.info("%d worker processes share the listening sockets", args.workers)
    systemd_integration.notify("READY=1\nSTATUS=serving %s" % servers[0].store.root)
    run(servers, children)
    lifecycle.info("stopped")
    return 0


def start_workers(servers, count):
    """Fork `count` more processes serving the same listening sockets (Python
    threads share one GIL; processes do not). Returns the children's pids in the
    parent and None in a child."""
    if count:
        for srv in servers:
            # Every process polls the sockets; the losers of a race to accept()
            # get EAGAIN, which socketserver ignores, instead of blocking.
            srv.socket.setblocking(False)
    children = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            os.environ.pop("NOTIFY_SOCKET", None)
            return None
        children.append(pid)
    return children


def run(servers, children, worker=False):
    """Serve until SIGTERM/SIGINT, pass the signal on to worker processes, let
    in-flight requests finish, and wait for the workers."""
    def on_signal(signum, frame):
        if not worker:
            lifecycle.info("%s: stopping", signal.Signals(signum).name)
            systemd_integration.notify("STOPPING=1")
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for srv in servers:
            srv.stopping = True
            threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for srv in servers[1:]:
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2},
                         daemon=True).start()
    servers[0].serve_forever(poll_interval=0.2)
    for srv in servers:
        srv.stop()
    for pid in children:
        _, status = os.waitpid(pid, 0)
        if status:
            log.warning("worker %d exited with status %d", pid, status)


COMMANDS = {"check": run_check, "explain": run_explain}


if __name__ == "__main__":
    sys.exit(main())
