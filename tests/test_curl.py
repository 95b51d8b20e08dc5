"""curl, a real client, against the real server: what the README promises."""

import json
import subprocess

import pytest

from helpers import MAC1, UUID1, need_tool

pytestmark = pytest.mark.cli


@pytest.fixture
def curl():
    path = need_tool("curl", "apt-get install curl")

    def get(server, path_, *opts):
        out = subprocess.run([path, "-sS", "-i", "--max-time", "10"] + list(opts) +
                             ["http://127.0.0.1:%d%s" % (server.port, path_)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        head, _, body = out.stdout.partition(b"\r\n\r\n")
        return int(head.split(b" ")[1]), head.decode("latin-1"), body

    return get


def test_every_endpoint_with_curl(serve, data_dir, tmp_path, curl):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "vmlinuz").write_bytes(b"K" * 1000)
    s = serve("-data-path", str(data_dir), "-images-path", str(tmp_path / "images"))
    assert curl(s, "/")[0] == 200
    status, _, body = curl(s, "/boot.ipxe")
    assert status == 200 and body.startswith(b"#!ipxe")
    status, _, body = curl(s, "/ipxe?uuid=%s&mac=%s" % (UUID1, MAC1))
    assert status == 200 and b"tag=uuid1" in body
    status, _, body = curl(s, "/cloud?mac=52-54-00-89-D8-10")
    assert status == 200 and body == b"#cloud-config\nhostname: mac1\n"
    status, head, body = curl(s, "/pixiecore/v1/boot/" + MAC1)
    assert status == 200 and json.loads(body)["cmdline"] == "tag=mac1"
    status, head, body = curl(s, "/images/vmlinuz", "-r", "10-19")
    assert status == 206 and body == b"K" * 10 and "Content-Range: bytes 10-19/1000" in head
    status, head, body = curl(s, "/images/vmlinuz", "-I")
    assert status == 200 and "Content-Length: 1000" in head and body == b""
    assert curl(s, "/images/../../etc/passwd", "--path-as-is")[0] in (400, 403, 404)
    assert curl(s, "/pixiecore/v1/boot/nope")[0] == 400
    assert curl(s, "/ipxe", "-X", "DELETE")[0] == 405


def test_the_readme_run_command_serves_bundled_data(start_server, curl):
    """`python3 bootcfg.py` from the checkout, as the README says: the bundled
    data/ answers for the example machines."""
    import os
    from helpers import ROOT
    uuid = sorted(os.listdir(os.path.join(ROOT, "data/boot/uuid")))[0]
    s = start_server(cwd=ROOT)
    for path, want in [("/ipxe?uuid=" + uuid, b"flatcar.first_boot=1"),
                       ("/ipxe?mac=52:54:00:89:d8:10", b"console=ttyS0"),
                       ("/ipxe", b"flatcar.autologin"),
                       ("/cloud?uuid=" + uuid, b"hostname: node1"),
                       ("/cloud?mac=52:54:00:89:d8:10", b"hostname: node2"),
                       ("/cloud", b"hostname: unassigned"),
                       ("/ipxe?mac=52:54:00:89:d8:20",
                        b"ignition.config.url=http://bootcfg.lan:8080/ignition?uuid=${uuid}"
                        b"&mac=${mac:hexhyp} flatcar.first_boot=1"),
                       ("/ipxe?mac=52:54:00:89:d8:30",
                        b"ignition.firstboot ignition.platform.id=metal"),
                       ("/ignition?mac=52:54:00:89:d8:20", b'"data:,node3"'),
                       ("/ignition?mac=52:54:00:89:d8:30", b'"version": "3.4.0"'),
                       ("/ignition/shared/fleet.ign", b'"name": "core"')]:
        status, _, body = curl(s, path)
        assert status == 200 and want in body, path
