"""The README's commands are the ones CI and operators actually run."""

import os
import re

from helpers import ROOT


def read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def test_ci_runs_the_readme_test_command():
    readme = read("README.md")
    test_cmd = [line.strip() for line in readme.splitlines()
                if "python -m pytest" in line and line.startswith("    ")][0]
    assert test_cmd in read(".ci/run").splitlines()


def test_readme_flags_match_help():
    import bootcfg
    help_text = bootcfg.build_parser().format_help()
    readme = read("README.md")
    for flag in re.findall(r"^\| `(-[a-z-]+)` \|", readme, re.M):
        assert flag in help_text
    for action in bootcfg.build_parser()._actions:
        for option in action.option_strings:
            if option.startswith("--") and option not in ("--help", "--version"):
                assert "`%s`" % option[1:] in readme, option
