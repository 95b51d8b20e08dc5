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
whatever the number of machines.

Reading files (the cache, the settle and last-good rule, watching directories,
the clock) is _bootcfg/files.py's; this module is selection. No HTTP in here.
The store is given one parse function per kind.
"""

import logging
import os
import threading
from typing import NamedTuple, Optional, Tuple

from _bootcfg import machine, settings
from _bootcfg.files import SYSTEM_CLOCK, Files, LoadError, read_whole, signature

__all__ = ["FileStore", "LoadError", "Lookup", "Match", "Step", "Candidate", "read_whole",
           "KINDS", "GROUP_KINDS", "STORE_LIMITS", "groups_key"]

log = logging.getLogger("bootcfg.store")

KINDS = ("boot", "cloud", "ignition")          # the seed layout's kinds
GROUP_KINDS = KINDS + ("generic", "metadata")   # what a group's profile can answer

# The store's tunables: their defaults, and why each is safe, are in the settings
# table (the -settle-seconds ... -cache-bytes flags).
STORE_LIMITS = {name: settings.LIMITS[name] for name in settings.STORE_LIMIT_NAMES}

# The identity of a machine (MAC and UUID spellings) is machine.py's alone.
KEY_PARSERS = machine.KEYS


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

    def __init__(self, root, parsers, limits=None, clock=SYSTEM_CLOCK):
        self.root = os.path.abspath(root)
        self.parsers = dict(parsers)
        self.limits = dict(STORE_LIMITS, **(limits or {}))
        self.files = Files(self.root, self.limits, clock)
        self.load = self.files.load
        self.max_bytes = self.files.max_bytes
        self.log_problems = self.files.log_problems
        self._indexes = {}
        for kind in self.parsers:
            for how in ("uuid", "mac"):
                path = os.path.join(self.root, kind, how)
                self._indexes[kind, how] = self.files.keys(path, KEY_PARSERS[how])
        self.groups = _GroupIndex(os.path.join(self.root, "groups"),
                                  self.parsers.get("group"), self.files)

    @property
    def load_errors_total(self):
        return self.files.load_errors_total

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
        stale = self.files.stale_count()
        self.groups.refresh()
        return {"load_errors_total": self.load_errors_total,
                "stale": stale + len(self.groups.stale),
                "groups": len(self.groups.files), "groups_invalid": len(self.groups.broken)}

    def scan(self, kind, how):
        """The directory index of kind/how: canonical key -> file name, plus the
        file names that were skipped and why (for `check`)."""
        return self._indexes[kind, how].snapshot()

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

    def __init__(self, path, parse, cache):
        self.path, self.parse, self.cache = path, parse, cache    # cache: a files.Files
        self.limits, self.clock = cache.limits, cache.clock
        self.watch = cache.watch(path)
        self.files = {}                 # file name -> _GroupFile
        self.broken = {}                # "groups/<name>" -> reason
        self.stale = set()              # "groups/<name>"
        self._by = {"uuid": {}, "mac": {}}
        self._general = []
        self._pending = set()
        self._swept_at = -1e9
        self._lock = threading.Lock()
        if parse is not None:
            self._scan(self.watch.signature(), True)

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
        due = self.watch.due()
        if due is None:
            return
        sig, changed = due
        now = self.clock.monotonic()
        every = max(self.limits["group_sweep_seconds"],
                    len(self.files) * self.limits["group_sweep_us_per_file"] / 1e6)
        if not changed and not self._pending and now - self._swept_at < every:
            return
        if not self._lock.acquire(blocking=False):
            return      # another thread is at it; use the index as it was
        try:
            self._scan(sig, changed)
        finally:
            self._lock.release()

    def _scan(self, sig, list_dir):
        started = self.clock.time_ns()
        now = self.clock.monotonic()
        if list_dir:
            names = []
            if sig is not None:
                try:
                    names = [e.name for e in os.scandir(self.path)
                             if e.name.endswith(".json") and not e.name.startswith(".")]
                except OSError as e:
                    log.warning("%s: cannot list: %s", self.path, e)
                    names = list(self.files)
            self.watch.scanned(sig, started)
        else:
            names = list(self.files)
        self._swept_at = now
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
        sig = signature(st)
        if old is not None and old.sig == sig:
            return False
        good = old.good if old is not None else None
        # Read without the truncation recheck first (it sleeps: 100,000 group files
        # would take minutes to start); a file caught mid-truncation does not parse,
        # and only then is it read again with the recheck.
        for recheck in (0.0, self.limits["recheck_seconds"]):
            try:
                data, st = self.cache.read(full, self.limits["max_file_bytes"], recheck)
                value, error = self.parse(data), None
                break
            except (OSError, ValueError) as e:
                value, error = None, getattr(e, "strerror", None) or str(e)
                if isinstance(e, FileNotFoundError):
                    break
        if self.cache.settling(st) and (error is not None or good is not None):
            pending.add(name)       # maybe half-written: keep what we had, look again
            return False
        self.files[name] = _GroupFile(signature(st), value if error is None else good, error)
        if error is not None:
            self.cache.load_errors_total += 1
            log.warning("%s: %s; %s", full, error,
                        "serving its last good version until it is fixed" if good is not None
                        else "skipped: the machines it selects are unknown, so catch-all "
                             "answers are refused until it is fixed",
                        extra={"fields": {"file": full, "reason": error}})
        else:
            self.cache.log_problems(full, value)
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


def _short(text, limit=64):
    text = repr(text)
    return text if len(text) <= limit else text[:limit] + "..."
