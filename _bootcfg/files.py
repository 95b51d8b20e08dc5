"""A cached view of the data directory: files parsed once per version, and
directories watched for changes. One watcher (DirWatch), one settle and
last-good rule (Files.load, Files.settling), one clock you can replace (tests
move a FakeClock instead of sleeping). Selection is store.py's; this knows
nothing of kinds, groups or machines.

A file still being written (modified less than `settle_seconds` ago) is not
taken for a new version: its last good version is served meanwhile. A file that
fails to parse keeps its last good version, and the error is logged once per
change of the file. File contents are cached by (inode, size, mtime, ctime),
least recently used dropped past `cache_bytes`, never a last good copy.
"""

import collections
import errno
import logging
import os
import stat
import threading
import time
from urllib.parse import unquote

from _bootcfg.settings import LIMITS

log = logging.getLogger("bootcfg.store")


_wall, _monotonic, _sleep = time.time, time.monotonic, time.sleep


class Clock:
    """The time the store reads: wall time (compared with file mtimes), a
    monotonic time (for check intervals), and sleep."""
    time = staticmethod(_wall)
    monotonic = staticmethod(_monotonic)
    sleep = staticmethod(_sleep)

    def time_ns(self):
        return int(self.time() * 1e9)


SYSTEM_CLOCK = Clock()


class FakeClock(Clock):
    """Real time plus an offset that sleep() and advance() move forward: code
    that waits for a file to settle takes no wall time, and a test makes time
    pass with advance()."""

    def __init__(self):
        self.offset = 0.0
        self.slept = 0.0

    def time(self):
        return _wall() + self.offset

    def monotonic(self):
        return _monotonic() + self.offset

    def sleep(self, seconds):
        self.slept += max(seconds, 0.0)
        self.advance(seconds)

    def advance(self, seconds):
        self.offset += max(seconds, 0.0)


class LoadError(Exception):
    """A config file exists but cannot be used and no good version was ever read."""

    def __init__(self, path, reason, line=None, col=None):
        super().__init__("%s: %s" % (path, reason))
        self.path, self.reason, self.line, self.col = path, reason, line, col


class Files:
    """The files under `root`, each read and parsed once per version: load()
    returns (value, stale, problem). `limits` are the store's (settings.LIMITS);
    `clock` is SYSTEM_CLOCK but in tests."""

    def __init__(self, root, limits, clock=SYSTEM_CLOCK):
        self.root, self.limits, self.clock = root, limits, clock
        self._monotonic = clock.monotonic
        self._cache = collections.OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self.load_errors_total = 0

    def settling(self, st):
        """True while a file with stat `st` may still be being written: the one
        settle rule, for config files and group files alike."""
        return 0 <= self.clock.time() - st.st_mtime < self.limits["settle_seconds"]

    def read(self, path, max_bytes, recheck=0.0):
        return read_whole(path, max_bytes, recheck, self.clock.sleep)

    def stale_count(self):
        """Files served from a last good copy."""
        with self._lock:
            return sum(1 for e in self._cache.values()
                       if e.error is not None and e.good is not None)

    def watch(self, path):
        return DirWatch(path, self.limits, self.clock)

    def keys(self, path, parse_key):
        """The KeyDirectory of a uuid/ or mac/ directory."""
        return KeyDirectory(path, parse_key, self.limits, self.clock)

    def load(self, rel, parse, kind="boot", key=None):
        """(value, stale, problem) for one file. Raises FileNotFoundError when it
        does not exist, LoadError when it never parsed. `key` names its cache
        entry when one file is read two ways (a profile's Ignition template)."""
        path = os.path.join(self.root, rel)
        key = key or rel
        entry = self._cache.get(key)
        now = self._monotonic()
        if entry is not None and entry.error is None and \
                now - entry.checked < self.limits["file_check_seconds"]:
            try:
                self._cache.move_to_end(key)
            except KeyError:  # dropped by another thread just now
                pass
            return entry.good, False, ""
        st = os.stat(path)
        if entry is not None and entry.sig == signature(st):
            entry.checked = now
            try:
                self._cache.move_to_end(key)
            except KeyError:  # dropped by another thread just now
                pass
            return entry.result(rel)
        return self._reload(rel, path, parse, entry, self.max_bytes(kind), key)

    @staticmethod
    def log_problems(full, entry_good):
        for where, warning in getattr(entry_good, "warnings", ()):
            log.warning("%s: %s: %s (served anyway)", full, where, warning,
                        extra={"fields": {"file": full, "reason": warning}})

    def max_bytes(self, kind):
        """The largest file of `kind` the store reads."""
        return self.limits["max_ignition_bytes" if kind == "ignition" else "max_file_bytes"]

    def _reload(self, rel, path, parse, old, max_bytes, key=None):
        settle = self.limits["settle_seconds"]
        deadline = self.clock.monotonic() + self.limits["settle_wait_seconds"]
        while True:
            try:
                data, st = read_whole(path, max_bytes, self.limits["recheck_seconds"],
                                      self.clock.sleep)
            except OSError as e:
                if isinstance(e, FileNotFoundError):
                    raise
                data, st = None, os.stat(path)
                reason = e.strerror or str(e)
                break
            age = self.clock.time() - st.st_mtime
            if not 0 <= age < settle:
                break
            if old is not None and old.good is not None:
                # Possibly half-written; the next request looks again.
                return old.good, True, "changed %.2fs ago, may be mid-write" % age
            if self.clock.monotonic() >= deadline:
                break
            self.clock.sleep(settle - age)
        if data is None:
            value, error = None, ValueError(reason)
        else:
            try:
                value, error = (parse(data) if parse else data), None
            except ValueError as e:
                value, error = None, e
        good = value if error is None else (old.good if old is not None else None)
        entry = _Entry(signature(st), error, good, len(data or b"") + 256)
        self._remember(rel, entry, old, key or rel)
        return entry.result(rel)

    def _remember(self, rel, entry, old, key):
        full = os.path.join(self.root, rel)
        with self._lock:
            current = self._cache.pop(key, None)
            if current is not None:
                self._cached_bytes -= current.size
            self._cache[key] = entry
            self._cached_bytes += entry.size
            if self._cached_bytes > self.limits["cache_bytes"]:
                self._evict(keep=key)
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
            self.log_problems(full, entry.good)
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


class DirWatch:
    """One directory watched for changes: its (inode, mtime) is looked at most
    every `dir_check_seconds`; a directory whose mtime is within `racy_seconds`
    of when it was scanned may change again in the same timestamp tick (coarse
    on NFS), so it counts as changed every `rescan_seconds` until it is older."""

    def __init__(self, path, limits, clock=SYSTEM_CLOCK):
        self.path, self.limits, self.clock = path, limits, clock
        self._monotonic = clock.monotonic
        self._every = limits["dir_check_seconds"]
        self.sig = None
        self._racy = False
        self._checked_at = self._scanned_at = -1e9

    def signature(self):
        try:
            st = os.stat(self.path)
            return (st.st_ino, st.st_mtime_ns)
        except OSError:
            return None

    def due(self):
        """None when the directory was looked at within dir_check_seconds; else
        (signature, changed since the last scan)."""
        now = self._monotonic()
        if now - self._checked_at < self._every:
            return None
        self._checked_at = now
        sig = self.signature()
        return sig, sig != self.sig or (
            self._racy and now - self._scanned_at >= self.limits["rescan_seconds"])

    def scanned(self, sig, started_ns):
        """A scan that began at wall time `started_ns` saw signature `sig`."""
        self.sig = sig
        self._scanned_at = self.clock.monotonic()
        self._racy = sig is not None and \
            started_ns - sig[1] < self.limits["racy_seconds"] * 1e9


class KeyDirectory:
    """Canonical key -> file name for one uuid/ or mac/ directory, rescanned when
    its DirWatch says it changed."""

    def __init__(self, path, parse_key, limits, clock):
        self.path = path
        self.parse_key = parse_key
        self.watch = DirWatch(path, limits, clock)
        self._map = {}
        self._skipped = ()
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
        due = self.watch.due()
        if due is None or not due[1]:
            return
        # One thread rescans; the others keep using the index as it was a moment ago.
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._scan(due[0])
        finally:
            self._lock.release()

    def _scan(self, sig):
        started = self.watch.clock.time_ns()
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
        self.watch.scanned(sig, started)
        for name, why in skipped:
            if (name, why) not in self._reported:
                self._reported.add((name, why))
                log.warning("%s: ignored: %s", os.path.join(self.path, name), why)


def signature(st):
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_whole(path, max_bytes=LIMITS["max_file_bytes"], recheck=0.0, sleep=None):
    """Read a whole file, again if it changed while being read or within `recheck`
    seconds after (waiting with `sleep`: a clock's). Raises OSError."""
    sleep = sleep or time.sleep
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
                sleep(recheck)
                later = os.fstat(f.fileno())
            else:
                later = after
        if signature(before) == signature(after) == signature(later) and \
                len(data) == after.st_size:
            return data, after
        sleep(0.01)
    raise OSError(errno.EAGAIN, "kept changing while being read")


