"""The fleet PromQL in contrib/prometheus/bootcfg-rules.yml (which
docs/scaling.md shows), checked with promtool against a recording: three real replicas' /metrics
scraped twice, five minutes apart as far as Prometheus is told, with requests and
a guard cut in between. The expected values are summed here from the scrapes."""

import pytest
import collections
import os
import re
import socket
import shutil
import subprocess


from helpers import ROOT, need_tool, write

RULES = os.path.join(ROOT, "contrib", "prometheus", "bootcfg-rules.yml")
SAMPLE = re.compile(r'^([a-z_]+)(?:\{(.*)\})? (\S+)$')


def scrape(server):
    """{(name, labels tuple): value} of one replica's /metrics."""
    out = {}
    for line in server.get("/metrics")[2].decode().splitlines():
        m = SAMPLE.match(line)
        if m:
            labels = tuple(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            out[m.group(1), labels] = float(m.group(3))
    return out


def traffic(server, n):
    for i in range(n):
        server.get("/ipxe?mac=52:54:00:00:01:%02x" % i)
        server.get("/cloud?mac=52:54:00:00:01:%02x" % i)
    server.get("/no-such-endpoint")


def cut_slow_head(server):
    """One connection the guard cuts at the head deadline (-header-timeout 0.2)."""
    slow = socket.create_connection((server.host, server.port))
    slow.sendall(b"GET / HTTP/1.1\r\n")
    slow.settimeout(5)
    assert slow.recv(4096).startswith(b"HTTP/1.1 408")
    slow.close()


def series_text(name, labels, instance):
    pairs = list(labels) + [("instance", instance), ("job", "bootcfg")]
    return "%s{%s}" % (name, ",".join('%s="%s"' % kv for kv in sorted(pairs)))


def expected(recording, name, by, kind):
    """What a rule over `name` gives, summed here: kind "rate" (over the two
    scrapes, 300 s apart), "sum" (the last scrape)."""
    groups = collections.defaultdict(float)
    for first, last in recording:
        for (n, labels), value in last.items():
            if n != name:
                continue
            key = tuple((k, v) for k, v in labels if k in by)
            if kind == "rate":
                if (n, labels) in first:
                    groups[key] += (value - first[n, labels]) / 300
            else:
                groups[key] += value
    return groups


@pytest.mark.cli
def test_fleet_promql_sums_three_replicas(start_server, data_dir, tmp_path):
    need_tool("promtool", "apt-get install prometheus")
    broken = tmp_path / "broken"              # one replica with a group that never parses
    shutil.copytree(str(data_dir), str(broken))
    write(str(broken / "groups/bad.json"), "{")
    replicas = [start_server("-data-path", str(d), "-header-timeout", "0.2")
                for d in (data_dir, data_dir, broken)]
    for n, r in enumerate(replicas):
        traffic(r, n + 1)
    cut_slow_head(replicas[0])
    first = [scrape(r) for r in replicas]
    for n, r in enumerate(replicas):
        traffic(r, 2 * n + 3)
    cut_slow_head(replicas[0])
    last = [scrape(r) for r in replicas]
    recording = list(zip(first, last))

    lines = []
    for i, (a, b) in enumerate(recording):
        for key in sorted(set(a) | set(b)):
            lines.append("      - series: '%s'\n        values: '%s %s'"
                         % (series_text(key[0], key[1], "r%d" % i),
                            repr(a[key]) if key in a else "_", repr(b[key])))
    checks = [("bootcfg:requests:rate5m", "bootcfg_requests_total", ("route", "status"),
               "rate"),
              ("bootcfg:machine_lookups:rate5m", "bootcfg_machine_lookups_total",
               ("kind", "match"), "rate"),
              ("bootcfg:response_bytes:rate5m", "bootcfg_response_bytes_total", ("route",),
               "rate"),
              ("bootcfg:open_connections:sum", "bootcfg_open_connections", (), "sum"),
              ("bootcfg:connections_cut:rate5m", "bootcfg_connections_cut_total", ("reason",),
               "rate")]
    tests = []
    for record, name, by, kind in checks:
        want = expected(recording, name, by, kind)
        assert want, "the recording has no %s" % name
        # A rate is compared as the increase it implies (x 300 s, rounded): sums of
        # thirds differ in the last bit with the order of addition.
        samples = "\n".join("          - labels: '%s{%s}'\n            value: %r"
                            % ("" if kind == "rate" else record,
                               ",".join('%s="%s"' % kv for kv in key),
                               round(value * 300) if kind == "rate" else value)
                            for key, value in sorted(want.items()))
        expr = "round(%s * 300)" % record if kind == "rate" else record
        tests.append("      - expr: %s\n        eval_time: 5m\n        exp_samples:\n%s"
                     % (expr, samples))
    tests.append("      - expr: bootcfg:replicas_with_invalid_groups:count\n"
                 "        eval_time: 5m\n        exp_samples:\n"
                 "          - labels: 'bootcfg:replicas_with_invalid_groups:count'\n"
                 "            value: 1")
    assert expected(recording, "bootcfg_connections_cut_total", ("reason",), "rate") == \
        {(("reason", "header_timeout"),): 1 / 300}
    test_file = tmp_path / "fleet_test.yml"
    test_file.write_text("rule_files:\n  - %s\nevaluation_interval: 1m\ntests:\n"
                         "  - interval: 5m\n    input_series:\n%s\n    promql_expr_test:\n%s\n"
                         % (RULES, "\n".join(lines), "\n".join(tests)))
    check = subprocess.run(["promtool", "check", "rules", RULES], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    assert check.returncode == 0, check.stdout
    result = subprocess.run(["promtool", "test", "rules", str(test_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert result.returncode == 0, result.stdout[-4000:]


@pytest.mark.unit
def test_the_scaling_page_shows_the_rules():
    page = open(os.path.join(ROOT, "docs", "scaling.md")).read()
    for expr in re.findall(r"^\s+expr: (.+)$", open(RULES).read(), re.M):
        assert expr in page, expr
