"""Ignition configs (spec 3.0.0-3.5.0): validated at load, served byte for byte.

`parse_ignition(bytes)` returns an IgnitionConfig or raises ConfigError naming
the JSON path the way `ignition-validate` prints it (`$.storage.files.0.path:
path not absolute`). It refuses what Ignition's own validator refuses that the
standard library can check (types of every known key, absolute and simplified
paths, unit and drop-in names, source URLs and their schemes per spec version,
hash and compression formats, duplicate entries, `overwrite` without a source,
file modes, HTTP headers on non-HTTP sources), and more where bootcfg is
deliberately stricter: a UTF-8 byte order mark and duplicate JSON keys (Go's
parser takes them: the last key silently wins), `-experimental` and unknown
versions. Unknown keys are warnings, as in Ignition. Pure: no files, no sockets.
"""

import base64
import json
import posixpath
import re
from typing import NamedTuple, Tuple
from urllib.parse import quote

from render import ConfigError

STABLE = ("3.0.0", "3.1.0", "3.2.0", "3.3.0", "3.4.0", "3.5.0")
CONTENT_TYPE = "application/vnd.coreos.ignition+json"


class IgnitionConfig(NamedTuple):
    data: bytes                          # the file, served as it is
    version: str
    warnings: Tuple[Tuple[str, str], ...]  # (JSON path, message)
    sources: Tuple[Tuple[str, str], ...]   # (JSON path, URL) of config.merge/replace


class IgnitionTemplate(NamedTuple):
    """A profile's Ignition file with {{.key}} placeholders inside JSON strings.
    `parts` alternate literal text and (field path, shown, mode) placeholders;
    mode is "json" (JSON-escaped) or "url" (percent-encoded, inside a data: URL)."""
    parts: tuple
    warnings: Tuple[Tuple[str, str], ...] = ()

    def render(self, values):
        """The filled-in config's bytes; TemplateError for a missing key or a
        value that is a list, an object or null."""
        from _bootcfg.template import TemplateError, go_format
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            path, shown, mode = part
            value = values
            for name in path:
                if not isinstance(value, dict) or name not in value:
                    raise TemplateError("%s: no value %r in the group's metadata or "
                                        "selector" % (shown, ".".join(path)))
                value = value[name]
            if value is None or isinstance(value, (list, dict)):
                raise TemplateError("%s: is %s; only strings, numbers and booleans can be "
                                    "placed in an Ignition string"
                                    % (shown, "null" if value is None else "a list or an "
                                       "object"))
            text = go_format(value)
            out.append(quote(text, safe="") if mode == "url" else
                       json.dumps(text, ensure_ascii=False)[1:-1])
        return "".join(out).encode("utf-8")


_PLACEHOLDER = re.compile(r"\{\{\s*((?:\.[A-Za-z_][A-Za-z0-9_]*)+)\s*\}\}")


def parse_ignition_template(data):
    """A profile's Ignition file: an IgnitionConfig when it has no `{{` (served
    byte for byte), else an IgnitionTemplate whose every filling must still be
    validated (it is, per group, before it is served). Raises ConfigError."""
    if b"{{" not in data:
        return parse_ignition(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("not UTF-8 (byte %d)" % e.start) from None
    parts, literal, i = [], [], 0
    in_string, string_start = False, 0
    while i < len(text):
        ch = text[i]
        if in_string and ch == "\\":
            literal.append(text[i:i + 2])
            i += 2
            continue
        if ch == '"':
            in_string = not in_string
            string_start = i + 1
        elif text.startswith("{{", i):
            line = text.count("\n", 0, i) + 1
            col = i - (text.rfind("\n", 0, i) + 1) + 1
            m = _PLACEHOLDER.match(text, i)
            if not in_string:
                raise ConfigError("{{ outside a JSON string: placeholders go inside strings "
                                  "(\"{{.hostname}}\")", line, col)
            if not m:
                raise ConfigError("only {{.key}} placeholders are allowed in Ignition files "
                                  "(no if, range, index or functions): %s"
                                  % text[i:i + 30].split("}}")[0] + "}}", line, col)
            path = tuple(m.group(1)[1:].split("."))
            if path[0] == "request":
                raise ConfigError("{{%s}}: request values are not allowed in Ignition files "
                                  "(the answer must not depend on what a client puts in its "
                                  "query)" % m.group(1), line, col)
            so_far = text[string_start:i]
            mode = "json"
            if so_far.startswith("data:"):
                if ";base64," in so_far or so_far.endswith(";base64"):
                    raise ConfigError("{{%s}} inside a base64 data: URL cannot be filled; "
                                      "use a plain data: URL (it is percent-encoded)"
                                      % m.group(1), line, col)
                mode = "url"
            parts.append("".join(literal))
            literal = []
            parts.append((path, "%d:%d: {{%s}}" % (line, col, m.group(1)), mode))
            i = m.end()
            continue
        literal.append(ch)
        i += 1
    parts.append("".join(literal))
    tpl = IgnitionTemplate(tuple(p for p in parts if p != ""))
    # Filled with some harmless value (a word, a path, a URL), the file must be a
    # valid config: what only a group's own values can break is checked per group.
    first = None
    for word in ("x", "/x", "http://x/x"):
        probe = "".join(p if isinstance(p, str) else word for p in tpl.parts)
        try:
            return tpl._replace(warnings=parse_ignition(probe.encode("utf-8")).warnings)
        except ConfigError as e:
            first = first or e
    raise first


# ---------------------------------------------------------------- the schema
#
# A node is ("string"|"boolean"|"integer"), ("list", node), or ("object", {key:
# field}); a field is (node, first minor version that has it, check name or None).

S, B, I = "string", "boolean", "integer"


def _f(node, since=0, check=None):
    return (node, since, check)


def _obj(**fields):
    return ("object", {k: v if isinstance(v, tuple) and len(v) == 3 else _f(v)
                       for k, v in fields.items()})


def _list(node):
    return ("list", node)


_HEADERS = _list(_obj(name=_f(S, 0, "required"), value=S))


def _resource(required_source=False):
    return _obj(source=_f(S, 0, "source required" if required_source else "url"),
                compression=_f(S, 0, "compression"), httpHeaders=_f(_HEADERS, 1),
                verification=_obj(hash=_f(S, 0, "hash")))


_OWNER = _obj(id=I, name=S)
_NODE = dict(path=_f(S, 0, "node path"), overwrite=B, user=_OWNER, group=_OWNER)

SCHEMA = _obj(
    ignition=_obj(
        version=S,
        config=_obj(merge=_list(_resource(True)), replace=_resource(True)),
        timeouts=_obj(httpResponseHeaders=I, httpTotal=I),
        security=_obj(tls=_obj(certificateAuthorities=_list(_resource(True)))),
        proxy=_f(_obj(httpProxy=S, httpsProxy=S, noProxy=_list(S)), 1),
    ),
    storage=_obj(
        disks=_list(_obj(
            device=_f(S, 0, "device"), wipeTable=B,
            partitions=_list(_obj(label=_f(S, 0, "partition label"), number=I, sizeMiB=I, startMiB=I, typeGuid=S,
                                  guid=S, wipePartitionEntry=B, shouldExist=B,
                                  resize=_f(B, 2)))),
        ),
        raid=_list(_obj(name=S, level=S, devices=_list(S), spares=I, options=_list(S))),
        filesystems=_list(_obj(
            device=_f(S, 0, "device"), format=_f(S, 0, "format"),
            path=_f(S, 0, "abs path"), wipeFilesystem=B, label=S, uuid=S,
            options=_list(S), mountOptions=_f(_list(S), 1))),
        files=_list(_obj(contents=_resource(), append=_list(_resource()),
                         mode=_f(I, 0, "mode"), **_NODE)),
        directories=_list(_obj(mode=_f(I, 0, "mode"), **_NODE)),
        links=_list(_obj(target=_f(S, 0, "required"), hard=B, **_NODE)),
        luks=_f(_list(_obj(
            name=_f(S, 0, "required"), device=_f(S, 0, "device"), keyFile=_resource(),
            label=S, uuid=S, options=_list(S), wipeVolume=B,
            discard=_f(B, 4), openOptions=_f(_list(S), 4),
            clevis=_obj(tang=_list(_obj(url=S, thumbprint=S, advertisement=_f(S, 4))),
                        tpm2=B, threshold=I,
                        custom=_obj(pin=S, config=S, needsNetwork=B)),
            cex=_f(_obj(enabled=B), 5))), 2),
    ),
    systemd=_obj(units=_list(_obj(
        name=_f(S, 0, "unit name"), enabled=B, mask=B, contents=S,
        dropins=_list(_obj(name=_f(S, 0, "dropin name"), contents=S))))),
    passwd=_obj(
        users=_list(_obj(name=S, passwordHash=S, sshAuthorizedKeys=_list(S), uid=I,
                         gecos=S, homeDir=S, noCreateHome=B, primaryGroup=S,
                         groups=_list(S), noUserGroup=B, noLogInit=B, shell=S,
                         shouldExist=_f(B, 2), system=B)),
        groups=_list(_obj(name=S, gid=I, passwordHash=S, shouldExist=_f(B, 2), system=B)),
    ),
    kernelArguments=_f(_obj(shouldExist=_list(S), shouldNotExist=_list(S)), 3),
)

# Source URL schemes by spec minor version (gs from 3.2, arn from 3.4).
SCHEMES = {0: {"http", "https", "tftp", "s3", "data"}}
SCHEMES[1] = SCHEMES[0]
SCHEMES[2] = SCHEMES[3] = SCHEMES[0] | {"gs"}
SCHEMES[4] = SCHEMES[5] = SCHEMES[2] | {"arn"}
HASHES = {"sha512": 128, "sha256": 64}            # sha256 from 3.1
FORMATS = {"ext4", "btrfs", "xfs", "vfat", "swap"}  # and "none" from 3.3
UNIT_TYPES = ("service", "socket", "device", "mount", "automount", "swap", "target",
              "path", "timer", "slice", "scope")
# Checks that also make their key required (null or "" is missing; "source
# required" and "node path" take "" and refuse it in their own words).
REQUIRED = {"required": True, "device": True, "unit name": True, "dropin name": True,
            "source required": False, "node path": True}
# Lists whose entries must differ in a key (Ignition: "duplicate entry defined").
UNIQUE = {"$.storage.disks": "device", "$.storage.raid": "name",
          "$.storage.filesystems": "device", "$.storage.luks": "name",
          "$.systemd.units": "name", "$.passwd.users": "name", "$.passwd.groups": "name",
          "$.ignition.security.tls.certificateAuthorities": "source"}


# ---------------------------------------------------------------- parsing

def parse_ignition(data):
    """Validate one Ignition config (bytes). Raises ConfigError."""
    if data.startswith(b"\xef\xbb\xbf"):
        raise ConfigError("starts with a UTF-8 byte order mark, which Ignition's parser "
                          "rejects; save the file without it", 1, 1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("not UTF-8 (byte %d)" % e.start) from None
    try:
        obj = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise ConfigError("invalid JSON: %s" % e.msg, e.lineno, e.colno) from None
    except _Duplicate as e:
        raise ConfigError("duplicate key %r (Ignition would keep the last one silently; "
                          "say it once)" % e.key) from None
    if not isinstance(obj, dict):
        raise ConfigError("$: must be a JSON object, not %s" % _kind(obj))
    version = spec_version(obj)
    minor = int(version.split(".")[1])
    v = _Validator(minor)
    v.node(obj, SCHEMA, "$")
    v.cross_checks(obj)
    if v.errors:
        raise ConfigError("%s: %s" % v.errors[0]
                          + ("" if len(v.errors) == 1 else " (and %d more)"
                             % (len(v.errors) - 1)))
    return IgnitionConfig(data, version, tuple(v.warnings), tuple(v.sources))


def spec_version(obj):
    """The config's stable spec version, or ConfigError saying what to do."""
    if "ignitionVersion" in obj and "ignition" not in obj:
        raise ConfigError("$.ignitionVersion: an Ignition spec 1 config; bootcfg serves "
                          "spec 3 (%s): convert it (Butane, or Ignition's "
                          "docs/migrating-configs.md)" % ", ".join(STABLE))
    ign = obj.get("ignition")
    version = ign.get("version") if isinstance(ign, dict) else None
    if not isinstance(version, str):
        raise ConfigError("$.ignition.version: missing; bootcfg serves spec %s"
                          % ", ".join(STABLE))
    if version in STABLE:
        return version
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)(-experimental)?$", version)
    if m and m.group(1) in ("1", "2"):
        raise ConfigError("$.ignition.version: %s is Ignition spec %s; bootcfg serves "
                          "spec 3 only (Fedora CoreOS reads nothing older): convert it to "
                          "spec 3 (%s), e.g. with Butane" % (version, m.group(1),
                                                            ", ".join(STABLE)))
    if m and m.group(4):
        raise ConfigError("$.ignition.version: %s is an experimental spec, which only the "
                          "Ignition release that defined it reads; use a stable one: %s"
                          % (version, ", ".join(STABLE)))
    raise ConfigError("$.ignition.version: %r is not a spec version bootcfg knows (%s)"
                      % (version, ", ".join(STABLE)))


class _Validator:
    def __init__(self, minor):
        self.minor = minor
        self.errors, self.warnings, self.sources = [], [], []

    def node(self, value, spec, path):
        """Check `value` against `spec`; False when its type is wrong."""
        kind = spec if isinstance(spec, str) else spec[0]
        if value is None:
            return True               # null: absent (Go leaves the zero value)
        if not _is(value, kind):
            self.errors.append((path, "must be %s, not %s" % (_article(kind), _kind(value))))
            return False
        if kind == "list":
            for i, item in enumerate(value):
                self.node(item, spec[1], "%s.%d" % (path, i))
        elif kind == "object":
            fields = spec[1]
            for key, item in value.items():
                field = fields.get(key)
                if field is None or field[1] > self.minor:
                    self.warnings.append(("%s.%s" % (path, key), "unused key %s" % key))
                    continue
                if self.node(item, field[0], "%s.%s" % (path, key)) and \
                        field[2] and item is not None:
                    self.check(field[2], item, "%s.%s" % (path, key))
            for key, field in fields.items():
                empty_is_missing = REQUIRED.get(field[2])
                if empty_is_missing is not None and field[1] <= self.minor and (
                        value.get(key) is None or (empty_is_missing and value[key] == "")):
                    self.errors.append(("%s.%s" % (path, key), "%s is required" % key))
            if "source" in fields and "httpHeaders" in value:
                self.headers(value, path)
        return True

    def check(self, name, value, path):
        """The named check of a value whose type is right."""
        problem = None
        if name in ("url", "source required"):
            problem = self.url(value)
            if problem is None and path.startswith("$.ignition.config."):
                self.sources.append((path, value))
        elif name == "hash":
            problem = self.hash(value)
        elif name == "compression":
            problem = None if value in ("", "gzip") else "invalid compression method"
        elif name in ("abs path", "node path", "device"):
            problem = _path_problem(value) if value else None
        elif name == "partition label":
            problem = "partition label will be truncated to text before the colon" \
                if ":" in value else None
        elif name == "format":
            allowed = FORMATS | ({"none"} if self.minor >= 3 else set())
            problem = None if value in allowed else "invalid filesystem format"
        elif name == "unit name" and value:
            problem = None if value.rpartition(".")[2] in UNIT_TYPES and "." in value \
                else "invalid systemd unit extension"
        elif name == "dropin name" and value:
            problem = None if value.endswith(".conf") else "invalid systemd drop-in extension"
        elif name == "mode":
            if not 0 <= value <= 0o7777:
                problem = "illegal file mode"
            elif value & 0o7000 and self.minor < 4:
                self.warnings.append((path, "setuid/setgid/sticky bits are not supported "
                                            "in spec versions older than 3.4.0"))
        if problem:
            self.errors.append((path, problem))

    def url(self, url):
        if url == "":
            return None
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url) or \
                re.search(r"%(?![0-9A-Fa-f]{2})", url):
            return "unable to parse url"
        m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):(.*)$", url, re.S)
        if not m:
            return "invalid url scheme"
        scheme, rest = m.group(1).lower(), m.group(2)
        if scheme not in SCHEMES[self.minor]:
            return "invalid url scheme"
        if scheme == "data":
            return _data_url_problem(rest)
        if rest.startswith("//"):
            authority = rest[2:].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
            host = authority.rpartition("@")[2]
            if " " in authority:
                return "unable to parse url"
            if host.startswith("["):
                if "]" not in host:
                    return "unable to parse url"
                port = host.partition("]")[2][1:]
            else:
                port = host.partition(":")[2] if ":" in host else ""
            if port and not port.isdigit():
                return "unable to parse url"
        return None

    def hash(self, value):
        kind, dash, digest = value.partition("-")
        if not dash:
            return "malformed hash specifier"
        allowed = {"sha512"} | ({"sha256"} if self.minor >= 1 else set())
        if kind not in allowed:
            return "unrecognized hash function"
        if len(digest) != HASHES[kind] or not re.match(r"^[0-9a-fA-F]*$", digest):
            return "incorrect size for hash sum"
        return None

    def headers(self, resource, path):
        source = resource.get("source")
        if isinstance(source, str) and source and \
                source.split(":", 1)[0].lower() not in ("http", "https") and \
                resource.get("httpHeaders"):
            self.errors.append((path + ".httpHeaders",
                                "cannot use HTTP headers with this source scheme"))

    def cross_checks(self, obj):
        storage = obj.get("storage") if isinstance(obj.get("storage"), dict) else {}
        seen = {}
        for section in ("files", "directories", "links"):
            for i, entry in enumerate(_entries(storage, section)):
                p = entry.get("path")
                if isinstance(p, str):
                    if p in seen:
                        self.errors.append(("$.storage.%s.%d" % (section, i),
                                            "duplicate entry defined"))
                    seen[p] = True
        for i, fs in enumerate(_entries(storage, "filesystems")):
            if not fs.get("format") and any(fs.get(k) for k in (
                    "path", "label", "uuid", "wipeFilesystem", "options", "mountOptions")):
                self.errors.append(("$.storage.filesystems.%d.format" % i,
                                    "format cannot be empty when path, label, uuid, "
                                    "wipeFilesystem, options, or mountOptions is specified"))
        links = [e.get("path") for e in _entries(storage, "links")
                 if isinstance(e.get("path"), str) and e.get("path") not in ("", "/")]
        for section, what in (("files", "file"), ("directories", "directory"),
                              ("links", "link")):
            for i, entry in enumerate(_entries(storage, section)):
                p = entry.get("path")
                if isinstance(p, str) and any(p.startswith(link.rstrip("/") + "/")
                                              for link in links):
                    self.errors.append(("$.storage.%s.%d" % (section, i),
                                        "%s path includes link in config" % what))
        for i, f in enumerate(_entries(storage, "files")):
            contents = f.get("contents")
            source = contents.get("source") if isinstance(contents, dict) else None
            if f.get("overwrite") is True and source is None:
                self.errors.append(("$.storage.files.%d.overwrite" % i,
                                    "overwrite must be false if source is unspecified"))
        for path, key in UNIQUE.items():
            parent = obj
            for part in path.split(".")[1:-1]:
                parent = parent.get(part) if isinstance(parent, dict) else None
            taken = set()
            for i, entry in enumerate(_entries(parent, path.rsplit(".", 1)[1])):
                value = entry.get(key)
                if isinstance(value, str) and value:
                    if value in taken:
                        self.errors.append(("%s.%d" % (path, i), "duplicate entry defined"))
                    taken.add(value)
        for d, disk in enumerate(_entries(storage, "disks")):
            numbers = set()
            for n, part in enumerate(_entries(disk, "partitions")):
                number = part.get("number")
                if isinstance(number, int) and number:
                    if number in numbers:
                        self.errors.append(("$.storage.disks.%d.partitions.%d" % (d, n),
                                            "partition numbers collide"))
                    numbers.add(number)
        units = obj.get("systemd") if isinstance(obj.get("systemd"), dict) else {}
        for u, unit in enumerate(_entries(units, "units")):
            names = set()
            for d, dropin in enumerate(_entries(unit, "dropins")):
                name = dropin.get("name")
                if isinstance(name, str):
                    if name in names:
                        self.errors.append(("$.systemd.units.%d.dropins.%d" % (u, d),
                                            "duplicate entry defined"))
                    names.add(name)


def _entries(parent, key):
    """The object entries of list `key` under `parent`, skipping anything else."""
    value = parent.get(key) if isinstance(parent, dict) else None
    return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []


def _path_problem(path):
    if not path.startswith("/"):
        return "path not absolute"
    if posixpath.normpath(path) != path and path != "/":
        return "path is not fully simplified"
    return None


def _data_url_problem(rest):
    """RFC 2397: data:[<mediatype>][;base64],<data>."""
    head, comma, payload = rest.partition(",")
    if not comma:
        return "missing comma before data"
    params = head.split(";")
    if params[0] and "/" not in params[0]:
        return "missing media type slash"
    if params[-1] == "base64" and len(params) > 1:
        try:
            base64.b64decode(payload.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            return "illegal base64 data"
    return None


# ---------------------------------------------------------------- JSON details

class _Duplicate(ValueError):
    def __init__(self, key):
        super().__init__(key)
        self.key = key


def _pairs(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise _Duplicate(key)
        obj[key] = value
    return obj


def _no_constant(name):
    raise ConfigError("%s is not a number JSON allows" % name)


def _is(value, kind):
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list)
    return isinstance(value, dict)


def _article(kind):
    return {"string": "a string", "boolean": "true or false", "integer": "a whole number",
            "list": "a list", "object": "an object"}[kind]


def _kind(value):
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}[type(value)]
