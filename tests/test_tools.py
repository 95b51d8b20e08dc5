"""Operators' tools: `bootcfg check`, `bootcfg explain`, JSON logs, /metrics."""

import json
import os
import re
import subprocess
import time

import pytest

from helpers import MAC1, ROOT, UUID1, boot_json, need_tool, run_bootcfg, write


def bootcfg(*args):
    return run_bootcfg(*args, text=False)


# ---------------------------------------------------------------- check

@pytest.fixture
def broken(tmp_path):
    """A data directory with a dozen kinds of mistakes, and an images directory."""
    d, img = tmp_path / "data", tmp_path / "images"
    write(str(img / "os/vmlinuz"), b"k")
    write(str(img / "os/initrd.gz"), b"i")
    write(str(tmp_path / "outside"), b"x")
    os.symlink(str(tmp_path / "outside"), str(img / "escape"))
    good = boot_json(kernel="/images/os/vmlinuz", initrd=["/images/os/initrd.gz"])
    files = {
        "boot/default": good,
        "boot/mac/52:54:00:00:00:01": '{\n  "kernel": "/images/os/vmlinuz",\n  "initrd": [,]\n}',
        "boot/mac/52:54:00:00:00:02": '{"kernel": "/images/os/vmlinuz", "args": []}',
        "boot/mac/52:54:00:00:00:03": '{"kernel": "/images/os/vmlinuz", "initrd": "/x"}',
        "boot/mac/52:54:00:00:00:04": boot_json(kernel="/images/os/vmlinuz",
                                                initrd=[], cmdline=["ok", "a\nchain x"]),
        "boot/mac/52:54:00:00:00:05": '{"kernel": "/k", "cmdline": {"a": "1", "a": "2"}}',
        "boot/mac/52:54:00:00:00:06": good,
        "boot/mac/52-54-00-00-00-06": good,
        "boot/mac/node1": good,
        "boot/uuid/not-a-uuid": good,
        "boot/uuid/00000000-0000-0000-0000-000000000000": good,
        "boot/uuid/" + UUID1: '{\n  "kernel": "/images/os/missing-vmlinuz",\n'
                              '  "initrd": ["/images/os/initrd.gz", "/images/os/gone.gz"]\n}',
        "boot/mac/52:54:00:00:00:07": boot_json(kernel="/images/escape", initrd=[]),
        "boot/mac/52:54:00:00:00:08": '{"kernel": "/images/os/vmlinuz",\n'
                                      ' "cmdline": ["t={{x}}"]}',
        "boot/macs/52:54:00:00:00:09": good,
        "cloud/default": "#cloud-config\n",
        "cloud/mac/52:54:00:00:00:01": "hostname: no-header\n",
        "cloud/uuid/" + UUID1: "#!/bin/sh\necho ok\n",
    }
    for rel, text in files.items():
        write(str(d / rel), text)
    return d, img


EXPECTED = [
    # (file, line:col or None, severity, message fragment)
    ("boot/mac/52:54:00:00:00:01", "3:14", "error", "invalid JSON"),
    ("boot/mac/52:54:00:00:00:02", None, "error", "unknown key 'args'"),
    ("boot/mac/52:54:00:00:00:03", None, "error", "initrd: must be a list"),
    ("boot/mac/52:54:00:00:00:04", None, "error", "cmdline[1]: "),
    ("boot/mac/52:54:00:00:00:05", None, "error", "duplicate key 'a'"),
    ("boot/mac/52-54-00-00-00-06", None, "error", "same machine as 52:54:00:00:00:06"),
    ("boot/mac/node1", None, "error", "not a MAC address"),
    ("boot/uuid/not-a-uuid", None, "error", "not a UUID"),
    ("boot/uuid/00000000-0000-0000-0000-000000000000", None, "error", "placeholder"),
    ("boot/uuid/" + UUID1, "2:14", "error", "kernel: /images/os/missing-vmlinuz does not exist"),
    ("boot/uuid/" + UUID1, "3:39", "error", "initrd[1]: /images/os/gone.gz does not exist"),
    ("boot/mac/52:54:00:00:00:07", "1:13", "error", "outside the images directory"),
    ("boot/mac/52:54:00:00:00:08", "2:17", "warning", "'{{'"),
    ("boot/macs", None, "warning", "not a place bootcfg looks"),
    ("cloud/mac/52:54:00:00:00:01", "1:1", "warning", "neither #cloud-config nor #!"),
]


@pytest.mark.cli
def test_check_finds_each_mistake(broken):
    d, img = broken
    out = bootcfg("check", "-data-path", str(d), "-images-path", str(img))
    assert out.returncode == 1
    lines = out.stdout.decode().splitlines()
    for rel, pos, severity, fragment in EXPECTED:
        prefix = str(d / rel) + (":" + pos if pos else "") + ": %s: " % severity
        hits = [line for line in lines if line.startswith(prefix) and fragment in line]
        assert hits, "no finding %r for %s in:\n%s" % (fragment, prefix, out.stdout.decode())
    assert len(lines) == len(EXPECTED), out.stdout.decode()
    assert b"12 error(s), 3 warning(s)" in out.stderr


@pytest.mark.cli
def test_check_json(broken):
    d, img = broken
    out = bootcfg("check", "--data-path", str(d), "--images-path", str(img), "--format", "json")
    findings = json.loads(out.stdout)
    assert out.returncode == 1 and len(findings) == len(EXPECTED)
    first = [f for f in findings if f["path"].endswith("52:54:00:00:00:01") and
             f["path"].startswith(str(d / "boot"))][0]
    assert (first["line"], first["col"], first["severity"]) == (3, 14, "error")


@pytest.mark.cli
def test_check_clean_data_exits_0(tmp_path):
    out = bootcfg("check", "-data-path", os.path.join(ROOT, "data"))
    assert out.returncode == 0 and out.stdout == b""
    assert b"0 error(s), 0 warning(s)" in out.stderr


@pytest.mark.cli
def test_check_warnings_only_exit_0(tmp_path):
    write(str(tmp_path / "boot/default"), boot_json())
    write(str(tmp_path / "cloud/default"), "plain text\n")
    out = bootcfg("check", "-data-path", str(tmp_path))
    assert out.returncode == 0 and b": warning: " in out.stdout


@pytest.mark.http
def test_check_agrees_with_server(broken, serve):
    """Every file check calls an error the server refuses too (500 or never matched)."""
    d, img = broken
    server = serve("-data-path", str(d), "-images-path", str(img))
    for mac in ("52:54:00:00:00:0%d" % i for i in range(1, 6)):
        assert server.get("/ipxe?mac=" + mac)[0] == 500, mac


# ---------------------------------------------------------------- explain

MACHINES = [
    ("6c3f1e0a-4b7d-4e2a-9c1f-2a5b8d7e9f10", "52:54:00:89:d8:10"),
    ("6C3F1E0A-4B7D-4E2A-9C1F-2A5B8D7E9F10", ""),
    ("", "52-54-00-89-D8-10"),
    ("00000000-0000-0000-0000-000000000000", "52:54:00:89:d8:10"),
    ("", "52:54:00:00:00:99"),
    ("not-a-uuid", "nope"),
    ("", ""),
]


@pytest.mark.cli
@pytest.mark.parametrize("uuid, mac", MACHINES)
def test_explain_matches_server_byte_for_byte(serve, uuid, mac):
    data = os.path.join(ROOT, "data")
    server = serve("-data-path", data)
    from urllib.parse import quote
    qs = "uuid=%s&mac=%s" % (quote(uuid), quote(mac))
    paths = {"ipxe": "/ipxe?" + qs, "cloud": "/cloud?" + qs}
    if mac:
        paths["pixiecore"] = "/pixiecore/v1/boot/" + quote(mac, safe=":")
    for show, path in paths.items():
        out = bootcfg("explain", "-data-path", data, "--uuid", uuid, "--mac", mac,
                      "--show", show)
        status, _, body = server.get(path)
        assert out.stdout == body, (show, path)
        assert out.returncode == (0 if status == 200 else 1)
    report = bootcfg("explain", "-data-path", data, "--uuid", uuid, "--mac", mac).stdout
    for show, path in paths.items():
        status, _, body = server.get(path)
        assert ("==> GET %s -> %d\n" % (path, status)).encode() in report
        assert body.rstrip(b"\n") in report


@pytest.mark.cli
def test_explain_shows_the_search(data_dir):
    out = bootcfg("explain", "-data-path", str(data_dir), "--uuid", UUID1, "--mac", MAC1,
                  "--platform", "efi").stdout.decode()
    assert re.search(r"uuid +boot/uuid/%s +\S+ +MATCHED" % UUID1, out)
    assert re.search(r"mac +boot/mac/52-54-00-89-D8-10 +\{mac=%s\} +matches, ranks below "
                     r"boot/uuid/%s" % (MAC1, UUID1), out)
    assert "platform efi" in out and "initrd=<name>" in out
    out = bootcfg("explain", "-data-path", str(data_dir), "--mac", "52:54:00:00:00:99").stdout
    assert re.search(rb"mac +boot/mac/52:54:00:00:00:99 +\S+ +no file", out)
    assert re.search(rb"default +boot/default +\{\} +MATCHED", out)


@pytest.mark.cli
def test_explain_invalid_file(data_dir):
    write(str(data_dir / "boot/mac" / MAC1), "{oops")
    os.utime(str(data_dir / "boot/mac" / MAC1), (time.time() - 5,) * 2)
    os.unlink(str(data_dir / "boot/mac/52-54-00-89-D8-10"))
    out = bootcfg("explain", "-data-path", str(data_dir), "--mac", MAC1).stdout.decode()
    assert re.search(r"mac +boot/mac/%s +\S+ +INVALID.*invalid JSON" % MAC1, out)
    assert "chosen: none (500)" in out and "-> 500" in out


# ---------------------------------------------------------------- logs

@pytest.mark.http
def test_json_logs(serve, data_dir):
    s = serve("-data-path", str(data_dir), "-log-format", "json")
    s.get("/ipxe?uuid=%s&mac=%s" % (UUID1, MAC1))
    s.get("/cloud?mac=52:54:00:00:00:99")
    path = str(data_dir / "boot/mac" / "52:54:00:00:00:42")
    write(path, "{broken")
    os.utime(path, (time.time() - 5,) * 2)
    time.sleep(0.15)          # a new file is seen within dir_check_seconds (0.1 s)
    s.get("/ipxe?mac=52:54:00:00:00:42")
    assert s.wait_log(r'"reason"') and s.wait_log(r'"status":500')
    records = [json.loads(line) for line in s.log().splitlines()]
    access = [r for r in records if r["logger"] == "bootcfg.access"]
    first = access[0]
    assert first["status"] == 200 and first["uuid"] == UUID1 and first["mac"] == MAC1
    assert first["file"] == "boot/uuid/" + UUID1 and first["method"] == "GET"
    assert first["bytes"] > 0 and first["ms"] >= 0 and first["client"] == "127.0.0.1"
    assert access[1]["file"] == "cloud/default" and access[1]["uuid"] is None
    warn = [r for r in records if r["level"] == "warning" and "reason" in r][0]
    assert warn["file"].endswith("52:54:00:00:00:42") and "invalid JSON" in warn["reason"]
    assert access[2]["status"] == 500 and access[2]["mac"] == "52:54:00:00:00:42"
    assert all(r["time"].endswith("Z") for r in records)


@pytest.mark.http
def test_log_format_from_env(serve, data_dir):
    s = serve("-data-path", str(data_dir), env={"BOOTCFG_LOG_FORMAT": "json"})
    s.get("/")
    assert s.wait_log(r'^\{"time"')


# ---------------------------------------------------------------- metrics

def metric(text, name, **labels):
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    pattern = r"^%s%s (\S+)$" % (re.escape(name), re.escape("{%s}" % want) if want else "")
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.cli
def test_metrics_parse_and_move(serve, data_dir):
    promtool = need_tool("promtool", "apt-get install prometheus")
    s = serve("-data-path", str(data_dir))
    before = s.get("/metrics")[2].decode()
    for _ in range(3):
        s.get("/ipxe?mac=" + MAC1)
    s.get("/ipxe?uuid=" + UUID1)
    s.get("/cloud?mac=52:54:00:00:00:99")
    s.get("/nope")
    path = str(data_dir / "boot/uuid" / UUID1)
    write(path, "{half")
    time.sleep(0.3)
    s.get("/ipxe?uuid=" + UUID1)       # served from the last good copy
    conn = s.connect()
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    after = resp.read().decode()
    assert resp.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    check = subprocess.run([promtool, "check", "metrics"], input=after.encode(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert check.returncode == 0, check.stdout.decode()
    assert metric(after, "bootcfg_requests_total", route="/ipxe", status="200") - \
        metric(before, "bootcfg_requests_total", route="/ipxe", status="200") == 5
    assert metric(after, "bootcfg_requests_total", route="other", status="404") == 1
    assert metric(after, "bootcfg_machine_lookups_total", kind="boot", match="mac") == 3
    assert metric(after, "bootcfg_machine_lookups_total", kind="boot", match="uuid") == 2
    assert metric(after, "bootcfg_machine_lookups_total", kind="cloud", match="default") == 1
    assert metric(after, "bootcfg_response_bytes_total", route="/ipxe") > 0
    assert metric(after, "bootcfg_config_load_errors_total") == 1
    assert metric(after, "bootcfg_configs_stale") == 1
    assert metric(after, "bootcfg_open_connections") >= 1
    assert metric(after, "bootcfg_build_info", version=after.split('version="')[1].split('"')[0]) == 1
    conn.close()


@pytest.mark.cli
@pytest.mark.parametrize("command", ["check", "explain"])
def test_tools_report_a_missing_data_directory_in_one_line(command):
    out = bootcfg(command, "-data-path", "/nonexistent/data")
    assert out.returncode == 2
    assert out.stderr.decode().strip() == ("bootcfg %s: data directory /nonexistent/data does "
                                           "not exist (set -data-path or BOOTCFG_DATA_PATH)"
                                           % command)
