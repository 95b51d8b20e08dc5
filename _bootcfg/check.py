"""`bootcfg check`: validate a data directory before it is rolled out.

It reads every file through the same App, store and parser the server uses, and reports
what the server would refuse plus mistakes the server cannot see at run time
(among them boot configs no GRUB over TFTP can be given):
two files for one machine, file names that are no MAC/UUID, kernels and initrds
missing from the images directory, cloud-configs that are not cloud-configs, and
`{{` that Pixiecore's template would trip on.
"""

import json
import os
from typing import NamedTuple, Optional

from urllib.parse import urlsplit

import render
import store
from _bootcfg import ignition, images
from _bootcfg.answers import Refusal

KNOWN = {"uuid", "mac", "default"}


class Finding(NamedTuple):
    path: str
    line: Optional[int]
    col: Optional[int]
    severity: str        # "error" or "warning"
    message: str

    def text(self):
        where = self.path
        if self.line is not None:
            where += ":%d" % self.line
            if self.col is not None:
                where += ":%d" % self.col
        return "%s: %s: %s" % (where, self.severity, self.message)


def check(app):
    """All findings for the data directory of `app` (an App, built as the server
    builds it), sorted by path and position."""
    found = []
    fs, data_root, images_root = app.store, app.store.root, app.images_root
    for kind in store.KINDS:
        kind_dir = os.path.join(data_root, kind)
        if not os.path.isdir(kind_dir):
            if kind == "boot":
                found.append(Finding(kind_dir, None, None, "warning",
                                     "no boot/ directory: every machine gets 404"))
            continue
        known = KNOWN | ({"shared"} if kind == "ignition" else set())
        for entry in sorted(os.listdir(kind_dir)):
            if entry not in known and not entry.startswith("."):
                found.append(Finding(os.path.join(kind_dir, entry), None, None, "warning",
                                     "not a place bootcfg looks (only %s are read)"
                                     % ", ".join(sorted(known))))
        shared_dir = os.path.join(kind_dir, "shared")
        default = os.path.join(kind_dir, "default")
        if os.path.lexists(default):
            found += check_file(kind, default, images_root, shared_dir)
        if kind == "ignition" and os.path.isdir(shared_dir):
            for name in sorted(os.listdir(shared_dir)):
                if not name.startswith(".") and not name.endswith("~"):
                    found += check_file(kind, os.path.join(shared_dir, name), images_root,
                                        shared_dir)
        for how in ("uuid", "mac"):
            how_dir = os.path.join(kind_dir, how)
            if not os.path.isdir(how_dir):
                continue
            keys, skipped = fs.scan(kind, how)
            for name, why in skipped:
                found.append(Finding(os.path.join(how_dir, name), None, None, "error",
                                     "never served: " + why))
            listed = set(keys.values()) | {n for n, _ in skipped}
            for name in sorted(os.listdir(how_dir)):
                path = os.path.join(how_dir, name)
                if name not in listed and not name.startswith(".") and \
                        not name.endswith("~") and not os.path.isfile(path):
                    found.append(Finding(path, None, None, "warning",
                                         "not a file; never served"))
            for key in sorted(keys):
                found += check_file(kind, os.path.join(how_dir, keys[key]), images_root,
                                    shared_dir)
    return sorted(found, key=lambda f: (f.path, f.line or 0, f.col or 0))


def check_file(kind, path, images_root, shared_dir=None):
    """Findings for one file; `shared_dir` is its kind's shared/ directory."""
    try:
        data, _ = store.read_whole(path)
    except OSError as e:
        return [Finding(path, None, None, "error", "cannot read: %s" % (e.strerror or e))]
    if kind == "cloud":
        if not data.startswith((b"#cloud-config", b"#!")):
            return [Finding(path, 1, 1, "warning",
                            "starts with neither #cloud-config nor #! (served as is)")]
        return []
    if kind == "ignition":
        return check_ignition(path, data, shared_dir)
    try:
        cfg = render.parse_boot_config(data)
    except render.ConfigError as e:
        return [Finding(path, e.line, e.col, "error", str(e))]
    found = []
    text = data.decode("utf-8-sig")
    for where, url in [("kernel", cfg.kernel)] + \
            [("initrd[%d]" % i, u) for i, u in enumerate(cfg.initrd)]:
        problem = missing_image(url, images_root)
        if problem:
            line, col = position(text, url)
            found.append(Finding(path, line, col, "error", "%s: %s" % (where, problem)))
    problem = grub_problem(cfg)
    if problem:
        found.append(Finding(path, None, None, "warning",
                             "no GRUB answer over TFTP (Secure Boot machines): %s" % problem))
    for arg in cfg.args:
        if "{{" in arg:
            line, col = position(text, "{{")
            found.append(Finding(path, line, col, "warning",
                                 "argument %r contains '{{', which starts a template action "
                                 "for Pixiecore; bootcfg escapes it, other tools will not"
                                 % arg))
    return found


# A machine whose request carries every fact a GRUB query can: what is left
# unfillable is the config's doing, not the machine's.
GRUB_PROBE = {"uuid": "00000000-0000-0000-0000-000000000001", "mac": "52:54:00:00:00:01",
              "hostname": "h", "serial": "s", "domain": "d", "arch": "x86_64",
              "platform": "efi"}


def grub_problem(cfg):
    """Why a GRUB that booted over TFTP could not be given this config, or None."""
    try:
        render.render_grub(cfg, GRUB_PROBE, "(tftp,$net_default_server)", False)
    except render.GrubError as e:
        return str(e)
    return None


def check_ignition(path, data, shared_dir):
    """Ignition's own findings (JSON path first, as ignition-validate prints it),
    and merge/replace sources naming a shared fragment that does not exist."""
    try:
        cfg = ignition.parse_ignition(data)
    except render.ConfigError as e:
        return [Finding(path, e.line, e.col, "error", str(e))]
    found = [Finding(path, None, None, "warning", "%s: %s" % w) for w in cfg.warnings]
    for where, url in cfg.sources:
        name = shared_fragment(url)
        if name is not None and not os.path.isfile(os.path.join(shared_dir, name)):
            found.append(Finding(path, None, None, "error",
                                 "%s: %s names ignition/shared/%s, which does not exist; "
                                 "Ignition fails to fetch it and the machine stops booting"
                                 % (where, url, name)))
    return found


def shared_fragment(url):
    """The fragment name a merge/replace URL asks bootcfg for (its path is
    /ignition/shared/<name>, whatever the host), or None."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or \
            not parts.path.startswith("/ignition/shared/"):
        return None
    name = parts.path[len("/ignition/shared/"):]
    return name if name and "/" not in name else None


def missing_image(url, images_root):
    """Why a /images/ URL would not be served, or None (also for other URLs and
    when there is no images directory to check against)."""
    if images_root is None or not url.startswith("/images/") or "${" in url:
        return None
    rel = url[len("/images/"):].split("?", 1)[0]
    try:
        real = images.resolve(images_root, rel)
    except Refusal as e:
        return "%s: %s" % (url, e.message)
    if not os.path.isfile(real):
        return "%s does not exist in the images directory %s" % (url, images_root)
    return None


def position(text, needle):
    """(line, col), 1-based, of the first `needle` in text, or (None, None)."""
    at = text.find(needle)
    if at < 0:
        at = text.find(json.dumps(needle)[1:-1])
    if at < 0:
        return None, None
    line = text.count("\n", 0, at) + 1
    return line, at - (text.rfind("\n", 0, at) + 1) + 1


def to_json(findings):
    return json.dumps([f._asdict() for f in findings], indent=2) + "\n"
