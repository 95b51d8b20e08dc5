"""A machine's identity: the one definition of how a MAC, a UUID and a client
address are spelled, and which spellings name a machine at all.

Every entrance goes through here: HTTP queries, Pixiecore paths, TFTP paths,
lease files and neighbor tables, seed file names and group selectors, `check`,
`explain` and /status. Two questions, two functions per key:

- `mac_key`/`uuid_key`: the identity key, canonical (`52:54:00:aa:bb:cc`,
  lowercase hyphenated UUID), or None for a placeholder that many machines
  report (no key at all); ValueError for text that is not one.
- `mac_spelling`/`uuid_spelling`: the canonical spelling of any well-formed
  value, placeholders kept (what iPXE prints for ${uuid} on a board without one,
  and what GRUB's answer must repeat), or "" for text that is not one.

MACs are accepted as firmware and operators write them: colons, hyphens, Cisco
dots (`5254.00aa.bbcc`) or no separator, any case, one separator throughout.
All-zero, broadcast and multicast-bit MACs are not a NIC's, so they are no key.
UUIDs with or without hyphens or braces, any case; nil and all-F are
placeholders. No spelling keeps surrounding whitespace or any other character:
what is not exactly one of these forms is not an identity.
"""

import socket
from typing import NamedTuple

_HEX = frozenset("0123456789abcdef")
_NO_UUID = frozenset(("0" * 32, "f" * 32))
MACHINE_KEYS = ("uuid", "mac")       # the query labels that are a machine's identity


def _short(text, limit=64):
    text = repr(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _mac_hex(text):
    """The 12 lowercase hex digits of a MAC in one of the accepted spellings, or
    None."""
    if type(text) is not str:
        return None
    n = len(text)
    t = text.lower()
    if n == 17:
        sep = t[2]
        if sep not in ":-" or t[5] != sep or t[8] != sep or t[11] != sep or t[14] != sep:
            return None
        digits = t.replace(sep, "")
    elif n == 14:
        if t[4] != "." or t[9] != ".":
            return None
        digits = t.replace(".", "")
    elif n == 12:
        digits = t
    else:
        return None
    if len(digits) != 12 or not _HEX.issuperset(digits):
        return None
    return digits


def _colons(digits):
    return ":".join((digits[0:2], digits[2:4], digits[4:6], digits[6:8], digits[8:10],
                     digits[10:12]))


def mac_key(text):
    """The canonical MAC (`52:54:00:aa:bb:cc`) naming one NIC; None for the
    all-zero, broadcast and multicast-bit placeholders; ValueError for text that
    is not a MAC."""
    digits = _mac_hex(text)
    if digits is None:
        raise ValueError("not a MAC address: %s" % _short(text))
    if digits == "000000000000" or int(digits[1], 16) & 1:
        return None     # no NIC has it: all-zero, broadcast or a multicast address
    return _colons(digits)


def mac_spelling(text):
    """The canonical spelling of a MAC, placeholders included, or ""."""
    digits = _mac_hex(text)
    return _colons(digits) if digits is not None else ""


def _uuid_hex(text):
    if type(text) is not str or not 32 <= len(text) <= 38:
        return None
    t = text.lower()
    if t[0] == "{":
        if t[-1] != "}":
            return None
        t = t[1:-1]
    if len(t) == 36:
        if t[8] != "-" or t[13] != "-" or t[18] != "-" or t[23] != "-":
            return None
        t = t.replace("-", "")
    if len(t) != 32 or not _HEX.issuperset(t):
        return None
    return t


def _hyphens(digits):
    return "-".join((digits[:8], digits[8:12], digits[12:16], digits[16:20], digits[20:]))


def uuid_key(text):
    """The canonical UUID (lowercase, hyphenated) naming one machine; None for the
    nil and all-F placeholders cheap boards and QEMU report; ValueError for text
    that is not a UUID."""
    digits = _uuid_hex(text)
    if digits is None:
        raise ValueError("not a UUID: %s" % _short(text))
    return None if digits in _NO_UUID else _hyphens(digits)


def uuid_spelling(text):
    """The canonical spelling of a UUID, placeholders included, or ""."""
    digits = _uuid_hex(text)
    return _hyphens(digits) if digits is not None else ""


KEYS = {"uuid": uuid_key, "mac": mac_key}
SPELLINGS = {"uuid": uuid_spelling, "mac": mac_spelling}


def key(name, text):
    """The identity key `name` ("uuid" or "mac") from `text`: see mac_key/uuid_key."""
    return KEYS[name](text)


class Machine(NamedTuple):
    """A machine as one request names it: canonical keys or "" (absent, malformed
    or a placeholder), and why a given value was not used."""
    uuid: str = ""
    mac: str = ""
    problems: tuple = ()     # ("uuid", reason) / ("mac", reason)


# Parsed keys by their spelling, for the request path: only texts short enough to
# be a spelling at all (38 characters: a braced UUID), and at most _CACHED of
# them (cleared when full), so hostile input can neither grow it nor fill it with
# anything but short strings.
_CACHED = 8192
_MAX_SPELLING = 38
_parsed = {}


def _parse(name, text):
    """(key or None, problem or None) of one raw value, remembered."""
    found = _parsed.get((name, text))
    if found is not None:
        return found
    try:
        value = KEYS[name](text)
        found = (value, None) if value is not None else (
            None, "%s is a placeholder many machines report, not one machine" % _short(text))
    except ValueError as e:
        found = (None, str(e))
    if len(text) <= _MAX_SPELLING:
        if len(_parsed) >= _CACHED:
            _parsed.clear()
        _parsed[(name, text)] = found
    return found


def split_query(query):
    """(other labels, raw keys) of a query: every non-empty parameter that is not
    a machine key, and {"uuid": raw, "mac": raw} with the machine keys in any case
    (`MAC=`, `Uuid=`), as matchbox reads them; the lowercase name wins."""
    out, raw = {}, {}
    for name, value in query.items():
        if name == "mac" or name == "uuid":
            raw[name] = value
        elif len(name) in (3, 4) and name.lower() in KEYS:
            raw.setdefault(name.lower(), value)
        elif value:
            out[name] = value
    return out, raw


def from_query(query):
    """The Machine a query names (see split_query); a malformed or placeholder
    value is no key, and says why in `problems`."""
    return labels(query)[1]


def labels(query):
    """(labels, Machine) of a request: every non-empty query parameter but the
    machine keys (in any case), then uuid and mac, canonical, when valid. A
    malformed or placeholder key is no key, and says why in `problems`."""
    out, raw = split_query(query)
    uuid = mac = ""
    problems = ()
    for name in MACHINE_KEYS:
        text = raw.get(name)
        if not text:
            continue
        value, problem = _parse(name, text)
        if problem is not None:
            problems += ((name, problem),)
        elif name == "uuid":
            uuid = out["uuid"] = value
        else:
            mac = out["mac"] = value
    return out, Machine(uuid, mac, problems)


def client_address(text):
    """A client's address as the guard, leases and /status compare it: the
    canonical text of an IPv4 or IPv6 address, IPv4-mapped IPv6 folded to IPv4,
    an IPv6 zone dropped; None for anything else."""
    if type(text) is not str or not text or len(text) > 64:
        return None
    text = text.split("%", 1)[0]
    try:
        if ":" not in text:
            return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text))
        packed = socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return None
    if packed[:12] == b"\0" * 10 + b"\xff\xff":
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed)


def plain_address(address):
    """A socket's peer address as it is logged and looked up: IPv4-mapped IPv6
    as IPv4. The per-request fast path of client_address, for addresses the
    kernel wrote (already canonical)."""
    if address.startswith("::ffff:") and "." in address:
        return address[7:]
    return address


def record_key(uuid, mac, client):
    """What /status files a machine under: its MAC, else its UUID, else the
    address it asked from."""
    return mac or uuid or client
