"""Groups and profiles (matchbox's data model), read as matchbox users write them.

    groups/<name>.json     {"id", "name", "profile", "selector": {label: value},
                            "metadata": {any JSON}}
    profiles/<id>.json     {"id", "name", "boot": {"kernel", "initrd": [..], "args": [..]},
                            "ignition_id", "cloud_id", "generic_id"}

A group's `profile` names profiles/<profile>.json; a profile's *_id names a file
in ignition/, cloud/ or generic/. `parse_group` and `parse_profile` turn a file's
bytes into a Group or Profile, or raise ConfigError naming the key; selectors are
normalized (`mac` and `uuid` spelled canonically) so selection compares strings.

Also here, because matchbox defines them: the variables a template sees
(`variables`) and the /metadata env-file format (`env_lines`). Pure: no files.
"""

import posixpath
from typing import NamedTuple, Optional, Tuple

import render
from _bootcfg import machine
from _bootcfg.template import go_format
from render import ConfigError

GROUP_KEYS = ("id", "name", "profile", "selector", "metadata")
PROFILE_KEYS = ("id", "name", "boot", "ignition_id", "cloud_id", "generic_id")
# The directory each kind of profile file lives in, and the profile key naming it.
PROFILE_FILES = {"ignition": "ignition_id", "cloud": "cloud_id", "generic": "generic_id"}
# Butane and Container Linux Configs, which matchbox renders and bootcfg does not.
BUTANE_SUFFIXES = (".yaml", ".yml", ".bu")


class Group(NamedTuple):
    id: str
    name: str
    profile: str
    selector: Tuple[Tuple[str, str], ...]   # sorted (label, value), normalized
    metadata: dict
    warnings: Tuple[Tuple[str, str], ...] = ()


class Profile(NamedTuple):
    id: str
    name: str
    boot: Optional[render.BootConfig]
    files: Tuple[Tuple[str, str], ...]      # (kind, file name) for ignition, cloud, generic
    warnings: Tuple[Tuple[str, str], ...] = ()

    def file(self, kind):
        return dict(self.files).get(kind)


def parse_group(data):
    obj = _object(data, "group")
    warnings = _unknown(obj, GROUP_KEYS)
    profile = _string(obj, "profile", required=True)
    if not profile or "/" in profile or profile.startswith("."):
        raise ConfigError("profile: %r is not a profile id (the file profiles/<id>.json)"
                          % profile)
    raw = obj.get("selector", {})
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("selector: must be an object of label: value strings")
    selector = normalize_selector(raw, "selector")
    metadata = obj.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise ConfigError("metadata: must be a JSON object")
    return Group(_string(obj, "id"), _string(obj, "name"), profile, selector, metadata,
                 warnings)


def normalize_selector(raw, where):
    """Sorted (label, value) pairs with mac and uuid spelled canonically."""
    pairs = []
    for key, value in raw.items():
        if not isinstance(value, str):
            raise ConfigError("%s.%s: must be a string (labels are query parameters), "
                              "not %s" % (where, key, render._type(value)))
        if not key or not value:
            raise ConfigError("%s: empty label name or value %r: %r (a request never "
                              "carries an empty label)" % (where, key, value))
        if key in machine.KEYS:
            try:
                canonical = machine.key(key, value)
            except ValueError as e:
                raise ConfigError("%s.%s: %s" % (where, key, e)) from None
            if canonical is None:
                raise ConfigError("%s.%s: %s is a placeholder many machines report, not "
                                  "one machine" % (where, key, value))
            value = canonical
        pairs.append((key, value))
    return tuple(sorted(pairs))


def selector_text(pairs):
    """matchbox's tie-break string: sorted key=value pairs joined by ','
    (store.Candidate.rank orders by the same text)."""
    return ",".join("%s=%s" % kv for kv in pairs)


def parse_profile(data):
    obj = _object(data, "profile")
    warnings = _unknown(obj, PROFILE_KEYS)
    boot = obj.get("boot")
    if boot is not None:
        if not isinstance(boot, dict):
            raise ConfigError("boot: must be an object with kernel, initrd, args")
        boot = render.boot_config(boot, "boot.", "args")
    files = []
    for kind, key in PROFILE_FILES.items():
        name = _string(obj, key)
        if not name:
            continue
        if name.startswith("/") or name != posixpath.normpath(name) or \
                name.split("/")[0] in ("..", ".") or "\\" in name or "\0" in name:
            raise ConfigError("%s: %r is not a file name inside %s/" % (key, name, kind))
        if kind == "ignition" and name.lower().endswith(BUTANE_SUFFIXES):
            raise ConfigError(
                "%s: %r is a Butane or Container Linux Config, which bootcfg does not "
                "render (the standard library reads no YAML): translate it with "
                "`butane --strict %s > %s.ign` and name the .ign file"
                % (key, name, name, name.rsplit(".", 1)[0]))
        files.append((kind, name))
    return Profile(_string(obj, "id"), _string(obj, "name"), boot, tuple(files), warnings)


def variables(group, labels, raw_query):
    """What a template sees, in matchbox's order: the group's metadata, then its
    selector values (lower-cased keys), then `request` {query, raw_query}."""
    out = dict(group.metadata)
    for key, value in group.selector:
        out[key.lower()] = value
    out["request"] = {"query": dict(labels), "raw_query": raw_query}
    return out


def env_lines(values):
    """/metadata's body: KEY=value lines (keys upper-cased, nested objects joined
    with _), strings, numbers and booleans printed as Go prints them, lists and
    nulls left out. Sorted, so the answer is stable (matchbox's order is random)."""
    lines = []

    def walk(prefix, value):
        if isinstance(value, dict):
            for key in value:
                walk(prefix + "_" + key.upper() if prefix else key.upper(), value[key])
        elif value is not None and not isinstance(value, list):
            text = go_format(value)
            if "\n" not in text and "\r" not in text:
                lines.append("%s=%s" % (prefix, text))
    walk("", values)
    return ("".join(line + "\n" for line in sorted(lines))).encode("utf-8")


def _object(data, what):
    obj = render.parse_json(data)
    if not isinstance(obj, dict):
        raise ConfigError("a %s must be a JSON object" % what)
    return obj


def _unknown(obj, known):
    return tuple((key, "unknown key (known: %s); ignored" % ", ".join(known))
                 for key in obj if key not in known)


def _string(obj, key, required=False):
    if key not in obj or obj[key] is None:
        if required:
            raise ConfigError("%s: missing" % key)
        return ""
    if not isinstance(obj[key], str):
        raise ConfigError("%s: must be a string, not %s" % (key, render._type(obj[key])))
    return obj[key]
