"""Boot tracking: which machines got how far, for /status and /status.json.

Every answer that is a step of a boot becomes an event (`Tracker.observe`, from
`App.record`): chainload scripts, boot scripts (/ipxe, /pixiecore, /grub),
cloud-configs and Ignition configs, and image and TFTP downloads. An event is
queued in this process; with -workers a thread moves the queue, in batches, to
this worker's ring in shared memory (shared.py). `Tracker.view()` replays the
events it has not seen yet (every worker's ring) into one record per machine
(by MAC, else UUID, else client address), so every worker shows the same fleet
and a replaced worker's events are not lost. No lock is shared per request, and
nothing is formatted per request: view() does that, when /status is read.

Downloads and chainloads name no machine: they are tied to the machine that
next (or last) fetched a boot script from the same client address. A boot
script starts a new attempt; the steps it expects follow from its config: the
kernel and initrds this bootcfg serves, and a cloud-config or Ignition URL
pointing at it.
"""

import collections
import marshal
import threading
import time

from _bootcfg.answers import printable
from _bootcfg.machine import record_key
from _bootcfg.repeat import Repeat

STATES = ("booting", "handed off", "stuck", "failed")
_FIELDS = ("t", "kind", "route", "client", "uuid", "mac", "hostname", "serial", "arch",
           "platform", "status", "file", "path", "sent", "total", "ms", "expects", "problem")
PENDING_SECONDS = 600      # early steps (shim, GRUB, chainload) wait this long for a script


def _clean(value, limit=160):
    """A field as it can be shown: printable, bounded. Plain printable ASCII
    (nearly everything) takes the fast path."""
    text = value if type(value) is str else str(value)
    if len(text) <= limit and text.isascii() and text.isprintable():
        return text
    return printable(text, limit)


class Tracker:
    """Boot records from events. A request pays for one tuple and one append to
    this process's queue; view() (when /status is read) cleans and replays what
    came since. With `shared` (a shared.Shared: -workers) a thread of each worker
    moves its queue every `flush_seconds` into the worker's ring in shared
    memory, marshalled in batches (0.1 us an event, against 0.6 us one by one),
    and view() replays every worker's ring. At most `queued_events` wait in the
    queue, and the ring holds what it holds: a longer storm with nobody reading
    /status shows its latest events."""

    def __init__(self, shared=None, stuck_after=120.0, max_machines=10000,
                 queued_events=65536, flush_seconds=0.2):
        self.shared = shared
        self.stuck_after = stuck_after
        self.max_machines = max_machines
        self.records = collections.OrderedDict()      # key -> record dict
        self._pending = collections.OrderedDict()     # client -> [early steps]
        self._client_machine = collections.OrderedDict()   # client -> key
        self._queue = collections.deque(maxlen=queued_events)
        self._positions = [0] * (shared.slots if shared is not None else 0)
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._flusher = None
        if shared is not None:
            self._flusher = Repeat(flush_seconds, self.flush, "status-flush", last=True)

    def close(self):
        """Stop the flush thread (after one last flush)."""
        if self._flusher is not None:
            self._flusher.close()
            self._flusher = None

    # ------------------------------------------------------------ writing

    def observe(self, kind, route, req, resp, sent, ms, expects=(), problem=""):
        """Record one answer that is a boot step: `kind` is what its route
        records (app.Route.records: chain, script, config or file)."""
        if req is None:
            return
        get = req.query.get
        uuid, mac = resp.machine if resp.machine else ("", "")
        self._queue.append((time.time(), kind, route, req.client, uuid, mac,
                            get("hostname", ""), get("serial", ""), get("arch", ""),
                            get("platform", ""), resp.status, resp.matched, req.path,
                            sent, resp.length, ms, expects, problem))   # atomic

    def flush(self):
        """Move the queued events to this worker's ring (with `shared`)."""
        with self._flush_lock:
            events = _take(self._queue)
            size = self.shared.max_payload
            for start in range(0, len(events), _BATCH):
                for data in _batches(events[start:start + _BATCH], size):
                    self.shared.append(data)
                time.sleep(0)       # let requests have the interpreter between batches

    # ------------------------------------------------------------ reading

    def view(self):
        """Bring the records up to date with every new event (every worker's)."""
        with self._lock:
            if self.shared is None:
                events = _take(self._queue)
            else:
                self.flush()                      # this worker's own, at once
                events = []
                for slot in range(len(self._positions)):
                    packed, self._positions[slot] = self.shared.events_since(
                        slot, self._positions[slot])
                    for data in packed:
                        events += _unpack(data)
            for event in events:
                ev = _fields(event)
                if ev is not None:
                    self._apply(ev)
            return list(self.records.values())

    def _apply(self, ev):
        t = ev["t"]
        client = ev["client"]
        step = {"step": ev["route"], "status": ev["status"], "file": ev["file"],
                "ms": ev["ms"], "bytes": ev["sent"], "total": ev["total"],
                "at": t, "path": ev["path"], "problem": ev["problem"]}
        step["complete"] = step["bytes"] >= 0 and step["status"] < 400
        kind = ev["kind"]
        if kind == "chain":
            step["step"] = "chainload"
            self._add_pending(client, step, t)
        elif kind == "script":
            step["step"] = "boot script"
            key = record_key(ev["uuid"], ev["mac"], client)
            rec = self._record(key, ev, t)
            early = [s for s in self._pending.pop(client, []) if t - s["at"] < PENDING_SECONDS]
            if rec["attempt"] is not None:
                rec["previous"].appendleft(summary(rec["attempt"], self.stuck_after, t))
            expects = ev["expects"]
            rec["attempt"] = {"started": (early[0]["at"] if early else t), "steps": [],
                              "expects": expects, "progressed": t,
                              "via": ev["route"].replace("tftp:", "TFTP ")}
            for s in early + [step]:
                self._add_step(rec, s)
            self._client_machine[client] = key
            self._client_machine.move_to_end(client)
            _trim(self._client_machine, 2 * self.max_machines)
        elif kind == "config":
            step["step"] = {"/generic": "generic", "/metadata": "metadata"}.get(
                ev["route"], "ignition" if "ignition" in ev["route"] else "cloud-config")
            key = record_key(ev["uuid"], ev["mac"], self._client_machine.get(client) or client)
            rec = self._record(key, ev, t)
            self._add_step(rec, step)
        else:                                        # a file download
            key = self._client_machine.get(client)
            rec = self.records.get(key) if key else None
            pending = self._pending.get(client)
            if rec is None or rec["attempt"] is None or (
                    pending and pending[-1]["at"] > rec["attempt"]["started"]):
                step["step"] = "file " + step["path"].rsplit("/", 1)[-1]
                self._add_pending(client, step, t)
                return
            step["step"] = _step_name(rec["attempt"]["expects"], step["path"])
            self._add_step(rec, step)
            self.records.move_to_end(key)
            rec["last"] = t

    def _add_pending(self, client, step, t):
        steps = self._pending.setdefault(client, [])
        steps.append(step)
        del steps[:-20]
        self._pending.move_to_end(client)
        _trim(self._pending, 2 * self.max_machines)

    def _record(self, key, ev, t):
        rec = self.records.get(key)
        if rec is None:
            rec = {"key": key, "first": t, "attempt": None,
                   "previous": collections.deque(maxlen=3)}
            self.records[key] = rec
            _trim(self.records, self.max_machines)
        self.records.move_to_end(key)
        rec["last"] = t
        rec["client"] = ev["client"]
        for name in ("uuid", "mac", "hostname", "serial", "arch", "platform"):
            if ev[name]:
                rec[name] = ev[name]
        return rec

    def _add_step(self, rec, step):
        attempt = rec["attempt"]
        if attempt is None:
            attempt = rec["attempt"] = {"started": step["at"], "steps": [], "expects": [],
                                        "progressed": step["at"], "via": ""}
        steps = attempt["steps"]
        for i, old in enumerate(steps):            # a retried step replaces the try
            if old["step"] == step["step"]:
                del steps[i]
                break
        steps.append(step)
        del steps[:-30]
        attempt["progressed"] = step["at"]


# ------------------------------------------------------------ events

_NUMBERS = {"t": float, "status": int, "sent": int, "total": int, "ms": float}

# What gives way, in this order, when an event is too long for a ring entry.
_TRIM_FIRST = ("problem", "serial", "hostname", "path", "file", "platform", "arch",
               "route", "client")
_BATCH = 64            # events marshalled together, at most, into one ring entry


def _take(queue):
    """Everything queued so far, oldest first (others may append meanwhile)."""
    out = []
    while queue:
        out.append(queue.popleft())
    return out


def _batches(events, size):
    """Ring entries of at most `size` bytes holding `events` (marshal: the workers
    are one program, and this memory is theirs alone), halving a batch that is
    too big; a single event too long loses its least needed text first, its
    expected steps last."""
    data = marshal.dumps(events)
    if len(data) <= size:
        return [data]
    if len(events) > 1:
        half = len(events) // 2
        return _batches(events[:half], size) + _batches(events[half:], size)
    values = [v[:161] if type(v) is str else v for v in events[0]]   # _clean keeps 160
    data = marshal.dumps([tuple(values)])
    for name in _TRIM_FIRST + ("expects",):
        i = _FIELDS.index(name)
        while values[i] and len(data) > size:
            if name == "expects":
                values[i] = values[i][:-1]
            else:
                keep = max(0, len(values[i]) - (len(data) - size) - 3)
                values[i] = values[i][:keep] + "..." if keep else ""
            data = marshal.dumps([tuple(values)])
    return [data]


def _unpack(data):
    """The events a ring entry holds ([] if it holds none)."""
    try:
        events = marshal.loads(data)
    except (ValueError, EOFError, TypeError):
        return []
    if type(events) is not list:
        return []
    return [e for e in events if type(e) is tuple and len(e) == len(_FIELDS)]


def _fields(event):
    """An event as observe() saw it, as a dict of clean fields: printable,
    bounded text (cleaned here, when /status is read, not per request)."""
    ev = dict(zip(_FIELDS, event))
    try:
        for name, kind in _NUMBERS.items():
            ev[name] = kind(ev[name])
        ev["expects"] = [(_clean(step), _clean(path)) for step, path in ev["expects"]]
    except (TypeError, ValueError):
        return None
    for name, value in ev.items():
        if name not in _NUMBERS and name != "expects":
            ev[name] = _clean(value)
    ev["ms"] = round(ev["ms"], 1)
    return ev


def _trim(ordered, limit):
    while len(ordered) > limit:
        ordered.popitem(last=False)


def _step_name(expects, path):
    """The expected step a downloaded path is (kernel, initrd x), else file x."""
    name = path.rsplit("/", 1)[-1]
    for step, expected in expects:
        if expected.lstrip("/") == path.lstrip("/") or \
                ("/images/" + path.lstrip("/")) == expected or \
                expected.rsplit("/", 1)[-1] == name and step != "cloud-config":
            return step
    return "file " + name


def state(attempt, stuck_after, now):
    """(state, problem) of an attempt."""
    if attempt is None:
        return "booting", ""
    steps = {s["step"]: s for s in attempt["steps"]}
    for s in attempt["steps"]:
        if s["status"] >= 400:
            return "failed", "%s: %d %s%s" % (s["step"], s["status"], s["file"] or s["path"],
                                               " (%s)" % s["problem"] if s["problem"] else "")
        if s["bytes"] < 0 or (s["step"] != "boot script" and s["status"] == 200 and
                              s["total"] and s["bytes"] < s["total"]):
            return "failed", "%s: cut off after %s of %d bytes" % (
                s["step"], max(s["bytes"], 0) if s["bytes"] >= 0 else "some", s["total"])
    done = all(step in steps and steps[step]["complete"] for step, _ in attempt["expects"])
    if "boot script" in steps and done:
        return "handed off", ""
    if now - attempt["progressed"] > stuck_after:
        waiting = [step for step, _ in attempt["expects"] if step not in steps]
        return "stuck", "no progress for %ds%s" % (
            now - attempt["progressed"], "; waiting for " + ", ".join(waiting) if waiting else "")
    return "booting", ""


def summary(attempt, stuck_after, now):
    st, problem = state(attempt, stuck_after, now)
    return {"started": attempt["started"], "state": st, "problem": problem,
            "steps": len(attempt["steps"]), "expected": len(attempt["expects"])}
