#!/usr/bin/env python3
"""bootcfg: network-boot config server for bare-metal fleets.

Machines that PXE/iPXE boot (or ask Pixiecore) get the kernel, initrd, kernel
arguments and cloud-config meant for them, chosen by UUID, then MAC, then a default,
from a directory of plain files. Standard library only; Python 3.8+.

This module is the command line: flags and BOOTCFG_* variables, and the three
commands (serve, check, explain). What they run is elsewhere: store.py finds
configs, render.py turns them into bytes, and the private package _bootcfg holds
the application (_bootcfg/app.py), the HTTP server, the worker master and the
tools (its __init__ lists them).
"""

import argparse
import os
import signal
import socket
import ssl
import sys
import threading
from typing import NamedTuple

from _bootcfg import (__version__, app, check, explain, guard, leases, logs, metrics, server,
                      settings, systemd, tftp, workers)
from _bootcfg.logs import lifecycle
from _bootcfg.shared import Shared
from _bootcfg.status import Tracker


class UsageError(Exception):
    pass


# ---------------------------------------------------------------- flags

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


def label_pair(text):
    """NAME=VALUE for `explain -label`."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError("expected NAME=VALUE, not %r" % text)
    if name in ("uuid", "mac"):
        raise argparse.ArgumentTypeError("give %s with -%s" % (name, name))
    return name, value


ABOUT = {
    "serve": "Network-boot config server: answers iPXE and Pixiecore with the boot "
             "config, cloud-config and Ignition config for each machine (by UUID, then "
             "MAC, then default) from a data directory. Also: `bootcfg check` validates a "
             "data directory, `bootcfg explain` shows what one machine would get.",
    "check": "Validate a data directory as the server reads it; one line per "
             "finding (path:line:col: error|warning: message). Exit 1 on errors.",
    "explain": "Show every candidate (seed file or group) for one machine's configs, "
               "best first and why each lost, the winning group's variables, and the "
               "exact iPXE script, Pixiecore JSON, cloud-config, Ignition config, generic "
               "file, metadata and GRUB script (as over TFTP) it would answer.",
}


def build_parser(command="serve"):
    """The flags of `bootcfg` (serve), `bootcfg check` or `bootcfg explain`."""
    p = argparse.ArgumentParser(
        prog="bootcfg" if command == "serve" else "bootcfg " + command,
        allow_abbrev=False, description=ABOUT[command],
        epilog="Each flag also takes a single dash (-address=0.0.0.0:8080); each setting "
               "can be set by its BOOTCFG_* environment variable, and the flag wins. "
               "docs/operating.md has them all with the reason for each default.")
    settings.add_arguments(p, command, os.environ)
    if command == "check":
        p.add_argument("-format", "--format", choices=("text", "json"), default="text",
                       help="text (default) or json")
    if command == "explain":
        p.add_argument("-uuid", "--uuid", default="", help="the machine's SMBIOS UUID")
        p.add_argument("-mac", "--mac", default="", help="the machine's MAC address")
        p.add_argument("-platform", "--platform", choices=("efi", "pcbios"),
                       help="the firmware, as iPXE's ${platform} reports it")
        p.add_argument("-label", "--label", action="append", default=[], type=label_pair,
                       metavar="NAME=VALUE",
                       help="one more label (query parameter) the machine sends, e.g. "
                            "os=installed or arch=arm64; repeatable")
        p.add_argument("-show", "--show",
                       choices=("ipxe", "pixiecore", "cloud", "ignition", "generic",
                                "metadata", "grub"),
                       help="print only that answer's body, byte for byte")
    p.add_argument("-version", "--version", action="version",
                   version="bootcfg %s" % __version__)
    return p


# ---------------------------------------------------------------- what to serve

def resolve_data(data_path):
    data = os.path.abspath(data_path)
    if not os.path.isdir(data):
        raise UsageError("data directory %s does not exist (set -data-path or "
                         "BOOTCFG_DATA_PATH)" % data)
    return data


def resolve_images(images_path):
    """The images root, None when serving is off; UsageError when a given path
    does not exist."""
    if images_path is None:
        if os.path.isdir("images"):
            return os.path.realpath("images")
        return None
    if os.path.isdir(images_path):
        return os.path.realpath(images_path)
    raise UsageError("images directory %s does not exist" % images_path)


def make_app(data_root, images_root, shared=None, stuck_after=120.0, admin_allow=None,
             bindings=None, peers=(), replica="", limits=None):
    """The App every command builds the same way: the server, its workers,
    `check`, `explain` and the tests. `shared` is the memory all workers share
    (None: one process, which keeps its boot events and counters to itself)."""
    limits = dict(settings.LIMITS, **(limits or {}))
    tracker = Tracker(shared, stuck_after, limits["status_machines"])
    store_limits = {name: limits[name] for name in settings.STORE_LIMIT_NAMES}
    return app.App(app.make_store(data_root, store_limits), images_root,
                   metrics.Metrics(__version__, shared), tracker, admin_allow, bindings,
                   peers, replica, limits["peer_timeout"])


def load_bindings(bind_configs, follow=True):
    """leases.Bindings for -bind-configs (None when off); UsageError when a lease
    file cannot be read."""
    if not bind_configs:
        return None
    try:
        return leases.Bindings(bind_configs, follow=follow)
    except leases.BindError as e:
        raise UsageError("-bind-configs: %s" % e) from None


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


class Setup(NamedTuple):
    """Everything `serve` decided before serving: checked once, in the master."""
    data_root: str
    images_root: str      # None: image serving is off
    listeners: list       # [(listening socket, ssl.SSLContext or None)]
    limits: dict          # settings.LIMITS with the flags' values
    tftp_sockets: list    # bound UDP sockets for TFTP
    args: argparse.Namespace

    def app(self, shared=None):
        # In the process that serves: the lease files are followed by a thread.
        port = self.listeners[0][0].getsockname()[1] if self.listeners else 0
        return make_app(self.data_root, self.images_root, shared, self.args.stuck_after,
                        self.args.admin_allow, load_bindings(self.args.bind_configs),
                        self.args.peers or (), "%s:%d" % (socket.gethostname(), port),
                        self.limits)

    def servers(self, application):
        proxies = guard.Proxies(self.args.trusted_proxies) \
            if self.args.trusted_proxies else None
        return [server.BootServer(sock, application, self.limits, tls, proxies)
                for sock, tls in self.listeners] + \
            [tftp.TftpServer(sock, application, self.limits) for sock in self.tftp_sockets]


def configure(args):
    """Check the flags and bind (or take the sockets systemd passed); raises
    UsageError with a one-line reason."""
    data_root = resolve_data(args.data_path)
    images_root = resolve_images(args.images_path)
    tls = tls_context(args.cert_file, args.key_file)
    limits = dict(settings.LIMITS, **settings.limits_of(args))
    bindings = load_bindings(args.bind_configs, follow=False)     # fails here, not later
    if bindings is not None:
        lifecycle.info("configs bound to their machines by %s", bindings.describe())
    plain_tls = tls if tls is not None and not args.tls_address else None
    inherited = systemd.listen_sockets()
    datagram = [s for s in inherited if s.type == socket.SOCK_DGRAM]
    stream = [s for s in inherited if s.type != socket.SOCK_DGRAM]
    if inherited:
        lifecycle.info("using %d socket(s) from systemd (%d TCP, %d UDP for TFTP); %s",
                       len(inherited), len(stream), len(datagram),
                       "-address is not used" if stream and not datagram else
                       "-tftp-address is not used" if datagram and not stream else
                       "-address and -tftp-address are not used")
    if stream:
        listeners = [(s, plain_tls) for s in stream]
    else:
        listeners = [(bind(args.address, limits), plain_tls)]
    if tls is not None and args.tls_address:
        listeners.append((bind(args.tls_address, limits), tls))
    if datagram:
        tftp_sockets = datagram
    elif args.tftp_address:
        tftp_sockets = [bind_udp(args.tftp_address)]
    else:
        tftp_sockets = []
    return Setup(data_root, images_root, listeners, limits, tftp_sockets, args)


def bind(text, limits):
    family, address = resolve_address(*parse_address(text))
    try:
        return server.listen(address, family, limits["listen_backlog"])
    except OSError as e:
        raise UsageError("cannot listen on %s: %s" % (text, e.strerror or e)) from None


def bind_udp(text):
    family, address = resolve_address(*parse_address(text))
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise UsageError("cannot listen for TFTP on %s: %s" % (text, e.strerror or e)) \
            from None
    return sock


# ---------------------------------------------------------------- commands

def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        try:
            return COMMANDS[argv[0]](argv[1:])
        except UsageError as e:
            print("bootcfg %s: %s" % (argv[0], e), file=sys.stderr)
            return 2
    return serve(argv)


def serve(argv):
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    try:
        setup = configure(args)
    except UsageError as e:
        print("bootcfg: %s" % e, file=sys.stderr)
        return 2
    if setup.images_root is None:
        lifecycle.info("image serving is off: ./images does not exist (set -images-path)")
    for sock, tls in setup.listeners:
        host, port = sock.getsockname()[:2]
        lifecycle.info("bootcfg %s listening on %s://%s:%d/ data=%s images=%s",
                       __version__, "https" if tls else "http",
                       "[%s]" % host if ":" in host else host, port,
                       setup.data_root, setup.images_root or "off")
    for sock in setup.tftp_sockets:
        host, port = sock.getsockname()[:2]
        lifecycle.info("bootcfg %s serving read-only TFTP on %s:%d", __version__,
                       "[%s]" % host if ":" in host else host, port)
    ready = "READY=1\nSTATUS=serving %s" % setup.data_root
    if args.workers == 1:
        servers = setup.servers(setup.app())
        run(servers, announce=True, ready=lambda: systemd.notify(ready))
        lifecycle.info("stopped")
        return 0
    for sock in [s for s, _ in setup.listeners] + setup.tftp_sockets:
        # Every worker polls the sockets; the losers of a race to accept() (or to
        # a datagram) get EAGAIN, which is ignored, instead of blocking.
        sock.setblocking(False)
    shared = Shared(slots=args.workers)

    def run_worker():
        run(setup.servers(setup.app(shared)), announce=False)
        return 0

    status = workers.supervise(args.workers, run_worker, setup.limits, shared,
                               on_ready=lambda: systemd.notify(ready))
    if status == 0:
        systemd.notify("STOPPING=1")
        lifecycle.info("stopped")
    return status


def run(servers, announce, ready=None):
    """Serve until SIGTERM/SIGINT, then let in-flight requests finish. `ready` is
    called once the signal handlers are in place (so a SIGTERM right after
    READY=1 still stops cleanly)."""
    def on_signal(signum, frame):
        if announce:
            lifecycle.info("%s: stopping", signal.Signals(signum).name)
            systemd.notify("STOPPING=1")
        for srv in servers:
            srv.stopping = True
            srv.app.stopping = True         # /healthz: 503 while the rest finishes
            threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if ready is not None:
        ready()
    for srv in servers[1:]:
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
    servers[0].serve_forever(poll_interval=0.05)
    for srv in servers:
        srv.stop()
    servers[0].app.close()


def tool_app(command, argv):
    """(args, App) for `bootcfg check|explain`. Their output is the answer, so only
    errors are logged."""
    args = build_parser(command).parse_args(argv)
    logs.setup("error")
    return args, make_app(resolve_data(args.data_path), resolve_images(args.images_path),
                          limits=settings.limits_of(args))


def run_check(argv):
    args, application = tool_app("check", argv)
    findings = check.check(application, bound=bool(args.bind_configs))
    if args.format == "json":
        sys.stdout.write(check.to_json(findings))
    else:
        for f in findings:
            print(f.text())
    errors = sum(1 for f in findings if f.severity == "error")
    print("bootcfg check: %d error(s), %d warning(s)%s" % (
        errors, len(findings) - errors,
        "" if application.images_root else "; image paths not checked (no -images-path)"),
        file=sys.stderr)
    return 1 if errors else 0


def run_explain(argv):
    args, application = tool_app("explain", argv)
    if args.show:
        found = explain.answers(application, args.uuid, args.mac, args.label)
        if args.show not in found:
            print("bootcfg explain: --show pixiecore needs --mac", file=sys.stderr)
            return 2
        resp = found[args.show][1]
        sys.stdout.buffer.write(resp.body)
        return 0 if resp.status == 200 else 1
    sys.stdout.write(explain.report(application, args.uuid, args.mac, args.platform,
                                    args.label))
    return 0


COMMANDS = {"check": run_check, "explain": run_explain}


if __name__ == "__main__":
    sys.exit(main())
