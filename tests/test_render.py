"""render.py: boot config parsing/validation and the iPXE / Pixiecore renderers."""

import json

import pytest

from render import (BootConfig, ConfigError, initrd_names, parse_boot_config,
                    render_chainload, render_ipxe, render_pixiecore)

pytestmark = pytest.mark.unit


def cfg(**kw):
    base = {"kernel": "/images/vmlinuz", "initrd": ["/images/initrd.gz"]}
    base.update(kw)
    return json.dumps(base).encode()


@pytest.mark.parametrize("cmdline, args", [
    # seed object form: order kept, "" and true -> bare key
    ({"a": "1", "quiet": "", "ro": True, "b": "x=y"}, ("a=1", "quiet", "ro", "b=x=y")),
    # false / null -> left out; numbers -> k=n
    ({"off": False, "gone": None, "n": 3, "f": 1.5}, ("n=3", "f=1.5")),
    # one string, split on spaces (runs of spaces are one separator)
    ("console=tty0  console=ttyS0 quiet", ("console=tty0", "console=ttyS0", "quiet")),
    # a list repeats keys an object cannot
    (["console=tty0", "console=ttyS0"], ("console=tty0", "console=ttyS0")),
    # iPXE variables are how configs pass machine facts; they are kept
    ({"url": "http://h/cloud?uuid=${uuid}&mac=${net0/mac:hexhyp}"},
     ("url=http://h/cloud?uuid=${uuid}&mac=${net0/mac:hexhyp}",)),
    ([], ()),
    ("", ()),
])
def test_cmdline_forms(cmdline, args):
    assert parse_boot_config(cfg(cmdline=cmdline)).args == args


def test_minimal_config_and_defaults():
    c = parse_boot_config(b'{"kernel": "http://x/k"}')
    assert c == BootConfig("http://x/k", (), ())


def test_utf8_bom_accepted():
    assert parse_boot_config(b"\xef\xbb\xbf" + cfg()).kernel == "/images/vmlinuz"


@pytest.mark.parametrize("data, message", [
    (b"{", "invalid JSON"),
    (b'{"kernel": "/k",', "invalid JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[]", "must be a JSON object"),
    (b'{"initrd": []}', "kernel: missing"),
    (b'{"kernel": "/k", "args": []}', "unknown key 'args'"),
    (b'{"kernel": 5}', "kernel: must be a string"),
    (b'{"kernel": ""}', "kernel: empty"),
    (b'{"kernel": "/k", "initrd": "/i"}', "initrd: must be a list"),
    (b'{"kernel": "/k", "initrd": [1]}', "initrd[0]: must be a string"),
    (b'{"kernel": "/k", "cmdline": 7}', "cmdline: must be an object"),
    (b'{"kernel": "/k", "cmdline": [1]}', "cmdline[0]: must be a string"),
    (b'{"kernel": "/k", "cmdline": {"a": []}}', "cmdline.a: must be a string"),
    (b'{"kernel": "/k", "cmdline": {"a": NaN}}', "NaN"),
    (b'{"kernel": "/k", "cmdline": {"a": "1", "a": "2"}}', "duplicate key 'a'"),
    (b'{"kernel": "-n x /k"}', "whitespace"),
    (b'{"kernel": "--name=x"}', "starts with '-'"),
])
def test_load_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as e:
        parse_boot_config(data)
    assert message in str(e.value)


def test_json_error_has_position():
    with pytest.raises(ConfigError) as e:
        parse_boot_config(b'{\n  "kernel": "/k",\n  oops\n}')
    assert (e.value.line, e.value.col) == (3, 3)


# Anything that would end, split, comment out or join an iPXE script line.
HOSTILE = [
    "a\nchain http://evil/x", "a\rb", "a\tb", "a b", "a\x00b", "a\x1bb", "a\x7fb",
    "||", "&&", ";", "#x", "#", "tail\\", "a\u2028b",
]


@pytest.mark.parametrize("token", HOSTILE)
@pytest.mark.parametrize("place", ["object", "list", "string", "kernel", "initrd"])
def test_script_breaking_tokens_refused(token, place):
    if place == "object":
        data = cfg(cmdline={"k": token}) if token not in ("||", "&&", ";", "#", "#x") \
            else cfg(cmdline={token: ""})
    elif place == "list":
        data = cfg(cmdline=[token])
    elif place == "string":
        data = cfg(cmdline="quiet " + token)
    elif place == "kernel":
        data = cfg(kernel=token)
    else:
        data = cfg(initrd=["/ok", token])
    if place == "string" and token == "a b":
        # In the one-string form a space separates two arguments.
        assert parse_boot_config(data).args == ("quiet", "a", "b")
        return
    with pytest.raises(ConfigError):
        parse_boot_config(data)


def test_tokens_containing_operators_are_fine():
    # Only a whole token is an operator or a comment; inside a word it is text.
    c = parse_boot_config(cfg(cmdline=["a||b", "x;y", "k=#v", "p=a&&b"]))
    assert c.args == ("a||b", "x;y", "k=#v", "p=a&&b")


def test_ipxe_script_shape():
    c = BootConfig("/images/vmlinuz", ("/images/a/initrd.gz", "/images/b/initrd.gz",
                                       "http://h/x/extra.img?v=2"), ("quiet", "k=v"))
    assert render_ipxe(c).decode() == (
        "#!ipxe\n"
        "kernel /images/vmlinuz quiet k=v initrd=initrd.gz initrd=initrd.gz-2 "
        "initrd=extra.img\n"
        "initrd --name initrd.gz /images/a/initrd.gz\n"
        "initrd --name initrd.gz-2 /images/b/initrd.gz\n"
        "initrd --name extra.img http://h/x/extra.img?v=2\n"
        "boot\n")


def test_ipxe_keeps_operator_initrd_argument():
    c = BootConfig("/k", ("/images/i.gz",), ("initrd=custom.gz",))
    script = render_ipxe(c).decode()
    assert "kernel /k initrd=custom.gz\n" in script
    assert script.count("initrd=") == 1


def test_ipxe_without_initrd():
    assert render_ipxe(BootConfig("/k", (), ())) == b"#!ipxe\nkernel /k\nboot\n"


@pytest.mark.parametrize("urls, names", [
    (["/a/i.gz", "/b/i.gz", "/c/i.gz"], ["i.gz", "i.gz-2", "i.gz-3"]),
    (["/dir/", "http://h/"], ["initrd", "initrd-2"]),
    (["/x#frag", "/y?q=/z"], ["x", "y"]),
])
def test_initrd_names(urls, names):
    assert initrd_names(urls) == names


def test_pixiecore_json():
    c = BootConfig("/images/k", ("/images/i.gz",),
                   ("a=1", "initrd=i.gz", "t={{x}}", "u=${uuid}"))
    body = json.loads(render_pixiecore(c))
    assert body == {"kernel": "/images/k", "initrd": ["/images/i.gz"],
                    "cmdline": 'a=1 t={{"{{"}}x}} u=${uuid}'}


def test_chainload_passes_machine_facts():
    script = render_chainload().decode()
    assert script.startswith("#!ipxe\n")
    chain = [line for line in script.splitlines() if line.startswith("chain ")][0]
    for fact in ("uuid=${uuid}", "mac=${mac:hexhyp}", "hostname=${hostname:uristring}",
                 "serial=${serial:uristring}", "arch=${bootcfg_arch", "platform=${platform"):
        assert fact in chain
    assert chain.split()[1].startswith("ipxe?")
