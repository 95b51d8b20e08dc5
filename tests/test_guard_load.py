"""The guard's load test: 2,000 slow connections from one address (a request
line, then a byte a second) while 500 machines boot from 500 other addresses.
With the guard no request of the storm fails and every slow connection is cut;
with it off (-header-timeout 0 -max-connections-per-client 0) the storm fails,
which proves the limits do the work. Real server processes (one, and -workers 4)
on loopback; bench/guard.py drives the same Flood and storm and prints timings."""

import os
import resource
import sys
import time

import pytest

from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
from guard import Flood, storm  # noqa: E402

pytestmark = pytest.mark.cli

SLOW, MACHINES = 2000, 500


@pytest.fixture(autouse=True)
def enough_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4 * SLOW:
        pytest.fail("the load test needs %d open files; the hard limit is %d"
                    % (4 * SLOW, hard))
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def cuts(server):
    status, _, body = server.get("/metrics")
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("bootcfg_connections_cut_total{"):
            out[line.split('"')[1]] = float(line.split()[-1])
    return out


@pytest.mark.parametrize("workers", ["1", "4"])
def test_a_slow_flood_from_one_address_fails_no_boot(start_server, data_dir, workers):
    s = start_server("-data-path", str(data_dir), "-workers", workers,
                     "-max-connections", "256", "-header-timeout", "3",
                     "-log-level", "warning")
    flood = Flood(s.host, s.port, "127.0.0.2", SLOW).start()
    try:
        assert flood.done_opening.wait(120)
        errors, _ = storm(s.host, s.port, MACHINES, at_once=50)
        assert errors == []
        deadline = time.monotonic() + 30          # the head deadline is 3 s
        while flood.open_now and time.monotonic() < deadline:
            time.sleep(0.2)
        assert flood.open_now == 0, "slow connections outlived the head deadline"
        assert flood.opened == SLOW and flood.refused == 0
        time.sleep(1.5)                           # workers publish counters each second
        counted = cuts(s)
        assert counted["header_timeout"] >= 1
        assert counted["header_timeout"] + counted["per_client"] == SLOW
    finally:
        flood.stop()


@pytest.mark.parametrize("workers", ["1", "4"])
def test_without_the_guard_the_same_flood_stops_the_storm(start_server, data_dir, workers):
    s = start_server("-data-path", str(data_dir), "-workers", workers,
                     "-max-connections", "256", "-header-timeout", "0",
                     "-max-connections-per-client", "0", "-log-level", "error")
    flood = Flood(s.host, s.port, "127.0.0.2", SLOW).start()
    try:
        assert flood.done_opening.wait(120)
        errors, _ = storm(s.host, s.port, MACHINES, at_once=50)
        assert len(errors) >= MACHINES                # every machine is refused
        assert flood.open_now >= 256                  # and the flood holds the server
    finally:
        flood.stop()
