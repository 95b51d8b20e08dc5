"""Ignition: validated at load, never served broken, in agreement with Ignition's
own validator; /ignition and /ignition/shared/<name> over real HTTP; check and
explain; the cache keeps the only last good copy."""

import copy
import json
import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from _bootcfg.ignition import parse_ignition
from helpers import MAC1, UUID1, need_tool, run_bootcfg, settle, write
from ignition_corpus import CASES, DIFFERENT, FULL
from render import ConfigError
from store import FileStore

IGN_TYPE = "application/vnd.coreos.ignition+json"


def verdict(data):
    """None when bootcfg accepts `data`, else its error message."""
    try:
        parse_ignition(data)
        return None
    except ConfigError as e:
        return str(e)


@pytest.mark.unit
@pytest.mark.parametrize("name, data, fragment", CASES, ids=[c[0] for c in CASES])
def test_corpus_case(name, data, fragment):
    got = verdict(data)
    if fragment is None:
        assert got is None, got
    else:
        assert got is not None and fragment in got, got


@pytest.mark.unit
def test_corpus_is_big_enough():
    assert len(CASES) >= 30
    assert sum(1 for c in CASES if c[2] is None) >= 8
    assert {v for v in ("3.0.0", "3.1.0", "3.2.0", "3.3.0", "3.4.0", "3.5.0")} <= {
        json.loads(c[1].decode("utf-8", "replace").lstrip("\ufeff"))["ignition"]["version"]
        for c in CASES if c[2] is None}


def validate_all(tmp_path, configs):
    """ignition-validate's verdict (True: accepted) on each config."""
    tool = need_tool("ignition-validate", "apt-get install ignition")

    def one(item):
        i, data = item
        path = str(tmp_path / ("%d.ign" % i))
        with open(path, "wb") as f:
            f.write(data)
        return subprocess.run([tool, path], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT).returncode == 0

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, enumerate(configs)))


@pytest.mark.cli
def test_agrees_with_ignition_validate(tmp_path):
    """Every config ignition-validate rejects, bootcfg rejects; they differ only
    where DIFFERENT says so, and as it says."""
    theirs = validate_all(tmp_path, [c[1] for c in CASES])
    for (name, data, _), their_ok in zip(CASES, theirs):
        our_ok = verdict(data) is None
        if name in DIFFERENT:
            assert (our_ok, their_ok) == DIFFERENT[name][:2], name
        else:
            assert our_ok == their_ok, "%s: bootcfg %s, ignition-validate %s" % (
                name, "accepts" if our_ok else "refuses", "accepts" if their_ok else "refuses")
        if not their_ok and DIFFERENT.get(name, (False,))[0] is False:
            assert not our_ok, name


def leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from leaves(v, path + (i,))
    else:
        yield path, obj


@pytest.mark.cli
def test_every_field_mutated_agrees_with_ignition_validate(tmp_path):
    """Each value of a full 3.3.0 config replaced by one of a dozen others (wrong
    types, empty, relative, null, ...): 300+ configs, the same verdict from both."""
    base = dict({"ignition": {"version": "3.3.0"}}, **FULL)
    mutants = []
    for path, _ in leaves(base):
        if path == ("ignition", "version"):
            continue
        for value in (True, 7, "x", "", "/", "relative", [], {}, None, -5, "data:,x", "a.b"):
            m = copy.deepcopy(base)
            parent = m
            for p in path[:-1]:
                parent = parent[p]
            parent[path[-1]] = value
            mutants.append((".".join(map(str, path)), value, json.dumps(m).encode()))
    assert len(mutants) >= 300
    theirs = validate_all(tmp_path, [m[2] for m in mutants])
    disagree = [(p, v, verdict(d)) for (p, v, d), ok in zip(mutants, theirs)
                if (verdict(d) is None) != ok]
    assert not disagree, disagree[:5]


@pytest.mark.unit
def test_unknown_keys_are_warnings_with_their_path():
    cfg = parse_ignition(b'{"ignition": {"version": "3.3.0"}, "storage": {"filez": []}}')
    assert cfg.warnings == (("$.storage.filez", "unused key filez"),)
    assert cfg.version == "3.3.0"


@pytest.mark.unit
def test_merge_sources_are_collected():
    cfg = parse_ignition(json.dumps({"ignition": {"version": "3.3.0", "config": {
        "merge": [{"source": "http://a/ignition/shared/x"}],
        "replace": {"source": "http://b/y"}}}}).encode())
    assert cfg.sources == (("$.ignition.config.merge.0.source", "http://a/ignition/shared/x"),
                           ("$.ignition.config.replace.source", "http://b/y"))


# ---------------------------------------------------------------- over HTTP

GOOD = json.dumps({"ignition": {"version": "3.3.0"}, "storage": {"files": [
    {"path": "/etc/role", "contents": {"source": "data:,web"}}]}}, indent=1) + "\n"
BROKEN = json.dumps({"ignition": {"version": "3.3.0"}, "storage": {"files": [
    {"path": "etc/role"}]}})


@pytest.fixture
def ign(serve, tmp_path):
    d = tmp_path / "data"
    write(str(d / "ignition/default"), GOOD.replace("web", "default"))
    write(str(d / "ignition/uuid" / UUID1), GOOD)
    write(str(d / "ignition/mac/52-54-00-89-D8-10"), BROKEN)
    write(str(d / "ignition/shared/base.ign"), GOOD.replace("role", "base"))
    write(str(d / "ignition/shared/broken.ign"), BROKEN)
    settle(d)
    server = serve("-data-path", str(d))
    server.data = d
    return server


@pytest.mark.http
def test_served_byte_for_byte_with_its_type(ign):
    status, headers, body = ign.get("/ignition?uuid=%s&os=installed&hostname=x" % UUID1)
    assert status == 200 and body == GOOD.encode()
    assert headers["content-type"] == IGN_TYPE
    assert ign.get("/ignition?mac=52:54:00:00:00:99")[2] == GOOD.replace("web", "default").encode()


@pytest.mark.http
def test_invalid_config_is_500_never_200(ign):
    status, headers, body = ign.get("/ignition?mac=" + MAC1)
    assert status == 500 and headers["content-type"].startswith("text/plain")
    assert b"ignition/mac/52-54-00-89-D8-10" in body and b"storage" not in body
    assert ign.wait_log(r"52-54-00-89-D8-10: \$\.storage\.files\.0\.path: path not absolute")
    # the uuid file decides when it exists, the broken mac file when it does not
    assert ign.get("/ignition?uuid=%s&mac=%s" % (UUID1, MAC1))[0] == 200


@pytest.mark.http
def test_a_broken_edit_keeps_the_last_good_version(ign):
    path = str(ign.data / "ignition/uuid" / UUID1)
    assert ign.get("/ignition?uuid=" + UUID1)[2] == GOOD.encode()
    write(path, BROKEN)
    os.utime(path, (time.time() - 5,) * 2)
    for _ in range(5):
        status, _, body = ign.get("/ignition?uuid=" + UUID1)
        assert status == 200 and body == GOOD.encode()
    assert ign.wait_log(r"path not absolute; serving its last good version")


@pytest.mark.http
def test_shared_fragments(ign):
    status, headers, body = ign.get("/ignition/shared/base.ign")
    assert status == 200 and headers["content-type"] == IGN_TYPE
    assert body == GOOD.replace("role", "base").encode()
    assert ign.get("/ignition/shared/broken.ign")[0] == 500
    assert ign.get("/ignition/shared/missing.ign")[0] == 404
    for bad in ("..%2Fdefault", "%2E%2E", ".hidden", "a%2Fb", "x%00"):
        assert ign.get("/ignition/shared/" + bad)[0] in (400, 404), bad
    assert ign.get("/ignition/shared/")[0] == 400
    metrics = ign.get("/metrics")[2].decode()
    assert 'bootcfg_requests_total{route="/ignition/shared/",status="200"} 1' in metrics
    assert 'bootcfg_machine_lookups_total{kind="ignition",match="shared"} 1' in metrics


@pytest.mark.http
def test_ignition_is_counted_in_metrics(ign):
    ign.get("/ignition?uuid=" + UUID1)
    ign.get("/ignition?mac=" + MAC1)
    metrics = ign.get("/metrics")[2].decode()
    assert 'bootcfg_requests_total{route="/ignition",status="200"} 1' in metrics
    assert 'bootcfg_requests_total{route="/ignition",status="500"} 1' in metrics
    assert 'bootcfg_machine_lookups_total{kind="ignition",match="uuid"} 1' in metrics


@pytest.mark.http
def test_megabytes_of_data_urls_are_served(ign):
    """Ignition configs carry files inline: 20 MiB is served (over the 4 MiB limit
    of boot and cloud configs), byte for byte."""
    blob = "A" * (20 << 20)
    big = json.dumps({"ignition": {"version": "3.3.0"}, "storage": {"files": [
        {"path": "/opt/blob", "contents": {"source": "data:," + blob}}]}}).encode()
    path = str(ign.data / "ignition/mac/52:54:00:00:00:42")
    write(path, big)
    os.utime(path, (time.time() - 5,) * 2)
    time.sleep(0.15)          # a new file is seen within dir_check_seconds (0.1 s)
    status, _, body = ign.get("/ignition?mac=52:54:00:00:00:42")
    assert status == 200 and body == big


@pytest.mark.unit
def test_cache_keeps_the_only_last_good_copy(tmp_path):
    """A tiny cache churned by other machines never drops the last good copy of a
    file that has since been broken: that machine keeps getting it, not a 500."""
    from _bootcfg.app import PARSERS
    for i in range(20):
        write(str(tmp_path / "ignition/mac" / ("52:54:00:00:00:%02x" % i)),
              GOOD.replace("web", "m%d" % i))
    settle(tmp_path)
    s = FileStore(str(tmp_path), PARSERS, {"cache_bytes": 3000})
    first = str(tmp_path / "ignition/mac/52:54:00:00:00:00")
    assert s.lookup("ignition", None, "52:54:00:00:00:00").match.value.data == \
        GOOD.replace("web", "m0").encode()
    write(first, BROKEN)
    os.utime(first, (time.time() - 5,) * 2)
    assert s.lookup("ignition", None, "52:54:00:00:00:00").match.stale
    for _ in range(3):                        # every other file, through the cache
        for i in range(1, 20):
            assert s.lookup("ignition", None, "52:54:00:00:00:%02x" % i).match
    m = s.lookup("ignition", None, "52:54:00:00:00:00").match
    assert m is not None and m.stale and m.value.data == GOOD.replace("web", "m0").encode()
    assert s.files._cached_bytes <= 3000 + 2 * 600      # bounded but for the pinned copy


# ---------------------------------------------------------------- check, explain

@pytest.mark.cli
def test_check_reports_ignition_mistakes(tmp_path):
    d = tmp_path / "data"
    write(str(d / "boot/default"), '{"kernel": "/k"}')
    write(str(d / "ignition/default"), '{\n  "ignition": {"version": "3.3.0"},\n}')
    write(str(d / "ignition/mac" / MAC1), BROKEN)
    write(str(d / "ignition/uuid" / UUID1), json.dumps({"ignition": {
        "version": "3.3.0", "config": {"merge": [
            {"source": "http://bootcfg.lan:8080/ignition/shared/missing.ign"},
            {"source": "http://10.0.0.1/ignition/shared/base.ign"}]}}, "extra": 1}))
    write(str(d / "ignition/shared/base.ign"), GOOD)
    write(str(d / "ignition/shared/old.ign"), json.dumps({"ignition": {"version": "2.2.0"}}))
    out = run_bootcfg("check", "-data-path", str(d))
    lines = out.stdout.splitlines()
    assert out.returncode == 1
    expect = [
        # the position of a trailing comma differs between Pythons (3:1, or 2:35 on 3.13)
        (str(d / "ignition/default") + ":", "error: invalid JSON"),
        (str(d / "ignition/mac" / MAC1) + ": error: ",
         "$.storage.files.0.path: path not absolute"),
        (str(d / "ignition/uuid" / UUID1) + ": error: ",
         "$.ignition.config.merge.0.source: http://bootcfg.lan:8080/ignition/shared/"
         "missing.ign names ignition/shared/missing.ign, which does not exist"),
        (str(d / "ignition/uuid" / UUID1) + ": warning: ", "$.extra: unused key extra"),
        (str(d / "ignition/shared/old.ign") + ": error: ", "convert it to spec 3"),
    ]
    for prefix, fragment in expect:
        assert any(line.startswith(prefix) and fragment in line for line in lines), \
            (prefix, fragment, out.stdout)
    assert len(lines) == len(expect), out.stdout
    assert "base.ign" not in out.stdout


@pytest.mark.cli
def test_explain_shows_the_ignition_answer(ign):
    d = str(ign.data)
    out = run_bootcfg("explain", "-data-path", d, "--uuid", UUID1, "--show", "ignition",
                      text=False)
    assert out.returncode == 0 and out.stdout == ign.get("/ignition?uuid=" + UUID1)[2]
    report = run_bootcfg("explain", "-data-path", d, "--mac", MAC1).stdout
    assert re.search(r"mac +ignition/mac/52-54-00-89-D8-10 +\S+ +INVALID.*path not absolute", report)
    assert "==> GET /ignition?uuid=&mac=52%3A54%3A00%3A89%3Ad8%3A10 -> 500" in report
