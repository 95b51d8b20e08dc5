"""Fixtures shared by every suite; the helpers they use live in helpers.py."""

import pytest

from helpers import MAC1, UUID1, ServerProcess, boot_json, write  # noqa: F401


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
    return d


@pytest.fixture
def start_server(request):
    """start_server(*args, env=None) -> ServerProcess; stopped after the test, and
    its log shown when the test fails."""
    servers = []

    def start(*args, env=None, cwd=None, wrap=()):
        args = list(args)
        if not any(a.split("=")[0].lstrip("-") == "address" for a in args):
            args += ["-address", "127.0.0.1:0"]
        server = ServerProcess(args, env=env, cwd=cwd, wrap=wrap)
        servers.append(server)
        return server

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
