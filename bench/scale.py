#!/usr/bin/env python3
"""Lookup cost against fleet size: 10, 10,000 and 100,000 machine files.

Prints, per size: time to build the directory index once, store.lookup cost in
microseconds (in process), /ipxe requests/s over one keep-alive connection to
a real bootcfg process, and how long `bootcfg check` takes over the whole data
directory. Not a test: figures depend on the machine.

    python3 bench/scale.py [--sizes 10,10000,100000] [--seconds 3]
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


def build(root, n):
    d = os.path.join(root, "boot", "mac")
    os.makedirs(d)
    for i in range(n):
        with open(os.path.join(d, mac(i).replace(":", "-")), "w") as f:
            json.dump({"kernel": "/images/k", "initrd": ["/images/i"],
                       "cmdline": {"machine": str(i)}}, f)
    with open(os.path.join(root, "boot", "default"), "w") as f:
        json.dump({"kernel": "/images/k"}, f)
    past = time.time() - 10   # as if written a while ago: nothing left to settle
    for name in os.listdir(d):
        os.utime(os.path.join(d, name), (past, past))
    os.utime(d, (past, past))


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
            assert st.lookup("boot", None, k).match.how == "mac"
        count += len(keys)
    return index_ms, (time.perf_counter() - t0) / count * 1e6


def http_figures(root, n, seconds):
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
        return count / (time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10,10000,100000")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print("%-10s %14s %18s %16s %28s" % ("machines", "index build", "store.lookup",
                                          "HTTP /ipxe", "bootcfg check"))
    base = None
    for n in sizes:
        with tempfile.TemporaryDirectory() as root:
            build(root, n)
            index_ms, lookup_us = store_figures(root, n, args.seconds)
            rps = http_figures(root, n, args.seconds)
            t0 = time.perf_counter()
            findings = [f for f in check.check(bootcfg.make_app(root, None))
                        if f.severity == "error"]
            check_s = time.perf_counter() - t0
            assert not findings, findings[:3]
        base = base or rps
        print("%-10d %11.1f ms %15.1f us %9.0f req/s (%.2fx of %d) %9.2f s"
              % (n, index_ms, lookup_us, rps, rps / base, sizes[0], check_s))


if __name__ == "__main__":
    main()
