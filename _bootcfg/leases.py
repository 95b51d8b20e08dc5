"""-bind-configs: which machine (MAC) holds which address, so that a machine's
cloud-config or Ignition goes to that machine only.

Sources are DHCP lease files, their format recognised by content (dnsmasq's
leases file, ISC dhcpd's dhcpd.leases, Kea's memfile CSV, v4 or v6), and the
word `neighbors`: the kernel's IPv4 neighbor table (/proc/net/arp) and its IPv6
one (an RTM_GETNEIGH dump over rtnetlink). `Bindings.mac_of(address)` is a
dictionary lookup: lease files are parsed when they change (a thread looks every
`poll` seconds: dnsmasq rewrites its file, ISC and Kea append to theirs), the
neighbor tables when an address is missing from them (at most twice a second).
A lease file that cannot be read is an error at start (BindError) and a warning
while running, when its last good table stays.

Each parser returns {address: (mac, expires)}, `expires` in Unix time or None
for a lease that never ends; a later entry for an address replaces an earlier
one, as the servers' own readers do.
"""

import calendar
import logging
import os
import re
import socket
import struct
import threading
import time

from _bootcfg import machine
from _bootcfg.repeat import Repeat

log = logging.getLogger("bootcfg")


class BindError(Exception):
    pass


def _mac(text):
    """The canonical MAC of a lease or neighbor entry, or None (machine.mac_key:
    placeholders and anything that is not an Ethernet MAC name no machine)."""
    try:
        return machine.mac_key(text)
    except ValueError:
        return None


_address = machine.client_address


def mac_from_duid(duid):
    """The MAC inside a DHCPv6 DUID-LLT (type 1) or DUID-LL (type 3) of an
    Ethernet interface (hardware type 1), or None."""
    try:
        octets = bytes(int(x, 16) for x in duid.split(":"))
    except ValueError:
        return None
    if octets[:4] == b"\x00\x01\x00\x01" and len(octets) == 14:
        return _mac(octets[8:].hex())
    if octets[:4] == b"\x00\x03\x00\x01" and len(octets) == 10:
        return _mac(octets[4:].hex())
    return None


# ------------------------------------------------------------------ formats

def parse_dnsmasq(text):
    """dnsmasq's leases file: `expiry mac address hostname client-id` per IPv4
    lease (expiry 0: never); after a `duid` line, IPv6 leases name an IAID
    instead of a MAC, which is then taken from the client's DUID."""
    out = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[0] == "duid":
            continue
        if not fields[0].isdigit():
            raise ValueError("not a dnsmasq lease line: %r" % line[:80])
        address = _address(fields[2])
        if address is None:
            continue
        if ":" in address:
            mac = mac_from_duid(fields[4]) if len(fields) > 4 else None
        else:
            mac = _mac(fields[1])
        if mac is not None:
            expiry = int(fields[0])
            out[address] = (mac, float(expiry) if expiry else None)
    return out


_ISC_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|#[^\n]*|[{};]|[^\s{};"#]+')


def parse_isc(text):
    """ISC dhcpd's dhcpd.leases: `lease ADDRESS { ... }` blocks, appended as leases
    change. A lease is current while its `binding state` is active and its
    `ends` (UTC, `epoch N`, or `never`) is ahead."""
    out = {}
    tokens = [t for t in _ISC_TOKEN.findall(text) if not t.startswith("#")]
    i, n = 0, len(tokens)
    while i < n:
        if tokens[i] == "lease" and i + 2 < n and tokens[i + 2] == "{":
            address = _address(tokens[i + 1])
            i, statements = _isc_block(tokens, i + 3)
            if address is None or ":" in address:
                continue
            lease = _isc_lease(statements)
            if lease is None:
                out.pop(address, None)
            else:
                out[address] = lease
        elif tokens[i] == "{":
            i, _ = _isc_block(tokens, i + 1)
        else:
            i += 1
    return out


def _isc_block(tokens, i):
    """(index after the block's `}`, [statement token lists at its top level])."""
    statements, current, depth = [], [], 0
    while i < len(tokens):
        t = tokens[i]
        i += 1
        if t == "{":
            depth += 1
        elif t == "}":
            if depth == 0:
                break
            depth -= 1
        elif depth == 0:
            if t == ";":
                statements.append(current)
                current = []
            else:
                current.append(t)
    return i, statements


def _isc_lease(statements):
    """(mac, expires) of an active lease block, or None."""
    mac, ends, state = None, None, None
    for words in statements:
        if words[:2] == ["hardware", "ethernet"] and len(words) == 3:
            mac = _mac(words[2])
        elif words[:2] == ["binding", "state"] and len(words) == 3:
            state = words[2]
        elif words[:1] == ["ends"] and len(words) >= 2:
            ends = _isc_time(words[1:])
    if mac is None or state not in (None, "active") or ends is False:
        return None
    return mac, ends


def _isc_time(words):
    """Unix time of `never` (None), `epoch N` or `W YYYY/MM/DD HH:MM:SS` (UTC);
    False when unreadable."""
    try:
        if words[0] == "never":
            return None
        if words[0] == "epoch":
            return float(words[1])
        moment = time.strptime(words[1] + " " + words[2], "%Y/%m/%d %H:%M:%S")
        return float(calendar.timegm(moment))
    except (IndexError, ValueError):
        return False


def parse_kea(text):
    """Kea's memfile lease CSV (DHCPv4 or DHCPv6): a header naming the columns,
    then one line per lease change. Current: state 0 (default), a valid lifetime
    above 0 (0 marks a deleted lease) and `expire` ahead."""
    lines = text.splitlines()
    columns = lines[0].strip().split(",")
    try:
        col = {name: columns.index(name) for name in ("address", "hwaddr", "expire",
                                                      "valid_lifetime", "state")}
    except ValueError as e:
        raise ValueError("Kea lease file header lacks a column: %s" % e) from None
    out = {}
    width = max(col.values()) + 1
    for line in lines[1:]:
        fields = line.split(",")
        if len(fields) < width:
            continue
        address = _address(fields[col["address"]])
        if address is None:
            continue
        mac = _mac(fields[col["hwaddr"]])
        try:
            current = int(fields[col["state"]] or 0) == 0 and \
                int(fields[col["valid_lifetime"]]) > 0
            expires = float(fields[col["expire"]])
        except ValueError:
            continue
        if mac is None or not current:
            out.pop(address, None)
        else:
            out[address] = (mac, expires)
    return out


def parse_lease_file(text):
    """(format name, {address: (mac, expires)}), the format recognised by content;
    ValueError when it is none of them."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not first:
        return "empty", {}
    if first.startswith("address,"):
        return "kea", parse_kea(text)
    if first.startswith(("#", "lease ", "authoring-byte-order", "server-duid",
                         "failover ", "ia-na", "ia-ta", "ia-pd")):
        return "isc", parse_isc(text)
    if first.split()[0].isdigit() or first.startswith("duid "):
        return "dnsmasq", parse_dnsmasq(text)
    raise ValueError("not a dnsmasq, ISC dhcpd or Kea lease file (it begins %r)" % first[:60])


# ------------------------------------------------------------------ neighbors

ATF_COM = 0x02
NUD_INCOMPLETE, NUD_FAILED = 0x01, 0x20
RTM_NEWNEIGH, RTM_GETNEIGH = 28, 30
NLM_F_REQUEST, NLM_F_DUMP = 0x01, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NDA_DST, NDA_LLADDR = 1, 2


def read_arp(path="/proc/net/arp"):
    """{IPv4 address: mac} of complete entries in the kernel's ARP table."""
    out = {}
    with open(path) as f:
        next(f, None)
        for line in f:
            fields = line.split()
            if len(fields) >= 4 and int(fields[2], 16) & ATF_COM:
                mac = _mac(fields[3])
                if mac is not None:
                    out[fields[0]] = mac
    return out


def read_ndp():
    """{IPv6 address: mac} of the kernel's IPv6 neighbor table (rtnetlink), but
    entries that are incomplete or failed."""
    out = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(1.0)
        ndmsg = struct.pack("=BBHiHBB", socket.AF_INET6, 0, 0, 0, 0, 0, 0)
        sock.send(struct.pack("=IHHII", 16 + len(ndmsg), RTM_GETNEIGH,
                              NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + ndmsg)
        while True:
            data = sock.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if length < 16:
                    return out
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    raise OSError("rtnetlink refused the neighbor dump")
                if kind == RTM_NEWNEIGH:
                    _neighbor(data[offset + 16:offset + length], out)
                offset += (length + 3) & ~3


def _neighbor(msg, out):
    if len(msg) < 12:
        return
    family, _, _, _, state, _, _ = struct.unpack_from("=BBHiHBB", msg)
    if family != socket.AF_INET6 or state & (NUD_INCOMPLETE | NUD_FAILED):
        return
    attrs, offset = {}, 12
    while offset + 4 <= len(msg):
        length, kind = struct.unpack_from("=HH", msg, offset)
        if length < 4:
            break
        attrs[kind] = msg[offset + 4:offset + length]
        offset += (length + 3) & ~3
    dst, lladdr = attrs.get(NDA_DST), attrs.get(NDA_LLADDR)
    if dst is not None and len(dst) == 16 and lladdr is not None and len(lladdr) == 6:
        mac = _mac(lladdr.hex())
        if mac is not None:
            out[socket.inet_ntop(socket.AF_INET6, dst)] = mac


# ------------------------------------------------------------------ bindings

class LeaseFile:
    """One lease file: its table, re-parsed when its identity, size or mtime
    changes."""

    def __init__(self, path):
        self.path = path
        self.table = {}
        self.format = "empty"
        self.signature = None
        self.failing = ""

    def refresh(self):
        """Re-read if changed; True if it was. Raises OSError or ValueError (the
        table is kept)."""
        st = os.stat(self.path)
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        if signature == self.signature:
            return False
        with open(self.path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        self.format, self.table = parse_lease_file(text)
        self.signature = signature
        return True


class Bindings:
    """The address -> MAC bindings from `sources` (lease file paths and/or the
    word "neighbors"). Raises BindError when a lease file cannot be read now."""

    def __init__(self, sources, poll=0.5, follow=True):
        self.files = []
        self.neighbors = False
        self._neighbor_table = {}
        self._neighbors_read = float("-inf")
        self._neighbor_lock = threading.Lock()
        for source in sources:
            if source == "neighbors":
                self.neighbors = True
            else:
                self.files.append(LeaseFile(os.path.abspath(source)))
        if not self.files and not self.neighbors:
            raise BindError("-bind-configs names no lease file and not `neighbors`")
        for lease_file in self.files:
            try:
                lease_file.refresh()
            except (OSError, ValueError) as e:
                raise BindError("lease file %s: %s" % (
                    lease_file.path, getattr(e, "strerror", None) or e)) from None
        if self.neighbors:
            self._read_neighbors()
        self._follower = Repeat(poll, self.refresh, "leases") if follow and self.files \
            else None

    def close(self):
        """Stop following the lease files."""
        if self._follower is not None:
            self._follower.close()
            self._follower = None

    def describe(self):
        parts = ["%s (%s, %d leases)" % (f.path, f.format, len(f.table)) for f in self.files]
        if self.neighbors:
            parts.append("the kernel's neighbor tables")
        return ", ".join(parts)

    def mac_of(self, address, now=None):
        """The MAC holding `address` now, or None."""
        now = time.time() if now is None else now
        for lease_file in self.files:
            lease = lease_file.table.get(address)
            if lease is not None and (lease[1] is None or lease[1] > now):
                return lease[0]
        if self.neighbors:
            mac = self._neighbor_table.get(address)
            if mac is None and time.monotonic() - self._neighbors_read >= 0.5:
                self._read_neighbors()
                mac = self._neighbor_table.get(address)
            return mac
        return None

    def _read_neighbors(self):
        with self._neighbor_lock:
            if time.monotonic() - self._neighbors_read < 0.5:
                return
            self._neighbors_read = time.monotonic()
            table = {}
            for name, reader in (("/proc/net/arp", read_arp), ("rtnetlink", read_ndp)):
                try:
                    table.update(reader())
                except OSError as e:
                    log.warning("-bind-configs neighbors: cannot read %s: %s", name, e)
            self._neighbor_table = table

    def refresh(self):
        """Re-read every changed lease file now; a failure is logged once per
        change and the last good table stays."""
        for lease_file in self.files:
            try:
                if lease_file.refresh():
                    log.info("lease file %s read: %d leases (%s)", lease_file.path,
                             len(lease_file.table), lease_file.format)
                lease_file.failing = ""
            except (OSError, ValueError) as e:
                reason = str(getattr(e, "strerror", None) or e)
                if reason != lease_file.failing:
                    log.warning("lease file %s cannot be read: %s; its last good table "
                                "(%d leases) stays", lease_file.path, reason,
                                len(lease_file.table))
                lease_file.failing = reason
