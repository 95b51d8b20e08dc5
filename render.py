"""Boot configs: what one is, and the bytes each kind of client gets for it.

Pure functions only: no files, no sockets, no clocks. `parse_boot_config` turns a
file's bytes into a `BootConfig` or raises `ConfigError`; it refuses anything the
renderers could not write safely, so `render_ipxe` and `render_pixiecore` never fail
and never need to re-check. Nothing taken from a request is passed to them.

GRUB is the exception: it cannot fill iPXE's ${settings} itself, so
`render_grub` writes the machine's values (from the request) into the script,
quoting every word for GRUB; it raises GrubError, naming the key, when a setting
cannot be filled or a URL cannot be fetched by that GRUB.
"""

import json
import posixpath
import re
from typing import NamedTuple, Tuple
from urllib.parse import quote

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
    obj = parse_json(data)
    if not isinstance(obj, dict):
        raise ConfigError("must be a JSON object with %s" % ", ".join(BOOT_KEYS))
    return boot_config(obj, "", "cmdline")


def parse_json(data):
    """A JSON document from a config file's bytes: UTF-8 (a byte order mark is
    allowed), no duplicate keys, no NaN/Infinity. Raises ConfigError."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError("not UTF-8 (byte %d)" % e.start) from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys,
                          parse_constant=_no_constants)
    except json.JSONDecodeError as e:
        raise ConfigError("invalid JSON: %s" % e.msg, e.lineno, e.colno) from None


def boot_config(obj, where, args_key):
    """A BootConfig from a JSON object: {kernel, initrd, <args_key>}, where
    args_key is "cmdline" (seed files) or "args" (matchbox profiles' boot).
    `where` prefixes key names in errors ("boot." in a profile)."""
    keys = ("kernel", "initrd", args_key)
    for key in obj:
        if key not in keys:
            raise ConfigError("%sunknown key %r (known: %s)" % (where, key, ", ".join(keys)))
    if "kernel" not in obj:
        raise ConfigError("%skernel: missing" % where)
    kernel = _url(obj["kernel"], where + "kernel")
    initrd = obj.get("initrd", [])
    if not isinstance(initrd, list):
        raise ConfigError("%sinitrd: must be a list of URLs, not %s" % (where, _type(initrd)))
    initrds = tuple(_url(u, "%sinitrd[%d]" % (where, i)) for i, u in enumerate(initrd))
    args = _cmdline(obj.get(args_key, []), where + args_key)
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
# so the script works behind a reverse proxy under any prefix. `arch` is the
# machine's CPU, not iPXE's build: BIOS ROMs are 32-bit builds (${buildarch} i386)
# on 64-bit machines, and `cpuid --ext 29` (long mode) tells; iPXE builds without
# the cpuid command (arm64) fail it and send their ${buildarch}.
CHAINLOAD_SCRIPT = b"""#!ipxe
cpuid --ext 29 && set bootcfg_arch x86_64 || set bootcfg_arch ${buildarch}
chain ipxe?uuid=${uuid}&mac=${mac:hexhyp}&domain=${domain:uristring}&hostname=${hostname:uristring}&serial=${serial:uristring}&arch=${bootcfg_arch:uristring}&platform=${platform:uristring} || goto bootcfg_failed
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


def _cmdline(value, name="cmdline"):
    """cmdline as an object (seed format), one string, or a list of strings."""
    if isinstance(value, str):
        return tuple(check_token(t, name) for t in value.split(" ") if t)
    if isinstance(value, list):
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError("%s[%d]: must be a string, not %s" % (name, i, _type(item)))
            out.append(check_token(item, "%s[%d]" % (name, i)))
        return tuple(out)
    if isinstance(value, dict):
        out = []
        for key, v in value.items():
            where = "%s.%s" % (name, key)
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
    raise ConfigError("%s: must be an object, a string or a list of strings, not %s"
                      % (name, _type(value)))


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


# ---------------------------------------------------------------- GRUB
#
# GRUB cannot fill in iPXE's ${settings}, so the GRUB answer is written with the
# machine's values already in place. They come from the request (validated or
# checked below); a setting the request cannot fill makes that answer an error.

# iPXE setting -> (machine value, how it is spelled).
GRUB_SETTINGS = {
    "uuid": ("uuid", "plain"), "mac": ("mac", "colons"), "net0/mac": ("mac", "colons"),
    "hostname": ("hostname", "plain"), "serial": ("serial", "plain"),
    "domain": ("domain", "plain"), "buildarch": ("arch", "plain"),
    "platform": ("platform", "plain"),
}
_SETTING = re.compile(r"\$\{([^}:]*)(?::([^}]*))?\}")


class GrubError(ValueError):
    """A config that cannot become a GRUB answer for this machine; the message
    names the key and the reason."""


def grub_fill(text, machine, where):
    """`text` with each ${setting} replaced by the machine's value, spelled as
    the setting asks (${mac:hexhyp} -> 52-54-..., ${x:uristring} percent-encoded).
    Raises GrubError for a setting this machine's request did not carry."""
    def one(m):
        name, spelling = m.group(1), m.group(2) or ""
        known = GRUB_SETTINGS.get(name)
        if known is None:
            raise GrubError("%s: ${%s} is an iPXE setting GRUB answers cannot fill (they "
                            "fill %s)" % (where, name, ", ".join(sorted(GRUB_SETTINGS))))
        value = machine.get(known[0]) or ""
        if not value:
            raise GrubError("%s: ${%s} has no value for this machine (the request "
                            "carried no %s)" % (where, m.group(0)[2:-1], known[0]))
        if spelling == "hexhyp" and known[1] == "colons":
            value = value.replace(":", "-")
        elif spelling == "hexraw" and known[1] == "colons":
            value = value.replace(":", "")
        elif spelling == "uristring":
            value = quote(value, safe="")
        elif spelling not in ("", "string", "hex", "uuid"):
            raise GrubError("%s: ${%s:%s}: GRUB answers do not know the spelling %r"
                            % (where, name, spelling, spelling))
        for ch in value:
            if ch.isspace() or ord(ch) < 0x20 or ch in "\x7f\"":
                raise GrubError("%s: the machine's %s %r would split the kernel command "
                                "line" % (where, known[0], value))
        return value
    filled = _SETTING.sub(one, text)
    if "${" in _SETTING.sub("", text):
        raise GrubError("%s: %r has a ${ that never closes; GRUB answers cannot fill it"
                        % (where, text))
    return filled


def grub_arg(arg):
    """A kernel argument GRUB can pass on unchanged, or GrubError: GRUB's linux
    command writes ', " and \\ into the kernel command line with a backslash
    before them (seen here: 'it\\'s' arrived as it\\\\'s)."""
    for ch in "'\"\\":
        if ch in arg:
            raise GrubError("cmdline: %r contains %s, which GRUB passes to the kernel as "
                            "\\%s: the machine would boot with another argument than "
                            "the config says" % (arg, ch, ch))
    return arg


def grub_quote(word):
    """One GRUB word, taken literally: single quotes, each ' written as '\\''."""
    return "'" + word.replace("'", "'\\''") + "'"


def grub_path(url, where, device, http_ok):
    """The GRUB file name for a config URL: a bare /path on `device` (GRUB's own
    words, e.g. (tftp,$net_default_server)), an http:// URL as (http,host:port)/path
    when this GRUB speaks HTTP. Raises GrubError otherwise."""
    if url.startswith("/"):
        return device + grub_quote(url)
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() == "http" and http_ok:
        host, _, path = rest.partition("/")
        if not host or any(c in host for c in "'\"$;(){}\\ ,"):
            raise GrubError("%s: %r has no host GRUB can use" % (where, url))
        return "(http,%s)" % host + grub_quote("/" + path)
    if sep and scheme.lower() == "http":
        raise GrubError("%s: %r is an http:// URL, and a GRUB that boots over TFTP has "
                        "no HTTP (Debian's signed GRUB); serve the file from the images "
                        "directory as /images/... instead" % (where, url))
    raise GrubError("%s: %r: GRUB fetches bare /paths from the server it came from, or "
                    "http:// URLs; not this" % (where, url))


def render_grub(cfg, machine, device, http_ok):
    """The machine's GRUB script: linux, one initrd line with every initrd, boot.

    `machine` maps uuid, mac, hostname, serial, domain, arch, platform to this
    machine's values; `device` is the GRUB device bare /paths live on. The
    config's own initrd= arguments are dropped (GRUB loads initrds itself). Every
    argument is single-quoted, so nothing in it is GRUB syntax. Raises GrubError
    when a setting cannot be filled or a URL cannot be fetched by this GRUB."""
    kernel = grub_path(grub_fill(cfg.kernel, machine, "kernel"), "kernel", device, http_ok)
    initrds = [grub_path(grub_fill(u, machine, "initrd[%d]" % i), "initrd[%d]" % i, device,
                         http_ok) for i, u in enumerate(cfg.initrd)]
    args = [grub_quote(grub_arg(grub_fill(a, machine, "cmdline"))) for a in cfg.args
            if not a.startswith("initrd=")]
    lines = ["# bootcfg: the GRUB answer for uuid=%s mac=%s" % (
        _comment(machine.get("uuid")), _comment(machine.get("mac"))),
        " ".join(["linux", kernel] + args)]
    if initrds:
        lines.append(" ".join(["initrd"] + initrds))
    lines.append("boot")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _comment(value):
    return "".join(c for c in (value or "-") if c.isalnum() or c in ":-") or "-"


# The fixed first script GRUB reads (grub/grub.cfg): it finds the machine's SMBIOS
# UUID and serial, its MAC and the DHCP hostname (of the first network interface:
# Debian's signed GRUB has no `eval` to name another), its CPU ($grub_cpu: i386,
# x86_64, arm64) and firmware ($grub_platform, with GRUB's `pc` sent as iPXE's
# `pcbios`), and loads the machine's answer from the same server. Hostname and
# serial are passed only when they are made of characters that need no quoting in
# a query: GRUB cannot encode them. Only commands Debian's signed network GRUB has
# built in are used.
# The serial number is asked for only when the SMBIOS system table has one (the
# string index at offset 7 is not 0): asking for an absent string prints
# "error: failed to retrieve the structure field." on the console (QEMU, and real
# machines without a serial), and GRUB prints it even inside an `if`.
GRUB_FIRST_SCRIPT = """# bootcfg: finds this machine's GRUB answer
smbios --type 1 --get-uuid 8 --set bootcfg_uuid
set bootcfg_serial_index=0
smbios --type 1 --get-byte 7 --set bootcfg_serial_index
if [ "$bootcfg_serial_index" != 0 ]; then smbios --type 1 --get-string 7 --set bootcfg_serial; fi
set bootcfg_hostname="$net_efinet0_hostname"
set bootcfg_platform="$grub_platform"
if [ "$grub_platform" = pc ]; then set bootcfg_platform=pcbios; fi
if regexp '^[-A-Za-z0-9._]+$' "$bootcfg_serial"; then true; else set bootcfg_serial=; fi
if regexp '^[-A-Za-z0-9.]+$' "$bootcfg_hostname"; then true; else set bootcfg_hostname=; fi
configfile "%(device)s/grub?uuid=${bootcfg_uuid}&mac=${net_default_mac}&hostname=${bootcfg_hostname}&serial=${bootcfg_serial}&arch=${grub_cpu}&platform=${bootcfg_platform}"
echo "bootcfg: no GRUB answer for uuid $bootcfg_uuid mac $net_default_mac; the bootcfg server log says why"
sleep 30
"""


def render_grub_first(device):
    """grub/grub.cfg for a GRUB that reached it through `device`."""
    return (GRUB_FIRST_SCRIPT % {"device": device}).encode("utf-8")


def grub_echo(message):
    """A GRUB script that only shows `message`: what an error answer is for GRUB,
    which runs whatever body an HTTP server sends, 404s included (seen here with
    Debian's GRUB 2.06)."""
    return ("echo %s\n" % grub_quote("bootcfg: " + message.strip())).encode("utf-8")
