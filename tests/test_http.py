"""The real server on a loopback port: endpoints, statuses, keep-alive, hot edits,
images with validators and ranges, and hostile paths."""

import json
import os
import socket
import time

import pytest

from helpers import MAC1, UUID1, boot_json, raw_request, request, write, write_atomic


@pytest.fixture
def images_dir(tmp_path):
    d = tmp_path / "images"
    write(str(d / "os/1.0/vmlinuz"), bytes(range(256)) * 4096)        # 1 MiB
    write(str(d / "os/1.0/initrd.gz"), b"initrd-bytes")
    write(str(d / "empty"), b"")
    write(str(tmp_path / "secret.txt"), b"outside the root")
    os.symlink(str(tmp_path / "secret.txt"), str(d / "escape"))
    os.symlink(str(tmp_path), str(d / "escape-dir"))
    os.symlink("os/1.0/initrd.gz", str(d / "inside-link"))
    return d


@pytest.fixture
def server(serve, data_dir, images_dir):
    return serve("-data-path", str(data_dir), "-images-path", str(images_dir))


def tags(body):
    return [t for t in body.decode().split() if t.startswith("tag=")]


@pytest.mark.http
def test_identity(server):
    status, headers, body = server.get("/")
    assert status == 200 and body.startswith(b"bootcfg ")
    assert headers["content-type"].startswith("text/plain")


@pytest.mark.http
@pytest.mark.parametrize("path", ["/boot.ipxe", "/boot.ipxe.0"])
def test_chainload(server, path):
    status, _, body = server.get(path)
    assert status == 200 and body.startswith(b"#!ipxe\n") and b"chain ipxe?" in body


@pytest.mark.parametrize("query, want", [
    ("uuid=%s&mac=%s" % (UUID1, MAC1), "tag=uuid1"),
    ("uuid=%s" % UUID1.upper(), "tag=uuid1"),
    ("mac=52%3A54%3A00%3A89%3AD8%3A10", "tag=mac1"),
    ("mac=52-54-00-89-d8-10", "tag=mac1"),
    ("uuid=00000000-0000-0000-0000-000000000000&mac=" + MAC1, "tag=mac1"),
    ("uuid=FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", "tag=default"),
    ("uuid=not-a-uuid&mac=52:54:00:89:d8:10", "tag=mac1"),
    ("mac=52:54:00:00:00:99", "tag=default"),
    ("", "tag=default"),
])
@pytest.mark.http
def test_ipxe_selection(server, query, want):
    status, _, body = server.get("/ipxe?" + query)
    assert status == 200 and tags(body) == [want]
    assert body.startswith(b"#!ipxe\nkernel /images/k ")
    assert b"initrd=i.gz" in body and b"\ninitrd --name i.gz /images/i.gz\nboot\n" in body


@pytest.mark.parametrize("query, want", [
    ("uuid=" + UUID1, b"hostname: uuid1"),
    ("mac=52-54-00-89-D8-10", b"hostname: mac1"),
    ("", b"hostname: default"),
])
@pytest.mark.http
def test_cloud_selection(server, query, want):
    status, _, body = server.get("/cloud?" + query)
    assert status == 200 and want in body


@pytest.mark.http
def test_pixiecore(server):
    status, headers, body = server.get("/pixiecore/v1/boot/" + MAC1)
    assert status == 200 and headers["content-type"] == "application/json"
    answer = json.loads(body)
    assert answer["kernel"] == "/images/k" and answer["initrd"] == ["/images/i.gz"]
    assert answer["cmdline"] == "tag=mac1"
    assert server.get("/pixiecore/v1/boot/52:54:00:89:d8")[0] == 400
    assert server.get("/pixiecore/v1/boot/..%2F..%2Fetc")[0] == 400
    status, _, body = server.get("/pixiecore/v1/boot/52-54-00-89-D8-10")
    assert status == 200 and json.loads(body)["cmdline"] == "tag=mac1"


@pytest.mark.http
def test_no_config_is_404(server, data_dir):
    os.unlink(str(data_dir / "boot/default"))
    time.sleep(0.05)
    assert server.get("/ipxe?mac=52:54:00:00:00:99")[0] == 404
    assert server.get("/pixiecore/v1/boot/52:54:00:00:00:99")[0] == 404
    assert server.get("/ipxe?mac=" + MAC1)[0] == 200


@pytest.mark.http
def test_broken_config_is_500_with_reason_in_log(server, data_dir):
    path = str(data_dir / "boot/mac/52-54-00-89-D8-11")
    write(path, '{"kernel": "/k", "cmdline": ["ok", "bad\\nchain http://x"]}')
    os.utime(path, (time.time() - 5,) * 2)
    time.sleep(0.15)          # a new file is seen within dir_check_seconds (0.1 s)
    status, _, body = server.get("/ipxe?mac=52:54:00:89:d8:11")
    assert status == 500 and b"boot/mac/52-54-00-89-D8-11" in body
    assert server.wait_log(r"52-54-00-89-D8-11: cmdline\[1\]: .*control character")
    # it never falls back to the default, and everything else keeps working
    assert server.get("/ipxe?mac=52:54:00:89:d8:11")[0] == 500
    assert server.get("/ipxe?mac=" + MAC1)[0] == 200


@pytest.mark.http
def test_hot_edit_and_half_written_file(server, data_dir):
    path = str(data_dir / "boot/uuid" / UUID1)
    q = "/ipxe?uuid=" + UUID1
    assert tags(server.get(q)[2]) == ["tag=uuid1"]
    full = boot_json(tag="edited")
    write(path, full[:20])                       # caught half-written
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:
        status, _, body = server.get(q)
        assert status == 200 and tags(body) == ["tag=uuid1"]
    assert server.wait_log(r"%s: invalid JSON.*last good" % UUID1)
    write(path, full)
    deadline = time.monotonic() + 1.0
    while tags(server.get(q)[2]) != ["tag=edited"]:
        assert time.monotonic() < deadline, "edit not visible within a second"
        time.sleep(0.02)
    write_atomic(str(data_dir / "cloud/default"), "#cloud-config\nhostname: renamed\n")
    deadline = time.monotonic() + 1.0
    while b"renamed" not in server.get("/cloud")[2]:
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.http
def test_keep_alive_many_requests_one_connection(server):
    conn = server.connect()
    conn.connect()
    sock = conn.sock
    local = sock.getsockname()
    for path, status in [("/", 200), ("/ipxe?mac=" + MAC1, 200), ("/nope", 404),
                         ("/pixiecore/v1/boot/zz", 400), ("/cloud", 200),
                         ("/images/os/1.0/initrd.gz", 200), ("/boot.ipxe", 200)]:
        got, headers, body = request(conn, path)
        assert got == status and int(headers["content-length"]) == len(body)
        assert headers.get("connection") != "close"
        for method in ("HEAD",):
            got, headers, body = request(conn, path, method)
            assert got == status and body == b""
    assert conn.sock is sock and sock.getsockname() == local
    conn.close()


@pytest.mark.http
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"])
def test_other_methods_405(server, method):
    status, headers, body = server.get("/ipxe", method=method)
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert headers["content-type"].startswith("text/plain")


@pytest.mark.http
def test_head_matches_get(server):
    for path in ("/", "/boot.ipxe", "/ipxe", "/cloud", "/pixiecore/v1/boot/" + MAC1,
                 "/images/os/1.0/vmlinuz", "/nope"):
        gs, gh, gb = server.get(path)
        hs, hh, hb = server.get(path, method="HEAD")
        assert (hs, hb) == (gs, b"")
        assert hh["content-length"] == gh["content-length"] == str(len(gb))


@pytest.mark.http
def test_no_html_anywhere(server):
    for path, method in [("/nope", "GET"), ("/ipxe", "POST"), ("/images/../x", "GET")]:
        _, headers, body = server.get(path, method=method)
        assert b"<" not in body and headers["content-type"].startswith("text/plain")
    raw = raw_request(server, b"GARBAGE\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400") and b"<html" not in raw.lower()


@pytest.mark.parametrize("data, status", [
    (b"GET\r\n\r\n", b"400"),
    (b"GET / HTTP/9.9\r\n\r\n", b"505"),
    (b"\x16\x03\x01\x02\x00\x01\r\n\r\n", b"400"),           # a TLS hello
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"414"),
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", b"431"),
    (b"BREW / HTTP/1.1\r\n\r\n", b"405"),
    (b"GET * HTTP/1.1\r\n\r\n", b"400"),
])
@pytest.mark.http
def test_malformed_requests_keep_server_alive(server, data, status):
    answer = raw_request(server, data)
    assert answer.split(b" ")[1] == status, answer[:80]
    assert b"content-type: text/plain" in answer.lower()
    assert server.get("/")[0] == 200
    assert "Traceback" not in server.log()


# ---------------------------------------------------------------- images

@pytest.mark.http
def test_image_download(server, images_dir):
    status, headers, body = server.get("/images/os/1.0/vmlinuz")
    assert status == 200 and body == (images_dir / "os/1.0/vmlinuz").read_bytes()
    assert headers["content-length"] == str(1 << 20)
    assert headers["etag"].startswith('"') and headers["last-modified"].endswith("GMT")
    assert headers["accept-ranges"] == "bytes"
    assert server.get("/images/empty")[:3:2] == (200, b"")
    assert server.get("/images/inside-link")[2] == b"initrd-bytes"
    assert server.get("/images/os/1.0/missing")[0] == 404
    assert server.get("/images/os/1.0/")[0] == 404
    assert server.get("/images/os")[0] == 404


@pytest.mark.http
def test_image_conditional(server):
    _, headers, _ = server.get("/images/os/1.0/initrd.gz")
    etag, modified = headers["etag"], headers["last-modified"]
    for cond in ({"If-None-Match": etag}, {"If-None-Match": '"x", ' + etag},
                 {"If-None-Match": "*"}, {"If-Modified-Since": modified}):
        status, h, body = server.get("/images/os/1.0/initrd.gz", headers=cond)
        assert status == 304 and body == b"" and h["etag"] == etag
    for cond in ({"If-None-Match": '"other"'},
                 {"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"},
                 {"If-None-Match": '"other"', "If-Modified-Since": modified},
                 {"If-Modified-Since": "garbage"}):
        assert server.get("/images/os/1.0/initrd.gz", headers=cond)[0] == 200


@pytest.mark.parametrize("rng, status, content_range, body", [
    ("bytes=0-4", 206, "bytes 0-4/12", b"initr"),
    ("bytes=7-", 206, "bytes 7-11/12", b"bytes"),
    ("bytes=-3", 206, "bytes 9-11/12", b"tes"),
    ("bytes=-100", 206, "bytes 0-11/12", b"initrd-bytes"),
    ("bytes=5-100", 206, "bytes 5-11/12", b"d-bytes"),
    ("bytes=12-", 416, "bytes */12", None),
    ("bytes=-0", 416, "bytes */12", None),
    ("bytes=0-1,3-4", 200, None, b"initrd-bytes"),
    ("bytes=4-2", 200, None, b"initrd-bytes"),
    ("items=0-1", 200, None, b"initrd-bytes"),
    ("bytes=x-y", 200, None, b"initrd-bytes"),
])
@pytest.mark.http
def test_image_range(server, rng, status, content_range, body):
    got, headers, data = server.get("/images/os/1.0/initrd.gz", headers={"Range": rng})
    assert got == status
    assert headers.get("content-range") == content_range
    if body is not None:
        assert data == body and headers["content-length"] == str(len(body))


@pytest.mark.http
def test_if_range(server):
    _, headers, _ = server.get("/images/os/1.0/initrd.gz")
    hit = server.get("/images/os/1.0/initrd.gz",
                     headers={"Range": "bytes=0-1", "If-Range": headers["etag"]})
    miss = server.get("/images/os/1.0/initrd.gz",
                      headers={"Range": "bytes=0-1", "If-Range": '"stale"'})
    assert hit[0] == 206 and miss[0] == 200 and miss[2] == b"initrd-bytes"


TRAVERSALS = [
    "/images/../secret.txt", "/images/%2e%2e/secret.txt", "/images/%2E%2E%2Fsecret.txt",
    "/images/os/../../secret.txt", "/images/os/%2e%2e/%2e%2e/secret.txt",
    "/images/..%2f..%2fsecret.txt", "/images/..%5csecret.txt", "/images/..\\secret.txt",
    "/images/os\\..\\..\\secret.txt", "/images/escape", "/images/escape-dir/secret.txt",
    "/images/%2Fetc%2Fpasswd", "/images//etc/passwd", "/images/os/1.0/initrd.gz%00.txt",
    "/images/%00", "/images/%252e%252e/secret.txt", "/images/%c0%ae%c0%ae/secret.txt",
    "/images/./../secret.txt", "/images/os/./../../secret.txt", "/images/...",
]


@pytest.mark.http
@pytest.mark.parametrize("path", TRAVERSALS)
def test_image_traversal_refused(server, path):
    answer = raw_request(server, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                         b"Connection: close\r\n\r\n")
    status = int(answer.split(b" ", 2)[1])
    assert status in (400, 403, 404), answer[:100]
    assert b"outside the root" not in answer and b"root:" not in answer


@pytest.mark.http
def test_symlink_escape_logged(server):
    assert server.get("/images/escape")[0] == 403
    assert server.wait_log(r"refused image /images/escape: .*outside")


@pytest.mark.cli
def test_images_off_when_default_missing(start_server, data_dir, tmp_path):
    s = start_server("-data-path", str(data_dir), cwd=str(tmp_path))
    assert s.wait_log("image serving is off")
    status, _, body = s.get("/images/anything")
    assert status == 404 and b"off" in body


@pytest.mark.http
def test_client_disconnect_is_one_quiet_line(server, images_dir):
    write(str(images_dir / "big"), b"\0" * (64 << 20))
    s = socket.create_connection((server.host, server.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"GET /images/big HTTP/1.1\r\nHost: x\r\n\r\n")
    s.recv(1000)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()                                     # RST mid-transfer
    assert server.wait_log(r'"GET /images/big" 200 aborted', timeout=10)
    assert server.wait_log(r"went away during GET /images/big")
    assert "Traceback" not in server.log()
    assert server.get("/")[0] == 200


@pytest.mark.http
def test_access_log_line(server):
    server.get("/ipxe?uuid=%s&mac=%s" % (UUID1, MAC1))
    m = server.wait_log(r'127\.0\.0\.1 "GET /ipxe\?uuid=\S+" 200 (\d+)B ([\d.]+)ms '
                        r"uuid=%s mac=%s file=boot/uuid/%s" % (UUID1, MAC1, UUID1))
    assert m and int(m.group(1)) > 0
    server.get("/ipxe?mac=52:54:00:00:00:99")
    assert server.wait_log(r'"GET /ipxe\?mac=\S+" 200 \d+B .* file=boot/default')
    raw_request(server, b"GET /nope\x01 HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert server.wait_log(r'"GET /nope\\x01" 404')


@pytest.mark.http
def test_protocol_errors_after_a_routed_request_are_logged_and_counted(server):
    """On one keep-alive connection: a routed request, then a request line the
    standard library refuses itself (414). Both answers get an access line and a
    count (the 414 once went out unlogged and uncounted after a routed request)."""
    s = socket.create_connection((server.host, server.port), timeout=5)
    s.sendall(b"GET /ipxe?mac=52:54:00:89:d8:10 HTTP/1.1\r\nHost: x\r\n\r\n")
    first = s.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    s.sendall(b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    second = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        second += chunk
    s.close()
    assert second.startswith(b"HTTP/1.1 414")
    assert server.wait_log(r'^.*127\.0\.0\.1 "GET /a{20}.*\.\.\." 414 \d+B [\d.]+ms uuid=- '
                           r'mac=- file=-$')
    metrics = server.get("/metrics")[2].decode()
    assert 'bootcfg_requests_total{route="other",status="414"} 1' in metrics
    assert 'bootcfg_requests_total{route="/ipxe",status="200"} 1' in metrics


@pytest.mark.parametrize("data, status", [
    (b"GET / HTTP/9.9\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", 431),
    (b"GARBAGE\r\n\r\n", 400),
    (b"BREW / HTTP/1.1\r\n\r\n", 405),
])
@pytest.mark.http
def test_every_refusal_gets_the_same_access_line(server, data, status):
    raw_request(server, data)
    assert server.wait_log(r'127\.0\.0\.1 ".+" %d \d+B [\d.]+ms uuid=- mac=- file=-$'
                           % status)
    metrics = server.get("/metrics")[2].decode()
    assert 'route="other",status="%d"} 1' % status in metrics
