"""FileStore: finds a machine's boot, cloud, Ignition or generic config in the data
directory, by one selection engine for two layouts:

    <root>/<kind>/uuid/<uuid>   <root>/<kind>/mac/<mac>   <root>/<kind>/default
    <root>/<kind>/shared/<name>                  (fragments several machines use)
    <root>/groups/*.json  <root>/profiles/<id>.json  <root>/{ignition,cloud,generic}/<file>

Every group is a candidate for every kind; a seed file is a candidate for its own
kind only, selecting {uuid}, {mac} or nothing (default). A candidate matches when
each of its selector's label=value pairs is among the request's labels; the best
match decides (`rank`: more pairs first, then matchbox's order of the sorted pairs
as text, greatest first, then a group before a seed file, then file name). So the
seed layout alone still goes uuid -> mac -> default. A group whose profile lacks
the kind answers "no match": never a weaker candidate. Groups are indexed by the
mac and uuid they select, so a lookup costs the same with 10 or 100,000 of them. Each
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
import stat
import threading
import time
from typing import NamedTuple, Optional, Tuple
from urllib.parse import unquote

from _bootcfg import machine, settings

log = logging.getLogger("bootcfg.store")

KINDS = ("boot", "cloud", "ignition")          # the seed layout's kinds
GROUP_KINDS = KINDS + ("generic", "metadata")   # what a group's profile can answer

# The store's tunables: their defaults, and why each is safe, are in the settings
# table (the -settle-seconds ... -cache-bytes flags).
STORE_LIMITS = {name: settings.LIMITS[name] for name in settings.STORE_LIMIT_NAMES}

# The identity of a machine (MAC and UUID spellings) is machine.py's alone.
KEY_PARSERS = machine.KEYS


class LoadError(Exception):
    """A config file exists but cannot be used and no good version was ever read."""

    def __init__(self, path, reason, line=None, col=None):
        super().__init__("%s: %s" % (path, reason))
        self.path, self.reason, self.line, self.col = path, reason, line, col


class Match(NamedTuple):
    path: str        # relative to the data root, e.g. "boot/mac/52-54-00-89-d8-10"
    how: str         # "uuid", "mac", "default" or "group"
    value: object    # parsed config, or the file's bytes
    stale: bool      # True when served from the last good copy
    group: object = None     # the winning Group, for how == "group"
    group_path: str = ""     # its file, e.g. "groups/install.json"


class Step(NamedTuple):
    how: str                 # "uuid", "mac", "default" or "group"
    path: Optional[str]      # the file looked at, None when the key was absent
    state: str               # "absent", "missing", "matched", "stale", "invalid"
    detail: str = ""


class Candidate(NamedTuple):
    """A group or seed file that may answer: `selector` is its sorted
    (label, value) pairs; `group` the parsed Group (None for a seed file)."""
    path: str
    how: str                 # "group", "uuid", "mac" or "default"
    selector: Tuple[Tuple[str, str], ...]
    group: object = None
    order: tuple = ()        # rank(), computed once for groups

    def matches(self, labels):
        return all(labels.get(k) == v for k, v in self.selector)

    def rank(self):
        """Sort key, best first: more pairs; then the pairs as text, greatest
        first (matchbox's order); a group before a seed file; the file name."""
        if self.order:
            return self.order
        text = ",".join("%s=%s" % kv for kv in self.selector)
        return (-len(self.selector), tuple(-ord(c) for c in text) + (1,),
                self.how != "group", self.path)


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
        self.groups = _GroupIndex(os.path.join(self.root, "groups"),
                                  self.parsers.get("group"), self.limits, self)

    def lookup(self, kind, uuid=None, mac=None):
        """Find the config for a machine known by `uuid` and `mac` (canonical or
        None): select() with those two labels."""
        labels = {}
        if uuid:
            labels["uuid"] = uuid
        if mac:
            labels["mac"] = mac
        return self.select(kind, labels)

    def select(self, kind, labels):
        """The config of `kind` for a machine with `labels` (query parameters; uuid
        and mac canonical): a Lookup whose trail has one step per candidate tried,
        best first. A group file that never parsed makes a catch-all winner an
        error: the machine it was meant for must not get the default system."""
        trail = []
        for cand in self.candidates(kind, labels):
            if not cand.selector and self.groups.broken:
                return self._broken_groups(trail, cand)
            if cand.how == "group":
                return self._from_group(kind, cand, trail)
            try:
                value, stale, problem = self.load(cand.path, self.parsers[kind], kind)
            except FileNotFoundError:
                trail.append(Step(cand.how, cand.path, "missing"))
                continue
            except LoadError as e:
                trail.append(Step(cand.how, cand.path, "invalid", e.reason))
                return Lookup(None, tuple(trail), e)
            trail.append(Step(cand.how, cand.path, "stale" if stale else "matched", problem))
            return Lookup(Match(cand.path, cand.how, value, stale), tuple(trail))
        return Lookup(None, tuple(trail))

    def candidates(self, kind, labels, everything=False):
        """The candidates for `kind` whose selectors `labels` satisfy, best first
        (with `everything`, all of them, matching or not: for `explain`)."""
        found = self.groups.candidates(labels, everything)
        seeds = []
        if kind in self.parsers and kind in KINDS:
            for how in ("uuid", "mac"):
                key = labels.get(how)
                name = self._indexes[kind, how].get(key) if key else None
                if name is not None:
                    seeds.append(Candidate("%s/%s/%s" % (kind, how, name), how,
                                           ((how, key),)))
                elif everything and key:
                    seeds.append(Candidate("%s/%s/%s" % (kind, how, key), how,
                                           ((how, key),)))
            seeds.append(Candidate("%s/default" % kind, "default", ()))
        if not found:
            return seeds        # uuid, mac, default: already in rank order
        found += seeds
        found.sort(key=Candidate.rank)
        return found

    def _broken_groups(self, trail, cand):
        path, reason = sorted(self.groups.broken.items())[0]
        error = LoadError(path, "never parsed (%s), so the machines it selects are unknown; "
                          "%s would answer them, and does not until it is fixed"
                          % (reason, cand.path))
        trail.append(Step(cand.how, cand.path, "invalid", error.reason))
        return Lookup(None, tuple(trail), error)

    def _from_group(self, kind, cand, trail):
        """The answer of `kind` from a winning group's profile: Match, no match
        (the profile has no such answer) or a LoadError."""
        group = cand.group
        prof_rel = "profiles/%s.json" % group.profile
        stale = cand.path in self.groups.stale
        try:
            profile, prof_stale, _ = self.load(prof_rel, self.parsers["profile"], "profile")
        except FileNotFoundError:
            error = LoadError(cand.path, "names profile %r, and %s does not exist"
                              % (group.profile, prof_rel))
            trail.append(Step("group", cand.path, "invalid", error.reason))
            return Lookup(None, tuple(trail), error)
        except LoadError as e:
            trail.append(Step("group", cand.path, "invalid", "%s: %s" % (prof_rel, e.reason)))
            return Lookup(None, tuple(trail), e)
        if kind == "boot":
            value, rel = profile.boot, prof_rel
        elif kind == "metadata":
            value, rel = group, cand.path
        else:
            name = profile.file(kind)
            value, rel = None, None
            if name:
                rel = "%s/%s" % (kind, name)
                try:
                    value, file_stale, _ = self.load(rel, self.parsers["profile:" + kind],
                                                     kind, key="profile:" + rel)
                    stale = stale or file_stale
                except FileNotFoundError:
                    error = LoadError(prof_rel, "%s names %s, which does not exist"
                                      % (groups_key(kind), rel))
                    trail.append(Step("group", cand.path, "invalid", error.reason))
                    return Lookup(None, tuple(trail), error)
                except LoadError as e:
                    trail.append(Step("group", cand.path, "invalid", e.reason))
                    return Lookup(None, tuple(trail), e)
        if value is None:
            trail.append(Step("group", cand.path, "matched", "profile %s has no %s"
                              % (group.profile, "boot" if kind == "boot" else
                                 groups_key(kind))))
            return Lookup(None, tuple(trail))
        trail.append(Step("group", cand.path, "stale" if stale or prof_stale else "matched"))
        return Lookup(Match(rel, "group", value, stale or prof_stale, group, cand.path),
                      tuple(trail))

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
        """Counts for /metrics: load errors seen, files served from a last good
        copy, group files that never parsed."""
        with self._lock:
            stale = sum(1 for e in self._cache.values()
                        if e.error is not None and e.good is not None)
        self.groups.refresh()
        return {"load_errors_total": self.load_errors_total,
                "stale": stale + len(self.groups.stale),
                "groups": len(self.groups.files), "groups_invalid": len(self.groups.broken)}

    def scan(self, kind, how):
        """The directory index of kind/how: canonical key -> file name, plus the
        file names that were skipped and why (for `check`)."""
        return self._indexes[kind, how].snapshot()

    def load(self, rel, parse, kind="boot", key=None):
        """(value, stale, problem) for one file. Raises FileNotFoundError when it
        does not exist, LoadError when it never parsed. `key` names its cache
        entry when one file is read two ways (a profile's Ignition template)."""
        path = os.path.join(self.root, rel)
        key = key or rel
        entry = self._cache.get(key)
        now = time.monotonic()
        if entry is not None and entry.error is None and \
                now - entry.checked < self.limits["file_check_seconds"]:
            try:
                self._cache.move_to_end(key)
            except KeyError:  # dropped by another thread just now
                pass
            return entry.good, False, ""
        st = os.stat(path)
        if entry is not None and entry.sig == _signature(st):
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


def groups_key(kind):
    """The profile key naming the file of `kind` (matchbox's field names)."""
    return kind + "_id"


class _GroupFile:
    __slots__ = ("sig", "good", "error")

    def __init__(self, sig, good, error):
        self.sig, self.good, self.error = sig, good, error


class _GroupIndex:
    """Every parsed group file of groups/, indexed by the uuid or mac it selects
    (groups selecting neither are kept in rank order). Rebuilt when the directory
    changes, and when a sweep of stat() calls finds a file changed in place. A file
    that never parsed is in `broken`; one served from its last good version is in
    `stale`; one still settling is looked at again on the next refresh."""

    def __init__(self, path, parse, limits, fs):
        self.path, self.parse, self.limits, self.fs = path, parse, limits, fs
        self.files = {}                 # file name -> _GroupFile
        self.broken = {}                # "groups/<name>" -> reason
        self.stale = set()              # "groups/<name>"
        self._by = {"uuid": {}, "mac": {}}
        self._general = []
        self._pending = set()
        self._sig = None
        self._racy = False
        self._checked_at = self._swept_at = self._scanned_at = -1e9
        self._lock = threading.Lock()
        if parse is not None:
            self._scan(self._dir_signature(), True)

    def candidates(self, labels, everything=False):
        if self.parse is None:
            return []
        self.refresh()
        if everything:
            return [c for c in self._general] + \
                [c for by in self._by.values() for cands in by.values() for c in cands]
        out = []
        for how in ("uuid", "mac"):
            key = labels.get(how)
            if key:
                out += [c for c in self._by[how].get(key, ()) if c.matches(labels)]
        for cand in self._general:
            if cand.matches(labels):
                out.append(cand)
                break
        return out

    def refresh(self):
        if self.parse is None:
            return
        now = time.monotonic()
        if now - self._checked_at < self.limits["dir_check_seconds"]:
            return
        self._checked_at = now
        sig = self._dir_signature()
        every = max(self.limits["group_sweep_seconds"],
                    len(self.files) * self.limits["group_sweep_us_per_file"] / 1e6)
        changed = sig != self._sig or (self._racy and now - self._scanned_at >=
                                       self.limits["rescan_seconds"])
        if not changed and not self._pending and now - self._swept_at < every:
            return
        if not self._lock.acquire(blocking=False):
            return      # another thread is at it; use the index as it was
        try:
            self._scan(sig, changed)
        finally:
            self._lock.release()

    def _dir_signature(self):
        try:
            st = os.stat(self.path)
            return (st.st_ino, st.st_mtime_ns)
        except OSError:
            return None

    def _scan(self, sig, list_dir):
        started = time.time_ns()
        now = time.monotonic()
        if list_dir:
            names = []
            if sig is not None:
                try:
                    names = [e.name for e in os.scandir(self.path)
                             if e.name.endswith(".json") and not e.name.startswith(".")]
                except OSError as e:
                    log.warning("%s: cannot list: %s", self.path, e)
                    names = list(self.files)
            self._scanned_at = now
            self._racy = sig is not None and \
                started - sig[1] < self.limits["racy_seconds"] * 1e9
        else:
            names = list(self.files)
        self._swept_at = now
        self._sig = sig
        dirty = False
        pending = set()
        for name in set(self.files) - set(names):
            del self.files[name]
            dirty = True
        for name in sorted(names):
            changed = self._read(name, pending)
            dirty = dirty or changed
        self._pending = pending
        if dirty:
            self._rebuild()

    def _read(self, name, pending):
        """Look at one group file again; True when what it contributes changed."""
        full = os.path.join(self.path, name)
        old = self.files.get(name)
        try:
            st = os.stat(full)
        except OSError:
            if old is not None:
                del self.files[name]
                return True
            return False
        sig = _signature(st)
        if old is not None and old.sig == sig:
            return False
        good = old.good if old is not None else None
        # Read without the truncation recheck first (it sleeps: 100,000 group files
        # would take minutes to start); a file caught mid-truncation does not parse,
        # and only then is it read again with the recheck.
        for recheck in (0.0, self.limits["recheck_seconds"]):
            try:
                data, st = read_whole(full, self.limits["max_file_bytes"], recheck)
                value, error = self.parse(data), None
                break
            except (OSError, ValueError) as e:
                value, error = None, getattr(e, "strerror", None) or str(e)
                if isinstance(e, FileNotFoundError):
                    break
        settling = 0 <= time.time() - st.st_mtime < self.limits["settle_seconds"]
        if settling and (error is not None or good is not None):
            pending.add(name)       # maybe half-written: keep what we had, look again
            return False
        self.files[name] = _GroupFile(_signature(st), value if error is None else good, error)
        if error is not None:
            self.fs.load_errors_total += 1
            log.warning("%s: %s; %s", full, error,
                        "serving its last good version until it is fixed" if good is not None
                        else "skipped: the machines it selects are unknown, so catch-all "
                             "answers are refused until it is fixed",
                        extra={"fields": {"file": full, "reason": error}})
        else:
            self.fs.log_problems(full, value)
            if old is not None:
                log.info("%s: %s, serving the new version", full,
                         "fixed" if old.error is not None else "changed")
        return True

    def _rebuild(self):
        by = {"uuid": {}, "mac": {}}
        general, broken, stale = [], {}, set()
        for name in sorted(self.files):
            entry = self.files[name]
            rel = "groups/" + name
            if entry.error is not None:
                if entry.good is None:
                    broken[rel] = entry.error
                    continue
                stale.add(rel)
            group = entry.good
            cand = Candidate(rel, "group", group.selector, group)
            cand = cand._replace(order=cand.rank())
            labels = dict(group.selector)
            key = "uuid" if "uuid" in labels else "mac" if "mac" in labels else None
            if key:
                by[key].setdefault(labels[key], []).append(cand)
            else:
                general.append(cand)
        general.sort(key=Candidate.rank)
        self._by, self._general, self.broken, self.stale = by, general, broken, stale


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
