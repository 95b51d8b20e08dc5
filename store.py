"""FileStore: finds a machine's boot, cloud or Ignition config in the data directory.

    <root>/<kind>/uuid/<uuid>   <root>/<kind>/mac/<mac>   <root>/<kind>/default
    <root>/<kind>/shared/<name>                  (fragments several machines use)

Lookups go uuid -> mac -> default, and the first file that exists decides. Each
uuid/ and mac/ directory has an in-memory index from canonical key to file name,
rebuilt only when the directory changes, so a lookup costs a few stat() calls
whatever the number of machines. File contents are cached by (inode, size, mtime,
ctime); a file that is still being written or fails to parse is never served: the
last good version is, and the error is logged once per change of the file.

No HTTP in here. The store is given one parse function per kind.
"""

import collections
import errno
import logging
import os
import re
import stat
import threading
import time
from typing import NamedTuple, Optional, Tuple
from urllib.parse import unquote

log = logging.getLogger("bootcfg.store")

KINDS = ("boot", "cloud", "ignition")

# Every tunable of the store, with why its default is safe.
STORE_LIMITS = {
    # A file modified less than this long ago may still be being written (shell
    # redirects and `git checkout` write in place): serve the last good version
    # meanwhile. Short enough that edits show within a second.
    "settle_seconds": 0.25,
    # With no last good version, a request waits at most this long for a fresh
    # file to settle before it is read anyway.
    "settle_wait_seconds": 1.0,
    # A directory whose mtime is this close to the time it was scanned may change
    # again within the same timestamp tick (coarse on NFS and some filesystems),
    # so it is rescanned, at most every `rescan_seconds`, until it is older.
    "racy_seconds": 1.0,
    "rescan_seconds": 0.2,
    # A uuid/ or mac/ directory is stat()ed at most this often to see whether it
    # changed: two system calls fewer per request under load, and a new or renamed
    # file is still seen within a tenth of a second.
    "dir_check_seconds": 0.1,
    # Likewise a file that parsed and has settled is stat()ed at most this often:
    # an edit or a deletion is seen within a tenth of a second. Files that are
    # broken or still settling are looked at on every request.
    "file_check_seconds": 0.1,
    # After reading a changed file, look at its size and times once more this much
    # later: truncation updates the size before the mtime (seen on ext4), and a
    # read in between would take an empty file for a settled one.
    "recheck_seconds": 0.002,
    # Config files are small; refusing big ones protects memory from an image
    # copied into the wrong directory. Ignition configs carry whole files as data
    # URLs (binaries, certificates), so they may be far bigger.
    "max_file_bytes": 4 << 20,
    "max_ignition_bytes": 32 << 20,
    # Parsed configs and cloud-config bytes kept in memory. At 100,000 machines the
    # whole fleet may not fit; least recently used entries are dropped and read
    # again when next asked for. The last good copy of a file that is currently
    # unusable is never dropped: it is the only copy there is.
    "cache_bytes": 64 << 20,
}

_HEX2 = "([0-9a-f]{2})"
_MAC_RE = re.compile("^" + "[:-]?".join([_HEX2] * 6) + "$")
_UUID_RE = re.compile(r"^\{?([0-9a-f]{8})-?([0-9a-f]{4})-?([0-9a-f]{4})-?"
                      r"([0-9a-f]{4})-?([0-9a-f]{12})\}?$")
_NO_UUID = {"0" * 32, "f" * 32}
_NO_MAC = {"00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"}


def parse_mac(text):
    """Canonical MAC (lowercase, colons) from `:`/`-`/no separators, any case.
    Returns None for the all-zero and broadcast placeholders; raises ValueError
    for anything that is not a MAC."""
    m = _MAC_RE.match(text.strip().lower())
    if not m:
        raise ValueError("not a MAC address: %s" % _short(text))
    mac = ":".join(m.groups())
    return None if mac in _NO_MAC else mac


def parse_uuid(text):
    """Canonical UUID (lowercase, hyphenated), with or without hyphens or braces.
    Returns None for the all-zero and all-F placeholders cheap boards and QEMU
    report; raises ValueError for anything that is not a UUID."""
    m = _UUID_RE.match(text.strip().lower())
    if not m:
        raise ValueError("not a UUID: %s" % _short(text))
    if "".join(m.groups()) in _NO_UUID:
        return None
    return "-".join(m.groups())


def spelling(name, text):
    """The canonical spelling of a uuid or mac, placeholders included (what iPXE
    would print for ${uuid} on a board without one), or "" if it is not one."""
    rx = _UUID_RE if name == "uuid" else _MAC_RE
    m = rx.match((text or "").strip().lower())
    return ("-" if name == "uuid" else ":").join(m.groups()) if m else ""


KEY_PARSERS = {"uuid": parse_uuid, "mac": parse_mac}


class LoadError(Exception):
    """A config file exists but cannot be used and no good version was ever read."""

    def __init__(self, path, reason, line=None, col=None):
        super().__init__("%s: %s" % (path, reason))
        self.path, self.reason, self.line, self.col = path, reason, line, col


class Match(NamedTuple):
    path: str        # relative to the data root, e.g. "boot/mac/52-54-00-89-d8-10"
    how: str         # "uuid", "mac" or "default"
    value: object    # parsed config, or the file's bytes
    stale: bool      # True when served from the last good copy


class Step(NamedTuple):
    how: str                 # "uuid", "mac" or "default"
    path: Optional[str]      # the file looked at, None when the key was absent
    state: str               # "absent", "missing", "matched", "stale", "invalid"
    detail: str = ""


class Lookup(NamedTuple):
    match: Optional[Match]
    trail: Tuple[Step, ...]
    error: Optional[LoadError] = None


class FileStore:
    """Configs under `root`. `parsers` maps kind -> function(bytes) -> value that
    raises ValueError for a file that cannot be used (None: serve bytes as-is)."""

    def __init__(self, root, parsers, limits=None):
        self.root = os.path.abspath(root)
        self.parsers = dict(parsers)
        self.limits = dict(STORE_LIMITS, **(limits or {}))
        self._indexes = {}
        for kind in self.parsers:
            for how in ("uuid", "mac"):
                path = os.path.join(self.root, kind, how)
                self._indexes[kind, how] = _DirIndex(path, KEY_PARSERS[how], self.limits)
        self._cache = collections.OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self.load_errors_total = 0

    def lookup(self, kind, uuid=None, mac=None):
        """Find the config for a machine. `uuid` and `mac` are canonical or None."""
        trail = []
        for how, key in (("uuid", uuid), ("mac", mac), ("default", None)):
            if how == "default":
                rel = "%s/default" % kind
            elif key is None:
                trail.append(Step(how, None, "absent"))
                continue
            else:
                name = self._indexes[kind, how].get(key)
                if name is None:
                    trail.append(Step(how, "%s/%s/%s" % (kind, how, key), "missing"))
                    continue
                rel = "%s/%s/%s" % (kind, how, name)
            try:
                value, stale, problem = self.load(rel, self.parsers[kind], kind)
            except FileNotFoundError:
                trail.append(Step(how, rel, "missing"))
                continue
            except LoadError as e:
                trail.append(Step(how, rel, "invalid", e.reason))
                return Lookup(None, tuple(trail), e)
            trail.append(Step(how, rel, "stale" if stale else "matched", problem))
            return Lookup(Match(rel, how, value, stale), tuple(trail))
        return Lookup(None, tuple(trail))

    def shared(self, kind, name):
        """A named fragment, <kind>/shared/<name>: a Lookup with one step. `name` is
        a plain file name; anything else (a path, '..', a dot file) is ValueError."""
        if not name or name.startswith(".") or name.endswith("~") or \
                any(c in name for c in "/\\\0") or len(name) > 255:
            raise ValueError("not a fragment name: %s" % _short(name))
        rel = "%s/shared/%s" % (kind, name)
        try:
            value, stale, problem = self.load(rel, self.parsers[kind], kind)
        except (FileNotFoundError, NotADirectoryError):
            return Lookup(None, (Step("shared", rel, "missing"),))
        except LoadError as e:
            return Lookup(None, (Step("shared", rel, "invalid", e.reason),), e)
        return Lookup(Match(rel, "shared", value, stale),
                      (Step("shared", rel, "stale" if stale else "matched", problem),))

    def stats(self):
        """Counts for /metrics: load errors seen, files served from a last good copy."""
        with self._lock:
            stale = sum(1 for e in self._cache.values()
                        if e.error is not None and e.good is not None)
        return {"load_errors_total": self.load_errors_total, "stale": stale}

    def scan(self, kind, how):
        """The directory index of kind/how: canonical key -> file name, plus the
        file names that were skipped and why (for `check`)."""
        return self._indexes[kind, how].snapshot()

    def load(self, rel, parse, kind="boot"):
        """(value, stale, problem) for one file. Raises FileNotFoundError when it
        does not exist, LoadError when it never parsed."""
        path = os.path.join(self.root, rel)
        entry = self._cache.get(rel)
        now = time.monotonic()
        if entry is not None and entry.error is None and \
                now - entry.checked < self.limits["file_check_seconds"]:
            try:
                self._cache.move_to_end(rel)
            except KeyError:  # dropped by another thread just now
                pass
            return entry.good, False, ""
        st = os.stat(path)
        if entry is not None and entry.sig == _signature(st):
            entry.checked = now
            try:
                self._cache.move_to_end(rel)
            except KeyError:  # dropped by another thread just now
                pass
            return entry.result(rel)
        return self._reload(rel, path, parse, entry, self.max_bytes(kind))

    def max_bytes(self, kind):
        """The largest file of `kind` the store reads."""
        return self.limits["max_ignition_bytes" if kind == "ignition" else "max_file_bytes"]

    def _reload(self, rel, path, parse, old, max_bytes):
        settle = self.limits["settle_seconds"]
        deadline = time.monotonic() + self.limits["settle_wait_seconds"]
        while True:
            try:
                data, st = read_whole(path, max_bytes, self.limits["recheck_seconds"])
            except OSError as e:
                if isinstance(e, FileNotFoundError):
                    raise
                data, st = None, os.stat(path)
                reason = e.strerror or str(e)
                break
            age = time.time() - st.st_mtime
            if not 0 <= age < settle:
                break
            if old is not None and old.good is not None:
                # Possibly half-written; the next request looks again.
                return old.good, True, "changed %.2fs ago, may be mid-write" % age
            if time.monotonic() >= deadline:
                break
            time.sleep(settle - age)
        if data is None:
            value, error = None, ValueError(reason)
        else:
            try:
                value, error = (parse(data) if parse else data), None
            except ValueError as e:
                value, error = None, e
        good = value if error is None else (old.good if old is not None else None)
        entry = _Entry(_signature(st), error, good, len(data or b"") + 256)
        self._remember(rel, entry, old)
        return entry.result(rel)

    def _remember(self, rel, entry, old):
        full = os.path.join(self.root, rel)
        with self._lock:
            current = self._cache.pop(rel, None)
            if current is not None:
                self._cached_bytes -= current.size
            self._cache[rel] = entry
            self._cached_bytes += entry.size
            if self._cached_bytes > self.limits["cache_bytes"]:
                self._evict(keep=rel)
            if current is not None and current.sig == entry.sig:
                return  # another thread read the same version and logged it
        if entry.error is not None:
            self.load_errors_total += 1
            fields = {"file": full, "reason": str(entry.error)}
            if entry.good is not None:
                log.warning("%s: %s; serving its last good version until it is fixed",
                            full, entry.error, extra={"fields": fields})
            else:
                log.warning("%s: %s; machines it matches get 500 until it is fixed",
                            full, entry.error, extra={"fields": fields})
        else:
            for where, warning in getattr(entry.good, "warnings", ()):
                log.warning("%s: %s: %s (served anyway)", full, where, warning,
                            extra={"fields": {"file": full, "reason": warning}})
        if entry.error is None and old is not None and old.error is not None:
            log.info("%s: fixed, serving the new version", full)
        elif entry.error is None and old is not None:
            log.info("%s: changed, serving the new version", full)


    def _evict(self, keep):
        """Drop least recently used entries until the cache fits, never `keep` (just
        read) and never a pinned one: the last good copy of a file that is now
        unusable exists nowhere else. Called with the lock held."""
        for rel in list(self._cache):
            if self._cached_bytes <= self.limits["cache_bytes"]:
                return
            entry = self._cache[rel]
            if rel == keep or entry.pinned:
                continue
            del self._cache[rel]
            self._cached_bytes -= entry.size


class _Entry:
    __slots__ = ("sig", "error", "good", "size", "checked")

    def __init__(self, sig, error, good, size):
        self.sig, self.error, self.good, self.size = sig, error, good, size
        self.checked = -1e9     # monotonic time the file was last seen unchanged

    @property
    def pinned(self):
        return self.error is not None and self.good is not None

    def result(self, rel):
        if self.error is None:
            return self.good, False, ""
        if self.good is not None:
            return self.good, True, str(self.error)
        raise LoadError(rel, str(self.error), getattr(self.error, "line", None),
                        getattr(self.error, "col", None))


class _DirIndex:
    """Canonical key -> file name for one uuid/ or mac/ directory."""

    def __init__(self, path, parse_key, limits):
        self.path = path
        self.parse_key = parse_key
        self.limits = limits
        self._map = {}
        self._skipped = ()
        self._sig = None
        self._racy = False
        self._checked_at = -1e9
        self._scanned_at = 0.0
        self._lock = threading.Lock()
        self._reported = set()
        self._refresh()

    def get(self, key):
        self._refresh()
        return self._map.get(key)

    def snapshot(self):
        self._refresh()
        return dict(self._map), self._skipped

    def _refresh(self):
        now = time.monotonic()
        if now - self._checked_at < self.limits["dir_check_seconds"]:
            return
        self._checked_at = now
        try:
            st = os.stat(self.path)
            sig = (st.st_ino, st.st_mtime_ns)
        except OSError:
            sig = None
        if sig == self._sig and not (
                self._racy and time.monotonic() - self._scanned_at >= self.limits["rescan_seconds"]):
            return
        # One thread rescans; the others keep using the index as it was a moment ago.
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._scan(sig)
        finally:
            self._lock.release()

    def _scan(self, sig):
        started = time.time_ns()
        found, skipped = {}, []
        try:
            entries = list(os.scandir(self.path)) if sig is not None else []
        except OSError as e:
            log.warning("%s: cannot list: %s", self.path, e)
            entries = []
        for entry in sorted(entries, key=lambda e: e.name):
            name = entry.name
            if name.startswith(".") or name.endswith("~"):
                continue  # editor and atomic-write temporaries
            try:
                if not entry.is_file():
                    continue
            except OSError:
                continue
            try:
                key = self.parse_key(unquote(name))
            except ValueError as e:
                skipped.append((name, str(e)))
                continue
            if key is None:
                skipped.append((name, "a placeholder that many machines report"))
                continue
            if key in found:
                # The canonical spelling wins, else the first in sorted order.
                keep, drop = (name, found[key]) if name == key else (found[key], name)
                found[key] = keep
                skipped.append((drop, "same machine as %s, which is used" % keep))
                continue
            found[key] = name
        self._map = found
        self._skipped = tuple(skipped)
        self._sig = sig
        self._scanned_at = time.monotonic()
        self._racy = sig is not None and started - sig[1] < self.limits["racy_seconds"] * 1e9
        for name, why in skipped:
            if (name, why) not in self._reported:
                self._reported.add((name, why))
                log.warning("%s: ignored: %s", os.path.join(self.path, name), why)


def _signature(st):
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_whole(path, max_bytes=STORE_LIMITS["max_file_bytes"], recheck=0.0):
    """Read a whole file, again if it changed while being read or within `recheck`
    seconds after. Raises OSError."""
    for _ in range(20):
        # O_NONBLOCK: a FIFO left in the data directory must not hang the reader.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            before = os.fstat(f.fileno())
            if not stat.S_ISREG(before.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            if before.st_size > max_bytes:
                raise OSError(errno.EFBIG, "larger than %d bytes" % max_bytes)
            data = f.read(max_bytes + 1)
            after = os.fstat(f.fileno())
            if recheck:
                # A truncating open() changes the size before the mtime; a stat in
                # between sees an empty file with its old time. Look once more.
                time.sleep(recheck)
                later = os.fstat(f.fileno())
            else:
                later = after
        if _signature(before) == _signature(after) == _signature(later) and \
                len(data) == after.st_size:
            return data, after
        time.sleep(0.01)
    raise OSError(errno.EAGAIN, "kept changing while being read")


def _short(text, limit=64):
    text = repr(text)
    return text if len(text) <= limit else text[:limit] + "..."
