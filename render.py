"""Boot configs: what one is, and the bytes each kind of client gets for it.

Pure functions only: no files, no sockets, no clocks. `parse_boot_config` turns a
file's bytes into a `BootConfig` or raises `ConfigError`; it refuses anything the
renderers could not write safely, so `render_ipxe` and `render_pixiecore` never fail
and never need to re-check. Nothing taken from a request is passed to them.
"""

import json
import posixpath
from typing import NamedTuple, Tuple

BOOT_KEYS = ("kernel", "initrd", "cmdline")

# Tokens iPXE's script parser treats as syntax, not as arguments.
IPXE_OPERATORS = ("||", "&&", ";")


class ConfigError(ValueError):
    """A boot config that cannot be used. The message names the key and the reason;
    `line` and `col` are set (1-based) when the position in the file is known."""

    def __init__(self, message, line=None, col=None):
        super().__init__(message)
        self.line = line
        self.col = col


class BootConfig(NamedTuple):
    kernel: str
    initrd: Tuple[str, ...]
    args: Tuple[str, ...]


def parse_boot_config(data):
    """Parse and validate one boot config file (bytes). Raises ConfigError."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError("not UTF-8 (byte %d)" % e.start) from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicate_keys,
                         parse_constant=_no_constants)
    except json.JSONDecodeError as e:
        raise ConfigError("invalid JSON: %s" % e.msg, e.lineno, e.colno) from None
    if not isinstance(obj, dict):
        raise ConfigError("must be a JSON object with %s" % ", ".join(BOOT_KEYS))
    for key in obj:
        if key not in BOOT_KEYS:
            raise ConfigError("unknown key %r (known: %s)" % (key, ", ".join(BOOT_KEYS)))
    if "kernel" not in obj:
        raise ConfigError("kernel: missing")
    kernel = _url(obj["kernel"], "kernel")
    initrd = obj.get("initrd", [])
    if not isinstance(initrd, list):
        raise ConfigError("initrd: must be a list of URLs, not %s" % _type(initrd))
    initrds = tuple(_url(u, "initrd[%d]" % i) for i, u in enumerate(initrd))
    args = _cmdline(obj.get("cmdline", []))
    return BootConfig(kernel, initrds, args)


def render_ipxe(cfg):
    """The iPXE script for a machine: kernel, one named initrd per line, boot.

    Each initrd gets `--name` and a matching `initrd=<name>` kernel argument, which
    UEFI kernels need to find it and BIOS kernels ignore; if the config already has
    an `initrd=` argument, the operator chose and none is added."""
    names = initrd_names(cfg.initrd)
    args = list(cfg.args)
    if not any(a.startswith("initrd=") for a in args):
        args += ["initrd=" + n for n in names]
    lines = ["#!ipxe", " ".join(["kernel", cfg.kernel] + args)]
    lines += ["initrd --name %s %s" % (n, u) for n, u in zip(names, cfg.initrd)]
    lines.append("boot")
    return ("\n".join(lines) + "\n").encode("utf-8")


def render_pixiecore(cfg):
    """Pixiecore API-mode JSON (current spec: cmdline is one string).

    Pixiecore names initrds itself and adds its own `initrd=` arguments, so ours are
    left out; `{{` would start a Go template action, so it is written as a template
    that prints `{{`."""
    args = [a for a in cfg.args if not a.startswith("initrd=")]
    cmdline = " ".join(args).replace("{{", '{{"{{"}}')
    body = {"kernel": cfg.kernel, "initrd": list(cfg.initrd), "cmdline": cmdline}
    return (json.dumps(body, indent=2) + "\n").encode("utf-8")


# iPXE fills these in itself. `uristring` percent-encodes, so a hostname or serial
# with spaces or `&` cannot split the command or the query. The path is relative,
# so the script works behind a reverse proxy under any prefix.
CHAINLOAD_SCRIPT = b"""#!ipxe
chain ipxe?uuid=${uuid}&mac=${mac:hexhyp}&domain=${domain:uristring}&hostname=${hostname:uristring}&serial=${serial:uristring}&arch=${buildarch:uristring}&platform=${platform:uristring} || goto bootcfg_failed
:bootcfg_failed
echo bootcfg: no boot script for uuid ${uuid} mac ${mac} - the bootcfg server log says why
exit 1
"""


def render_chainload():
    """The fixed script DHCP hands to iPXE: it asks /ipxe for this machine's script."""
    return CHAINLOAD_SCRIPT


def initrd_names(urls):
    """A unique iPXE image name per initrd URL: the URL's file name, suffixed -2,
    -3, ... when two URLs end in the same name."""
    names, seen = [], set()
    for url in urls:
        path = url.split("?", 1)[0].split("#", 1)[0]
        base = posixpath.basename(path) or "initrd"
        name, n = base, 1
        while name in seen:
            n += 1
            name = "%s-%d" % (base, n)
        seen.add(name)
        names.append(name)
    return names


def check_token(token, where):
    """Refuse a word that would break or hijack an iPXE script line. Returns it."""
    if not token:
        raise ConfigError("%s: empty" % where)
    for ch in token:
        if ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise ConfigError("%s: %r contains whitespace or a control character "
                              "(%r); iPXE would split or cut the line there"
                              % (where, token, ch))
    if token in IPXE_OPERATORS:
        raise ConfigError("%s: %r is an iPXE operator and would end the command"
                          % (where, token))
    if token.startswith("#"):
        raise ConfigError("%s: %r starts with '#', which iPXE reads as a comment"
                          % (where, token))
    if token.endswith("\\"):
        raise ConfigError("%s: %r ends with '\\', which iPXE reads as a line join"
                          % (where, token))
    return token


def _url(value, where):
    if not isinstance(value, str):
        raise ConfigError("%s: must be a string, not %s" % (where, _type(value)))
    check_token(value, where)
    if value.startswith("-"):
        raise ConfigError("%s: %r starts with '-', which iPXE reads as an option"
                          % (where, value))
    return value


def _cmdline(value):
    """cmdline as an object (seed format), one string, or a list of strings."""
    if isinstance(value, str):
        return tuple(check_token(t, "cmdline") for t in value.split(" ") if t)
    if isinstance(value, list):
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError("cmdline[%d]: must be a string, not %s" % (i, _type(item)))
            out.append(check_token(item, "cmdline[%d]" % i))
        return tuple(out)
    if isinstance(value, dict):
        out = []
        for key, v in value.items():
            where = "cmdline.%s" % key
            if v is None or v is False:
                continue
            if v is True or v == "":
                arg = key
            elif isinstance(v, str):
                arg = "%s=%s" % (key, v)
            elif isinstance(v, (int, float)):
                arg = "%s=%s" % (key, json.dumps(v))
            else:
                raise ConfigError("%s: must be a string, number, true, false or null, "
                                  "not %s" % (where, _type(v)))
            out.append(check_token(arg, where))
        return tuple(out)
    raise ConfigError("cmdline: must be an object, a string or a list of strings, not %s"
                      % _type(value))


def _no_duplicate_keys(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ConfigError("duplicate key %r (a JSON object keeps only one; "
                              "write cmdline as a list to repeat an argument)" % key)
        obj[key] = value
    return obj


def _no_constants(name):
    raise ConfigError("%s is not a number JSON allows" % name)


def _type(value):
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}[type(value)]
