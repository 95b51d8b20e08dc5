#!/usr/bin/env python3
"""Lookup cost against fleet size: 10, 10,000 and 100,000 machines, written as
seed files (boot/mac/<mac>) or as groups (groups/<n>.json selecting {mac}, all
naming one profile).

Prints, per layout and size: time to build the index once, store.lookup cost in
microseconds (in process), the time from starting a real bootcfg process to its
first answer, /ipxe requests/s over one keep-alive connection to it, and how long
`bootcfg check` takes over the whole data directory. Not a test: figures depend
on the machine.

    python3 bench/scale.py [--sizes 10,10000,100000] [--layouts seed,groups] [--seconds 3]
"""

import argparse
import http.client
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import bootcfg  # noqa: E402
from _bootcfg import check  # noqa: E402
from _bootcfg.app import make_store  # noqa: E402


def mac(i):
    return "52:54:%02x:%02x:%02x:%02x" % (i >> 24 & 255, i >> 16 & 255, i >> 8 & 255, i & 255)


def build(root, n, layout="seed"):
    d = os.path.join(root, "boot", "mac") if layout == "seed" else os.path.join(root, "groups")
    os.makedirs(d)
    if layout == "groups":
        os.makedirs(os.path.join(root, "profiles"))
        with open(os.path.join(root, "profiles", "p.json"), "w") as f:
            json.dump({"id": "p", "boot": {"kernel": "/images/k", "initrd": ["/images/i"],
                                           "args": ["machine=1"]}}, f)
    for i in range(n):
        if layout == "seed":
            with open(os.path.join(d, mac(i).replace(":", "-")), "w") as f:
                json.dump({"kernel": "/images/k", "initrd": ["/images/i"],
                           "cmdline": {"machine": str(i)}}, f)
        else:
            with open(os.path.join(d, "m%d.json" % i), "w") as f:
                json.dump({"id": "m%d" % i, "profile": "p", "selector": {"mac": mac(i)},
                           "metadata": {"hostname": "m%d" % i}}, f)
    os.makedirs(os.path.join(root, "boot"), exist_ok=True)
    with open(os.path.join(root, "boot", "default"), "w") as f:
        json.dump({"kernel": "/images/k"}, f)
    past = time.time() - 10   # as if written a while ago: nothing left to settle
    for folder, _, names in os.walk(root):
        for name in names:
            os.utime(os.path.join(folder, name), (past, past))
        os.utime(folder, (past, past))


def store_figures(root, n, seconds):
    t0 = time.perf_counter()
    st = make_store(root)
    index_ms = (time.perf_counter() - t0) * 1000
    keys = [mac(random.randrange(n)) for _ in range(2000)]
    for k in keys:                     # first read of each file fills the cache
        st.lookup("boot", None, k)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for k in keys:
            assert st.lookup("boot", None, k).match.how in ("mac", "group")
        count += len(keys)
    return index_ms, (time.perf_counter() - t0) / count * 1e6


def http_figures(root, n, seconds):
    """(seconds from start to the first answer, /ipxe requests/s)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bootcfg.py"),
                             "-address", "127.0.0.1:0", "-data-path", root,
                             "-log-level", "warning"], stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in proc.stderr:
            m = re.search(r"listening on http://[^:]+:(\d+)/", line)
            if m:
                port = int(m.group(1))
                break
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", "/ipxe?mac=" + mac(0))
        conn.getresponse().read()
        startup = time.perf_counter() - started
        paths = ["/ipxe?mac=" + mac(random.randrange(n)) for _ in range(2000)]
        for p in paths:
            conn.request("GET", p)
            conn.getresponse().read()
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for p in paths[:200]:
                conn.request("GET", p)
                r = conn.getresponse()
                r.read()
                assert r.status == 200
            count += 200
        return startup, count / (time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10,10000,100000")
    ap.add_argument("--layouts", default="seed,groups")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print("%-7s %-9s %12s %14s %10s %30s %12s" % (
        "layout", "machines", "index build", "store.lookup", "start-up", "HTTP /ipxe",
        "check"))
    first = None
    for layout in args.layouts.split(","):
        base = None
        for n in sizes:
            with tempfile.TemporaryDirectory() as root:
                build(root, n, layout)
                index_ms, lookup_us = store_figures(root, n, args.seconds)
                startup, rps = http_figures(root, n, args.seconds)
                t0 = time.perf_counter()
                findings = [f for f in check.check(bootcfg.make_app(root, None))
                            if f.severity == "error"]
                check_s = time.perf_counter() - t0
                assert not findings, findings[:3]
            base = base or rps
            first = first or rps
            print("%-7s %-9d %9.1f ms %11.1f us %8.2f s %9.0f req/s (%.2fx, %.2fx seed) "
                  "%9.2f s" % (layout, n, index_ms, lookup_us, startup, rps, rps / base,
                               rps / first, check_s))


if __name__ == "__main__":
    main()
