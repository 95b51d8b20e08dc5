"""Three bootcfg replicas behind a load balancer work as one service, and a
replica that dies costs no boot. For each recipe in contrib/loadbalancer/ (used
verbatim but for its addresses):

- a storm of 600 simulated machines from 600 loopback addresses, and two real
  QEMU iPXE machines (BIOS and UEFI), boot through the balancer; mid-storm one
  replica is killed with SIGKILL and another stopped with SIGTERM: no simulated
  request fails and both QEMU machines boot;
- the stopped replica comes back, every simulated machine asks once more, and
  /status.json on any live replica (-peers) lists every machine with its own
  address, naming the replica that saw it, and names the dead one in a banner;
- a GRUB answer fetched through the balancer names the balancer's address.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from e2e_helpers import missing, verdict
from helpers import ROOT, ServerProcess, write

sys.path.insert(0, os.path.join(ROOT, "bench"))
from guard import machine_mac, source_address, storm  # noqa: E402

pytestmark = pytest.mark.e2e

RECIPES = {"nginx": os.path.join(ROOT, "contrib", "loadbalancer", "nginx-bootcfg.conf"),
           "haproxy": os.path.join(ROOT, "contrib", "loadbalancer", "haproxy-bootcfg.cfg")}
MACHINES = 600
GUEST_MACS = {"bios": "52:54:00:e2:06:01", "efi": "52:54:00:e2:06:02"}


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def substitute(recipe, lb_port, ports):
    """The recipe with its addresses made this test's: the balancer on
    127.0.0.1:lb_port, the replicas on 127.0.0.1:ports."""
    text = open(recipe).read()
    for n, port in enumerate(ports):
        text = text.replace("10.0.0.1%d:8080" % (n + 1), "127.0.0.1:%d" % port)
    return text.replace("10.0.0.10:8080", "127.0.0.1:%d" % lb_port)


class Balancer:
    def __init__(self, kind, workdir, lb_port, ports):
        conf = substitute(RECIPES[kind], lb_port, ports)
        if kind == "nginx":
            if not os.path.exists("/usr/sbin/nginx"):
                missing("nginx (apt-get install nginx-light)")
            main = write(os.path.join(workdir, "nginx.conf"),
                         "pid %s/nginx.pid;\nerror_log %s/nginx-error.log;\n"
                         "events { worker_connections 4096; }\n"
                         "http {\n  access_log off;\n  include %s/bootcfg.conf;\n}\n"
                         % (workdir, workdir, workdir))
            write(os.path.join(workdir, "bootcfg.conf"), conf)
            for d in ("client_body_temp", "proxy_temp", "fastcgi_temp", "uwsgi_temp",
                      "scgi_temp"):
                os.makedirs(os.path.join(workdir, d), exist_ok=True)
            cmd = ["/usr/sbin/nginx", "-p", workdir, "-c", main, "-g", "daemon off;"]
        else:
            if not os.path.exists("/usr/sbin/haproxy"):
                missing("haproxy (apt-get install haproxy)")
            cfg = write(os.path.join(workdir, "haproxy.cfg"), conf)
            cmd = ["/usr/sbin/haproxy", "-db", "-f", cfg]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", lb_port), timeout=1).close()
                break
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, \
                    self.proc.communicate()[0].decode()[-2000:]
                time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        try:
            return self.proc.communicate(timeout=10)[0].decode("utf-8", "replace")
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return ""


def replica(data, images, ports, n):
    me = ports[n]
    peers = ",".join("http://127.0.0.1:%d" % p for p in ports if p != me)
    return ServerProcess(["-address", "127.0.0.1:%d" % me, "-data-path", str(data),
                          "-images-path", images, "-trusted-proxies", "127.0.0.1",
                          "-peers", peers, "-log-level", "warning"])


def status(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/status.json?limit=1000" % port,
                                timeout=10) as r:
        return json.loads(r.read().decode())


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
def test_three_replicas_behind_a_balancer_lose_no_boot(kind, qemu, guests, guest_images,
                                                      tmp_path):
    lb_port, *ports = free_ports(4)
    base = "http://10.0.2.2:%d" % lb_port            # the balancer, as QEMU guests see it
    data = tmp_path / "data"
    write(str(data / "boot/default"), json.dumps({
        "kernel": "/images/vmlinuz", "initrd": ["/images/initrd.gz"],
        "cmdline": {"console": "ttyS0", "panic": "-1", "loglevel": "4",
                    "cloud-config-url": base + "/cloud?uuid=${uuid}&mac=${mac:hexhyp}"}}))
    write(str(data / "cloud/default"), "#cloud-config\nhostname: replicated\n")
    write(str(data / "boot/mac/52-54-00-e2-06-09"), json.dumps({    # one GRUB can boot
        "kernel": "/images/vmlinuz", "initrd": ["/images/initrd.gz"],
        "cmdline": {"console": "ttyS0"}}))
    replicas = [replica(data, guest_images, ports, n) for n in range(3)]
    balancer = Balancer(kind, str(tmp_path), lb_port, ports)
    try:
        time.sleep(2.5 if kind == "haproxy" else 0)   # its first health checks pass
        net = "user,bootfile=%s/boot.ipxe" % base
        machines = {name: guests("lb-" + name, mac, net, firmware=name)
                    for name, mac in GUEST_MACS.items()}
        times, result = [], {}
        runner = threading.Thread(target=lambda: result.update(
            zip(("errors", "times"), storm("127.0.0.1", lb_port, MACHINES, 25, times=times))))
        runner.start()
        for fraction, victim, sig in ((3, 0, signal.SIGKILL), (3 / 2, 1, signal.SIGTERM)):
            while len(times) < 3 * MACHINES / fraction and runner.is_alive():
                time.sleep(0.01)
            assert runner.is_alive(), "the storm ended before the replica could be stopped"
            replicas[victim].proc.send_signal(sig)
        runner.join()
        assert result["errors"] == [], result["errors"][:10]
        replicas[1].proc.wait(15)
        for name, g in machines.items():
            verdict(g, replicas[2], r"E2E-CLOUD-END")
            assert "hostname: replicated" in g.text()
            g.stop()

        # The stopped replica comes back; every simulated machine asks once more.
        replicas[1] = replica(data, guest_images, ports, 1)
        time.sleep(3 if kind == "haproxy" else 0)
        errors, _ = storm("127.0.0.1", lb_port, MACHINES, 25)
        assert errors == []
        for port in ports[1:]:
            view = status(port)
            seen = {m["mac"]: m for m in view["machines"]}
            for i in range(MACHINES):
                m = seen.get(machine_mac(i))
                assert m is not None, (port, machine_mac(i))
                assert m["client"] == source_address(i), m
            for mac in GUEST_MACS.values():
                assert mac in seen and seen[mac]["client"] == "127.0.0.1"
            names = {m["replica"] for m in seen.values()}
            assert names and names <= {"%s:%d" % (socket.gethostname(), p)
                                       for p in ports[1:]}, names
            assert any("peer http://127.0.0.1:%d did not answer" % ports[0] in p
                       for p in view["problems"]), view["problems"]

        # GRUB over HTTP through the balancer is sent back through the balancer.
        req = urllib.request.Request("http://127.0.0.1:%d/grub?mac=52:54:00:e2:06:09" % lb_port,
                                     headers={"Host": "10.0.2.2:%d" % lb_port})
        with urllib.request.urlopen(req, timeout=10) as r:
            grub = r.read().decode()
        assert "linux (http,10.0.2.2:%d)'/images/vmlinuz'" % lb_port in grub, grub
        for port in ports[1:]:
            assert ":%d" % port not in grub
    finally:
        balancer.stop()
        for r in replicas:
            r.stop()
