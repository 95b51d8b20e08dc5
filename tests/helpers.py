"""Shared test helpers: bootcfg on a loopback port (in this process, or as a real
process), small data trees, and an HTTP client that keeps its connection.

Two tiers. HTTP behaviour runs against InProcessServer: the App and BootServer the
CLI builds, from the same flags, serving real sockets from threads of this process
(fast, no process start-up). The CLI, signals, workers and systemd run bootcfg as
operators do (ServerProcess, run_bootcfg). BOOTCFG_TEST_CMD (a shell-style command,
e.g. "dist/bootcfg") makes every server a process of that build, so the HTTP
suites also face the file operators copy.
"""

import http.client
import logging
import os
import re
import shlex
import shutil
import signal
import socket
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


def clean_env(env=None):
    """os.environ without BOOTCFG_* settings (BOOTCFG_TEST_CMD kept), plus `env`."""
    full = {k: v for k, v in os.environ.items()
            if not k.startswith("BOOTCFG_") or k == "BOOTCFG_TEST_CMD"}
    full.update(env or {})
    return full


def run_bootcfg(*args, env=None, cwd=None, timeout=60, text=True):
    """Run the bootcfg command to completion: CompletedProcess with stdout and
    stderr (str, or bytes with text=False)."""
    return subprocess.run(bootcfg_command() + list(args), env=clean_env(env), cwd=cwd,
                          text=text, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=timeout)


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


def settle(root, age=5.0):
    """Date every file and directory under `root` `age` seconds back, as a data
    directory that was not just written looks to the store (which waits for
    fresh files to stop changing)."""
    when = time.time() - age
    for dirpath, _, files in os.walk(str(root)):
        for name in files + ["."]:
            os.utime(os.path.join(dirpath, name), (when, when), follow_symlinks=False)


def write_atomic(path, text):
    tmp = os.path.join(os.path.dirname(path), ".tmp-" + os.path.basename(path))
    write(tmp, text)
    os.replace(tmp, path)


class _Server:
    """What both tiers offer a test: host, port, scheme, get(), connect(), the log
    lines (log(), wait_log()) and stop()."""

    def _start_log(self):
        self.lines = []
        self._cond = threading.Condition()

    def _add_line(self, line):
        with self._cond:
            self.lines.append(line)
            self._cond.notify_all()

    def _found_listening(self):
        m = self.wait_log(r"listening on (https?)://(\S+?):(\d+)/", timeout=10)
        if m is None:
            self.stop()
            raise RuntimeError("bootcfg did not start:\n" + self.log())
        self.scheme, self.host, self.port = m.group(1), m.group(2).strip("[]"), int(m.group(3))

    @property
    def tftp_address(self):
        """(host, port) of the TFTP server, from its start line."""
        m = self.wait_log(r"serving read-only TFTP on \[?([^\]\s]+?)\]?:(\d+)$", timeout=5)
        assert m, "no TFTP server started:\n" + self.log()
        return m.group(1), int(m.group(2))

    def listening(self):
        """[(scheme, port)] of every listening line so far."""
        return [(m.group(1), int(m.group(2))) for m in
                re.finditer(r"listening on (https?)://\S+?:(\d+)/", self.log())]

    def running(self):
        return True

    def wait_log(self, pattern, timeout=5.0, start=0):
        """The first match of `pattern` in log lines from index `start` on; None
        after `timeout` seconds or once the server has stopped."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or not self.running():
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


class InProcessServer(_Server):
    """bootcfg's App and BootServers built by the CLI's own code from `args`,
    serving from threads of this process; its log lines are captured."""

    def __init__(self, args, env=None):
        import bootcfg
        from _bootcfg import logs
        for key in env or {}:
            if not key.startswith("BOOTCFG_"):
                raise ValueError("in-process servers take only BOOTCFG_* variables")
        saved = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})
        try:
            parsed = bootcfg.build_parser().parse_args(list(args))
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        if parsed.workers != 1:
            raise ValueError("-workers needs a process: use start_server")
        self._start_log()
        self._handler = _LineHandler(self._add_line)
        self._handler.setFormatter(logs.formatter(parsed.log_format))
        root = logging.getLogger()
        self._saved_level = root.level
        root.addHandler(self._handler)
        root.setLevel(parsed.log_level.upper())
        self._stopped = False
        try:
            setup = bootcfg.configure(parsed)
        except bootcfg.UsageError:
            self.stop()
            raise
        self.app = setup.app()
        self.servers = setup.servers(self.app)
        for srv in self.servers:
            # A short poll: stop() waits for the loop to notice the shutdown.
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01},
                             daemon=True).start()
            host, port = srv.server_address[:2]
            if srv.socket.type == socket.SOCK_DGRAM:
                logs.lifecycle.info("bootcfg (in-process) serving read-only TFTP on %s:%d",
                                    host, port)
                continue
            logs.lifecycle.info("bootcfg (in-process) listening on %s://%s:%d/",
                                "https" if srv.tls else "http",
                                "[%s]" % host if ":" in host else host, port)
        self._found_listening()

    def running(self):
        return not self._stopped

    @property
    def pid(self):
        return os.getpid()

    def stop(self, grace=2.0):
        for srv in getattr(self, "servers", ()):
            srv.shutdown()
            srv.stop(grace)
        if getattr(self, "app", None) is not None and not self._stopped:
            self.app.close()        # every thread the server started stops
        root = logging.getLogger()
        root.removeHandler(self._handler)
        root.setLevel(self._saved_level)
        self._stopped = True
        return 0


class _LineHandler(logging.Handler):
    """Formatted log lines to a callback, as the CLI's handler writes them."""

    def __init__(self, add):
        super().__init__()
        self.add = add

    def emit(self, record):
        try:
            self.add(self.format(record))
        except Exception:            # noqa: BLE001 - logging must not raise
            self.handleError(record)


class ServerProcess(_Server):
    """bootcfg started as operators start it, on 127.0.0.1 and a free port."""

    def __init__(self, args, env=None, cwd=None, wrap=()):
        self.proc = subprocess.Popen(list(wrap) + bootcfg_command() + list(args),
                                     env=clean_env(env), cwd=cwd or ROOT,
                                     stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self._start_log()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._found_listening()

    def _read(self):
        for line in self.proc.stderr:
            self._add_line(line.rstrip("\n"))
        with self._cond:
            self._cond.notify_all()

    def running(self):
        return self.proc.poll() is None or self._reader.is_alive()

    @property
    def pid(self):
        return self.proc.pid

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


def read_head(sock):
    """Bytes from `sock` up to the end of a response head (or until it closes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def read_to_close(sock, must_close=False):
    """Everything `sock` receives until the server closes it (or resets it, or the
    socket's timeout passes: with `must_close`, that raises socket.timeout)."""
    import socket
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        except socket.timeout:
            if must_close:
                raise
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def raw_request(server, data, timeout=5, source=None):
    """Send raw bytes on a new connection (from `source`, a local address, if
    given); everything read until the server closes it or `timeout` passes."""
    import socket
    s = socket.create_connection((server.host, server.port), timeout=timeout,
                                 source_address=(source, 0) if source else None)
    try:
        s.sendall(data)
        return read_to_close(s)
    finally:
        s.close()


def get_from(server, source, path, headers=""):
    """(status, body text) of GET `path` from the local address `source` (a
    machine on the boot network, as loopback 127.0.0.x), `headers` added."""
    data = raw_request(server, ("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s\r\n"
                                % (path, headers)).encode(), timeout=10, source=source)
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()
