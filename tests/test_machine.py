"""machine.py: one identity for a machine, whatever door it comes through.

Each spelling of a MAC or UUID is fed through every entrance (HTTP query in any
key case, the app's answer, Pixiecore path, TFTP path, lease files of three
servers, the ARP table, `explain`, seed file names, group selectors, /status
records) and must come out as one canonical machine, or be refused by all."""

import os
import struct
import socket
from urllib.parse import quote

import pytest

from _bootcfg import explain, groups, leases, machine, tftp
from _bootcfg.answers import Request
from _bootcfg.status import Tracker
from bootcfg import make_app
from helpers import UUID1, boot_json, settle, write

pytestmark = pytest.mark.unit

CANON = "52:54:00:aa:bb:cc"
MAC_SPELLINGS = ["52:54:00:aa:bb:cc", "52-54-00-AA-BB-CC", "5254.00aa.bbcc", "525400AABBCC",
                 "52:54:00:AA:bb:cc", "5254.00AA.BBCC"]
# Not a NIC's (no key) or not a MAC at all: refused by every entrance alike.
MAC_REFUSED = ["00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff", "FF-FF-FF-FF-FF-FF",
               "01:00:5e:00:00:01", "33:33:00:00:00:01", "000000000000",
               "52-54:00:aa:bb:cc", "52:54:00:aa:bb", "52:54:00:aa:bb:cc:dd",
               " 52:54:00:aa:bb:cc", "52:54:00:aa:bb:cc ", "52:54:00:aa:bb:cg",
               "5254.00aa.bbcc.00", "52::54:00:aa:bb:cc", "../../etc/passwd", "52%3A54"]
UUID_SPELLINGS = [UUID1, UUID1.upper(), UUID1.replace("-", ""), "{%s}" % UUID1,
                  "{%s}" % UUID1.upper().replace("-", "")]
UUID_REFUSED = ["00000000-0000-0000-0000-000000000000", "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
                "f" * 32, "", "x", UUID1 + "0", UUID1[:-1], "../" + UUID1,
                UUID1.replace("-", "/"), " " + UUID1, "{" + UUID1, UUID1[:8] + UUID1[9:]]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    d = tmp_path_factory.mktemp("identity") / "data"
    write(str(d / "boot/default"), boot_json(tag="default"))
    write(str(d / "cloud/default"), "#cloud-config\n")
    settle(d)
    return make_app(str(d), None)


def answered(app, path, query=None):
    return app(Request("GET", path, query or {}, {}, "10.0.0.9", ("10.0.0.1", 8080), ""))


def _seed_key(tmp_path, kind, name):
    import store
    folder = tmp_path / ("seed-" + kind) / "boot" / kind
    folder.mkdir(parents=True)
    (folder / name.replace("/", "_")).write_text(boot_json())
    fs = store.FileStore(str(folder.parent.parent), {"boot": None})
    mapped, _ = fs._indexes["boot", kind].snapshot()
    return next(iter(mapped), None)


def _selector(kind, text):
    try:
        return dict(groups.normalize_selector({kind: text}, "groups/x.json"))[kind]
    except Exception:
        return None


def _status_key(app, query):
    tracker = Tracker()
    req = Request("GET", "/ipxe", query, {}, "10.0.0.9", ("10.0.0.1", 8080), "")
    resp = app(req)
    tracker.observe("script", "/ipxe", req, resp, resp.length, 1.0)
    keys = [r["key"] for r in tracker.view()]
    return keys[0] if keys and keys[0] != "10.0.0.9" else None


def _arp(tmp_path, text):
    path = tmp_path / "arp"
    path.write_text("IP address       HW type     Flags       HW address            Mask     Device\n"
                    "10.0.0.10        0x1         0x2         %s     *        br0\n" % text)
    return leases.read_arp(str(path)).get("10.0.0.10")


MAC_ENTRANCES = {
    "query": lambda app, tmp, m: machine.labels({"mac": m})[0].get("mac"),
    "query MAC=": lambda app, tmp, m: machine.labels({"MAC": m})[0].get("mac"),
    "query Mac=": lambda app, tmp, m: machine.labels({"Mac": m})[0].get("mac"),
    "/ipxe": lambda app, tmp, m: answered(app, "/ipxe", {"mac": m}).machine[1] or None,
    "/cloud": lambda app, tmp, m: answered(app, "/cloud", {"MAC": m}).machine[1] or None,
    "pixiecore": lambda app, tmp, m: answered(
        app, "/pixiecore/v1/boot/" + quote(m, safe=":")).machine[1] or None,
    "tftp grub": lambda app, tmp, m: app.tftp(tftp.read_request(
        "grub?mac=" + quote(m), "10.0.0.9", ("10.0.0.1", 69))).machine[1] or None,
    "dnsmasq lease": lambda app, tmp, m: leases.parse_dnsmasq(
        "1800003600 %s 10.0.0.10 node *\n" % m).get("10.0.0.10", (None,))[0]
    if " " not in m else None,
    "isc lease": lambda app, tmp, m: leases.parse_isc(
        "lease 10.0.0.10 {\n  binding state active;\n  hardware ethernet %s;\n}\n" % m
    ).get("10.0.0.10", (None,))[0] if " " not in m else None,
    "kea lease": lambda app, tmp, m: leases.parse_kea(
        "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,"
        "hostname,state,user_context\n10.0.0.10,%s,,3600,4000000000,1,0,0,,0,\n" % m
    ).get("10.0.0.10", (None,))[0] if "," not in m else None,
    "arp table": lambda app, tmp, m: _arp(tmp, m) if " " not in m else None,
    "explain": lambda app, tmp, m: explain.machine_keys("", m)[1],
    "seed file name": lambda app, tmp, m: _seed_key(tmp, "mac", m),
    "group selector": lambda app, tmp, m: _selector("mac", m),
    "status record": lambda app, tmp, m: _status_key(app, {"mac": m}),
}


@pytest.mark.parametrize("entrance", sorted(MAC_ENTRANCES))
@pytest.mark.parametrize("spelling", MAC_SPELLINGS)
def test_every_mac_spelling_is_one_machine_at_every_entrance(app, tmp_path, entrance,
                                                             spelling):
    assert MAC_ENTRANCES[entrance](app, tmp_path, spelling) == CANON


@pytest.mark.parametrize("entrance", sorted(MAC_ENTRANCES))
@pytest.mark.parametrize("text", MAC_REFUSED)
def test_no_entrance_takes_what_is_not_a_nic(app, tmp_path, entrance, text):
    assert MAC_ENTRANCES[entrance](app, tmp_path, text) is None


UUID_ENTRANCES = {
    "query": lambda app, tmp, u: machine.labels({"uuid": u})[0].get("uuid"),
    "query UUID=": lambda app, tmp, u: machine.labels({"UUID": u})[0].get("uuid"),
    "/ipxe": lambda app, tmp, u: answered(app, "/ipxe", {"Uuid": u}).machine[0] or None,
    "tftp grub": lambda app, tmp, u: app.tftp(tftp.read_request(
        "grub?uuid=" + quote(u), "10.0.0.9", ("10.0.0.1", 69))).machine[0] or None,
    "explain": lambda app, tmp, u: explain.machine_keys(u, "")[0],
    "seed file name": lambda app, tmp, u: _seed_key(tmp, "uuid", u) if u else None,
    "group selector": lambda app, tmp, u: _selector("uuid", u),
    "status record": lambda app, tmp, u: _status_key(app, {"uuid": u}),
}


@pytest.mark.parametrize("entrance", sorted(UUID_ENTRANCES))
@pytest.mark.parametrize("spelling", UUID_SPELLINGS)
def test_every_uuid_spelling_is_one_machine_at_every_entrance(app, tmp_path, entrance,
                                                              spelling):
    assert UUID_ENTRANCES[entrance](app, tmp_path, spelling) == UUID1


@pytest.mark.parametrize("entrance", sorted(UUID_ENTRANCES))
@pytest.mark.parametrize("text", UUID_REFUSED)
def test_no_entrance_takes_what_is_not_one_uuid(app, tmp_path, entrance, text):
    assert UUID_ENTRANCES[entrance](app, tmp_path, text) is None


def test_neighbor_table_entries_are_checked_by_the_same_rule():
    """An rtnetlink neighbor entry's link-layer address is bytes: zero and
    multicast ones name no machine."""
    def entry(lladdr):
        dst = socket.inet_pton(socket.AF_INET6, "2001:db8::10")
        msg = struct.pack("=BBHiHBB", socket.AF_INET6, 0, 0, 0, 0x02, 0, 0)
        for kind, value in ((1, dst), (2, lladdr)):
            msg += struct.pack("=HH", 4 + len(value), kind) + value
            msg += b"\0" * (-len(msg) % 4)
        out = {}
        leases._neighbor(msg, out)
        return out.get("2001:db8::10")
    assert entry(bytes.fromhex("525400aabbcc")) == CANON
    assert entry(bytes(6)) is None
    assert entry(bytes.fromhex("333300000001")) is None


def test_dhcpv6_duid_mac_is_checked_by_the_same_rule():
    assert leases.mac_from_duid("00:03:00:01:52:54:00:aa:bb:cc") == CANON
    assert leases.mac_from_duid("00:03:00:01:01:00:5e:00:00:01") is None


@pytest.mark.parametrize("text, spelled", [
    ("52-54-00-AA-BB-CC", CANON), ("00:00:00:00:00:00", "00:00:00:00:00:00"),
    ("FFFF.FFFF.FFFF", "ff:ff:ff:ff:ff:ff"), ("nope", ""), (None, ""), (" " + CANON, "")])
def test_mac_spelling_keeps_placeholders(text, spelled):
    assert machine.mac_spelling(text) == spelled


@pytest.mark.parametrize("text, spelled", [
    (UUID1.upper(), UUID1), ("0" * 32, "00000000-0000-0000-0000-000000000000"),
    ("nope", ""), (None, "")])
def test_uuid_spelling_keeps_placeholders(text, spelled):
    assert machine.uuid_spelling(text) == spelled


def test_grub_answer_repeats_a_placeholder_uuid(app):
    """GRUB's ${uuid} on a board without one is the nil UUID: the answer spells
    it back (display), while the machine has no UUID key."""
    nil = "00000000-0000-0000-0000-000000000000"
    resp = app.tftp(tftp.read_request("grub?uuid=" + nil.upper(), "10.0.0.9",
                                      ("10.0.0.1", 69)))
    assert resp.status == 200 and resp.machine[0] == ""


@pytest.mark.parametrize("text, canonical", [
    ("10.0.0.1", "10.0.0.1"), ("::ffff:10.0.0.1", "10.0.0.1"),
    ("2001:DB8:0:0::1", "2001:db8::1"), ("fe80::1%eth0", "fe80::1"),
    ("::ffff:a00:1", "10.0.0.1"), ("10.0.0.256", None), ("", None), ("host", None),
    ("1" * 100, None)])
def test_client_addresses_compare_as_one(text, canonical):
    assert machine.client_address(text) == canonical


def test_query_key_case_lowercase_wins():
    labels, found = machine.labels({"MAC": "52:54:00:00:00:01", "mac": CANON, "os": "x"})
    assert found.mac == CANON and labels == {"mac": CANON, "os": "x"}


def test_identity_is_defined_once():
    """No other runtime module spells out a MAC or UUID pattern of its own."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for folder in (root, os.path.join(root, "_bootcfg")):
        for name in os.listdir(folder):
            if not name.endswith(".py") or name == "machine.py":
                continue
            with open(os.path.join(folder, name)) as f:
                text = f.read()
            assert "[0-9a-f]{2}" not in text and "[0-9a-f]{12}" not in text, name
