"""Fixtures shared by every suite; the helpers they use live in helpers.py."""

import pytest

import os

from helpers import UUID1, InProcessServer, ServerProcess, boot_json, settle, write


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
