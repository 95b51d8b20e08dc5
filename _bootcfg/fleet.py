"""One fleet view across replicas (-peers): /status and /status.json merge the
boot records of every replica behind a load balancer.

Each replica keeps the records of the machines that reached it. With -peers,
reading /status asks every peer, in parallel and with a short timeout, for its
*local* records (`/status.json?local=1`: raw records, never merged, so replicas
asking each other cannot loop), and merges them with this replica's own: one
record per machine, the one with the newest step winning, each naming the
replica that saw it. A peer that does not answer is named in a banner; the page
still renders from what answered. A replica that dies takes its records along:
they come back as its machines ask again.
"""

import collections
import json
import threading
import time
import urllib.error
import urllib.request

LOCAL_QUERY = "/status.json?local=1"


def export_local(records, replica):
    """This replica's raw records as JSON, for its peers."""
    return (json.dumps({"replica": replica, "records": records},
                       default=list, separators=(",", ":")) + "\n").encode()


def _revive(rec, replica):
    """A record as a peer exported it, in the shape status_page renders."""
    rec = dict(rec, replica=replica)
    rec["previous"] = collections.deque(rec.get("previous") or (), maxlen=3)
    attempt = rec.get("attempt")
    if attempt is not None:
        rec["attempt"] = dict(attempt, expects=[tuple(e) for e in attempt.get("expects", ())])
    return rec


def fetch(url, timeout):
    """(replica name, [records]) from one peer; raises OSError or ValueError."""
    with urllib.request.urlopen(url.rstrip("/") + LOCAL_QUERY, timeout=timeout) as r:
        body = json.loads(r.read().decode("utf-8"))
    replica = str(body.get("replica") or url)
    records = body.get("records")
    if not isinstance(records, list):
        raise ValueError("no records in its answer")
    return replica, [_revive(rec, replica) for rec in records
                     if isinstance(rec, dict) and "key" in rec and "last" in rec]


def ask_peers(peers, timeout):
    """([records of every peer that answered], [problems for those that did
    not]), all peers asked at once, none waited for longer than `timeout`."""
    results = {}

    def one(url):
        try:
            results[url] = fetch(url, timeout)
        except urllib.error.HTTPError as e:
            results[url] = "answered %d %s" % (e.code, e.reason)
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e       # URLError wraps the OSError
            results[url] = getattr(reason, "strerror", None) or str(reason) or \
                reason.__class__.__name__

    threads = [threading.Thread(target=one, args=(url,), daemon=True) for url in peers]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout + 0.5     # one deadline for all of them
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    records, problems = [], []
    for url in peers:
        found = results.get(url)
        if isinstance(found, tuple):
            records.extend(found[1])
        else:
            problems.append("peer %s did not answer (%s): its machines are missing below"
                            % (url, found or "timed out"))
    return records, problems


def merge(local, replica, others):
    """One record per machine key, the newest (greatest `last`) winning; local
    records are named after `replica`."""
    best = {}
    for rec in [dict(r, replica=replica) for r in local] + list(others):
        held = best.get(rec["key"])
        if held is None or rec["last"] > held["last"]:
            best[rec["key"]] = rec
    return list(best.values())
