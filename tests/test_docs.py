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


def test_every_dnsmasq_recipe_is_used_by_an_end_to_end_test():
    recipes = sorted(os.listdir(os.path.join(ROOT, "contrib", "dnsmasq")))
    e2e = "".join(read(os.path.join("tests", "e2e", name)) for name in
                  os.listdir(os.path.join(ROOT, "tests", "e2e")) if name.endswith(".py"))
    assert len(recipes) >= 4
    for name in recipes:
        assert '"%s"' % name in e2e, "%s is used by no end-to-end test" % name
