"""-bind-configs: configs go only to the machine holding the client's address.
The lease file parsers on each server's format, then a real server on loopback
whose clients come from 127.0.0.x addresses named in a lease file."""

import json
import os
import time

import pytest

from _bootcfg import leases
from helpers import UUID1, boot_json, get_from, run_bootcfg, settle, write

NOW = 1_800_000_000.0
MAC1, MAC2 = "52:54:00:89:d8:10", "52:54:00:89:d8:20"


# ---------------------------------------------------------------- parsers

DNSMASQ = """\
1800003600 52:54:00:89:d8:10 10.0.0.10 node10 01:52:54:00:89:d8:10
0 52:54:00:89:D8:20 10.0.0.20 * *
1799990000 52:54:00:89:d8:30 10.0.0.30 old *
1800003600 06-00:11:22:33:44:55 10.0.0.40 tokenring *
duid 00:01:00:01:2c:aa:bb:cc:52:54:00:00:00:01
1800003600 1234 2001:db8::10 node10 00:03:00:01:52:54:00:89:d8:10
1800003600 1234 2001:db8::99 other 00:02:00:00:ab:11:01:02
"""

ISC = """\
# The format of this file is documented in the dhcpd.leases(5) manual page.
# This lease file was written by isc-dhcp-4.4.3
authoring-byte-order little-endian;
server-duid "\\000\\001\\000\\001";

lease 10.0.0.10 {
  starts 1 2027/01/15 08:00:00;
  ends 1 2027/01/15 20:00:00;
  binding state active;
  next binding state free;
  hardware ethernet 52:54:00:89:d8:10;
  client-hostname "node{10}; x";
}
lease 10.0.0.20 {
  starts epoch 1799990000; # Fri Jan 15 ...
  ends never;
  binding state active;
  hardware ethernet 52:54:00:89:d8:20;
  uid "\\001RT\\000\\211\\330 ";
  on commit { set x = "y"; }
}
lease 10.0.0.30 {
  ends 1 2027/01/15 20:00:00;
  binding state active;
  hardware ethernet 52:54:00:89:d8:30;
}
lease 10.0.0.30 {
  ends 1 2027/01/15 20:00:00;
  binding state free;
  hardware ethernet 52:54:00:89:d8:30;
}
lease 10.0.0.40 {
  ends epoch 1799000000;
  binding state active;
  hardware ethernet 52:54:00:89:d8:40;
}
ia-na "\\001\\000" {
  cltt 1 2027/01/15 08:00:00;
  iaaddr 2001:db8::10 { binding state active; ends never; }
}
"""

KEA4 = """\
address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context,pool_id
10.0.0.10,52:54:00:89:d8:10,01:52:54:00:89:d8:10,3600,1800003600,1,0,0,node10,0,,0
10.0.0.20,52:54:00:89:d8:20,,3600,1800003600,1,0,0,a&#x2cb,0,{ \"x\": 1 },0
10.0.0.30,52:54:00:89:d8:30,,3600,1800003600,1,0,0,,0,,0
10.0.0.30,52:54:00:89:d8:30,,0,1800003600,1,0,0,,0,,0
10.0.0.40,52:54:00:89:d8:40,,3600,1800003600,1,0,0,,2,,0
10.0.0.50,52:54:00:89:d8:50,,3600,1799990000,1,0,0,,0,,0
"""

KEA6 = """\
address,duid,valid_lifetime,expire,subnet_id,pref_lifetime,lease_type,iaid,prefix_len,\
fqdn_fwd,fqdn_rev,hostname,hwaddr,state,user_context,hwtype,hwaddr_source,pool_id
2001:db8::10,00:03:00:01:52:54:00:89:d8:10,3600,1800003600,1,1800,0,1,128,0,0,,\
52:54:00:89:d8:10,0,,1,2,0
"""


def current(table, now=NOW):
    return {a: m for a, (m, e) in table.items() if e is None or e > now}


@pytest.mark.parametrize("text, name, expected", [
    (DNSMASQ, "dnsmasq", {"10.0.0.10": MAC1, "10.0.0.20": MAC2,
                          "2001:db8::10": MAC1}),
    (ISC, "isc", {"10.0.0.10": MAC1, "10.0.0.20": MAC2}),
    (KEA4, "kea", {"10.0.0.10": MAC1, "10.0.0.20": MAC2}),
    (KEA6, "kea", {"2001:db8::10": MAC1}),
    ("", "empty", {}),
])
@pytest.mark.unit
def test_each_lease_format_is_recognised_and_read(text, name, expected):
    kind, table = leases.parse_lease_file(text)
    assert kind == name
    assert current(table) == expected


@pytest.mark.unit
def test_expiry_is_kept_so_a_lease_ends_without_a_reread():
    _, table = leases.parse_lease_file(DNSMASQ)
    assert table["10.0.0.10"] == (MAC1, 1800003600.0)
    assert table["10.0.0.20"] == (MAC2, None)             # 0: never
    assert "10.0.0.10" not in current(table, now=1800003601)
    _, isc = leases.parse_lease_file(ISC)
    assert isc["10.0.0.10"][1] == 1800043200.0               # 2027/01/15 20:00:00 UTC
    assert isc["10.0.0.20"][1] is None                       # ends never


@pytest.mark.unit
def test_something_else_is_refused_by_name():
    with pytest.raises(ValueError, match="not a dnsmasq, ISC dhcpd or Kea lease file"):
        leases.parse_lease_file("<html>\n")


@pytest.mark.parametrize("duid, mac", [
    ("00:01:00:01:2c:aa:bb:cc:52:54:00:89:d8:10", MAC1),   # DUID-LLT, Ethernet
    ("00:03:00:01:52:54:00:89:d8:10", MAC1),               # DUID-LL
    ("00:02:00:00:ab:11:01:02", None),                     # DUID-EN: no MAC in it
    ("00:04:11:22:33:44:55:66:77:88:99:00:aa:bb:cc:dd:ee:ff", None),   # DUID-UUID
    ("zz", None),
])
@pytest.mark.unit
def test_mac_from_a_dhcpv6_duid(duid, mac):
    assert leases.mac_from_duid(duid) == mac


@pytest.mark.http
def test_the_kernel_neighbor_tables_are_read():
    arp = leases.read_arp()
    assert all(leases._mac(m) == m for m in arp.values())
    ndp = leases.read_ndp()                      # the dump completes over rtnetlink
    assert isinstance(ndp, dict)


# ---------------------------------------------------------------- the server

@pytest.fixture
def bound_data(tmp_path):
    d = tmp_path / "data"
    write(str(d / "boot/default"), boot_json(tag="default"))
    write(str(d / "cloud/mac/52-54-00-89-d8-10"), "#cloud-config\nhostname: node10\n")
    write(str(d / "cloud/mac/52-54-00-89-d8-20"), "#cloud-config\nhostname: node20\n")
    write(str(d / "cloud/uuid" / UUID1), "#cloud-config\nhostname: by-uuid\n")
    write(str(d / "cloud/default"), "#cloud-config\nhostname: fleet\n")
    write(str(d / "ignition/shared/fleet.ign"), json.dumps({"ignition": {"version": "3.3.0"}}))
    write(str(d / "profiles/rack.json"), json.dumps({"id": "rack", "generic_id": "rack.txt"}))
    write(str(d / "generic/rack.txt"), "rack {{.rack}}\n")
    write(str(d / "groups/rack.json"), json.dumps({"id": "rack", "profile": "rack",
                                                   "selector": {"rack": "r1"},
                                                   "metadata": {"rack": "r1"}}))
    settle(d)
    return d


def dnsmasq_leases(path, *entries):
    """Write a dnsmasq leases file (as dnsmasq does: a new file renamed over)."""
    lines = ["%d %s %s host *" % (expiry, mac, address) for address, mac, expiry in entries]
    tmp = str(path) + ".new"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, str(path))


@pytest.fixture
def bound(serve, bound_data, tmp_path):
    lease_file = tmp_path / "dnsmasq.leases"
    later = int(time.time()) + 3600
    dnsmasq_leases(lease_file, ("127.0.0.2", MAC1, later), ("127.0.0.3", MAC2, 0))
    s = serve("-data-path", str(bound_data), "-bind-configs", str(lease_file))
    s.lease_file = lease_file
    return s


@pytest.mark.http
def test_a_machine_gets_its_own_config_and_nobody_elses(bound):
    assert get_from(bound, "127.0.0.2", "/cloud?mac=" + MAC1) == (200, "#cloud-config\n"
                                                                   "hostname: node10\n")
    assert get_from(bound, "127.0.0.2", "/cloud") == (200, "#cloud-config\nhostname: node10\n")
    status, body = get_from(bound, "127.0.0.3", "/cloud?mac=" + MAC1)
    assert status == 403
    assert body == ("mac=%s is not the machine at 127.0.0.3 (that is %s); with "
                    "-bind-configs configs go only to their own machine\n" % (MAC1, MAC2))
    status, body = get_from(bound, "127.0.0.4", "/cloud?mac=" + MAC1)
    assert status == 403 and "127.0.0.4 holds no current DHCP lease" in body
    assert bound.wait_log(r'127\.0\.0\.3 "GET /cloud\?mac=52:54:00:89:d8:10" 403 .* '
                          r'mac=52:54:00:89:d8:20 file=not bound')


@pytest.mark.http
def test_uuid_selected_configs_cannot_be_bound(bound):
    status, body = get_from(bound, "127.0.0.2", "/cloud?uuid=" + UUID1)
    assert status == 403 and "selected by UUID alone" in body
    status, body = get_from(bound, "127.0.0.4", "/cloud?uuid=" + UUID1)
    assert status == 403 and "no current DHCP lease" in body


@pytest.mark.http
def test_fleet_wide_answers_go_to_any_lease_holder(bound):
    mac3 = "52:54:00:89:d8:99"
    assert get_from(bound, "127.0.0.3", "/generic?rack=r1") == (200, "rack r1\n")
    assert get_from(bound, "127.0.0.3", "/ignition/shared/fleet.ign")[0] == 200
    assert get_from(bound, "127.0.0.4", "/ignition/shared/fleet.ign")[0] == 403
    assert get_from(bound, "127.0.0.4", "/generic?rack=r1")[0] == 403
    assert get_from(bound, "127.0.0.3", "/cloud?mac=" + mac3)[0] == 403


@pytest.mark.http
def test_boot_scripts_and_images_stay_open(bound):
    assert get_from(bound, "127.0.0.4", "/ipxe?mac=" + MAC1)[0] == 200
    assert get_from(bound, "127.0.0.4", "/boot.ipxe")[0] == 200
    assert get_from(bound, "127.0.0.4", "/pixiecore/v1/boot/" + MAC1)[0] == 200


@pytest.mark.http
def test_refusals_are_counted_and_shown(bound):
    get_from(bound, "127.0.0.3", "/cloud?mac=" + MAC1)
    get_from(bound, "127.0.0.4", "/cloud")
    get_from(bound, "127.0.0.2", "/cloud?uuid=" + UUID1)
    metrics = get_from(bound, "127.0.0.1", "/metrics")[1]
    for reason in ("other_mac", "no_lease", "uuid_only"):
        assert 'bootcfg_configs_refused_unbound_total{reason="%s"} 1' % reason in metrics
    machines = json.loads(get_from(bound, "127.0.0.1", "/status.json")[1])["machines"]
    refused = {m["mac"] or m["client"]: m for m in machines}
    assert set(refused) == {MAC2, "127.0.0.4", MAC1}
    assert refused[MAC2]["steps"][-1]["status"] == 403


@pytest.mark.http
def test_an_expired_lease_and_a_moved_lease(bound):
    dnsmasq_leases(bound.lease_file, ("127.0.0.2", MAC1, int(time.time()) - 1),
                   ("127.0.0.5", MAC2, 0))
    assert bound.wait_log(r"lease file .*dnsmasq.leases read: 2 leases \(dnsmasq\)",
                          timeout=2.5)
    assert get_from(bound, "127.0.0.2", "/cloud")[0] == 403        # expired
    assert get_from(bound, "127.0.0.3", "/cloud")[0] == 403        # moved away
    assert get_from(bound, "127.0.0.5", "/cloud") == (200, "#cloud-config\nhostname: node20\n")


@pytest.mark.http
def test_a_lease_file_gone_while_running_keeps_its_last_table(bound):
    os.unlink(str(bound.lease_file))
    assert bound.wait_log(r"lease file .* cannot be read: No such file or directory; "
                          r"its last good table \(2 leases\) stays", timeout=2.5)
    assert get_from(bound, "127.0.0.3", "/cloud")[0] == 200


@pytest.mark.parametrize("name, text", [
    ("dhcpd.leases", "lease 127.0.0.2 {\n  ends never;\n  binding state active;\n"
                     "  hardware ethernet 52:54:00:89:d8:10;\n}\n"),
    ("kea-leases4.csv", "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,"
                        "fqdn_rev,hostname,state,user_context\n127.0.0.2,52:54:00:89:d8:10,,"
                        "3600,%d,1,0,0,,0,\n" % (time.time() + 3600)),
])
@pytest.mark.http
def test_isc_and_kea_lease_files_bind_too(serve, bound_data, tmp_path, name, text):
    path = tmp_path / name
    write(str(path), text)
    s = serve("-data-path", str(bound_data), "-bind-configs", str(path))
    assert get_from(s, "127.0.0.2", "/cloud") == (200, "#cloud-config\nhostname: node10\n")
    assert get_from(s, "127.0.0.3", "/cloud?mac=" + MAC1)[0] == 403


@pytest.mark.cli
def test_a_missing_lease_file_stops_the_start(bound_data, tmp_path):
    result = run_bootcfg("-data-path", str(bound_data), "-address", "127.0.0.1:0",
                         "-bind-configs", str(tmp_path / "nope.leases"))
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        "-bind-configs: lease file %s: No such file or directory" % (tmp_path / "nope.leases"))


@pytest.mark.cli
def test_check_warns_that_uuid_selected_configs_cannot_be_bound(bound_data):
    result = run_bootcfg("check", "-data-path", str(bound_data), "-bind-configs", "neighbors")
    assert "cloud/uuid/%s: warning: selected by UUID alone" % UUID1 in result.stdout
    assert "UUID alone" not in run_bootcfg("check", "-data-path", str(bound_data)).stdout
