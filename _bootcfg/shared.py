"""Memory every bootcfg process shares: one anonymous mapping made before the
first fork, so with -workers N every worker sees what the others did.

    header      worker restarts (written by the master only)
    per slot    a counters snapshot (its worker's /metrics counters, republished
                every second) and a ring of boot events (what /status is made of)

No lock is shared between processes, and none is taken per event: each slot
has one writing process (the worker in that slot), its threads number their
events from one counter, and readers check a sequence number around every read,
so a half-written entry is skipped, never misread. A replacement worker takes over its slot's ring and counters, so
nothing is lost when a worker dies.
"""

import itertools
import json
import mmap
import struct
import threading

_Q = struct.Struct("<Q")
_ENTRY = struct.Struct("<QH")          # sequence, payload length
HEADER = 4096


class Shared:
    def __init__(self, slots=1, ring_events=1024, event_size=16384, counters_size=256 << 10):
        self.slots = slots
        self.ring_events, self.event_size = ring_events, event_size
        self.counters_size = counters_size
        self.ring_size = 64 + ring_events * event_size
        self.slot_size = counters_size + self.ring_size
        # Anonymous and shared: pages never written cost no memory.
        self._map = mmap.mmap(-1, HEADER + slots * self.slot_size)
        self.slot = 0                   # the slot this process writes; set after fork
        self._next = None               # numbers this process's events, from its slot's count
        self._lock = threading.Lock()

    # ------------------------------------------------------------ master's counts

    @property
    def worker_restarts(self):
        return _Q.unpack_from(self._map, 0)[0]

    def add_restart(self):
        _Q.pack_into(self._map, 0, self.worker_restarts + 1)

    # ------------------------------------------------------------ event rings

    def _ring(self, slot):
        return HEADER + slot * self.slot_size + self.counters_size

    @property
    def max_payload(self):
        """The most bytes one ring entry holds (a batch of events)."""
        return self.event_size - _ENTRY.size

    def append(self, payload):
        """Add one entry (bytes, cut to max_payload) to this process's ring. No lock:
        each entry takes its own number (next() of a counter is atomic under the
        GIL), and an entry becomes valid only when its sequence number is written."""
        payload = payload[:self.max_payload]
        base = self._ring(self.slot)
        if self._next is None:
            with self._lock:
                if self._next is None:    # continue the slot's count (a replaced worker)
                    self._next = itertools.count(_Q.unpack_from(self._map, base)[0])
        n = next(self._next)
        at = base + 64 + (n % self.ring_events) * self.event_size
        _ENTRY.pack_into(self._map, at, 0, 0)                     # invalid while written
        self._map[at + _ENTRY.size:at + _ENTRY.size + len(payload)] = payload
        _ENTRY.pack_into(self._map, at, n + 1, len(payload))
        if _Q.unpack_from(self._map, base)[0] < n + 1:
            _Q.pack_into(self._map, base, n + 1)

    def events_since(self, slot, position):
        """(payloads written to `slot`'s ring from `position` on, new position).
        Events overwritten before they were read are skipped."""
        base = self._ring(slot)
        count = _Q.unpack_from(self._map, base)[0]
        position = max(position, count - self.ring_events)
        out = []
        for n in range(position, count):
            at = base + 64 + (n % self.ring_events) * self.event_size
            seq, length = _ENTRY.unpack_from(self._map, at)
            data = bytes(self._map[at + _ENTRY.size:at + _ENTRY.size + length])
            if seq == n + 1 and _ENTRY.unpack_from(self._map, at)[0] == seq:
                out.append(data)
        return out, max(position, count)

    # ------------------------------------------------------------ counters

    def publish(self, counters):
        """Store this process's counters (a JSON-able dict) for the others."""
        data = json.dumps(counters, separators=(",", ":")).encode()
        base = HEADER + self.slot * self.slot_size
        if len(data) > self.counters_size - 16:
            return False                  # far more series than bootcfg makes
        seq = _Q.unpack_from(self._map, base)[0]
        _Q.pack_into(self._map, base, seq + 1)                    # odd: being written
        _Q.pack_into(self._map, base + 8, len(data))
        self._map[base + 16:base + 16 + len(data)] = data
        _Q.pack_into(self._map, base, seq + 2)
        return True

    def counters(self, slot):
        """The counters `slot` last published ({} if none or mid-write)."""
        base = HEADER + slot * self.slot_size
        for _ in range(3):
            seq = _Q.unpack_from(self._map, base)[0]
            if seq == 0:
                return {}
            length = _Q.unpack_from(self._map, base + 8)[0]
            data = bytes(self._map[base + 16:base + 16 + length])
            if seq % 2 == 0 and _Q.unpack_from(self._map, base)[0] == seq:
                try:
                    return json.loads(data)
                except ValueError:
                    return {}
        return {}
