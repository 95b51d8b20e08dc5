"""The README and docs/ say what the code does: every example in them runs.

- Each line of a ```sh block, and each inline `bootcfg ...` command, is run:
  `bootcfg` (or `python3 bootcfg.py`) commands from the checkout against the
  bundled data/, a server command started until it listens, `curl` lines against
  a server on the bundled data/ (its address put in for 127.0.0.1:8080, and
  --fail added so a 4xx or 5xx fails). What cannot run here is on NOT_RUN, by
  command, with the reason. A test's id is the page and line.
- Each ```json block goes through the loader `bootcfg check` uses for its kind,
  unless the line before marks it elided (`<!-- elided ... -->`), which a block
  containing `...` must be.
- Every flag of `--help` is in the flag table of docs/operating.md with its
  BOOTCFG_* variable, and every flag there is in `--help`.
- Relative links (and their #anchors) resolve; so does every row of
  docs/readme-map.md, the map of the old one-page README's headings.
"""

import glob
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from helpers import ROOT, ServerProcess

PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT)
                               for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
DOC_ADDRESS = "http://127.0.0.1:8080"

# Commands the docs show that cannot run in CI, by their first word(s), and why.
NOT_RUN = {
    "apt-get": "installs Debian packages (.ci/run installs what the tests need)",
    "dpkg --add-architecture": "changes the host's package sources (.ci/run does it)",
    "python3 tests/e2e/disk.py": ".ci/run runs it before the tests",
    "python3 tests/e2e/arm64.py": ".ci/run runs it before the tests",
    "install": "writes to /usr/local and /etc (tests/test_ship.py installs the units "
               "into a scratch root and runs them)",
    "mkdir -p /var/lib/bootcfg": "writes to /var/lib (test_ship.py uses a scratch root)",
    "systemctl": "needs a running systemd (test_ship.py checks the units with "
                 "systemd-analyze and runs them with systemd-socket-activate)",
    "dnsmasq": "needs a real network interface (tests/e2e/ runs every recipe in a "
               "network namespace)",
    "scripts/get-flatcar": "downloads from Flatcar's release server "
                           "(tests/test_get_flatcar.py runs it against a local one)",
    "qemu-system-x86_64": "boots a VM (tests/e2e/ boots QEMU guests)",
    "cp /usr/lib": "copies files Debian packages install (tests/e2e/test_grub_boot.py "
                   "does the same)",
    "cd /srv/bootcfg": "the rollout on a replica host (tests/test_fleet.py runs the "
                       "same checkout and symlink swap)",
    "git -C repo": "the rollout on a replica host (tests/test_fleet.py)",
    "ln -sfn": "the rollout on a replica host (tests/test_fleet.py)",
    "python3 -m venv": "the test command itself (.ci/run runs it verbatim: "
                       "test_ci_runs_the_readme_test_command)",
    ".venv/bin/python -m pytest": "the test command itself",
    "python3 tests/e2e/assets.py": ".ci/run runs it before the tests",
    "python3 bootcfg.py -data-path mydata": "the VM walk-through's own data directory",
    "bootcfg -address :8080 -tftp-address :69": "binds port 69 and elides its other "
                                                "flags (...); test_grub_boot.py runs it",
    "bootcfg check -bind-configs ...": "elides its sources (...); test_bind.py runs it",
    "bootcfg check -data-path /var/lib/matchbox": "a matchbox host's directory; "
                                                  "test_groups.py checks matchbox layouts",
    "bootcfg explain --uuid U --mac M": "U and M stand for a machine's UUID and MAC",
    "bootcfg check -data-path data -images-path images": "the checkout has no images/ "
                                                         "(scripts/get-flatcar fills it); "
                                                         "test_tools.py checks image paths",
}


def fenced_blocks(page):
    """[(language, first line number, [lines], elided)] of the page's fenced blocks."""
    lines = open(os.path.join(ROOT, page)).read().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^( *)```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = len(m.group(1)), m.group(2), i + 2
        before = lines[i - 1] if i and lines[i - 1].strip() else \
            (lines[i - 2] if i > 1 else "")
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:])
            i += 1
        out.append((lang, start, body, "<!-- elided" in before))
        i += 1
    return out


def commands():
    """[(page:line, command)] of every shell line and inline bootcfg command."""
    found = []
    for page in PAGES:
        for lang, start, body, _ in fenced_blocks(page):
            if lang != "sh":
                continue
            joined, first = "", None
            for n, line in enumerate(body):
                if first is None:
                    first = start + n
                joined += line[:-1] + " " if line.endswith("\\") else line
                if not line.endswith("\\"):
                    if joined.strip():
                        found.append(("%s:%d" % (page, first), joined.strip()))
                    joined, first = "", None
        text = open(os.path.join(ROOT, page)).read()
        for m in re.finditer(r"`(bootcfg (?:check|explain)[^`]*)`", text):
            line = text.count("\n", 0, m.start()) + 1
            found.append(("%s:%d" % (page, line), " ".join(m.group(1).split())))
    return found


COMMANDS = commands()


def not_run(command):
    return next((why for prefix, why in NOT_RUN.items() if command.startswith(prefix)), None)


@pytest.fixture(scope="module")
def bundled():
    server = ServerProcess(["-address", "127.0.0.1:0", "-data-path", "data"])
    yield server
    server.stop()


def bootcfg_argv(command):
    words = shlex.split(command, comments=True)
    if words[:2] == ["python3", "bootcfg.py"]:
        words = words[2:]
    elif words[0] == "bootcfg":
        words = words[1:]
    else:
        return None
    return [sys.executable, os.path.join(ROOT, "bootcfg.py")] + words


@pytest.mark.cli
@pytest.mark.parametrize("where, command", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_command_runs(where, command, bundled, tmp_path):
    why = not_run(command)
    if why is not None:
        assert why            # listed, with its reason: nothing to run here
        return
    argv = bootcfg_argv(command)
    if command.startswith("curl "):
        line = command.replace(DOC_ADDRESS, "http://%s:%d" % (bundled.host, bundled.port))
        assert line != command, "%s: curl names no %s" % (where, DOC_ADDRESS)
        result = subprocess.run(line.replace("curl ", "curl --fail --silent --show-error ", 1),
                                shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=ROOT, timeout=30)
        assert result.returncode == 0, "%s: %s\n%s" % (where, command, result.stderr)
        assert result.stdout, where
    elif argv is not None and (len(argv) == 2 or argv[2] not in ("check", "explain")):
        # the server: it must start and listen (on a free port, not the page's)
        if "-address" in argv:
            argv[argv.index("-address") + 1] = "127.0.0.1:0"
        else:
            argv += ["-address", "127.0.0.1:0"]
        proc = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        try:
            for line in proc.stderr:
                if "listening on http" in line:
                    break
            else:
                pytest.fail("%s: %s did not start" % (where, command))
        finally:
            proc.terminate()
            proc.wait(10)
    elif argv is not None:
        result = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, timeout=60)
        assert result.returncode == 0, "%s: %s\n%s%s" % (where, command, result.stdout,
                                                         result.stderr)
    elif shlex.split(command, comments=True) == ["python3", "scripts/build-single-file"]:
        out = str(tmp_path / "bootcfg")
        result = subprocess.run([sys.executable, "scripts/build-single-file", "-o", out],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        assert result.returncode == 0 and os.path.exists(out), result.stdout
    else:
        pytest.fail("%s: %r neither runs here nor is on NOT_RUN with a reason"
                    % (where, command))


def json_blocks():
    return [("%s:%d" % (page, start), "\n".join(body), elided)
            for page in PAGES for lang, start, body, elided in fenced_blocks(page)
            if lang == "json"]


@pytest.mark.unit
@pytest.mark.parametrize("where, text, elided", json_blocks(),
                         ids=[w for w, _, _ in json_blocks()])
def test_json_snippet_loads(where, text, elided):
    if elided:
        return                                      # marked: it leaves parts out
    assert "..." not in text, "%s elides with ...: mark it <!-- elided -->" % where
    from _bootcfg import app
    obj = json.loads(text)
    kind = ("ignition" if "ignition" in obj else "group" if "selector" in obj else
            "profile" if {"boot", "ignition_id", "cloud_id", "generic_id"} & set(obj) else
            "boot" if "kernel" in obj else None)
    assert kind is not None, "%s: not a boot config, group, profile or Ignition" % where
    app.PARSERS[kind](text.encode())                 # raises with the reason


@pytest.mark.unit
def test_every_flag_is_in_the_flag_table_with_its_variable():
    import bootcfg
    page = open(os.path.join(ROOT, "docs", "operating.md")).read()
    rows = {}
    for m in re.finditer(r"^\| (`-[a-z-]+`(?:, `-[a-z-]+`)*) \| ([^|]*) \|", page, re.M):
        flags = re.findall(r"`(-[a-z-]+)`", m.group(1))
        names = re.findall(r"`(BOOTCFG_[A-Z_]+)`", m.group(2))
        for flag, name in zip(flags, names):
            rows[flag] = name
    parser = bootcfg.build_parser()
    for action in parser._actions:
        long = [o for o in action.option_strings if o.startswith("--")]
        if not long or long[0] in ("--help", "--version"):
            continue
        flag = long[0][1:]
        assert flag in rows, "docs/operating.md has no row for %s" % flag
        assert rows[flag] in (action.help or ""), (flag, rows[flag], action.help)
    help_text = parser.format_help()
    for flag in rows:
        assert flag in help_text, "docs/operating.md lists %s, which --help does not" % flag


@pytest.mark.unit
def test_settings_table_is_generated_from_the_settings():
    """docs/operating.md's table is settings.markdown(), byte for byte
    (scripts/update-settings-doc rewrites it)."""
    from _bootcfg import settings
    page = open(os.path.join(ROOT, "docs", "operating.md")).read()
    start = page.index("\n", page.index("<!-- settings: generated")) + 1
    assert page[start:page.index("<!-- settings: end -->")] == settings.markdown(), \
        "docs/operating.md is stale: run python3 scripts/update-settings-doc"


@pytest.mark.unit
def test_every_setting_reaches_flag_and_variable(monkeypatch):
    """Each setting is a flag of every command in its scope, read from its
    variable, with its default otherwise."""
    import bootcfg
    from _bootcfg import settings
    for s in settings.SETTINGS:
        for command in s.scope:
            args = bootcfg.build_parser(command).parse_args([])
            assert getattr(args, s.name) == s.default, (command, s.name)
    for s in settings.SETTINGS:
        if s.type is settings.positive_int or s.type is settings.whole_number:
            value, expected = "7", 7
        elif s.type in (settings.positive_seconds, settings.seconds_or_off):
            value, expected = "0.5", 0.5
        else:
            continue
        parser = bootcfg.build_parser(s.scope[0])
        assert getattr(parser.parse_args([s.flag, value]), s.name) == expected
        monkeypatch.setenv(s.variable, value)
        assert getattr(bootcfg.build_parser(s.scope[0]).parse_args([]), s.name) == expected
        monkeypatch.delenv(s.variable)


def slug(heading):
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path):
    text = open(path).read()
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def links():
    found = []
    for page in PAGES:
        text = open(os.path.join(ROOT, page)).read()
        for m in re.finditer(r"\]\(([^)\s]+)\)", text):
            target = m.group(1)
            if not re.match(r"^[a-z]+:", target):
                found.append(("%s:%d" % (page, text.count("\n", 0, m.start()) + 1), page,
                              target))
    return found


@pytest.mark.unit
@pytest.mark.parametrize("where, page, target", links(), ids=[w for w, _, _ in links()])
def test_relative_link_resolves(where, page, target):
    path, _, anchor = target.partition("#")
    full = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path)) if path else \
        os.path.join(ROOT, page)
    assert os.path.exists(full), "%s: %s does not exist" % (where, target)
    if anchor:
        assert anchor in anchors(full), "%s: no heading #%s in %s" % (where, anchor, path)


@pytest.mark.unit
def test_the_old_readme_map_covers_every_old_heading():
    page = open(os.path.join(ROOT, "docs", "readme-map.md")).read()
    rows = re.findall(r"^\| ([^|]+) \| (.+) \|$", page, re.M)[1:]
    assert len(rows) == 30        # the one-page README (before 'Docs:') had 30 sections
    for heading, where in rows:
        assert re.search(r"\]\([a-zA-Z./-]+\.md#[\w-]+\)", where), (heading, where)


@pytest.mark.unit
def test_each_page_says_first_what_it_is_for():
    for page in PAGES[1:]:
        lines = [line for line in open(os.path.join(ROOT, page)).read().splitlines()
                 if line.strip()]
        assert lines[0].startswith("# ") and not lines[1].startswith(("#", "|", "```")), page


@pytest.mark.unit
def test_readme_is_short():
    assert len(open(os.path.join(ROOT, "README.md")).read().splitlines()) <= 200


@pytest.mark.unit
def test_ci_runs_the_readme_test_command():
    readme = open(os.path.join(ROOT, "README.md")).read()
    test_cmd = [line.strip() for line in readme.splitlines() if "python -m pytest" in line][0]
    assert test_cmd in open(os.path.join(ROOT, ".ci", "run")).read().splitlines()


@pytest.mark.unit
def test_every_dnsmasq_recipe_is_used_by_an_end_to_end_test():
    recipes = sorted(os.listdir(os.path.join(ROOT, "contrib", "dnsmasq")))
    e2e = "".join(open(path).read() for path in
                  glob.glob(os.path.join(ROOT, "tests", "e2e", "*.py")))
    assert len(recipes) >= 4
    for name in recipes:
        assert '"%s"' % name in e2e, "%s is used by no end-to-end test" % name
