"""Counters for /metrics, in Prometheus' text exposition format (version 0.0.4).

Label values come from fixed sets (route names, status codes, match kinds), never
from request text, so the number of series stays bounded.
"""

import threading
import time
import types

from _bootcfg.repeat import Repeat

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """One process's counters. With -workers N (`shared`, a shared.Shared with
    several slots) each worker republishes its counters every second and /metrics
    shows the sum over all workers; a replacement worker starts from the counts
    its slot last published, so totals survive it."""

    def __init__(self, version, shared=None):
        self._lock = threading.Lock()
        self.version = version
        self.shared = shared
        self.open_connections = 0
        self.started = time.time()
        self.requests = {}        # (route, status) -> count
        self.bytes = {}           # route -> bytes of bodies sent
        self.lookups = {}         # (kind, match) -> count
        self.cuts = {}            # reason -> connections the guard closed
        self.unbound = {}         # reason -> config requests refused by -bind-configs
        self._publisher = None
        if shared is not None and shared.slots > 1:
            # a replacement worker continues its slot's counts
            _add(self, shared.counters(shared.slot), connections=False)
            self._publish()
            self._publisher = Repeat(1.0, self._publish, "metrics", last=True)

    def close(self):
        """Stop publishing (after one last publication)."""
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None

    def snapshot(self):
        with self._lock:
            return {"requests": [[r, s, n] for (r, s), n in self.requests.items()],
                    "bytes": [[r, n] for r, n in self.bytes.items()],
                    "lookups": [[k, m, n] for (k, m), n in self.lookups.items()],
                    "cuts": [[r, n] for r, n in self.cuts.items()],
                    "unbound": [[r, n] for r, n in self.unbound.items()],
                    "connections": self.open_connections}

    def _publish(self):
        self.shared.publish(self.snapshot())

    def totals(self):
        """These counters plus every other worker's last published ones."""
        total = types.SimpleNamespace(requests={}, bytes={}, lookups={}, cuts={}, unbound={},
                                      open_connections=0)
        _add(total, self.snapshot())
        if self.shared is not None and self.shared.slots > 1:
            for slot in range(self.shared.slots):
                if slot != self.shared.slot:
                    _add(total, self.shared.counters(slot))
        return total

    def request(self, route, status, sent, lookup=None):
        """One answer: `sent` body bytes (-1: the client went away); `lookup` is
        (config kind, what matched) when it answered a machine: uuid, mac,
        default, shared, none or invalid. One lock for all of it."""
        key = (route, str(status))
        with self._lock:
            self.requests[key] = self.requests.get(key, 0) + 1
            if sent > 0:
                self.bytes[route] = self.bytes.get(route, 0) + sent
            if lookup is not None:
                self.lookups[lookup] = self.lookups.get(lookup, 0) + 1

    def cut(self, reason):
        """A connection the guard closed (or refused), by reason: header_timeout,
        per_client, idle_at_max, tftp_per_client."""
        with self._lock:
            self.cuts[reason] = self.cuts.get(reason, 0) + 1

    def refused_unbound(self, reason):
        """A config request -bind-configs refused: no_lease, other_mac, uuid_only."""
        with self._lock:
            self.unbound[reason] = self.unbound.get(reason, 0) + 1

    def connection(self, delta):
        with self._lock:
            self.open_connections += delta

    def render(self, store_stats):
        """The exposition text. `store_stats` is FileStore.stats()."""
        total = self.totals()
        requests = sorted(total.requests.items())
        sent = sorted(total.bytes.items())
        lookups = sorted(total.lookups.items())
        out = []
        family(out, "bootcfg_build_info", "gauge", "bootcfg version; always 1.",
               [({"version": self.version}, 1)])
        family(out, "bootcfg_start_time_seconds", "gauge",
               "When this bootcfg process started, in Unix time.", [({}, self.started)])
        family(out, "bootcfg_requests_total", "counter",
               "HTTP requests answered, by route and status code.",
               [({"route": r, "status": s}, n) for (r, s), n in requests])
        family(out, "bootcfg_response_bytes_total", "counter",
               "Response body bytes sent, by route.",
               [({"route": r}, n) for r, n in sent])
        family(out, "bootcfg_machine_lookups_total", "counter",
               "Machines answered, by config kind (boot, cloud, ignition, generic, metadata) "
               "and what matched (uuid, mac, default, group, shared, none, invalid).",
               [({"kind": k, "match": m}, n) for (k, m), n in lookups])
        family(out, "bootcfg_config_load_errors_total", "counter",
               "Config files found unusable (each change of a file counts once).",
               [({}, store_stats["load_errors_total"])])
        family(out, "bootcfg_configs_stale", "gauge",
               "Config files currently served from their last good version because "
               "the file on disk is unusable.", [({}, store_stats["stale"])])
        family(out, "bootcfg_groups", "gauge",
               "Group files in groups/ that parsed (now or in a last good version).",
               [({}, store_stats.get("groups", 0) - store_stats.get("groups_invalid", 0))])
        family(out, "bootcfg_group_files_invalid", "gauge",
               "Group files that never parsed: their machines are unknown, so catch-all "
               "answers are refused (500) until they are fixed.",
               [({}, store_stats.get("groups_invalid", 0))])
        family(out, "bootcfg_connections_cut_total", "counter",
               "Connections closed or refused without an answer to keep one client from "
               "holding the server, by reason: header_timeout, per_client (over "
               "-max-connections-per-client), idle_at_max (an idle kept-alive connection "
               "closed at -max-connections), tftp_per_client (a TFTP request refused).",
               [({"reason": r}, n) for r, n in sorted(total.cuts.items())])
        family(out, "bootcfg_configs_refused_unbound_total", "counter",
               "Config requests answered 403 by -bind-configs, by reason: no_lease (the "
               "client holds no current lease), other_mac (it asked for another machine), "
               "uuid_only (the config is selected by UUID alone).",
               [({"reason": r}, n) for r, n in sorted(total.unbound.items())])
        family(out, "bootcfg_open_connections", "gauge",
               "Client connections currently open (all workers).",
               [({}, total.open_connections)])
        family(out, "bootcfg_worker_restarts_total", "counter",
               "Worker processes that died and were replaced (-workers N > 1).",
               [({}, self.shared.worker_restarts if self.shared is not None else 0)])
        return ("\n".join(out) + "\n").encode("utf-8")


def _add(target, snap, connections=True):
    """Add a snapshot's counts (Metrics.snapshot()) to `target`'s counters."""
    for r, s, n in snap.get("requests", ()):
        target.requests[r, s] = target.requests.get((r, s), 0) + n
    for r, n in snap.get("bytes", ()):
        target.bytes[r] = target.bytes.get(r, 0) + n
    for k, m, n in snap.get("lookups", ()):
        target.lookups[k, m] = target.lookups.get((k, m), 0) + n
    for name in ("cuts", "unbound"):
        counts = getattr(target, name)
        for r, n in snap.get(name, ()):
            counts[r] = counts.get(r, 0) + n
    if connections:
        target.open_connections += snap.get("connections", 0)


def family(out, name, kind, help_text, samples):
    out.append("# HELP %s %s" % (name, help_text.replace("\\", "\\\\").replace("\n", "\\n")))
    out.append("# TYPE %s %s" % (name, kind))
    for labels, value in samples:
        out.append("%s%s %s" % (name, format_labels(labels), format_value(value)))


def format_labels(labels):
    if not labels:
        return ""
    return "{%s}" % ",".join('%s="%s"' % (k, escape(v)) for k, v in sorted(labels.items()))


def escape(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value):
    if isinstance(value, float):
        return repr(value)
    return str(int(value))
