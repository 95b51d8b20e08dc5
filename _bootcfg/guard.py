"""The guard: who a client is, and how much of the server one client may hold.

- `client_key(address)`: the unit a per-client cap counts, an IPv4 address or an
  IPv6 /64 (one host is given a whole /64 by SLAAC and may use any address in it).
- `Proxies`: -trusted-proxies. X-Forwarded-For is believed only from those peers;
  the right-most address in it that is not a trusted proxy is the client.
- `Connections`: every open HTTP connection of one server, by client key, with
  what it is doing (waiting for a request head, or being answered). It decides
  who makes room when a client opens one connection too many
  (-max-connections-per-client: that client's own oldest connection still waiting
  for a head) or the server is full (-max-connections: the connection idle the
  longest since its last answer), and cuts them: the socket is shut down under
  its thread, which then ends without an answer or an access line.
- `Throttled`: a log line per address and reason at most once a minute, so a
  flood costs no log flood.

The head deadline itself (-header-timeout) is kept by the server's socket reader,
which alone sees the bytes arrive.
"""

import ipaddress
import logging
import re
import socket
import threading
import time

from _bootcfg.machine import plain_address

log = logging.getLogger("bootcfg")


class Cut(ConnectionError):
    """Raised in a connection's thread once the guard has cut it."""


def client_key(address):
    """What a per-client limit counts: the IPv4 address, or the IPv6 /64."""
    address = plain_address(address)
    if ":" not in address:
        return address
    try:
        packed = ipaddress.IPv6Address(address.split("%", 1)[0]).packed
    except ValueError:
        return address
    return str(ipaddress.IPv6Address(packed[:8] + bytes(8))) + "/64"


class Proxies:
    """-trusted-proxies: the networks whose X-Forwarded-For is believed."""

    def __init__(self, nets):
        self.nets = list(nets)
        self._known = {}          # peer address -> trusted?, bounded below

    def trusts(self, address):
        known = self._known.get(address)
        if known is None:
            known = self._contains(address)
            if len(self._known) > 4096:
                self._known.clear()
            self._known[address] = known
        return known

    def _contains(self, address):
        try:
            ip = ipaddress.ip_address(plain_address(address).split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in net for net in self.nets)

    def client(self, peer, forwarded):
        """The client's address: `peer` itself unless it is a trusted proxy; then,
        walking X-Forwarded-For (`forwarded`, every such header joined by commas)
        from the right, the first address that is not a trusted proxy, or the
        left-most one if all are. Something that is not an address ends the walk:
        the hop that sent it is the client as far as anyone can tell."""
        client = plain_address(peer)
        if not forwarded or not self.trusts(peer):
            return client
        for hop in reversed(forwarded.split(",")):
            hop = _hop_address(hop.strip())
            if hop is None:
                return client
            client = hop
            if not self.trusts(hop):
                return hop
        return client


def _hop_address(text):
    """The address of one X-Forwarded-For entry ("a.b.c.d", "a.b.c.d:port",
    "v6", "[v6]:port"), canonical, or None."""
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return str(getattr(ip, "ipv4_mapped", None) or ip)


_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(r"^(%s(?:\.%s)*|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?$"
                   % (_HOST_LABEL, _HOST_LABEL))


def forwarded_host(text):
    """`text` (an X-Forwarded-Host value) if it is one host name or address with
    an optional port, else "": what GRUB is told to fetch from must be a host."""
    m = _HOST.match(text or "")
    if m is None or len(text) > 260 or (m.group(2) and not 0 < int(m.group(2)) < 65536):
        return ""
    host = m.group(1)
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return ""
    elif host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return ""
    return text


class Throttled:
    """Warnings about one address and reason, at most once per `every` seconds;
    the lines in between are counted into the next one."""

    def __init__(self, every=60.0):
        self.every = every
        self._last = {}       # (key, reason) -> [monotonic time logged, suppressed]
        self._lock = threading.Lock()

    def warn(self, key, reason, message, *args):
        now = time.monotonic()
        with self._lock:
            entry = self._last.get((key, reason))
            if entry is not None and now - entry[0] < self.every:
                entry[1] += 1
                return
            suppressed = entry[1] if entry is not None else 0
            if len(self._last) > 10000:
                self._last = {k: v for k, v in self._last.items() if now - v[0] < self.every}
            self._last[key, reason] = [now, 0]
        log.warning(message + (" (and %d more since the last such line)" % suppressed
                               if suppressed else ""), *args)


WAITING, SERVING = 0, 1


class Conn:
    """One open connection, as the guard sees it. `head_deadline` is set by the
    reader at the first byte of a request head; `served` counts answers sent."""

    __slots__ = ("sock", "key", "exempt", "state", "idle_since", "head_deadline",
                 "timeout_changed", "served", "cut")

    def __init__(self, sock, key, exempt):
        self.sock, self.key, self.exempt = sock, key, exempt
        self.idle_since = time.monotonic()
        self.state = WAITING
        self.head_deadline = None
        self.timeout_changed = False
        self.served = 0
        self.cut = ""


class Connections:
    """The open connections of one server process (see the module doc).
    `on_cut(reason)` counts each cut connection; `proxies` exempts trusted
    proxies from the per-client cap."""

    def __init__(self, per_client, max_connections, proxies=None, on_cut=None):
        self.per_client = per_client
        self.max_connections = max_connections
        self.proxies = proxies
        self.on_cut = on_cut or (lambda reason: None)
        self.lock = threading.Lock()
        self.open = 0
        self._by_sock = {}
        self._by_key = {}          # client key -> [Conn], oldest first
        self.throttled = Throttled()

    def admit(self, sock, peer):
        """The Conn for a new connection, after making room; or (None, reason) when
        it is refused: "per_client" (its client holds its cap, every connection
        busy answering: closed without an answer) or "busy" (the server is full
        and nobody is idle: 503)."""
        exempt = self.proxies is not None and self.proxies.trusts(peer)
        key = client_key(peer)
        conn = Conn(sock, key, exempt)
        with self.lock:
            mine = self._by_key.get(key)
            if self.per_client and not exempt and mine and len(mine) >= self.per_client:
                victim = next((c for c in mine if c.state == WAITING and not c.cut), None)
                if victim is None:
                    return None, "per_client"
                self._cut(victim, "per_client")
            if self.open >= self.max_connections:
                victim = self._longest_idle()
                if victim is None:
                    return None, "busy"
                self._cut(victim, "idle_at_max")
            self.open += 1
            self._by_sock[sock] = conn
            self._by_key.setdefault(key, []).append(conn)
        return conn, ""

    def _longest_idle(self):
        """The kept-alive connection (one answer sent at least, no byte of a new
        head yet) idle the longest; a connection that has sent nothing yet may be
        a request on its way, so it is never taken."""
        best = None
        for conn in self._by_sock.values():
            if conn.state == WAITING and conn.served and conn.head_deadline is None \
                    and not conn.cut and (best is None or conn.idle_since < best.idle_since):
                best = conn
        return best

    def _cut(self, conn, reason):
        """Shut `conn` down under its thread (the lock is held); it no longer
        counts against its client's cap."""
        conn.cut = reason
        mine = self._by_key.get(conn.key)
        if mine is not None and conn in mine:
            mine.remove(conn)
        try:
            # socket.socket's own shutdown, also for TLS: the thread reading it is
            # mid-recv, and SSLSocket.shutdown would drop its TLS state under it.
            socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)
        except OSError:
            pass
        self.on_cut(reason)
        if reason == "per_client":
            self.throttled.warn(conn.key, reason, "%s: cut a waiting connection to admit "
                                "a new one: over -max-connections-per-client %d",
                                conn.key, self.per_client)
        elif reason == "idle_at_max":
            self.throttled.warn(conn.key, reason, "%s: closed an idle kept-alive connection "
                                "to make room: -max-connections %d reached",
                                conn.key, self.max_connections)

    def conn(self, sock):
        return self._by_sock.get(sock)

    def serving(self, conn):
        """Its request head has arrived: from now on nobody cuts it. Raises Cut if
        it was cut first."""
        with self.lock:
            if conn.cut:
                raise Cut(conn.cut)
            conn.state = SERVING

    def waiting(self, conn):
        """Its answer went out; it may send another request."""
        conn.served += 1
        conn.head_deadline = None
        conn.idle_since = time.monotonic()
        conn.state = WAITING

    def closed(self, sock):
        with self.lock:
            conn = self._by_sock.pop(sock, None)
            if conn is None:
                return
            self.open -= 1
            mine = self._by_key.get(conn.key)
            if mine is not None:
                if conn in mine:
                    mine.remove(conn)
                if not mine:
                    del self._by_key[conn.key]
