"""Fixtures shared by every suite, and the test tiers; the helpers they use live
in helpers.py.

Every test carries exactly one tier marker (a test with none or two fails):

    unit   no sockets, no processes, no sleeps (python -m pytest -m unit)
    http   a server in this process on loopback (the `serve` fixture)
    cli    bootcfg or another program as a process
    e2e    QEMU machines (tests/e2e)

.ci/run runs the http and cli tiers again against the single-file build by
marker. A unit test that sleeps, opens a socket or starts a process fails: wait
for a condition, or move a files.FakeClock, instead.
"""

import os
import socket
import subprocess
import time

import pytest

from helpers import UUID1, InProcessServer, ServerProcess, boot_json, settle, write

TIERS = {
    "unit": "no sockets, no processes, no sleeps",
    "http": "an in-process server on loopback",
    "cli": "bootcfg (or another program) as a process",
    "e2e": "QEMU machines",
}


def pytest_configure(config):
    for name, what in TIERS.items():
        config.addinivalue_line("markers", "%s: %s" % (name, what))


def tiers_of(item):
    return sorted({m.name for m in item.iter_markers() if m.name in TIERS})


def pytest_runtest_setup(item):
    tiers = tiers_of(item)
    if len(tiers) != 1:
        pytest.fail("%s carries %s; every test carries exactly one tier marker (%s)"
                    % (item.nodeid, "tier markers " + ", ".join(tiers) if tiers else
                       "no tier marker", ", ".join(TIERS)), pytrace=False)


class UnitTierViolation(AssertionError):
    pass


@pytest.fixture(autouse=True)
def _unit_tier_rules(request, monkeypatch):
    """A unit test may not sleep, open a socket or start a process."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return

    def refuse(what):
        def refused(*args, **kwargs):
            raise UnitTierViolation("a unit test may not %s: mark it http or cli, or use "
                                    "a condition or files.FakeClock" % what)
        return refused
    real_sleep, no_wait = time.sleep, refuse("sleep")
    # sleep(0) only yields the interpreter to other threads: it waits for nothing
    monkeypatch.setattr(time, "sleep", lambda s: real_sleep(0) if s == 0 else no_wait(s))
    monkeypatch.setattr(socket, "socket", refuse("open a socket"))
    monkeypatch.setattr(socket, "create_connection", refuse("open a socket"))
    monkeypatch.setattr(subprocess, "Popen", refuse("start a process"))
    yield


@pytest.fixture
def data_dir(tmp_path):
    """A data tree with one machine by UUID, one by MAC (hyphen spelling) and
    defaults; each boot config carries a distinct `tag=` argument."""
    d = tmp_path / "data"
    write(str(d / "boot/default"), boot_json(tag="default"))
    write(str(d / "boot/uuid" / UUID1), boot_json(tag="uuid1"))
    write(str(d / "boot/mac/52-54-00-89-D8-10"), boot_json(tag="mac1"))
    write(str(d / "cloud/default"), "#cloud-config\nhostname: default\n")
    write(str(d / "cloud/uuid" / UUID1.upper()), "#cloud-config\nhostname: uuid1\n")
    write(str(d / "cloud/mac/52:54:00:89:d8:10"), "#cloud-config\nhostname: mac1\n")
    settle(d)
    return d


def _with_address(args):
    args = list(args)
    if not any(a.split("=")[0].lstrip("-") == "address" for a in args):
        args += ["-address", "127.0.0.1:0"]
    return args


@pytest.fixture
def start_server(request):
    """start_server(*args, env=None, cwd=None) -> ServerProcess: bootcfg as a real
    process (the CLI tier). Stopped after the test; its log shown on failure."""
    servers = []

    def start(*args, env=None, cwd=None, wrap=()):
        server = ServerProcess(_with_address(args), env=env, cwd=cwd, wrap=wrap)
        servers.append(server)
        return server

    yield from _stop_and_report(request, servers, start)


@pytest.fixture
def serve(request):
    """serve(*args, env=None) -> a server for HTTP behaviour: in this process
    (InProcessServer), or a process of BOOTCFG_TEST_CMD's build when that is set."""
    servers = []

    def start(*args, env=None):
        if os.environ.get("BOOTCFG_TEST_CMD"):
            server = ServerProcess(_with_address(args), env=env)
        else:
            server = InProcessServer(_with_address(args), env=env)
        servers.append(server)
        return server

    yield from _stop_and_report(request, servers, start)


def _stop_and_report(request, servers, start):
    yield start
    for server in servers:
        server.stop()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        for server in servers:
            print("---- bootcfg log ----\n" + server.log())


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
