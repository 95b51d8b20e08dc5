"""Shared test helpers: a real bootcfg process on a loopback port, small data trees,
and an HTTP client that keeps its connection.

BOOTCFG_TEST_CMD (a shell-style command, e.g. "dist/bootcfg") runs the HTTP suites
against another build of bootcfg instead of `python bootcfg.py`.
"""

import http.client
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

UUID1 = "6c3f1e0a-4b7d-4e2a-9c1f-2a5b8d7e9f10"
MAC1 = "52:54:00:89:d8:10"


def bootcfg_command():
    custom = os.environ.get("BOOTCFG_TEST_CMD")
    if custom:
        return shlex.split(custom)
    return [sys.executable, os.path.join(ROOT, "bootcfg.py")]


def need_tool(name, install_hint):
    """The path of a system tool; skips locally when it is missing, fails in CI."""
    path = shutil.which(name)
    if path is None:
        message = "%s is not installed (%s)" % (name, install_hint)
        if IN_CI:
            pytest.fail(message + "; CI must install it in .ci/run")
        pytest.skip(message)
    return path


def boot_json(kernel="/images/k", initrd=("/images/i.gz",), cmdline=None, tag=None):
    import json
    cfg = {"kernel": kernel, "initrd": list(initrd)}
    if cmdline is not None:
        cfg["cmdline"] = cmdline
    elif tag is not None:
        cfg["cmdline"] = {"tag": tag}
    return json.dumps(cfg)


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mode = "wb" if isinstance(text, bytes) else "w"
    with open(path, mode) as f:
        f.write(text)
    return path


def write_atomic(path, text):
    tmp = os.path.join(os.path.dirname(path), ".tmp-" + os.path.basename(path))
    write(tmp, text)
    os.replace(tmp, path)


class ServerProcess:
    """bootcfg started as operators start it, on 127.0.0.1 and a free port."""

    def __init__(self, args, env=None, cwd=None, wrap=()):
        full_env = dict(os.environ)
        for key in list(full_env):
            if key.startswith("BOOTCFG_") and key != "BOOTCFG_TEST_CMD":
                del full_env[key]
        full_env.update(env or {})
        self.proc = subprocess.Popen(list(wrap) + bootcfg_command() + list(args), env=full_env,
                                     cwd=cwd or ROOT, stderr=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.lines = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        m = self.wait_log(r"listening on (https?)://(\S+?):(\d+)/", timeout=10)
        if m is None:
            self.stop()
            raise RuntimeError("bootcfg did not start:\n" + self.log())
        self.scheme, self.host, self.port = m.group(1), m.group(2).strip("[]"), int(m.group(3))

    def listening(self):
        """[(scheme, port)] of every listening line so far."""
        return [(m.group(1), int(m.group(2))) for m in
                re.finditer(r"listening on (https?)://\S+?:(\d+)/", self.log())]

    def _read(self):
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_log(self, pattern, timeout=5.0, start=0):
        """The first match of `pattern` in log lines from index `start` on."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    return None
                self._cond.wait(min(left, 0.1))

    def log(self):
        with self._cond:
            return "\n".join(self.lines)

    def connect(self, timeout=10):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def get(self, path, method="GET", headers=None):
        conn = self.connect()
        try:
            return request(conn, path, method, headers)
        finally:
            conn.close()

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(2)
        return self.proc.returncode


def request(conn, path, method="GET", headers=None):
    """(status, headers dict, body) over an existing connection."""
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def raw_request(server, data, timeout=5):
    """Send raw bytes on a new connection; everything read until the server
    closes it or `timeout` passes."""
    import socket
    s = socket.create_connection((server.host, server.port), timeout=timeout)
    try:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        s.close()
