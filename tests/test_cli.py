"""The command line as operators use it: seed flags, env vars, errors, signals."""

import http.client
import signal
import socket
import time

import pytest

from helpers import read_head, run_bootcfg as run

pytestmark = pytest.mark.cli

FLAGS = ("address", "data-path", "images-path", "log-level", "workers",
         "max-connections", "idle-timeout")


def test_help_lists_every_flag_and_env():
    out = run("--help")
    assert out.returncode == 0
    for flag in FLAGS:
        assert "-%s" % flag in out.stdout
        assert "BOOTCFG_%s" % flag.upper().replace("-", "_") in out.stdout
    assert "-version" in out.stdout


def test_version():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.startswith("bootcfg ")
    assert run("-version").stdout == out.stdout


@pytest.mark.parametrize("style", [
    ["-address=127.0.0.1:0", "-data-path={data}"],
    ["--address", "127.0.0.1:0", "--data-path", "{data}"],
    ["--address=127.0.0.1:0", "-data-path", "{data}"],
])
def test_seed_and_gnu_flag_spellings(start_server, data_dir, style):
    s = start_server(*[a.format(data=data_dir) for a in style])
    assert s.get("/ipxe")[0] == 200


def test_env_vars_and_flag_wins(start_server, data_dir, tmp_path):
    env = {"BOOTCFG_DATA_PATH": str(data_dir), "BOOTCFG_ADDRESS": "127.0.0.1:0",
           "BOOTCFG_LOG_LEVEL": "warning"}
    s = start_server(env=env)
    assert s.get("/cloud")[0] == 200
    # log level warning: no access lines (the listening line is printed at any level)
    assert s.wait_log(r'"GET /cloud"', timeout=0.5) is None
    # a flag beats the environment
    env["BOOTCFG_DATA_PATH"] = str(tmp_path / "does-not-exist")
    env["BOOTCFG_LOG_LEVEL"] = "info"
    s2 = start_server("-data-path", str(data_dir), "-log-level", "DEBUG", env=env)
    assert s2.get("/cloud")[0] == 200
    assert s2.wait_log(r'"GET /cloud" 200')


def test_images_path_from_env(start_server, data_dir, tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "f").write_bytes(b"env-image")
    s = start_server("-data-path", str(data_dir), env={"BOOTCFG_IMAGES_PATH": str(tmp_path / "img")})
    assert s.get("/images/f")[2] == b"env-image"


def test_default_images_dir_is_used_when_present(start_server, data_dir, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "k").write_bytes(b"kernel")
    s = start_server("-data-path", str(data_dir), cwd=str(tmp_path))
    assert s.get("/images/k")[2] == b"kernel"


@pytest.mark.parametrize("args, message", [
    (["-data-path", "/nonexistent/data"], "data directory /nonexistent/data does not exist"),
    (["-data-path", "{data}", "-images-path", "/nonexistent/img"],
     "images directory /nonexistent/img does not exist"),
    (["-data-path", "{data}", "-address", "nonsense"], "address 'nonsense'"),
    (["-data-path", "{data}", "-address", "::1:80"], "brackets"),
    (["-data-path", "{data}", "-address", "127.0.0.1:99999"], "expected host:port"),
    (["-data-path", "{data}", "-address", "no.such.host.invalid:80"], "no.such.host.invalid"),
])
def test_startup_errors_are_one_line(data_dir, args, message):
    out = run(*[a.format(data=data_dir) for a in args])
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if "INFO" not in line]
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_bad_flag_values():
    out = run("-log-level", "loud")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_port_in_use_is_one_line(data_dir):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        out = run("-data-path", str(data_dir), "-address", "127.0.0.1:%d" % port)
    finally:
        holder.close()
    assert out.returncode == 2 and "cannot listen on 127.0.0.1:%d" % port in out.stderr
    assert "Traceback" not in out.stderr


def ipv6_loopback():
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this host")
@pytest.mark.parametrize("address", ["[::1]:0", "[::]:0"])
def test_ipv6(start_server, data_dir, address):
    s = start_server("-address", address, "-data-path", str(data_dir))
    conn = socket.create_connection(("::1", s.port), timeout=5)
    conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert conn.recv(100).startswith(b"HTTP/1.1 200")
    conn.close()
    if address == "[::]:0":   # dual stack: IPv4 clients too
        c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
        c.request("GET", "/")
        assert c.getresponse().status == 200
        c.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_cleanly(start_server, data_dir, sig):
    s = start_server("-data-path", str(data_dir))
    keep = s.connect()
    keep.request("GET", "/")
    keep.getresponse().read()      # an idle keep-alive connection must not delay exit
    assert s.stop(sig, timeout=5) == 0
    assert "Traceback" not in s.log() and "KeyboardInterrupt" not in s.log()
    assert s.wait_log(r"stopped", timeout=1)


def test_workers_must_be_positive(data_dir):
    out = run("-data-path", str(data_dir), "-workers", "0")
    assert out.returncode == 2 and "-workers/--workers: must be a whole number, 1 or more" \
        in out.stderr


@pytest.mark.parametrize("env, message", [
    ({"BOOTCFG_WORKERS": "abc"}, "-workers/--workers: must be a whole number"),
    ({"BOOTCFG_LOG_LEVEL": "loud"}, "-log-level/--log-level: invalid choice: 'loud'"),
    ({"BOOTCFG_LOG_FORMAT": "xml"}, "-log-format/--log-format: invalid choice: 'xml'"),
])
def test_bad_environment_values_are_one_line_errors(data_dir, env, message):
    out = run("-data-path", str(data_dir), "-address", "127.0.0.1:0", env=env)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def start_with(start_server, data_dir, how, flag, value):
    """bootcfg with `-flag value`, or with the flag's BOOTCFG_* variable."""
    if how == "flag":
        return start_server("-data-path", str(data_dir), "-" + flag, value)
    return start_server("-data-path", str(data_dir),
                        env={"BOOTCFG_" + flag.upper().replace("-", "_"): value})


@pytest.mark.parametrize("how", ["flag", "env"])
def test_max_connections_reaches_the_server(start_server, data_dir, how):
    s = start_with(start_server, data_dir, how, "max-connections", "2")
    held = []
    for _ in range(2):                 # two connections, each proven served, then
        c = socket.create_connection((s.host, s.port), timeout=5)     # mid-request
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_head(c).startswith(b"HTTP/1.1 200")
        c.sendall(b"GET / HTTP/1.1\r\n")
        held.append(c)
    time.sleep(0.2)
    extra = socket.create_connection((s.host, s.port), timeout=5)
    assert read_head(extra).startswith(b"HTTP/1.1 503")
    assert s.wait_log(r"refused: 2 connections open \(max_connections\)")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_idle_timeout_reaches_the_server(start_server, data_dir, how):
    s = start_with(start_server, data_dir, how, "idle-timeout", "0.3")
    c = socket.create_connection((s.host, s.port), timeout=5)
    c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_head(c).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    while c.recv(4096):                # the server closes the idle connection
        pass
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("args, env, message", [
    (["-max-connections", "0"], {}, "-max-connections/--max-connections: must be a whole"),
    ([], {"BOOTCFG_IDLE_TIMEOUT": "soon"}, "-idle-timeout/--idle-timeout: must be a number"),
    (["-idle-timeout", "-1"], {}, "must be a number of seconds above 0"),
])
def test_bad_limit_values_are_one_line_errors(data_dir, args, env, message):
    out = run("-data-path", str(data_dir), "-address", "127.0.0.1:0", *args, env=env)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
