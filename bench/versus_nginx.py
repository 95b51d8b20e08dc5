#!/usr/bin/env python3
"""bootcfg against nginx serving the identical bytes, same machine, same run.

    python3 bench/versus_nginx.py [--seconds 5] [--skip images,storm]
    python3 bench/versus_nginx.py --baseline REV [--machines 10] [--skip images,storm,memory]

Needs wrk and nginx (Debian: apt-get install wrk nginx-light). Prints tables:
config endpoints at 1/10/100 keep-alive connections (requests/s, p99, ratio to
nginx), a 300 MB image to 8 clients (throughput, server CPU-seconds per GB), a boot
storm of 2,000 simulated machines 200 at a time, memory, and start-up time of the
single file. Not a test: the figures depend on the machine and its load.

The config rows ask for one machine over and over (/ipxe, /pixiecore, /cloud),
except /ipxe*, where each request names the next of the data set's machines, as a
fleet powering on does (wrk with a Lua script), after a pass over them all (so
the figure is of cached configs, as the other rows' are).

With --baseline REV (any git revision: a commit, a tag, HEAD~3) the revision is
exported to a temporary directory and benched in the same run: each row
alternates five short rounds of the current code and the baseline and keeps the
median of each, so a change reports before/after figures that shared the
machine's conditions: the config table gains the baseline's req/s, p99 and the
ratio current/baseline.
"""

import argparse
import atexit
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAC = "52:54:00:12:34:56"
UUID = "6c3f1e0a-4b7d-4e2a-9c1f-2a5b8d7e9f10"


# Every server this script starts, stopped when it exits however it exits.
STARTED = []


@atexit.register
def _stop_started():
    for proc in STARTED:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.01)
    return False


def cpu_seconds(pids):
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def with_children(pid):
    """pid and its child processes (workers), once they have had time to start."""
    time.sleep(0.3)
    out = subprocess.run(["pgrep", "-P", str(pid)], stdout=subprocess.PIPE, text=True)
    return [pid] + [int(p) for p in out.stdout.split()]


def rss_kib(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def export_revision(rev, work):
    """A checkout of `rev` (git archive) under `work`; its bootcfg command."""
    dest = os.path.join(work, "baseline")
    os.makedirs(dest)
    archive = subprocess.run(["git", "-C", ROOT, "archive", "--format=tar", rev],
                             stdout=subprocess.PIPE, check=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", rev],
                            stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
    return [sys.executable, os.path.join(dest, "bootcfg.py")], commit


class Bootcfg:
    def __init__(self, data, images, cmd=None, workers=1):
        self.port = free_port()
        t0 = time.perf_counter()
        cmd = cmd or [sys.executable, os.path.join(ROOT, "bootcfg.py")]
        self.proc = subprocess.Popen(cmd + ["-address", "127.0.0.1:%d" % self.port,
                                            "-data-path", data, "-images-path", images,
                                            "-log-level", "warning",
                                            "-workers", str(workers)],
                                     stderr=subprocess.DEVNULL,
                                     # every load comes from 127.0.0.1: no per-client cap
                                     # (an environment variable, which older revisions
                                     # compared against ignore)
                                     env=dict(os.environ,
                                              BOOTCFG_MAX_CONNECTIONS_PER_CLIENT="0"))
        STARTED.append(self.proc)
        assert wait_port(self.port), "bootcfg did not start"
        self.start_ms = (time.perf_counter() - t0) * 1000
        self.pids = with_children(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Nginx:
    def __init__(self, root, workdir):
        self.port = free_port()
        conf = os.path.join(workdir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(("user root root;\n" if os.geteuid() == 0 else "") + """daemon off;
worker_processes auto;
pid %(w)s/nginx.pid;
error_log %(w)s/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type text/plain;
    client_body_temp_path %(w)s/body;
    proxy_temp_path %(w)s/proxy;
    fastcgi_temp_path %(w)s/fastcgi;
    uwsgi_temp_path %(w)s/uwsgi;
    scgi_temp_path %(w)s/scgi;
    server { listen 127.0.0.1:%(p)d; root %(r)s; }
}
""" % {"w": workdir, "p": self.port, "r": root})
        self.proc = subprocess.Popen(["nginx", "-c", conf, "-p", workdir],
                                     stderr=subprocess.DEVNULL)
        STARTED.append(self.proc)
        assert wait_port(self.port), "nginx did not start"
        self.pids = with_children(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


# "/ipxe*": each request names the next machine of the data set, as a fleet does
# (the other rows ask for one machine over and over).
EVERY_MACHINE_LUA = """
local n = %d
local i = math.random(0, n - 1)
request = function()
  i = (i + 1) %% n
  return wrk.format("GET", string.format("/ipxe?mac=52:54:%%02x:%%02x:%%02x:%%02x",
    math.floor(i / 16777216) %% 256, math.floor(i / 65536) %% 256,
    math.floor(i / 256) %% 256, i %% 256))
end
"""


def wrk(url, conns, seconds, script=None):
    threads = min(conns, 2)
    out = subprocess.run(["wrk", "-t%d" % threads, "-c%d" % conns,
                          "-d%ds" % max(round(seconds), 1),          # whole seconds only
                          "--latency"] + (["-s", script] if script else []) + [url],
                         stdout=subprocess.PIPE, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    read = re.search(r"([\d.]+)(B|KB|MB|GB) read", out)
    unit = {"B": 1, "KB": 1024, "MB": 1 << 20, "GB": 1 << 30}[read.group(2)]
    return {"rps": rps, "p99_ms": float(p99.group(1)) * scale,
            "errors": int(errors.group(1)) if errors else 0,
            "bytes": float(read.group(1)) * unit}


ROUNDS = 5


def median_run(runs):
    """The run with the median req/s (its p99 with it), errors summed."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    out = dict(ordered[len(ordered) // 2])
    out["errors"] = sum(r["errors"] for r in runs)
    return out


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def make_data(work, machines):
    data = os.path.join(work, "data")
    for d in ("boot/mac", "cloud/mac"):
        os.makedirs(os.path.join(data, d))
    cfg = {"kernel": "/images/vmlinuz", "initrd": ["/images/initrd.gz"],
           "cmdline": {"cloud-config-url": "http://10.0.0.1:8080/cloud?mac=${mac:hexhyp}",
                       "console": "ttyS0"}}
    for i in range(machines):
        mac = "52:54:%02x:%02x:%02x:%02x" % (i >> 24 & 255, i >> 16 & 255, i >> 8 & 255, i & 255)
        with open(os.path.join(data, "boot/mac", mac.replace(":", "-")), "w") as f:
            json.dump(cfg, f)
    with open(os.path.join(data, "boot/mac", MAC.replace(":", "-")), "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(data, "boot/default"), "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(data, "cloud/mac", MAC), "w") as f:
        f.write("#cloud-config\nhostname: bench\nssh_authorized_keys:\n  - ssh-ed25519 AAAA bench\n")
    past = time.time() - 60
    for dirpath, _, files in os.walk(data):
        for name in files + ["."]:
            os.utime(os.path.join(dirpath, name), (past, past))
    return data


def config_endpoints(work, seconds, images, workers, baseline=None, sizes=(10, 10000, 100000),
                     only=None, conn_counts=(1, 10, 100)):
    """`baseline`: (command, label) of another build benched in the same run."""
    paths = {"/ipxe": "/ipxe?uuid=%s&mac=%s" % (UUID, MAC),
             "/pixiecore": "/pixiecore/v1/boot/" + MAC,
             "/cloud": "/cloud?mac=" + MAC,
             "/ipxe*": "/ipxe?mac=52:54:00:00:00:00"}      # and every other machine
    if only:
        paths = {k: v for k, v in paths.items() if k in only}
    rows = []
    for machines in sizes if not os.environ.get("BENCH_QUICK") else (10,):
        mwork = tempfile.mkdtemp(dir=work)
        data = make_data(mwork, machines)
        static = os.path.join(mwork, "static")
        os.makedirs(static)
        every = os.path.join(mwork, "every.lua")
        with open(every, "w") as f:
            f.write(EVERY_MACHINE_LUA % machines)
        scripts = {name: every if name.endswith("*") else None for name in paths}
        b = Bootcfg(data, images)
        for name, path in paths.items():          # nginx gets bootcfg's exact bytes
            status, body = get(b.port, path)
            assert status == 200
            with open(os.path.join(static, name.strip("/*")), "wb") as f:
                f.write(body)
        n = Nginx(static, mwork)
        for name, path in paths.items():          # and really serves them
            assert get(n.port, "/" + name.strip("/*")) == get(b.port, path), name
        for w in (1, workers):
            if w != 1:
                b.stop()
                b = Bootcfg(data, images, workers=w)
            old = Bootcfg(data, images, cmd=baseline[0], workers=w) if baseline else None
            if old is not None:
                for path in paths.values():     # the baseline answers the same
                    assert get(old.port, path)[0] == 200, path
            conns_list = conn_counts if machines == 10 else (10,)
            for name, path in paths.items():
                for conns in conns_list:
                    script = scripts[name]
                    if script:    # a pass over every machine's file first, in every worker
                        for server in (b, old) if old else (b,):
                            wrk("http://127.0.0.1:%d%s" % (server.port, path), conns,
                                min(60, max(2, machines * w / 1000)), script)
                    if old is None:
                        ours = wrk("http://127.0.0.1:%d%s" % (b.port, path), conns, seconds,
                                   script)
                        before = None
                    else:
                        # Alternate short rounds and keep the medians: one run each
                        # moves +-10% with the machine's load here.
                        runs = [(wrk("http://127.0.0.1:%d%s" % (b.port, path), conns,
                                     seconds / ROUNDS, script),
                                 wrk("http://127.0.0.1:%d%s" % (old.port, path), conns,
                                     seconds / ROUNDS, script)) for _ in range(ROUNDS)]
                        ours = median_run([r[0] for r in runs])
                        before = median_run([r[1] for r in runs])
                    ref = wrk("http://127.0.0.1:%d/%s" % (n.port, name.strip("/*")), conns,
                              seconds)
                    rows.append((machines, w, name, conns, ours, before, ref))
            if old is not None:
                old.stop()
        b.stop()
        n.stop()
    print("\n## Config endpoints (wrk, keep-alive, %ds each; nginx with %d workers)\n"
          % (seconds, os.cpu_count()))
    if baseline:
        print("baseline: %s, benched right after the current code in each row\n"
              % baseline[1])
        print("| machines | bootcfg -workers | endpoint | conns | bootcfg req/s | p99 ms "
              "| baseline req/s | p99 ms | vs baseline | nginx req/s | vs nginx |")
        print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    else:
        print("| machines | bootcfg -workers | endpoint | conns | bootcfg req/s | p99 ms "
              "| nginx req/s | p99 ms | ratio |")
        print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for machines, w, name, conns, ours, before, ref in rows:
        if before:
            print("| %d | %d | %s | %d | %.0f | %.2f | %.0f | %.2f | %.2fx | %.0f | %.2fx |"
                  % (machines, w, name, conns, ours["rps"], ours["p99_ms"], before["rps"],
                     before["p99_ms"], ours["rps"] / before["rps"], ref["rps"],
                     ours["rps"] / ref["rps"]))
        else:
            print("| %d | %d | %s | %d | %.0f | %.2f | %.0f | %.2f | %.2fx |" % (
                machines, w, name, conns, ours["rps"], ours["p99_ms"], ref["rps"],
                ref["p99_ms"], ours["rps"] / ref["rps"]))
        assert ours["errors"] == 0 and ref["errors"] == 0
        assert before is None or before["errors"] == 0


def image_throughput(work, seconds):
    images = os.path.join(work, "bigimages")
    os.makedirs(images, exist_ok=True)
    big = os.path.join(images, "big.img")
    with open(big, "wb") as f:
        f.truncate(300 << 20)          # 300 MB (sparse: page cache, not disk)
    with open(big, "rb") as f:
        while f.read(1 << 24):
            pass
    data = make_data(tempfile.mkdtemp(dir=work), 10)
    b = Bootcfg(data, images)
    n = Nginx(images, tempfile.mkdtemp(dir=work))
    c = http.client.HTTPConnection("127.0.0.1", n.port)
    c.request("GET", "/big.img", headers={"Range": "bytes=0-9"})
    assert c.getresponse().status == 206, "nginx cannot read the image"
    c.close()
    print("\n## A 300 MB image, 8 parallel clients (wrk, %ds)\n" % seconds)
    print("| server | MB/s | server CPU-s per GB | ratio |")
    print("|---|---:|---:|---:|")
    results = {}
    for label, server, url in (("bootcfg", b, "http://127.0.0.1:%d/images/big.img" % b.port),
                               ("nginx", n, "http://127.0.0.1:%d/big.img" % n.port)):
        cpu0 = cpu_seconds(server.pids)
        r = wrk(url, 8, seconds)
        assert r["errors"] == 0, label
        cpu = cpu_seconds(server.pids) - cpu0
        results[label] = (r["bytes"] / seconds / 1e6, cpu / (r["bytes"] / 1e9))
    for label in ("bootcfg", "nginx"):
        mbs, cpu_gb = results[label]
        print("| %s | %.0f | %.3f | %.2fx |" % (label, mbs, cpu_gb, mbs / results["nginx"][0]))
    b.stop()
    n.stop()


def boot_storm(work, workers, machines=2000, at_once=200):
    images = os.path.join(work, "stormimages")
    os.makedirs(images, exist_ok=True)
    with open(os.path.join(images, "vmlinuz"), "wb") as f:
        f.write(os.urandom(256 << 10))
    with open(os.path.join(images, "initrd.gz"), "wb") as f:
        f.write(os.urandom(512 << 10))
    data = make_data(tempfile.mkdtemp(dir=work), machines)
    b = Bootcfg(data, images, workers=workers)
    steps = ("boot.ipxe", "ipxe", "kernel", "initrd", "cloud")
    times = {s: [] for s in steps}
    errors = []
    sem = threading.Semaphore(at_once)
    lock = threading.Lock()

    def machine(i):
        mac = "52:54:%02x:%02x:%02x:%02x" % (i >> 24 & 255, i >> 16 & 255, i >> 8 & 255, i & 255)
        hyp = mac.replace(":", "-")
        with sem:
            try:
                c = http.client.HTTPConnection("127.0.0.1", b.port, timeout=60)
                for step, path in (("boot.ipxe", "/boot.ipxe"),
                                   ("ipxe", "/ipxe?uuid=&mac=%s&arch=x86_64" % hyp),
                                   ("kernel", "/images/vmlinuz"),
                                   ("initrd", "/images/initrd.gz"),
                                   ("cloud", "/cloud?mac=%s" % hyp)):
                    t0 = time.perf_counter()
                    c.request("GET", path)
                    r = c.getresponse()
                    r.read()
                    ms = (time.perf_counter() - t0) * 1000
                    with lock:
                        times[step].append(ms)
                        if r.status != 200 and not (step == "cloud" and r.status == 404):
                            errors.append((step, r.status))
                c.close()
            except Exception as e:      # noqa: BLE001 - every failure counts
                with lock:
                    errors.append(("connection", repr(e)))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=machine, args=(i,)) for i in range(machines)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = time.perf_counter() - t0
    b.stop()
    print("\n## Boot storm: %d machines, %d at a time, bootcfg -workers %d (boot.ipxe ->"
          " ipxe -> 256 KiB kernel -> 512 KiB initrd -> cloud)\n" % (machines, at_once, workers))
    print("errors: %d; total %.1f s" % (len(errors), total))
    print("\n| step | p50 ms | p99 ms |")
    print("|---|---:|---:|")
    for s in steps:
        q = statistics.quantiles(times[s], n=100)
        print("| %s | %.1f | %.1f |" % (s, statistics.median(times[s]), q[98]))


def memory_and_startup(work):
    data = make_data(tempfile.mkdtemp(dir=work), 10)
    b = Bootcfg(data, data)
    idle = rss_kib(b.proc.pid)
    socks = []
    for _ in range(1000):
        s = socket.create_connection(("127.0.0.1", b.port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    for s in socks:
        s.recv(4096)
    time.sleep(0.5)
    busy = rss_kib(b.proc.pid)
    for s in socks:
        s.close()
    b.stop()
    single = os.path.join(work, "bootcfg")
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "build-single-file"),
                    "-o", single], check=True, stdout=subprocess.DEVNULL)
    starts = []
    for _ in range(5):
        s = Bootcfg(data, data, cmd=[single])
        starts.append(s.start_ms)
        s.stop()
    t0 = time.perf_counter()
    subprocess.run([single, "--version"], stdout=subprocess.DEVNULL)
    version_ms = (time.perf_counter() - t0) * 1000
    print("\n## Memory and start-up\n")
    print("| figure | value |")
    print("|---|---:|")
    print("| RSS idle | %.1f MiB |" % (idle / 1024))
    print("| RSS with 1,000 open keep-alive connections | %.1f MiB |" % (busy / 1024))
    print("| single file: start to accepting connections (median of 5) | %.0f ms |"
          % statistics.median(starts))
    print("| single file: `--version` | %.0f ms |" % version_ms)


STATUS_MEMORY = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
from _bootcfg.app import STEPS
from _bootcfg.answers import Request, Response
from _bootcfg.shared import Shared
from _bootcfg.status import Tracker

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

before = rss()
t = Tracker(Shared(1) if sys.argv[2] == "ring" else None, max_machines=10000)
resp = Response(200)
started = time.perf_counter()
recording = 0.0
for i in range(100000):
    mac = "52:54:%02x:%02x:%02x:%02x" % (i >> 24 & 255, i >> 16 & 255, i >> 8 & 255, i & 255)
    client = "10.%d.%d.%d" % (i >> 16 & 255, i >> 8 & 255, i & 255)
    for route, path in (("/boot.ipxe", "/boot.ipxe"), ("/ipxe", "/ipxe"),
                        ("/images/", "/images/vmlinuz"), ("/images/", "/images/initrd.gz"),
                        ("/cloud", "/cloud")):
        resp.machine = ("", mac) if route in ("/ipxe", "/cloud") else ("", "")
        resp.expects = (("kernel", "/images/vmlinuz"), ("initrd initrd.gz", "/images/initrd.gz"),
                        ("cloud-config", "/cloud")) if route == "/ipxe" else ()
        req = Request("GET", path, {}, {}, client)
        begun = time.perf_counter()
        t.observe(STEPS[route], route, req, resp, 100, 0.1, resp.expects)
        recording += time.perf_counter() - begun
    if i % 5000 == 4999:
        t.view()
observed = time.perf_counter() - started
records = t.view()
print(len(records), (rss() - before) / 1024.0, recording / 500000 * 1e6,
      observed / 500000 * 1e6)
"""


def status_memory(work):
    print("\n## /status records (100,000 machines, 5 steps each, 10,000 kept)\n")
    print("| where events go | records kept | memory (RSS growth) | recording a step "
          "(request path) | recording and replaying a step |")
    print("|---|---:|---:|---:|---:|")
    for mode, label in (("local", "one process: kept as they came"),
                        ("ring", "-workers: shared ring (included in memory)")):
        out = subprocess.run([sys.executable, "-c", STATUS_MEMORY, ROOT, mode],
                             stdout=subprocess.PIPE, text=True, check=True).stdout.split()
        print("| %s | %s | %.1f MiB | %.2f us | %.1f us |"
              % (label, out[0], float(out[1]), float(out[2]), float(out[3])))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--skip", default="",
                    help="comma list of: config,images,storm,memory,status")
    ap.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1),
                    help="bootcfg -workers for the multi-process rows (default 2 per CPU)")
    ap.add_argument("--baseline", metavar="REV",
                    help="also bench this git revision, in the same run (config rows)")
    ap.add_argument("--machines", default="10,10000,100000",
                    help="comma list of data sizes for the config rows")
    ap.add_argument("--endpoints", default="", help="comma list, e.g. /ipxe,/cloud,/ipxe* (all)")
    ap.add_argument("--conns", default="1,10,100", help="connection counts for 10 machines")
    args = ap.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None and not os.path.exists("/usr/sbin/" + tool):
            sys.exit("bench: %s is not installed (apt-get install wrk nginx-light)" % tool)
    os.environ["PATH"] += ":/usr/sbin"
    skip = set(args.skip.split(","))
    print("# bootcfg benchmark: %s, %d CPUs, Python %s" % (
        os.uname().machine, os.cpu_count(), sys.version.split()[0]))
    with tempfile.TemporaryDirectory() as work:
        baseline = export_revision(args.baseline, work) if args.baseline else None
        if "config" not in skip:
            config_endpoints(work, args.seconds, work, args.workers, baseline,
                             tuple(int(m) for m in args.machines.split(",")),
                             [e for e in args.endpoints.split(",") if e],
                             tuple(int(c) for c in args.conns.split(",")))
        if "images" not in skip:
            image_throughput(work, args.seconds)
        if "storm" not in skip:
            boot_storm(work, args.workers)
        if "memory" not in skip:
            memory_and_startup(work)
        if "status" not in skip and os.path.exists(os.path.join(ROOT, "_bootcfg", "status.py")):
            status_memory(work)


if __name__ == "__main__":
    main()
