#!/usr/bin/env python3
"""The guard under load: a boot storm from many addresses while one address
holds thousands of slow connections (a request line, then a byte a second), and
what -bind-configs costs a request.

Prints, for one process and for -workers 4, with the guard's defaults and with
it off (-header-timeout 0 -max-connections-per-client 0): the storm's failed
requests and p50/p99, how the slow connections ended (cut to admit a newer one
of the same address, cut at the head deadline, refused while full), and how long
the last of them lived. Then server CPU per /cloud request without and with
-bind-configs (a 10,000-lease dnsmasq file). Not a test: tests/test_guard_load.py
runs the same Flood and storm and asserts outcomes.

    python3 bench/guard.py [--slow 2000] [--machines 500] [--at-once 50]
"""

import argparse
import http.client
import os
import re
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from versus_nginx import cpu_seconds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Flood:
    """`count` connections from `source`, each sending a request line and then a
    byte every `every` seconds, until the server closes it. One thread, epoll."""

    def __init__(self, host, port, source, count, every=1.0):
        self.address, self.source, self.count, self.every = (host, port), source, count, every
        self.opened = 0
        self.refused = 0           # connect failed, or an immediate 503
        self.answered = {}         # status line -> count (408, 503)
        self.lifetimes = []        # seconds each lived, for those the server closed
        self.open_now = 0
        self.done_opening = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(10)

    def _run(self):
        sel = selectors.DefaultSelector()
        born = {}
        for _ in range(self.count):
            try:
                sock = socket.create_connection(self.address, timeout=5,
                                                source_address=(self.source, 0))
                sock.sendall(b"GET / HTTP/1.1\r\n")
                sock.setblocking(False)
            except OSError:
                self.refused += 1
                continue
            self.opened += 1
            born[sock] = time.monotonic()
            sel.register(sock, selectors.EVENT_READ)
        self.done_opening.set()
        next_byte = time.monotonic() + self.every
        while born and not self._stop.is_set():
            for key, _ in sel.select(timeout=0.1):
                self._read(key.fileobj, sel, born)
            if time.monotonic() >= next_byte:
                next_byte += self.every
                for sock in list(born):
                    try:
                        sock.send(b"X")
                    except BlockingIOError:
                        pass
                    except OSError:
                        self._closed(sock, sel, born)
            self.open_now = len(born)
        for sock in born:
            sock.close()
        self.open_now = 0

    def _read(self, sock, sel, born):
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data.startswith(b"HTTP/"):
            status = data.split(b"\r\n", 1)[0].decode()
            self.answered[status] = self.answered.get(status, 0) + 1
            if " 503 " in status:
                self.refused += 1
        if not data:
            self._closed(sock, sel, born)

    def _closed(self, sock, sel, born):
        self.lifetimes.append(time.monotonic() - born.pop(sock))
        sel.unregister(sock)
        sock.close()


def machine_mac(i):
    return "52:54:00:%02x:%02x:%02x" % (i >> 16 & 255, i >> 8 & 255, i & 255)


def source_address(i):
    """The loopback address of simulated machine i: 127.0.1.1 on, 250 per /24."""
    return "127.0.%d.%d" % (1 + i // 250, 1 + i % 250)


def storm(host, port, machines, at_once, first=0, times=None):
    """`machines` simulated machines (numbers `first` on), each from its own
    address: /boot.ipxe, /ipxe and /cloud on one connection. Returns (errors,
    latencies in ms); `times`, when given, is the latencies list, which grows
    while the storm runs (its progress, for another thread)."""
    errors, times = [], ([] if times is None else times)
    lock = threading.Lock()
    sem = threading.Semaphore(at_once)

    def machine(i):
        mac = machine_mac(i)
        with sem:
            try:
                c = http.client.HTTPConnection(host, port, timeout=30,
                                               source_address=(source_address(i), 0))
                for path in ("/boot.ipxe", "/ipxe?mac=" + mac, "/cloud?mac=" + mac):
                    t0 = time.perf_counter()
                    c.request("GET", path)
                    r = c.getresponse()
                    r.read()
                    with lock:
                        times.append((time.perf_counter() - t0) * 1000)
                        if r.status != 200:
                            errors.append((path, r.status))
                c.close()
            except Exception as e:      # noqa: BLE001 - every failure counts
                with lock:
                    errors.append(("connection", repr(e)))

    threads = [threading.Thread(target=machine, args=(i,))
               for i in range(first, first + machines)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors, times


def make_data(root):
    """A data directory every storm machine gets answers from."""
    for rel, text in (("boot/default", '{"kernel": "/images/k", "initrd": ["/images/i"]}'),
                      ("cloud/default", "#cloud-config\nhostname: fleet\n")):
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    past = time.time() - 10
    for folder, _, names in os.walk(root):
        for name in names:
            os.utime(os.path.join(folder, name), (past, past))
    return root


def start(args, env=None):
    """(process, port) of bootcfg started with `args`."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bootcfg.py"),
                             "-address", "127.0.0.1:0", "-log-level", "warning"] + list(args),
                            stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:
        m = re.search(r"listening on http://[^:]+:(\d+)/", line)
        if m:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, int(m.group(1))
    raise RuntimeError("bootcfg did not start")


def metric(port, name):
    """{labels text: value} of one family on /metrics."""
    body = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body.request("GET", "/metrics")
    out = {}
    for line in body.getresponse().read().decode().splitlines():
        if line.startswith(name):
            labels, value = line[len(name):].rsplit(" ", 1)
            out[labels] = float(value)
    return out


def run_attack(data, workers, guarded, slow, machines, at_once):
    args = ["-data-path", data, "-workers", str(workers), "-max-connections", "256"]
    if not guarded:
        args += ["-header-timeout", "0", "-max-connections-per-client", "0"]
    proc, port = start(args)
    try:
        flood = Flood("127.0.0.1", port, "127.0.0.2", slow).start()
        flood.done_opening.wait(120)
        t0 = time.perf_counter()
        errors, times = storm("127.0.0.1", port, machines, at_once)
        storm_s = time.perf_counter() - t0
        deadline = time.monotonic() + (15 if guarded else 0)
        while flood.open_now and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.2)             # workers publish their counters every second
        cuts = metric(port, "bootcfg_connections_cut_total")
        flood.still_open = flood.open_now
        flood.stop()
        return errors, times, storm_s, flood, cuts
    finally:
        proc.terminate()
        proc.wait()


def binding_cost(data, requests=20000):
    """Server CPU microseconds per /cloud request, without and with a 10,000-lease
    -bind-configs file naming 127.0.0.1."""
    leases = os.path.join(data, "..", "dnsmasq.leases")
    with open(leases, "w") as f:
        for i in range(10000):
            f.write("0 52:54:01:00:%02x:%02x 10.1.%d.%d host%d *\n"
                    % (i >> 8, i & 255, i >> 8, i & 255, i))
        f.write("0 52:54:00:00:00:01 127.0.0.1 me *\n")
    out = []
    for extra in ([], ["-bind-configs", leases]):
        proc, port = start(["-data-path", data] + extra)
        try:
            c = http.client.HTTPConnection("127.0.0.1", port)
            for _ in range(500):
                c.request("GET", "/cloud?mac=52:54:00:00:00:01")
                r = c.getresponse()
                r.read()
                assert r.status == 200, r.status
            before = cpu_seconds([proc.pid])
            for _ in range(requests):
                c.request("GET", "/cloud?mac=52:54:00:00:00:01")
                c.getresponse().read()
            out.append((cpu_seconds([proc.pid]) - before) / requests * 1e6)
        finally:
            proc.terminate()
            proc.wait()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slow", type=int, default=2000)
    ap.add_argument("--machines", type=int, default=500)
    ap.add_argument("--at-once", type=int, default=50)
    a = ap.parse_args()
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = tempfile.mkdtemp(prefix="bootcfg-guard-")
    data = make_data(os.path.join(work, "data"))
    print("## %d slow connections from 127.0.0.2 during a storm of %d machines "
          "(%d at once, each /boot.ipxe, /ipxe, /cloud); -max-connections 256\n"
          % (a.slow, a.machines, a.at_once))
    print("| workers | guard | storm failed | p50 ms | p99 ms | storm s | slow: cut per "
          "client | at head deadline | refused/503 | last slow one lived s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for workers in (1, 4):
        for guarded in (True, False):
            errors, times, storm_s, flood, cuts = run_attack(data, workers, guarded, a.slow,
                                                             a.machines, a.at_once)
            q = statistics.quantiles(times, n=100) if len(times) > 1 else [0] * 99
            print("| %d | %s | %d of %d | %.1f | %.1f | %.1f | %d | %d | %d | %s |" % (
                workers, "defaults" if guarded else "off", len(errors),
                a.machines * 3, statistics.median(times) if times else 0, q[98], storm_s,
                cuts.get('{reason="per_client"}', 0), cuts.get('{reason="header_timeout"}', 0),
                flood.refused, "%d still open" % flood.still_open if flood.still_open
                else "%.1f" % max(flood.lifetimes)))
    plain, bound = binding_cost(data)
    print("\n## -bind-configs cost: server CPU per /cloud request, one keep-alive "
          "connection\n")
    print("| | us/request |\n|---|---:|\n| without | %.1f |\n| with 10,000 leases | %.1f |"
          % (plain, bound))


if __name__ == "__main__":
    main()
