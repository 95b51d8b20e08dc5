"""-workers N as operators run it: a master process that serves nothing, N worker
processes on the same sockets, dead workers replaced, crash loops backed off."""

import pytest
import os
import re
import signal
import subprocess
import threading
import time

from helpers import MAC1, boot_json, write

pytestmark = pytest.mark.cli


def children_of(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], stdout=subprocess.PIPE, text=True)
    return sorted(int(p) for p in out.stdout.split())


def wait_children(pid, count, timeout=5, exclude=()):
    deadline = time.monotonic() + timeout
    while True:
        kids = [k for k in children_of(pid) if k not in exclude]
        if len(kids) == count:
            return kids
        assert time.monotonic() < deadline, "children of %d: %s" % (pid, kids)
        time.sleep(0.02)


def gone_or_zombie(pid):
    try:
        return open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_workers_share_the_port_and_stop_together(start_server, data_dir):
    s = start_server("-data-path", str(data_dir), "-workers", "3")
    assert s.wait_log("3 worker processes")
    kids = wait_children(s.proc.pid, 3)           # the master itself serves nothing
    for _ in range(60):                          # new connections land on every process
        status, _, body = s.get("/ipxe?mac=" + MAC1)
        assert status == 200 and b"tag=mac1" in body
    write(str(data_dir / "boot/mac/52-54-00-89-D8-10"), boot_json(tag="edited"))
    deadline = time.monotonic() + 2
    while True:                                  # every worker's store sees the edit
        bodies = {s.get("/ipxe?mac=" + MAC1)[2] for _ in range(30)}
        if all(b"tag=edited" in b for b in bodies):
            break
        assert time.monotonic() < deadline, bodies
        time.sleep(0.05)
    assert s.stop(signal.SIGTERM) == 0           # SIGTERM to the master stops them all
    assert all(gone_or_zombie(pid) for pid in kids)
    assert s.log().count("stopping") == 1 and "Traceback" not in s.log()


def test_killed_worker_is_replaced_under_load(start_server, data_dir):
    s = start_server("-data-path", str(data_dir), "-workers", "2", "-log-level", "warning")
    assert s.wait_log("2 worker processes")
    kids = wait_children(s.proc.pid, 2)
    results = []                                 # (time, ok) of every request
    stop = threading.Event()

    def load():
        while not stop.is_set():
            try:
                ok = s.get("/ipxe?mac=" + MAC1)[0] == 200
            except OSError:
                ok = False
            results.append((time.monotonic(), ok))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        os.kill(kids[0], signal.SIGKILL)
        killed_at = time.monotonic()
        m = s.wait_log(r"worker %d was killed by SIGKILL after [\d.]+s; replacing it$"
                       % kids[0])
        assert m, s.log()
        replacement = wait_children(s.proc.pid, 2, exclude=(kids[0],))
        replaced_at = time.monotonic()
        assert kids[1] in replacement and replaced_at - killed_at < 1.0
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    after = [ok for when, ok in results if when > replaced_at + 0.05]
    assert len(after) > 50 and all(after), "%d failed of %d after the replacement" % (
        after.count(False), len(after))
    restarts = [int(re.search(rb"bootcfg_worker_restarts_total (\d+)", s.get("/metrics")[2])
                    .group(1)) for _ in range(10)]
    assert set(restarts) == {1}, restarts         # every worker reads the master's count
    assert s.stop() == 0


def test_crash_loop_backs_off_then_master_exits(start_server, data_dir):
    """Every worker is killed as soon as it appears: the restarts slow down, and
    once each has died worker_crash_limit times in a row the master gives up
    with exit status 1, for systemd's Restart= to take over."""
    s = start_server("-data-path", str(data_dir), "-workers", "2")
    assert s.wait_log("2 worker processes")
    killed, deadline = set(), time.monotonic() + 30
    while s.proc.poll() is None and time.monotonic() < deadline:
        for pid in children_of(s.proc.pid):
            if pid not in killed and not gone_or_zombie(pid):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.01)
    assert s.proc.wait(5) == 1
    log = s.log()
    delays = [float(d) for d in re.findall(r"replacing it in ([\d.]+)s", log)]
    assert "replacing it\n" in log + "\n"          # the first death: at once
    assert delays and delays == sorted(delays) and max(delays) > min(delays), log
    assert re.search(r"every worker died 5 times in a row", log), log
    assert len(killed) == 2 * 5


def test_one_worker_is_one_process(start_server, data_dir):
    s = start_server("-data-path", str(data_dir), "-workers", "1")
    assert s.get("/")[0] == 200
    assert children_of(s.proc.pid) == []
