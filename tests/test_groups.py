"""Groups and profiles: selection (table-driven, seed files and groups mixed),
variables, /generic and /metadata, templates per group, broken group files,
edits while running, check and explain. Expected template outputs are held to
Go in test_template.py; here the rules of selection are."""

import json
import os
import re
import time

import pytest

from _bootcfg import app as app_module, check, groups
from _bootcfg.files import FakeClock
from _bootcfg.answers import Request
from helpers import boot_json, run_bootcfg, settle, write

MAC_A = "52:54:00:a1:00:02"
MAC_B = "52:54:00:a1:00:03"
UUID_A = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"

PROFILES = {
    name: {"id": name, "boot": {"kernel": "/assets/%s/vmlinuz" % name, "initrd": [],
                                "args": ["p=%s" % name]},
           "cloud_id": "%s.tmpl" % name, "ignition_id": "%s.ign" % name}
    for name in ("install", "installed", "arm", "rack", "node", "uuidp", "fleet", "three")
}


def tree(root, groups_=(), seeds=(), profiles=PROFILES):
    """A data directory: groups_ is [(file name, selector dict)], each naming a
    profile of the same name as its file (without .json) unless given as a
    third item; seeds is [relative seed path]; every seed boot file carries
    tag=<its path>."""
    for item in groups_:
        name, selector = item[0], item[1]
        profile = item[2] if len(item) > 2 else name.split(".")[0]
        write(os.path.join(root, "groups", name),
              json.dumps({"id": name, "profile": profile, "selector": selector,
                          "metadata": {"hostname": "h-" + name}}))
    for pid, prof in profiles.items():
        write(os.path.join(root, "profiles", pid + ".json"), json.dumps(prof))
        write(os.path.join(root, "cloud", pid + ".tmpl"), "#cloud-config\nprofile: %s\n"
              "hostname: {{.hostname}}\n" % pid)
        write(os.path.join(root, "ignition", pid + ".ign"),
              json.dumps({"ignition": {"version": "3.3.0"}, "storage": {"files": [
                  {"path": "/etc/hostname", "contents": {"source": "data:,{{.hostname}}"}}]}}))
    for rel in seeds:
        kind = rel.split("/")[0]
        write(os.path.join(root, rel), boot_json(tag=rel) if kind == "boot" else
              "#cloud-config\nseed: %s\n" % rel)
    settle(root)
    return app_module.make_store(root, clock=FakeClock())


def look_again(fs, sweep=False):
    """Move the store's clock past its directory check (and, with `sweep`, the
    group sweep): the next lookup looks at groups/ again."""
    fs.files.clock.advance(1.1 if sweep else 0.11)


def winner(fs, kind, labels):
    found = fs.select(kind, labels)
    if found.error is not None:
        return "500 " + found.error.path
    if found.match is None:
        return None
    return found.match.group_path or found.match.path


# (groups, seed files, labels, kind, expected winner)
SELECTION = [
    # the seed layout alone: uuid -> mac -> default
    ([], ["boot/uuid/" + UUID_A, "boot/mac/" + MAC_A, "boot/default"],
     {"uuid": UUID_A, "mac": MAC_A}, "boot", "boot/uuid/" + UUID_A),
    ([], ["boot/mac/" + MAC_A, "boot/default"], {"uuid": UUID_A, "mac": MAC_A}, "boot",
     "boot/mac/" + MAC_A),
    ([], ["boot/default"], {"mac": MAC_B}, "boot", "boot/default"),
    ([], [], {"mac": MAC_B}, "boot", None),
    # more labels win: {mac, os} beats {mac}; a 2-label group beats a seed uuid file
    ([("install.json", {"mac": MAC_A}), ("installed.json", {"mac": MAC_A, "os": "installed"})],
     [], {"mac": MAC_A, "os": "installed"}, "boot", "groups/installed.json"),
    ([("install.json", {"mac": MAC_A}), ("installed.json", {"mac": MAC_A, "os": "installed"})],
     [], {"mac": MAC_A}, "boot", "groups/install.json"),
    ([("installed.json", {"mac": MAC_A, "os": "installed"})], ["boot/uuid/" + UUID_A],
     {"uuid": UUID_A, "mac": MAC_A, "os": "installed"}, "boot", "groups/installed.json"),
    # equal counts: greatest sorted key=value text first (uuid > rack > mac)
    ([("node.json", {"mac": MAC_A}), ("uuidp.json", {"uuid": UUID_A})], [],
     {"uuid": UUID_A, "mac": MAC_A}, "boot", "groups/uuidp.json"),
    ([("node.json", {"mac": MAC_A}), ("rack.json", {"rack": "r1"})], [],
     {"mac": MAC_A, "rack": "r1"}, "boot", "groups/rack.json"),
    ([("rack.json", {"rack": "r1"})], ["boot/uuid/" + UUID_A],
     {"uuid": UUID_A, "rack": "r1"}, "boot", "boot/uuid/" + UUID_A),
    ([("three.json", {"mac": MAC_A, "os": "installed", "rack": "r1"}),
      ("installed.json", {"mac": MAC_A, "os": "installed"})], [],
     {"mac": MAC_A, "os": "installed", "rack": "r1"}, "boot", "groups/three.json"),
    # a group and a seed file with identical selectors: the group
    ([("node.json", {"mac": MAC_A})], ["boot/mac/" + MAC_A], {"mac": MAC_A}, "boot",
     "groups/node.json"),
    ([("fleet.json", {})], ["boot/default"], {"mac": MAC_B}, "boot", "groups/fleet.json"),
    # two groups with identical selectors: the file name sorting first
    ([("b-node.json", {"mac": MAC_A}, "node"), ("a-node.json", {"mac": MAC_A}, "install")],
     [], {"mac": MAC_A}, "boot", "groups/a-node.json"),
    # selectors spell MACs any way; labels are compared canonically
    ([("node.json", {"mac": "52-54-00-A1-00-02"})], [], {"mac": MAC_A}, "boot",
     "groups/node.json"),
    # a selector not satisfied: every pair must equal a label
    ([("arm.json", {"arch": "arm64"})], ["boot/default"], {"arch": "x86_64"}, "boot",
     "boot/default"),
    ([("arm.json", {"arch": "arm64"})], ["boot/default"], {"arch": "arm64"}, "boot",
     "groups/arm.json"),
    ([("installed.json", {"mac": MAC_A, "os": "installed"})], ["boot/mac/" + MAC_A],
     {"mac": MAC_A}, "boot", "boot/mac/" + MAC_A),
    # seed files answer only their own kind; groups answer every kind
    ([], ["cloud/mac/" + MAC_A, "boot/default"], {"mac": MAC_A}, "cloud", "cloud/mac/" + MAC_A),
    ([], ["cloud/mac/" + MAC_A, "boot/default"], {"mac": MAC_B}, "cloud", None),
    ([("node.json", {"mac": MAC_A})], ["cloud/default"], {"mac": MAC_A}, "cloud",
     "groups/node.json"),
    ([("node.json", {"mac": MAC_A})], [], {"mac": MAC_A}, "generic", None),
    ([("node.json", {"mac": MAC_A})], [], {"mac": MAC_A}, "metadata", "groups/node.json"),
]


@pytest.mark.unit
@pytest.mark.parametrize("groups_, seeds, labels, kind, expected", SELECTION)
def test_selection(tmp_path, groups_, seeds, labels, kind, expected):
    fs = tree(str(tmp_path), groups_, seeds)
    assert winner(fs, kind, labels) == expected


@pytest.mark.unit
def test_a_group_whose_profile_lacks_the_kind_is_404_never_a_weaker_candidate(tmp_path):
    profiles = dict(PROFILES, bare={"id": "bare", "ignition_id": "install.ign"})
    fs = tree(str(tmp_path), [("bare.json", {"mac": MAC_A})], ["boot/default", "cloud/default"],
              profiles)
    for kind in ("boot", "cloud", "generic"):
        found = fs.select(kind, {"mac": MAC_A})
        assert found.match is None and found.error is None, kind
        assert "profile bare has no" in found.trail[-1].detail
    assert fs.select("ignition", {"mac": MAC_A}).match.path == "ignition/install.ign"


@pytest.mark.unit
def test_mac_and_uuid_groups_are_indexed_not_scanned(tmp_path):
    fs = tree(str(tmp_path), [("node.json", {"mac": MAC_A}), ("rack.json", {"rack": "r1"})])
    # Only the groups naming this machine's mac/uuid, and the best general one,
    # are candidates: a lookup does not walk every group.
    assert [c.path for c in fs.groups.candidates({"mac": MAC_B, "rack": "r1"})] == \
        ["groups/rack.json"]
    assert [c.path for c in fs.groups.candidates({"mac": MAC_A})] == ["groups/node.json"]


@pytest.mark.unit
def test_a_broken_group_file_turns_catch_alls_into_500_and_spares_specific_matches(tmp_path):
    root = str(tmp_path)
    fs = tree(root, [("node.json", {"mac": MAC_A}), ("fleet.json", {})], ["boot/default"])
    write(os.path.join(root, "groups", "meant-for-b.json"), '{"profile": "x", "selector": {')
    settle(root)
    look_again(fs)
    assert winner(fs, "boot", {"mac": MAC_A}) == "groups/node.json"
    found = fs.select("boot", {"mac": MAC_B})
    assert found.error is not None and found.error.path == "groups/meant-for-b.json"
    assert "groups/fleet.json would answer" in found.error.reason
    assert fs.stats()["groups_invalid"] == 1
    os.unlink(os.path.join(root, "groups", "fleet.json"))
    look_again(fs)
    found = fs.select("boot", {"mac": MAC_B})
    assert found.error is not None and "boot/default would answer" in found.error.reason


@pytest.mark.unit
def test_group_edits_while_running(tmp_path):
    root = str(tmp_path)
    fs = tree(root, [("node.json", {"mac": MAC_A})], ["boot/default"])
    path = os.path.join(root, "groups", "node.json")
    # changed in place (the directory does not change): seen by the sweep
    with open(path, "w") as f:
        f.write(json.dumps({"profile": "node", "selector": {"mac": MAC_B}}))
    old = time.time() - 5
    os.utime(path, (old, old))
    look_again(fs, sweep=True)
    assert winner(fs, "boot", {"mac": MAC_B}) == "groups/node.json"
    assert winner(fs, "boot", {"mac": MAC_A}) == "boot/default"
    # broken after it parsed: the last good version is served
    with open(path, "w") as f:
        f.write("{oops")
    os.utime(path, (old + 1, old + 1))
    look_again(fs, sweep=True)
    assert winner(fs, "boot", {"mac": MAC_B}) == "groups/node.json"
    assert fs.select("boot", {"mac": MAC_B}).match.stale
    assert not fs.groups.broken
    # deleted means gone
    os.unlink(path)
    look_again(fs)
    assert winner(fs, "boot", {"mac": MAC_B}) == "boot/default"


@pytest.mark.unit
def test_a_fresh_half_written_group_is_not_broken_yet(tmp_path):
    root = str(tmp_path)
    fs = tree(root, [], ["boot/default"])
    write(os.path.join(root, "groups", "new.json"), '{"profile": "node", "sel')
    look_again(fs)
    assert winner(fs, "boot", {"mac": MAC_B}) == "boot/default"
    assert not fs.groups.broken


@pytest.mark.parametrize("text, message", [
    ('{"selector": {"mac": "x"}}', "profile: missing"),
    ('{"profile": "p", "selector": {"mac": "nope"}}', "selector.mac: not a MAC"),
    ('{"profile": "p", "selector": {"mac": "00:00:00:00:00:00"}}', "placeholder"),
    ('{"profile": "p", "selector": {"os": 1}}', "selector.os: must be a string"),
    ('{"profile": "p", "selector": {"os": ""}}', "empty label"),
    ('{"profile": "p", "metadata": []}', "metadata: must be a JSON object"),
    ('{"profile": "../x"}', "not a profile id"),
    ('{"profile": "p", "profile": "q"}', "duplicate key"),
])
@pytest.mark.unit
def test_group_files_refused(text, message):
    with pytest.raises(ValueError) as e:
        groups.parse_group(text.encode())
    assert message in str(e.value)


@pytest.mark.parametrize("text, message", [
    ('{"boot": {"kernel": "/k", "args": ["a b"]}}', "boot.args[0]"),
    ('{"boot": {"initrd": []}}', "boot.kernel: missing"),
    ('{"ignition_id": "../etc/passwd"}', "not a file name inside ignition/"),
    ('{"ignition_id": "worker.yaml"}', "butane --strict"),
    ('{"cloud_id": "/abs"}', "not a file name inside cloud/"),
])
@pytest.mark.unit
def test_profile_files_refused(text, message):
    with pytest.raises(ValueError) as e:
        groups.parse_profile(text.encode())
    assert message in str(e.value)


@pytest.mark.unit
def test_variables_in_matchbox_order():
    g = groups.parse_group(json.dumps({
        "profile": "p", "selector": {"mac": "52-54-00-A1-00-02", "os": "installed"},
        "metadata": {"os": "overridden", "hostname": "n1", "request": "overridden"}}).encode())
    v = groups.variables(g, {"mac": MAC_A, "os": "installed", "x": "1"}, "mac=x&os=installed")
    assert v == {"os": "installed", "hostname": "n1", "mac": MAC_A,
                 "request": {"query": {"mac": MAC_A, "os": "installed", "x": "1"},
                             "raw_query": "mac=x&os=installed"}}


@pytest.mark.unit
def test_metadata_env_lines():
    body = groups.env_lines({"a": "x y", "n": 3, "big": 10000000, "t": True, "l": [1],
                             "z": None, "nested": {"b": {"c": 2}},
                             "request": {"query": {"mac": MAC_A}, "raw_query": "mac=1"}})
    assert body.decode().splitlines() == [
        "A=x y", "BIG=1e+07", "N=3", "NESTED_B_C=2", "REQUEST_QUERY_MAC=" + MAC_A,
        "REQUEST_RAW_QUERY=mac=1", "T=true"]


# ---------------------------------------------------------------- over HTTP

@pytest.fixture
def fleet(tmp_path, serve):
    root = str(tmp_path / "data")
    tree(root, [("install.json", {"mac": MAC_A}),
                ("installed.json", {"mac": MAC_A, "os": "installed"}),
                ("arm.json", {"arch": "arm64"})], ["boot/default", "cloud/default"])
    write(os.path.join(root, "generic", "env.tmpl"),
          "HOST={{.hostname}} OS={{index .request.query \"os\"}} Q={{.request.raw_query}}\n")
    prof = dict(PROFILES["install"], generic_id="env.tmpl")
    write(os.path.join(root, "profiles", "install.json"), json.dumps(prof))
    images = tmp_path / "images"
    write(str(images / "install" / "vmlinuz"), "KERNEL")
    settle(root)
    server = serve("-data-path", root, "-images-path", str(images))
    server.data_root = root
    return server


@pytest.mark.http
def test_one_mac_two_answers_chosen_by_os(fleet):
    status, _, body = fleet.get("/ipxe?mac=52-54-00-a1-00-02")
    assert status == 200 and b"/assets/install/vmlinuz" in body and b"p=install" in body
    status, _, body = fleet.get("/ignition?mac=%s&os=installed" % MAC_A)
    assert status == 200
    cfg = json.loads(body)
    assert cfg["storage"]["files"][0]["contents"]["source"] == "data:,h-installed.json"
    status, _, body = fleet.get("/cloud?mac=%s" % MAC_A)
    assert status == 200 and body == b"#cloud-config\nprofile: install\nhostname: h-install.json\n"
    # another machine: the seed default
    status, _, body = fleet.get("/cloud?mac=%s" % MAC_B)
    assert body == b"#cloud-config\nseed: cloud/default\n"


@pytest.mark.http
def test_arch_label_picks_the_arm64_profile(fleet):
    status, _, body = fleet.get("/ipxe?mac=%s&arch=arm64" % MAC_B)
    assert status == 200 and b"/assets/arm/vmlinuz" in body
    status, _, body = fleet.get("/ipxe?mac=%s&arch=x86_64" % MAC_B)
    assert status == 200 and b"tag=boot/default" in body


@pytest.mark.http
def test_generic_and_metadata(fleet):
    status, _, body = fleet.get("/generic?mac=%s&os=x" % MAC_A)
    assert status == 200 and body == ("HOST=h-install.json OS=x Q=mac=%s&os=x\n" % MAC_A).encode()
    status, _, body = fleet.get("/metadata?mac=52-54-00-A1-00-02&rack=9")
    assert status == 200
    assert body.decode().splitlines() == [
        "HOSTNAME=h-install.json", "MAC=" + MAC_A, "REQUEST_QUERY_MAC=" + MAC_A,
        "REQUEST_QUERY_RACK=9", "REQUEST_RAW_QUERY=mac=52-54-00-A1-00-02&rack=9"]
    assert fleet.get("/generic?mac=%s" % MAC_B)[0] == 404       # the seed layout has none
    assert fleet.get("/metadata?mac=%s" % MAC_B)[0] == 404


@pytest.mark.http
def test_assets_serves_the_images_directory(fleet):
    assert fleet.get("/assets/install/vmlinuz")[2] == b"KERNEL"
    assert fleet.get("/images/install/vmlinuz")[2] == b"KERNEL"
    assert fleet.get("/assets/../secret")[0] in (400, 403, 404)


@pytest.mark.http
def test_a_group_whose_values_break_its_ignition_gets_500_others_200(tmp_path, serve):
    root = str(tmp_path)
    tree(root, [("node.json", {"mac": MAC_A})])
    write(os.path.join(root, "ignition", "node.ign"), json.dumps(
        {"ignition": {"version": "3.3.0"},
         "storage": {"files": [{"path": "{{.path}}", "contents": {"source": "data:,x"}}]}}))
    for name, mac, path in (("node.json", MAC_A, "/etc/ok"), ("bad.json", MAC_B, "relative")):
        write(os.path.join(root, "groups", name), json.dumps(
            {"profile": "node", "selector": {"mac": mac}, "metadata": {"path": path}}))
    settle(root)
    server = serve("-data-path", root)
    assert server.get("/ignition?mac=" + MAC_A)[0] == 200
    status, _, body = server.get("/ignition?mac=" + MAC_B)
    assert status == 500 and b"groups/bad.json" in body
    assert server.wait_log(r"path not absolute")


@pytest.mark.unit
def test_ignition_placeholders_are_escaped_and_refused_outside_strings():
    from _bootcfg import ignition
    base = {"ignition": {"version": "3.3.0"}, "passwd": {"users": [
        {"name": "core", "sshAuthorizedKeys": ["{{.key}}"]}]}}
    tpl = ignition.parse_ignition_template(json.dumps(base).encode())
    out = json.loads(tpl.render({"key": 'ssh-ed25519 "quoted"\\ x'}))
    assert out["passwd"]["users"][0]["sshAuthorizedKeys"] == ['ssh-ed25519 "quoted"\\ x']
    with pytest.raises(Exception) as e:
        tpl.render({"key": ["a"]})
    assert "list" in str(e.value)
    for bad, message in ((b'{"ignition": {{.v}}}', "outside a JSON string"),
                         (b'{"a": "{{.request.query.mac}}"}', "request values"),
                         (b'{"a": "{{if .x}}y{{end}}"}', "only {{.key}}"),
                         (b'{"a": "data:;base64,{{.x}}"}', "base64")):
        with pytest.raises(ValueError) as e:
            ignition.parse_ignition_template(bad)
        assert message in str(e.value), bad


@pytest.mark.http
def test_a_butane_ignition_id_is_refused_with_the_way_forward(tmp_path, serve):
    root = str(tmp_path)
    tree(root, [("node.json", {"mac": MAC_A})], profiles={
        "node": {"id": "node", "ignition_id": "node.yaml"}})
    server = serve("-data-path", root)
    status, _, body = server.get("/ignition?mac=" + MAC_A)
    assert status == 500
    assert server.wait_log(r"butane --strict")


@pytest.mark.http
def test_status_and_access_log_name_group_and_profile(fleet):
    fleet.get("/ipxe?mac=%s" % MAC_A)
    assert fleet.wait_log(r"file=profiles/install.json \(group groups/install.json, "
                          r"profile install\)")
    status, _, body = fleet.get("/status.json")
    machines = json.loads(body)["machines"]
    assert any("groups/install.json" in json.dumps(m) for m in machines)


@pytest.mark.http
def test_metrics_and_status_count_broken_group_files(fleet, tmp_path):
    write(str(tmp_path / "data" / "groups" / "broken.json"), "{")
    settle(str(tmp_path / "data"))
    time.sleep(0.25)
    assert fleet.get("/ipxe?mac=%s" % MAC_B)[0] == 500    # the default is a catch-all
    _, _, metrics = fleet.get("/metrics")
    assert re.search(rb"^bootcfg_group_files_invalid 1$", metrics, re.M)
    _, _, body = fleet.get("/status.json")
    assert "groups/broken.json never parsed" in json.loads(body)["problems"][0]
    assert fleet.get("/ipxe?mac=%s" % MAC_A)[0] == 200    # specific matches keep working


# ---------------------------------------------------------------- check, explain

def findings(root):
    fs = app_module.make_store(root)
    return [f.text() for f in check.check(app_module.App(fs))]


@pytest.mark.unit
def test_check_reports_each_group_finding(tmp_path):
    root = str(tmp_path)
    tree(root, [("node.json", {"mac": MAC_A}), ("same.json", {"mac": MAC_A}, "install"),
                ("rack.json", {"rack": "r1"}), ("ghost.json", {"os": "x"}, "nowhere")],
         ["boot/mac/" + MAC_B])
    write(os.path.join(root, "groups", "dup-id.json"), json.dumps(
        {"id": "rack.json", "profile": "fleet", "selector": {"zone": "z"}}))
    write(os.path.join(root, "groups", "mac-b.json"), json.dumps(
        {"profile": "node", "selector": {"mac": MAC_B}}))    # hides the seed file
    write(os.path.join(root, "groups", "broken.json"), "{")
    write(os.path.join(root, "cloud", "install.tmpl"), "{{with .x}}{{end}}")
    write(os.path.join(root, "cloud", "node.tmpl"), "{{.hostname}} {{.needed}} "
          "{{.request.query.anything}}")
    write(os.path.join(root, "profiles", "fleet.json"),
          json.dumps({"id": "fleet", "ignition_id": "missing.ign", "generic_id": "x.yaml"}))
    write(os.path.join(root, "profiles", "rack.json"), json.dumps(
        {"id": "rack", "ignition_id": "rack.ign"}))
    write(os.path.join(root, "ignition", "rack.ign"), json.dumps(
        {"ignition": {"version": "3.3.0"}, "storage": {"files": [
            {"path": "{{.hostname}}"}]}}))
    settle(root)
    out = "\n".join(findings(root))
    expect = [
        r"groups/broken.json:1:2: error: invalid JSON",
        r"groups/same.json: error: same selector \{mac=%s\} as groups/node.json" % MAC_A,
        r"groups/(rack|dup-id).json: error: duplicate id 'rack.json'",
        r"groups/ghost.json: error: profile 'nowhere': profiles/nowhere.json does not exist",
        r"cloud/install.tmpl:1:3: error: .*'with' is not supported",
        r"groups/node.json: error: cloud/node.tmpl needs what this group lacks: .*'needed'",
        r"profiles/fleet.json: error: ignition_id: ignition/missing.ign does not exist",
        r"groups/rack.json: error: ignition/rack.ign, filled for this group: .*path not "
        r"absolute",
        r"boot/mac/%s: warning: groups/mac-b.json selects the same \{mac=%s\} and wins"
        % (MAC_B, MAC_B),
        r"warning: a machine whose labels match both \{mac=[^}]*\} \([^)]*\) and "
        r"\{rack=r1\} \(groups/rack.json\) gets groups/rack.json",
    ]
    for rx in expect:
        assert re.search(rx, out), rx + "\n" + out
    assert "anything" not in out          # request.* is known only per request


@pytest.mark.unit
def test_check_refuses_a_butane_ignition_id(tmp_path):
    root = str(tmp_path)
    tree(root, [("node.json", {"mac": MAC_A})], profiles={
        "node": {"id": "node", "ignition_id": "node.bu"}})
    assert any("butane --strict" in f for f in findings(root))


@pytest.mark.cli
def test_explain_shows_winner_losers_variables_and_answers(fleet):
    root = fleet.data_root
    out = run_bootcfg("explain", "-data-path", root, "-mac", MAC_A,
                      "-label", "os=installed").stdout
    assert re.search(r"group +groups/installed.json +\{mac=%s,os=installed\} +MATCHED"
                     % MAC_A, out), out
    assert re.search(r"group +groups/install.json +\{mac=%s\} +matches, ranks below "
                     r"groups/installed.json" % MAC_A, out)
    assert re.search(r"group +groups/arm.json +\{arch=arm64\} +does not match: needs "
                     r"arch=arm64", out)
    assert '"hostname": "h-installed.json"' in out
    assert "==> GET /ignition?uuid=&mac=52%3A54%3A00%3Aa1%3A00%3A02&os=installed -> 200" in out
    shown = run_bootcfg("explain", "-data-path", root, "-mac", MAC_A,
                        "-label", "os=installed", "-show", "ignition", text=False).stdout
    assert shown == fleet.get("/ignition?mac=%s&os=installed" % MAC_A)[2]


@pytest.mark.unit
def test_seed_and_group_answers_match_through_the_app(tmp_path):
    """The same machine, written once as seed files and once as a group, gets
    the same boot script: the group layout is a superset, not a fork."""
    seed_root, group_root = str(tmp_path / "seed"), str(tmp_path / "group")
    write(os.path.join(seed_root, "boot/mac", MAC_A), json.dumps(
        {"kernel": "/images/k", "initrd": ["/images/i.gz"], "cmdline": ["a=1", "b"]}))
    write(os.path.join(group_root, "groups/n.json"), json.dumps(
        {"profile": "p", "selector": {"mac": MAC_A}}))
    write(os.path.join(group_root, "profiles/p.json"), json.dumps(
        {"boot": {"kernel": "/images/k", "initrd": ["/images/i.gz"], "args": ["a=1", "b"]}}))
    settle(seed_root)
    settle(group_root)
    bodies = []
    for root in (seed_root, group_root):
        application = app_module.App(app_module.make_store(root))
        resp = application(Request("GET", "/ipxe", {"mac": MAC_A}, {}, "192.0.2.1"))
        bodies.append((resp.status, resp.body))
    assert bodies[0] == bodies[1] and bodies[0][0] == 200


@pytest.mark.unit
def test_profile_and_template_edits_follow_the_store_rules(tmp_path):
    """Profiles and the files they name: an edit shows, a broken edit keeps the
    last good version (and says so), a deleted template is a 500."""
    root = str(tmp_path)
    fs = tree(root, [("node.json", {"mac": MAC_A})])
    application = app_module.App(fs)

    def cloud():
        resp = application(Request("GET", "/cloud", {"mac": MAC_A}, {}, "192.0.2.1"))
        return resp.status, resp.body

    assert cloud() == (200, b"#cloud-config\nprofile: node\nhostname: h-node.json\n")
    tmpl = os.path.join(root, "cloud", "node.tmpl")
    profile = os.path.join(root, "profiles", "node.json")
    for path, text in ((tmpl, "#cloud-config\nname: {{.hostname}}\n"),
                       (tmpl, "#cloud-config\n{{with .x}}{{end}}\n"),
                       (profile, "{oops")):
        with open(path, "w") as f:
            f.write(text)
        past = time.time() - 5
        os.utime(path, (past, past))
        fs.files.clock.advance(0.15)        # past the store's file check window
        assert cloud() == (200, b"#cloud-config\nname: h-node.json\n"), text
    found = application.store.select("cloud", {"mac": MAC_A})
    assert found.match.stale
    os.unlink(tmpl)
    fs.files.clock.advance(0.15)
    status, body = cloud()
    assert status == 500 and b"profiles/node.json" in body
