"""Every setting of the server, once: name, type, default, BOOTCFG_* variable,
help, and the reason for its default. The flags, the environment reading,
`--help` and the settings table in docs/operating.md are all generated from
`SETTINGS` (like waitress's Adjustments); limits are settings too, and `LIMITS`
is the read-only table of their defaults that the server, TFTP, the worker
master and the store start from.

A setting's flag is `-name-with-dashes` (and `--name-with-dashes`); its variable
is `BOOTCFG_NAME`; a flag wins over the variable. Subcommands' own flags (`check
-format`, `explain -mac`) stay with their subcommand in bootcfg.py.
"""

import argparse
import ipaddress
import types
from typing import Callable, NamedTuple, Tuple
from urllib.parse import urlsplit


# ---------------------------------------------------------------- value types
# Each takes the text of a flag or variable and returns the value, or raises
# argparse.ArgumentTypeError with a one-line reason (argparse prefixes the flag).

def text(value):
    return value


def one_of(*names):
    """A word from `names`, any case."""
    def word(value):
        if value.lower() not in names:
            raise argparse.ArgumentTypeError("invalid choice: %r (choose from %s)"
                                             % (value, ", ".join(names)))
        return value.lower()
    word.__name__ = "one of " + ", ".join(names)
    return word


def whole_number(value):
    """A count where 0 turns the limit off."""
    value = str(value)
    if not (value.strip().isascii() and value.strip().isdigit()):
        raise argparse.ArgumentTypeError("must be a whole number (0: off), not %r" % value)
    return int(value)


def positive_int(value):
    value = str(value)
    if not (value.strip().isascii() and value.strip().isdigit()) or int(value) < 1:
        raise argparse.ArgumentTypeError("must be a whole number, 1 or more, not %r" % value)
    return int(value)


def _number(value):
    try:
        return float(value)
    except ValueError:
        return float("nan")


def seconds_or_off(value):
    number = _number(value)
    if not 0 <= number < 1e6:
        raise argparse.ArgumentTypeError("must be a number of seconds (0: off), not %r"
                                         % value)
    return number


def positive_seconds(value):
    number = _number(value)
    if not 0 < number < 1e6:
        raise argparse.ArgumentTypeError("must be a number of seconds above 0, not %r"
                                         % value)
    return number


def sources(value):
    """-bind-configs: lease file paths and/or `neighbors`, comma-separated."""
    out = [part.strip() for part in value.split(",") if part.strip()]
    if not out:
        raise argparse.ArgumentTypeError("names no lease file and not `neighbors`")
    return out


def urls(value):
    """A comma list of http(s) base URLs."""
    out = []
    for part in value.split(","):
        part = part.strip().rstrip("/")
        if not part:
            continue
        parsed = urlsplit(part)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise argparse.ArgumentTypeError("%r is not an http:// or https:// URL" % part)
        out.append(part)
    if not out:
        raise argparse.ArgumentTypeError("names no URL")
    return out


def networks(value):
    """A comma list of networks (CIDR or single addresses)."""
    out = []
    for part in value.split(","):
        if part.strip():
            try:
                out.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
    if not out:
        raise argparse.ArgumentTypeError("names no network")
    return out


class Setting(NamedTuple):
    name: str                 # python name; the flag and variable derive from it
    default: object           # the value when unset (None: off / none)
    type: Callable            # text -> value (see above)
    help: str                 # what it does, one sentence or two
    why: str = ""             # why the default is what it is
    scope: Tuple[str, ...] = ("serve",)   # commands that take it
    limit: bool = False       # part of LIMITS: the server/store tables of numbers
    shown: str = ""           # how the default reads, when not just the value
    metavar: str = ""

    @property
    def flag(self):
        return "-" + self.name.replace("_", "-")

    @property
    def variable(self):
        return "BOOTCFG_" + self.name.upper()

    def default_text(self):
        if self.shown:
            return self.shown
        if self.default is None:
            return "off"
        if isinstance(self.default, float) and self.default.is_integer():
            return str(int(self.default))
        return str(self.default)


S = Setting
SERVE, ALL = ("serve",), ("serve", "check", "explain")

SETTINGS = (
    # ------------------------------------------------------------ what and where
    S("address", "127.0.0.1:8080", text,
      "listen address, host:port or [ipv6]:port; [::]:8080 takes IPv6 and IPv4, :8080 "
      "all IPv4",
      "loopback until an operator decides which network may boot from it"),
    S("data_path", "./data", text, "the config directory (boot/, cloud/, ignition/, "
      "groups/, profiles/...)", "the layout of the seed and of this checkout", ALL),
    S("images_path", None, text,
      "directory served under /images/ and /assets/ (and over TFTP)",
      "./images when it exists: image serving is off rather than serving the wrong "
      "directory", ALL, shown="./images, or off if it does not exist"),
    S("cert_file", None, text, "TLS certificate chain (PEM); with -key-file, serve HTTPS "
      "(TLS 1.2 or newer)", "plain HTTP: most iPXE builds have no HTTPS"),
    S("key_file", None, text, "TLS private key (PEM)", "see -cert-file"),
    S("tls_address", None, text,
      "serve HTTPS here and plain HTTP on -address; without it, -address serves HTTPS "
      "only when a certificate is given", "one listener unless asked for two"),
    S("tftp_address", None, text,
      "also serve read-only TFTP here, e.g. :69, for GRUB and firmware that speak "
      "nothing else: grub/grub.cfg, grub?..., boot.ipxe, ipxe?..., then image files; "
      "under systemd a UDP socket passed in turns it on",
      "off: TFTP is for Secure Boot machines and firmware PXE only"),
    S("workers", 1, positive_int,
      "processes serving the same sockets, started and replaced by a master process; "
      "two per CPU core is a good start under load",
      "one process: simplest to run, and enough for a few racks booting at once"),
    # ------------------------------------------------------------ the guard
    S("max_connections", 1024, positive_int,
      "connections served at once per process, one thread each; past it a client gets "
      "503 with Retry-After",
      "a boot storm of a few racks is a few hundred connections; past this a client "
      "gets an immediate 503 rather than the server growing threads without bound",
      limit=True),
    S("idle_timeout", 30.0, positive_seconds,
      "seconds a connection may sit idle, or stall mid-request, before it is closed",
      "iPXE reuses a connection within milliseconds between script, kernel and initrd; "
      "30 s is generous for that and still frees threads of dead clients", limit=True),
    S("header_timeout", 10.0, seconds_or_off,
      "seconds from the first byte of a request head (or the start of a TLS handshake) "
      "until the whole head must have arrived, else the connection is closed, with 408 "
      "after a request line; 0: off",
      "a boot loader sends its head in one packet; 10 s covers a lossy link, and a "
      "client trickling a byte at a time cannot hold a thread for ever", limit=True,
      metavar="SECONDS"),
    S("max_connections_per_client", 64, whole_number,
      "connections one client address (an IPv6 /64) may hold per process; past it its "
      "own oldest connection still waiting for a request is closed; trusted proxies are "
      "exempt; 0: no cap",
      "a booting machine uses one to three; one host can never fill max_connections and "
      "push everyone else out", limit=True, metavar="N"),
    S("tftp_transfers_per_client", 8, whole_number,
      "TFTP transfers one client address may run at once; past it a TFTP error (try "
      "again); 0: no cap",
      "shim, GRUB, kernel and initrd are fetched one after another, so 8 leaves room "
      "for retries and keeps one host from taking all the slots", limit=True,
      metavar="N"),
    S("trusted_proxies", None, networks,
      "comma list of networks (CIDR) of load balancers whose X-Forwarded-For names the "
      "client (the right-most address that is not a trusted proxy) for logs, /status, "
      "metrics, -admin-allow and -bind-configs; from anyone else it is ignored",
      "none: a header any host can write must not choose who the client is",
      metavar="CIDRS"),
    S("bind_configs", None, sources,
      "answer /cloud, /ignition, /generic and /metadata only to the machine holding the "
      "client's address, per these DHCP lease files (dnsmasq, ISC dhcpd, Kea) and/or "
      "`neighbors` (the kernel's neighbor tables); others get 403. `check` warns of "
      "configs such a server never serves (the sources are not read)",
      "off: it needs a lease source on this host", ("serve", "check"),
      metavar="SOURCES"),
    S("admin_allow", None, networks,
      "comma list of client networks (CIDR) allowed to read /status, /status.json and "
      "/metrics; others get 403",
      "everyone, as before the flag existed; set it on any network a stranger can reach",
      shown="everyone", metavar="CIDRS"),
    # ------------------------------------------------------------ replicas and status
    S("peers", None, urls,
      "comma list of the other replicas' base URLs (http://10.0.0.12:8080): /status and "
      "/status.json merge their machines with this one's; they must allow this replica "
      "in their -admin-allow", "none: one replica", metavar="URLS"),
    S("stuck_after", 120.0, positive_seconds,
      "seconds without progress after which /status calls a booting machine stuck",
      "a BIOS boot over a slow link fetches for a minute; two is clearly stuck"),
    S("log_level", "info", one_of("debug", "info", "warning", "error"),
      "debug, info, warning or error", "info: one access line per request"),
    S("log_format", "text", one_of("text", "json"),
      "text, or json: one object per line with the request's fields",
      "text: what journalctl shows best"),
    # ------------------------------------------------------------ server limits
    S("listen_backlog", 1024, positive_int,
      "connections the kernel queues before they are accepted (Linux caps it at "
      "net.core.somaxconn)",
      "a rack powering on connects in the same millisecond; a full backlog drops the "
      "SYN and the client retries a second later (500 connections took 3 s at 128, "
      "0.05 s at 1024)", limit=True),
    S("stop_grace", 5.0, positive_seconds,
      "seconds in-flight requests get to finish after SIGTERM or SIGINT",
      "a boot script or config is milliseconds; a kernel download that needs longer is "
      "retried by the firmware", limit=True),
    S("worker_min_uptime", 10.0, positive_seconds,
      "-workers: a worker that dies sooner than this after it started counts as crashing",
      "a crash loop shows within seconds; a healthy worker lives for days", limit=True),
    S("restart_delay", 0.25, positive_seconds,
      "-workers: the first delay before a crashing worker is restarted; each crash in a "
      "row doubles it", "the first death is replaced at once: one crash is not a loop",
      limit=True),
    S("restart_delay_max", 8.0, positive_seconds,
      "-workers: the longest delay between restarts of a crashing worker",
      "a crash loop costs little CPU", limit=True),
    S("worker_crash_limit", 5, positive_int,
      "-workers: when every worker has crashed this many times in a row, the master "
      "exits 1", "restarting is then systemd's Restart=, whose own limits apply",
      limit=True),
    S("tftp_transfers", 256, positive_int,
      "TFTP transfers at once, a thread and a UDP port each; past it a TFTP error and "
      "the client retries",
      "a storm of Secure Boot machines fetches shim, GRUB, kernel and initrd each",
      limit=True),
    S("tftp_timeout", 1.0, positive_seconds,
      "seconds before an unacknowledged TFTP block is sent again (a client may ask for "
      "another with the timeout option)",
      "with tftp_retries, a vanished client costs at most about 6 s", limit=True),
    S("tftp_retries", 5, whole_number,
      "times an unacknowledged TFTP block is sent again before the transfer is given up",
      "see tftp_timeout", limit=True),
    S("tftp_max_blksize", 65464, positive_int,
      "largest TFTP block size granted",
      "GRUB asks for 1024 and OVMF for 1468; bigger blocks travel as IP fragments",
      limit=True),
    S("tftp_max_windowsize", 64, positive_int,
      "largest TFTP window (blocks in flight) granted", "RFC 7440's clients ask for "
      "a few to a few dozen", limit=True),
    S("peer_timeout", 2.0, positive_seconds,
      "seconds /status waits for the peers' records (-peers), asked in parallel",
      "a replica on the same network answers in milliseconds; a dead one must not hold "
      "the page for longer than an operator waits", limit=True),
    S("status_machines", 10000, positive_int,
      "machines /status keeps a record of; the least recently seen are dropped",
      "a record is a few KiB, so the default costs tens of MiB at most", limit=True),
    # ------------------------------------------------------------ the store's limits
    S("settle_seconds", 0.25, seconds_or_off,
      "a config file modified less than this long ago may still be being written: its "
      "last good version is served meanwhile",
      "shell redirects and `git checkout` write in place; short enough that edits show "
      "within a second", ALL, limit=True),
    S("settle_wait_seconds", 1.0, seconds_or_off,
      "with no last good version, how long a request waits for a fresh file to settle "
      "before it is read anyway", "a first boot after a copy is not refused", ALL,
      limit=True),
    S("racy_seconds", 1.0, seconds_or_off,
      "a directory whose mtime is this close to when it was scanned may change again "
      "within the same timestamp tick, so it is rescanned until it is older",
      "timestamps are coarse on NFS and some filesystems", ALL, limit=True),
    S("rescan_seconds", 0.2, positive_seconds,
      "how often such a racy directory is rescanned", "see racy_seconds", ALL,
      limit=True),
    S("dir_check_seconds", 0.1, seconds_or_off,
      "a uuid/, mac/ or groups/ directory is stat()ed at most this often to see whether "
      "it changed", "two system calls fewer per request under load; a new file is still "
      "seen within a tenth of a second", ALL, limit=True),
    S("file_check_seconds", 0.1, seconds_or_off,
      "a config file that parsed and settled is stat()ed at most this often",
      "an edit or a deletion is seen within a tenth of a second; broken or settling "
      "files are looked at on every request", ALL, limit=True),
    S("recheck_seconds", 0.002, seconds_or_off,
      "after reading a changed file, its size and times are looked at once more this "
      "much later", "truncation updates the size before the mtime (seen on ext4)", ALL,
      limit=True),
    S("group_sweep_seconds", 1.0, positive_seconds,
      "group files changed in place are found by stat()ing every group file at most "
      "this often (or group_sweep_us_per_file per file, when longer)",
      "100,000 groups: a sweep every 2 s, a few percent of one core", ALL, limit=True),
    S("group_sweep_us_per_file", 20, whole_number,
      "see group_sweep_seconds", "see group_sweep_seconds", ALL, limit=True),
    S("max_file_bytes", 4 << 20, positive_int,
      "largest config file read (Ignition configs: max_ignition_bytes)",
      "configs are small; refusing big ones protects memory from an image copied into "
      "the wrong directory", ALL, limit=True),
    S("max_ignition_bytes", 32 << 20, positive_int,
      "largest Ignition config read",
      "Ignition configs carry whole files as data URLs (binaries, certificates)", ALL,
      limit=True),
    S("cache_bytes", 64 << 20, positive_int,
      "parsed configs kept in memory; least recently used ones are dropped and read "
      "again when next asked for (a last good copy of a broken file never is)",
      "at 100,000 machines the whole fleet may not fit", ALL, limit=True),
)
del S

BY_NAME = {s.name: s for s in SETTINGS}
# The defaults of every limit, read-only: BootServer, TftpServer, the worker
# master and FileStore each take their own copy, changed by the flags.
LIMITS = types.MappingProxyType({s.name: s.default for s in SETTINGS if s.limit})
STORE_LIMIT_NAMES = tuple(s.name for s in SETTINGS if s.limit and "check" in s.scope)


def add_arguments(parser, command, environ):
    """Add every setting `command` takes to an argparse parser, its default from
    `environ` (BOOTCFG_*) when set. argparse runs the type on a text default, so a
    bad variable gets the same one-line error as a bad flag."""
    limits = parser.add_argument_group("limits")
    for s in SETTINGS:
        if command not in s.scope:
            continue
        raw = environ.get(s.variable)
        kwargs = dict(type=s.type, dest=s.name,
                      default=raw if raw is not None else s.default,
                      help="%s (%s; default %s)" % (s.help.replace("%", "%%"), s.variable,
                                                   s.default_text().replace("%", "%%")))
        kwargs["metavar"] = s.metavar or _metavar(s)
        (limits if s.limit else parser).add_argument(s.flag, "-" + s.flag, **kwargs)


def _metavar(s):
    if s.type in (positive_seconds, seconds_or_off):
        return "SECONDS"
    if s.name.endswith("_bytes"):
        return "BYTES"
    if s.type in (positive_int, whole_number):
        return "N"
    if s.name.endswith(("_path", "_file")):
        return "PATH"
    if s.name.endswith("address"):
        return "HOST:PORT"
    if s.type is text:
        return "TEXT"
    return "WORD"


def limits_of(args, names=None):
    """The limits a command's parsed `args` set: {name: value} for every limit
    (or those in `names`)."""
    return {name: getattr(args, name) for name in (names or LIMITS) if hasattr(args, name)}


def markdown():
    """The settings table of docs/operating.md, generated: one row per setting."""
    rows = ["| flag (`-x` and `--x` both work) | environment | default | what it does; why "
            "that default |", "|---|---|---|---|"]
    for s in SETTINGS:
        rows.append("| `%s` | `%s` | `%s` | %s; *%s* |" % (
            s.flag, s.variable, s.default_text(), _cell(s.help), _cell(s.why)))
    return "\n".join(rows) + "\n"


def _cell(value):
    return value.replace("|", "\\|")
