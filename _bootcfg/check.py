"""`bootcfg check`: validate a data directory before it is rolled out.

It reads every file through the same App, store and parser the server uses, and reports
what the server would refuse plus mistakes the server cannot see at run time
(among them boot configs no GRUB over TFTP can be given):
two files for one machine, file names that are no MAC/UUID, kernels and initrds
missing from the images directory, cloud-configs that are not cloud-configs, and
`{{` that Pixiecore's template would trip on.
"""

import itertools
import json
import os
from typing import NamedTuple, Optional

from urllib.parse import urlsplit

import render
import store
from _bootcfg import groups, ignition, images, template
from _bootcfg.answers import Refusal
from _bootcfg.app import bind_policy

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


UNBINDABLE = ("selected by UUID alone, which no DHCP lease names: with -bind-configs "
              "every request for it gets 403; select it by mac")


def check(app, bound=False):
    """All findings for the data directory of `app` (an App, built as the server
    builds it), sorted by path and position. `bound`: the server runs with
    -bind-configs, so configs selected by UUID alone are never served."""
    found = []
    fs, data_root, images_root = app.store, app.store.root, app.images_root
    named, group_found = check_groups(fs, images_root, bound)
    found += group_found
    for kind in store.KINDS:
        kind_dir = os.path.join(data_root, kind)
        if not os.path.isdir(kind_dir):
            if kind == "boot" and not fs.groups.files:
                found.append(Finding(kind_dir, None, None, "warning",
                                     "no boot/ directory: every machine gets 404"))
            continue
        known = KNOWN | ({"shared"} if kind == "ignition" else set())
        for entry in sorted(os.listdir(kind_dir)):
            if entry not in known and not entry.startswith(".") and \
                    (kind, entry) not in named:
                found.append(Finding(os.path.join(kind_dir, entry), None, None, "warning",
                                     "not a place bootcfg looks (only %s, and files the "
                                     "profiles of groups name, are read)"
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
                if bound and kind != "boot" and bind_policy({how}) is not None:
                    found.append(Finding(os.path.join(how_dir, keys[key]), None, None,
                                         "warning", UNBINDABLE))
    return sorted(found, key=lambda f: (f.path, f.line or 0, f.col or 0))


# ---------------------------------------------------------------- groups

def check_groups(fs, images_root, bound=False):
    """({(kind, first path part) of files profiles name}, findings) for groups/,
    profiles/ and the files profiles name."""
    found = []
    root = fs.root
    groups_dir = os.path.join(root, "groups")
    parsed = {}                     # "groups/<name>" -> Group
    for name in _names(groups_dir):
        path = os.path.join(groups_dir, name)
        if not name.endswith(".json"):
            found.append(Finding(path, None, None, "warning",
                                 "not read: group files end in .json"))
            continue
        group, problems = _parse(path, fs.parsers["group"])
        found += problems
        if group is not None:
            parsed["groups/" + name] = group
    profiles, missing, filled, named = {}, set(), {}, set()
    for rel, group in sorted(parsed.items()):
        pid = group.profile
        if pid in profiles or pid in missing:
            continue
        path = os.path.join(root, "profiles", pid + ".json")
        if not os.path.isfile(path):
            missing.add(pid)
            continue
        profile, problems = _parse(path, fs.parsers["profile"])
        found += problems
        profiles[pid] = profile
        if profile is None:
            continue
        if profile.id and profile.id != pid:
            found.append(Finding(path, None, None, "warning",
                                 "id %r differs from the file name; groups name the file "
                                 "(profile: %r)" % (profile.id, pid)))
        if profile.boot is not None:
            found += check_boot(path, profile.boot, images_root)
        for kind, file_name in profile.files:
            named.add((kind, file_name.split("/")[0]))
            fpath = os.path.join(root, kind, file_name)
            if not os.path.isfile(fpath):
                found.append(Finding(path, None, None, "error",
                                     "%s: %s/%s does not exist; its machines get 500"
                                     % (store.groups_key(kind), kind, file_name)))
                continue
            filled[pid, kind], problems = _parse(fpath, fs.parsers["profile:" + kind])
            found += problems
    for rel, group in sorted(parsed.items()):
        path = os.path.join(root, rel)
        if group.profile in missing:
            found.append(Finding(path, None, None, "error",
                                 "profile %r: profiles/%s.json does not exist; its machines "
                                 "get 500" % (group.profile, group.profile)))
            continue
        profile = profiles[group.profile]
        keys = {name for name, _ in group.selector}
        if bound and profile is not None and profile.files and \
                bind_policy(keys) is not None:
            found.append(Finding(path, None, None, "warning", "its %s: %s" % (
                " and ".join(kind for kind, _ in profile.files), UNBINDABLE)))
        for kind, file_name in profile.files if profile is not None else ():
            value = filled.get((group.profile, kind))
            if value is not None:
                found += check_filling(path, group, "%s/%s" % (kind, file_name), value)
    found += check_selectors(fs, parsed)
    return named, found


def check_filling(path, group, file_rel, tpl):
    """What goes wrong filling a profile file with one group's variables."""
    if isinstance(tpl, ignition.IgnitionTemplate):
        try:
            ignition.parse_ignition(tpl.render(groups.variables(group, {}, "")))
        except (template.TemplateError, render.ConfigError) as e:
            return [Finding(path, None, None, "error", "%s, filled for this group: %s"
                            % (file_rel, e))]
        return []
    if not isinstance(tpl, template.Template):
        return []
    values = groups.variables(group, {}, "")
    values["request"] = template.LenientMap(query=template.LenientMap(), raw_query="x")
    try:
        tpl.render(values)
    except template.TemplateError as e:
        return [Finding(path, None, None, "error", "%s needs what this group lacks: %s "
                        "(its machines get 500)" % (file_rel, e))]
    return []


def check_selectors(fs, parsed):
    """Identical selectors and duplicate ids (errors), a group hiding a seed file,
    and equal-size selectors on different labels that one machine can match both
    of (warnings: the winner is decided by matchbox's text order)."""
    found = []
    root = fs.root
    by_selector, by_id = {}, {}
    for rel, group in sorted(parsed.items()):
        by_selector.setdefault(group.selector, []).append(rel)
        if group.id:
            by_id.setdefault(group.id, []).append(rel)
    for selector, rels in by_selector.items():
        if len(rels) > 1:
            for rel in rels[1:]:
                found.append(Finding(os.path.join(root, rel), None, None, "error",
                                     "same selector {%s} as %s, which wins (its file name "
                                     "sorts first): this group is never used"
                                     % (groups.selector_text(selector), rels[0])))
    for gid, rels in by_id.items():
        for rel in rels[1:]:
            found.append(Finding(os.path.join(root, rel), None, None, "error",
                                 "duplicate id %r (also %s)" % (gid, rels[0])))
    seeds = []
    for kind in store.KINDS:
        for how in ("uuid", "mac"):
            if os.path.isdir(os.path.join(root, kind, how)):
                keys, _ = fs.scan(kind, how)
                seeds += [("%s/%s/%s" % (kind, how, name), ((how, key),))
                          for key, name in keys.items()]
        if os.path.lexists(os.path.join(root, kind, "default")):
            seeds.append(("%s/default" % kind, ()))
    for rel, selector in seeds:
        if selector in by_selector:
            found.append(Finding(os.path.join(root, rel), None, None, "warning",
                                 "%s selects the same {%s} and wins: this file is not served"
                                 % (by_selector[selector][0], groups.selector_text(selector))))
    found += _ambiguous(root, [(rels[0], sel) for sel, rels in by_selector.items()] + seeds)
    return found


def _ambiguous(root, candidates):
    """Warnings for pairs of candidate families (same number of labels, different
    label names) that one request can match both of, once per pair of families,
    unless the winner is the one that names the machine (mac or uuid)."""
    families = {}
    for rel, selector in candidates:
        if selector:
            keys = tuple(k for k, _ in selector)
            families.setdefault((len(selector), keys), []).append((rel, dict(selector)))
    found = []
    for (n1, k1), (n2, k2) in itertools.combinations(sorted(families), 2):
        if n1 != n2 or {k1, k2} == {("mac",), ("uuid",)}:
            continue        # uuid before mac is the documented seed order
        shared = sorted(set(k1) & set(k2))
        index = {}
        for rel, sel in families[n2, k2]:
            index.setdefault(tuple(sel[k] for k in shared), []).append((rel, sel))
        for rel, sel in families[n1, k1]:
            others = index.get(tuple(sel[k] for k in shared))
            if others:
                other, osel = others[0]
                a = groups.selector_text(tuple(sorted(sel.items())))
                b = groups.selector_text(tuple(sorted(osel.items())))
                win, lose = (rel, other) if a > b else (other, rel)
                wsel, lsel = (sel, osel) if a > b else (osel, sel)
                if _one_machine(wsel) and not _one_machine(lsel):
                    break       # the machine's own candidate wins: what anyone expects
                found.append(Finding(
                    os.path.join(root, lose), None, None, "warning",
                    "a machine whose labels match both {%s} (%s) and {%s} (%s) gets %s: "
                    "equally many labels, so matchbox's text order decides%s"
                    % (a, rel, b, other, win,
                       "" if len(families[n1, k1]) * len(families[n2, k2]) == 1 else
                       " (one example of %d by %d candidates)"
                       % (len(families[n1, k1]), len(families[n2, k2])))))
                break
    return found


def _one_machine(selector):
    return "mac" in selector or "uuid" in selector


def _names(folder):
    try:
        return sorted(n for n in os.listdir(folder) if not n.startswith(".") and
                      not n.endswith("~"))
    except OSError:
        return []


def _parse(path, parse):
    """(value or None, findings) for one file read with `parse`."""
    try:
        data, _ = store.read_whole(path)
    except OSError as e:
        return None, [Finding(path, None, None, "error", "cannot read: %s"
                              % (e.strerror or e))]
    try:
        value = parse(data)
    except render.ConfigError as e:
        return None, [Finding(path, e.line, e.col, "error", str(e))]
    return value, [Finding(path, None, None, "warning", "%s: %s" % w)
                   for w in getattr(value, "warnings", ())]


def check_boot(path, cfg, images_root, text=""):
    """Findings for a parsed boot config: missing images, no GRUB over TFTP,
    `{{` for Pixiecore."""
    found = []
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
    return check_boot(path, cfg, images_root, data.decode("utf-8-sig"))


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
    if images_root is None or not url.startswith(("/images/", "/assets/")) or "${" in url:
        return None
    rel = url.split("/", 2)[2].split("?", 1)[0]
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
