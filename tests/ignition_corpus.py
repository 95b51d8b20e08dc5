"""Ignition configs, valid and broken, with what Ignition's own validator says.

Each case: (name, file bytes, error fragment bootcfg must name or None when it
must accept). tests/test_ignition.py runs bootcfg's parser on every case and, where
Debian's `ignition-validate` (2.14, spec 3.0.0-3.3.0) is installed, that too: every
config it rejects, bootcfg rejects. DIFFERENT names the cases where bootcfg
deliberately does not agree with it, and why.
"""

import json

SHA512 = "sha512-" + "ab" * 64
SHA256 = "sha256-" + "cd" * 32


def cfg(version="3.3.0", **sections):
    obj = {"ignition": {"version": version}}
    for key, value in sections.items():
        if key == "ignition":
            obj["ignition"].update(value)
        else:
            obj[key] = value
    return json.dumps(obj).encode()


def files(*entries, version="3.3.0"):
    return cfg(version, storage={"files": list(entries)})


def source(url, version="3.3.0", **extra):
    return files(dict({"path": "/etc/x", "contents": dict({"source": url}, **extra)}),
                 version=version)


FULL = {
    "storage": {
        "files": [{"path": "/etc/hostname", "mode": 420, "overwrite": True,
                   "contents": {"source": "data:,node1",
                                "verification": {"hash": SHA512}},
                   "user": {"id": 0}, "group": {"name": "root"}}],
        "directories": [{"path": "/var/lib/app", "mode": 493}],
        "links": [{"path": "/etc/localtime", "target": "/usr/share/zoneinfo/UTC"}],
        "disks": [{"device": "/dev/vda", "wipeTable": False,
                   "partitions": [{"number": 1, "label": "data", "sizeMiB": 0}]}],
        "filesystems": [{"device": "/dev/disk/by-partlabel/data", "format": "ext4",
                         "path": "/var/data", "label": "DATA"}],
    },
    "systemd": {"units": [{"name": "app.service", "enabled": True,
                           "contents": "[Service]\nExecStart=/bin/true\n",
                           "dropins": [{"name": "10-env.conf",
                                        "contents": "[Service]\nEnvironment=A=1\n"}]}]},
    "passwd": {"users": [{"name": "core", "sshAuthorizedKeys": ["ssh-ed25519 AAAA x"]}],
               "groups": [{"name": "ops", "gid": 1500}]},
}

CASES = [
    # ---- valid, one per stable version, and the features each added
    ("v3.0.0 full", cfg("3.0.0", **FULL), None),
    ("v3.1.0 sha256 + proxy + headers", cfg(
        "3.1.0", ignition={"proxy": {"httpProxy": "http://proxy:3128", "noProxy": ["10.0.0.0/8"]}},
        storage={"files": [{"path": "/etc/a", "contents": {
            "source": "https://example.com/a", "verification": {"hash": SHA256},
            "httpHeaders": [{"name": "Authorization", "value": "Bearer x"}]}}]}), None),
    ("v3.2.0 gs + luks + resize", cfg(
        "3.2.0", storage={"files": [{"path": "/etc/a", "contents": {"source": "gs://b/o"}}],
                          "luks": [{"name": "secret", "device": "/dev/vdb",
                                    "clevis": {"tpm2": True}}],
                          "disks": [{"device": "/dev/vda", "partitions": [
                              {"number": 4, "resize": True, "sizeMiB": 8192}]}]}), None),
    ("v3.3.0 kernelArguments + format none", cfg(
        "3.3.0", kernelArguments={"shouldExist": ["console=ttyS0"]},
        storage={"filesystems": [{"device": "/dev/vdb1", "format": "none",
                                  "wipeFilesystem": True}]}), None),
    ("v3.3.0 merge from bootcfg", cfg(
        "3.3.0", ignition={"config": {"merge": [
            {"source": "http://10.0.0.1:8080/ignition/shared/base.ign"}]}}), None),
    ("v3.3.0 full", cfg("3.3.0", **FULL), None),
    ("v3.3.0 tftp and s3 and empty sources", files(
        {"path": "/a", "contents": {"source": "tftp://10.0.0.1/a"}},
        {"path": "/b", "contents": {"source": "s3://bucket/key"}},
        {"path": "/c", "contents": {"source": ""}}), None),
    ("v3.3.0 nulls are absent", files({"path": "/a", "mode": None, "contents": None}), None),
    ("v3.3.0 gzip data url", source("data:;base64,H4sIAAAAAAAA/8tIzcnJBwCGphA2BQAAAA==",
                                    compression="gzip"), None),
    ("v3.4.0 arn + luks discard", cfg(
        "3.4.0", storage={"files": [{"path": "/etc/a", "mode": 2541, "contents": {
            "source": "arn:aws:s3:us-west-1:123456789012:accesspoint/ap/object/k"}}],
            "luks": [{"name": "s", "device": "/dev/vdb", "discard": True}]}), None),
    ("v3.5.0 full + cex", cfg(
        "3.5.0", storage=dict(FULL["storage"], luks=[
            {"name": "s", "device": "/dev/vdb", "cex": {"enabled": False}}]),
        systemd=FULL["systemd"]), None),
    ("unknown key is only a warning", cfg("3.3.0", frobnicate={"a": 1}), None),
    ("key newer than the version is only a warning",
     cfg("3.2.0", kernelArguments={"shouldExist": ["a"]}), None),
    # ---- versions
    ("no version", b'{"storage": {}}', "ignition.version: missing"),
    ("spec 2", cfg("2.2.0"), "convert it to spec 3"),
    ("spec 1", b'{"ignitionVersion": 1}', "spec 1 config"),
    ("experimental", cfg("3.4.0-experimental"), "experimental spec"),
    ("unknown newer", cfg("3.9.0"), "not a spec version bootcfg knows"),
    ("version not semver", cfg("3.3"), "not a spec version bootcfg knows"),
    # ---- JSON and encoding
    ("not JSON", b'{"ignition": {"version": "3.3.0"},}', "invalid JSON"),
    ("a list", b'[{"ignition": {"version": "3.3.0"}}]', "must be a JSON object"),
    ("byte order mark", b"\xef\xbb\xbf" + cfg("3.3.0"), "byte order mark"),
    ("duplicate key", b'{"ignition": {"version": "3.3.0"}, "storage": {}, "storage": {}}',
     "duplicate key 'storage'"),
    ("not UTF-8", b'{"ignition": {"version": "3.3.0"}, "x": "\xff"}', "not UTF-8"),
    # ---- types
    ("mode as a string", files({"path": "/a", "mode": "0644"}), "mode: must be a whole number"),
    ("mode as a fraction", files({"path": "/a", "mode": 420.5}), "mode: must be a whole number"),
    ("files not a list", cfg("3.3.0", storage={"files": {"path": "/a"}}),
     "files: must be a list"),
    ("enabled as a string", cfg("3.3.0", systemd={"units": [{"name": "a.service",
                                                             "enabled": "yes"}]}),
     "enabled: must be true or false"),
    ("user id as a string", files({"path": "/a", "user": {"id": "0"}}),
     "id: must be a whole number"),
    ("storage a string", cfg("3.3.0", storage="all"), "storage: must be an object"),
    # ---- paths
    ("relative file path", files({"path": "etc/x"}), "path not absolute"),
    ("relative directory path", cfg("3.3.0", storage={"directories": [{"path": "d"}]}),
     "path not absolute"),
    ("unsimplified path", files({"path": "/etc/../x"}), "path is not fully simplified"),
    ("trailing slash", files({"path": "/etc/x/"}), "path is not fully simplified"),
    ("relative device", cfg("3.3.0", storage={"filesystems": [{"device": "vdb",
                                                               "format": "ext4"}]}),
     "path not absolute"),
    ("file without path", files({"mode": 420}), "path is required"),
    ("duplicate file path", files({"path": "/a"}, {"path": "/a"}), "duplicate entry"),
    ("file and link at one path", cfg("3.3.0", storage={
        "files": [{"path": "/a"}], "links": [{"path": "/a", "target": "/b"}]}),
     "duplicate entry"),
    ("link without target", cfg("3.3.0", storage={"links": [{"path": "/a"}]}),
     "target is required"),
    ("overwrite without source", files({"path": "/a", "overwrite": True}),
     "overwrite must be false"),
    # ---- units
    ("unit without suffix", cfg("3.3.0", systemd={"units": [{"name": "app"}]}),
     "invalid systemd unit extension"),
    ("unit with a bad suffix", cfg("3.3.0", systemd={"units": [{"name": "app.servic"}]}),
     "invalid systemd unit extension"),
    ("dropin without .conf", cfg("3.3.0", systemd={"units": [
        {"name": "a.service", "dropins": [{"name": "10-x"}]}]}),
     "invalid systemd drop-in extension"),
    ("duplicate unit", cfg("3.3.0", systemd={"units": [{"name": "a.service"},
                                                       {"name": "a.service"}]}),
     "duplicate entry"),
    # ---- sources
    ("ftp scheme", source("ftp://example.com/x"), "invalid url scheme"),
    ("gs before 3.2", source("gs://b/o", version="3.1.0"), "invalid url scheme"),
    ("arn before 3.4", source("arn:aws:s3:us-west-1:1:accesspoint/a/object/k"),
     "invalid url scheme"),
    ("relative merge source", cfg("3.3.0", ignition={"config": {"merge": [
        {"source": "/ignition/shared/base.ign"}]}}), "invalid url scheme"),
    ("merge without source", cfg("3.3.0", ignition={"config": {"merge": [{}]}}),
     "source is required"),
    ("bad percent escape", source("http://example.com/a%zz"), "unable to parse url"),
    ("bad port", source("http://example.com:http/x"), "unable to parse url"),
    ("space in host", source("https://user:pa ss@example.com/"), "unable to parse url"),
    ("data url without comma", source("data:"), "missing comma"),
    ("data url bad base64", source("data:;base64,aGVsbG8"), "illegal base64"),
    ("headers on tftp", source("tftp://10.0.0.1/x",
                               httpHeaders=[{"name": "A", "value": "b"}]),
     "cannot use HTTP headers"),
    # ---- hashes and compression
    ("hash without type", source("data:,a", verification={"hash": "ab" * 64}),
     "malformed hash specifier"),
    ("md5 hash", source("data:,a", verification={"hash": "md5-" + "ab" * 16}),
     "unrecognized hash function"),
    ("sha256 before 3.1", source("data:,a", version="3.0.0",
                                 verification={"hash": SHA256}),
     "unrecognized hash function"),
    ("short sha512", source("data:,a", verification={"hash": "sha512-abcd"}),
     "incorrect size for hash sum"),
    ("bzip2 compression", source("data:,a", compression="bzip2"),
     "invalid compression method"),
    # ---- the rest of storage
    ("zfs filesystem", cfg("3.3.0", storage={"filesystems": [{"device": "/dev/vdb",
                                                              "format": "zfs"}]}),
     "invalid filesystem format"),
    ("format none before 3.3", cfg("3.2.0", storage={"filesystems": [
        {"device": "/dev/vdb", "format": "none"}]}), "invalid filesystem format"),
    ("mode out of range", files({"path": "/a", "mode": 99999}), "illegal file mode"),
    ("negative mode", files({"path": "/a", "mode": -1}), "illegal file mode"),
    ("colliding partitions", cfg("3.3.0", storage={"disks": [
        {"device": "/dev/vda", "partitions": [{"number": 1}, {"number": 1}]}]}),
     "partition numbers collide"),
    ("duplicate user", cfg("3.3.0", passwd={"users": [{"name": "core"}, {"name": "core"}]}),
     "duplicate entry"),
]

# Where bootcfg and ignition-validate 2.14 deliberately disagree:
# name -> (bootcfg accepts, ignition-validate accepts, why).
DIFFERENT = {
    "duplicate key": (False, True, "Go's JSON parser keeps the last of two equal keys "
                                   "silently; bootcfg refuses the ambiguity"),
    "experimental": (False, True, "only the Ignition release that defined an "
                                  "experimental spec reads it; Flatcar and Fedora CoreOS "
                                  "ship newer ones"),
    "v3.4.0 arn + luks discard": (True, False, "3.4.0 is stable in current Ignition; "
                                               "Debian's 2.14 predates it"),
    "v3.5.0 full + cex": (True, False, "3.5.0 is stable in current Ignition; Debian's "
                                       "2.14 predates it"),
    "not UTF-8": (False, True, "Go replaces invalid UTF-8 with U+FFFD and goes on; the "
                               "file on disk is then not what the machine gets"),
}
