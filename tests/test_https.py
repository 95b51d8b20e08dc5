"""HTTPS with the stdlib ssl module, tested with real clients (curl, openssl) and a
self-signed certificate made here."""

import subprocess

import pytest

from helpers import MAC1, need_tool

pytestmark = pytest.mark.cli


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    openssl = need_tool("openssl", "apt-get install openssl")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-subj", "/CN=bootcfg-test", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return str(d / "cert.pem"), str(d / "key.pem")


def curl(*args):
    tool = need_tool("curl", "apt-get install curl")
    return subprocess.run([tool, "-sS", "--max-time", "10"] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_https_and_http_side_by_side(serve, data_dir, cert):
    s = serve("-data-path", str(data_dir), "-cert-file", cert[0], "-key-file",
                     cert[1], "-tls-address", "127.0.0.1:0")
    assert s.wait_log(r"listening on https://")
    ports = dict(s.listening())
    out = curl("--cacert", cert[0], "https://127.0.0.1:%d/ipxe?mac=%s" % (ports["https"], MAC1))
    assert out.returncode == 0 and b"tag=mac1" in out.stdout, out.stderr
    plain = curl("http://127.0.0.1:%d/ipxe?mac=%s" % (ports["http"], MAC1))
    assert b"tag=mac1" in plain.stdout      # iPXE builds without HTTPS still boot


def test_https_only_on_address(serve, data_dir, cert):
    s = serve("-data-path", str(data_dir), "-cert-file", cert[0], "-key-file", cert[1])
    assert s.scheme == "https" and [p[0] for p in s.listening()] == ["https"]
    out = curl("--cacert", cert[0], "-I", "https://127.0.0.1:%d/" % s.port)
    assert out.returncode == 0 and out.stdout.startswith(b"HTTP/1.1 200")
    # a plain-HTTP client on the HTTPS port is refused without hurting the server
    plain = curl("http://127.0.0.1:%d/" % s.port)
    assert plain.returncode != 0
    assert s.wait_log(r"TLS failed")
    assert curl("--cacert", cert[0], "https://127.0.0.1:%d/" % s.port).returncode == 0
    assert "Traceback" not in s.log()


def test_tls_below_1_2_refused(serve, data_dir, cert):
    openssl = need_tool("openssl", "apt-get install openssl")
    s = serve("-data-path", str(data_dir), "-cert-file", cert[0], "-key-file", cert[1])
    old = subprocess.run([openssl, "s_client", "-connect", "127.0.0.1:%d" % s.port,
                          "-tls1_1"], input=b"", stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, timeout=20)
    assert old.returncode != 0
    ok = subprocess.run([openssl, "s_client", "-connect", "127.0.0.1:%d" % s.port,
                         "-tls1_2", "-CAfile", cert[0]], input=b"", stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, timeout=20)
    assert ok.returncode == 0 and b"Verify return code: 0 (ok)" in ok.stdout


@pytest.mark.parametrize("which, message", [
    ("missing-key", "HTTPS needs both -cert-file and -key-file"),
    ("bad-path", "cannot load certificate"),
])
def test_tls_config_errors_are_one_line(data_dir, cert, which, message):
    from helpers import run_bootcfg
    args = ["-data-path", str(data_dir), "-address", "127.0.0.1:0"]
    args += ["-cert-file", cert[0]] if which == "missing-key" else \
        ["-cert-file", "/nonexistent.pem", "-key-file", cert[1]]
    out = run_bootcfg(*args, timeout=20)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
