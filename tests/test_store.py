"""store.py: search order, indexes, hot edits and last-good copies."""

import logging
import os
import time

import pytest

from helpers import MAC1, UUID1, boot_json, settle, write, write_atomic
from render import parse_boot_config
from _bootcfg.files import FakeClock
from store import FileStore, LoadError

pytestmark = pytest.mark.unit

UUID2 = "0f9e8d7c-6b5a-4938-8271-605f4e3d2c1b"


def make_store(root, settled=True, **limits):
    """A store on `root` with a FakeClock; the files written so far are dated back
    (settled) unless `settled` is False, so only what a test writes afterwards is
    fresh."""
    if settled:
        settle(root)
    return FileStore(str(root), {"boot": parse_boot_config, "cloud": None}, limits,
                     FakeClock())


def tag(match):
    return dict(a.split("=", 1) for a in match.value.args if "=" in a).get("tag")


# files on disk, query (uuid, mac) -> the file that decides
SEARCH_ORDER = [
    ({"uuid", "mac", "default"}, (UUID1, MAC1), "boot/uuid/" + UUID1),
    ({"mac", "default"}, (UUID1, MAC1), "boot/mac/52-54-00-89-D8-10"),
    ({"default"}, (UUID1, MAC1), "boot/default"),
    ({"uuid", "mac", "default"}, (None, MAC1), "boot/mac/52-54-00-89-D8-10"),
    ({"uuid", "mac", "default"}, (UUID2, None), "boot/default"),
    ({"uuid", "mac", "default"}, (None, None), "boot/default"),
    ({"uuid", "mac"}, (None, None), None),
    (set(), (UUID1, MAC1), None),
]


@pytest.mark.parametrize("files, query, expected", SEARCH_ORDER)
def test_search_order(tmp_path, files, query, expected):
    if "uuid" in files:
        write(str(tmp_path / "boot/uuid" / UUID1), boot_json(tag="uuid"))
    if "mac" in files:
        write(str(tmp_path / "boot/mac/52-54-00-89-D8-10"), boot_json(tag="mac"))
    if "default" in files:
        write(str(tmp_path / "boot/default"), boot_json(tag="default"))
    found = make_store(tmp_path).lookup("boot", *query)
    assert (found.match.path if found.match else None) == expected


@pytest.mark.parametrize("name", [
    "52:54:00:89:d8:10", "52-54-00-89-d8-10", "52:54:00:89:D8:10", "52-54-00-89-D8-10",
    "52540089d810", "52%3A54%3A00%3A89%3Ad8%3A10",
])
def test_mac_file_name_spellings(tmp_path, name):
    write(str(tmp_path / "cloud/mac" / name), "mine")
    write(str(tmp_path / "cloud/default"), "default")
    assert make_store(tmp_path).lookup("cloud", None, MAC1).match.value == b"mine"


@pytest.mark.parametrize("name", [UUID1, UUID1.upper(), UUID1.replace("-", "")])
def test_uuid_file_name_spellings(tmp_path, name):
    write(str(tmp_path / "cloud/uuid" / name), "mine")
    assert make_store(tmp_path).lookup("cloud", UUID1, None).match.value == b"mine"


def test_placeholder_uuid_file_never_matches(tmp_path, caplog):
    write(str(tmp_path / "cloud/uuid/00000000-0000-0000-0000-000000000000"), "zero")
    write(str(tmp_path / "cloud/default"), "default")
    s = make_store(tmp_path)
    assert s.lookup("cloud", None, None).match.value == b"default"
    assert "placeholder" in caplog.text


def test_two_spellings_canonical_wins(tmp_path, caplog):
    write(str(tmp_path / "cloud/mac/52-54-00-89-D8-10"), "hyphen")
    write(str(tmp_path / "cloud/mac/52:54:00:89:d8:10"), "canonical")
    caplog.set_level(logging.WARNING)
    s = make_store(tmp_path)
    assert s.lookup("cloud", None, MAC1).match.value == b"canonical"
    assert "52-54-00-89-D8-10: ignored: same machine as 52:54:00:89:d8:10" in caplog.text
    skipped = s.scan("cloud", "mac")[1]
    assert [n for n, _ in skipped] == ["52-54-00-89-D8-10"]


def test_bad_names_and_temporaries(tmp_path, caplog):
    for name in ("not-a-mac", ".52:54:00:89:d8:10.swp", "52:54:00:89:d8:10~"):
        write(str(tmp_path / "cloud/mac" / name), "x")
    os.makedirs(str(tmp_path / "cloud/mac/52:54:00:89:d8:11"))
    s = make_store(tmp_path)
    keys, skipped = s.scan("cloud", "mac")
    assert keys == {}
    assert [n for n, _ in skipped] == ["not-a-mac"]
    assert "not-a-mac: ignored: not a MAC address" in caplog.text


def test_lookups_do_not_list_directories(tmp_path, monkeypatch):
    for i in range(300):
        write(str(tmp_path / "boot/mac" / ("52-54-00-00-%02x-%02x" % (i // 256, i % 256))),
              boot_json(tag=str(i)))
    s = make_store(tmp_path)   # directories dated back: past the racy window
    calls = []
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p: calls.append(p) or real(p))
    s.lookup("boot", None, "52:54:00:00:00:01")
    calls.clear()
    for i in range(300):
        found = s.lookup("boot", None, "52:54:00:00:%02x:%02x" % (i // 256, i % 256))
        assert tag(found.match) == str(i)
    assert calls == []


def test_new_file_visible_without_restart(tmp_path):
    write(str(tmp_path / "boot/default"), boot_json(tag="default"))
    os.makedirs(str(tmp_path / "boot/mac"))
    s = make_store(tmp_path)
    assert s.lookup("boot", None, MAC1).match.path == "boot/default"
    write_atomic(str(tmp_path / "boot/mac" / MAC1), boot_json(tag="new"))
    assert tag(poll(s, lambda: s.lookup("boot", None, MAC1).match, "new")) == "new"


def test_change_within_one_timestamp_tick_is_seen(tmp_path):
    """A directory changed twice in one mtime tick keeps its mtime; the index
    rescans while the directory is that young, so the second change shows."""
    mac_dir = tmp_path / "boot/mac"
    write(str(mac_dir / "52:54:00:00:00:01"), boot_json(tag="one"))
    before = os.stat(str(mac_dir))
    s = make_store(tmp_path)
    write(str(mac_dir / "52:54:00:00:00:02"), boot_json(tag="two"))
    os.utime(str(mac_dir), ns=(before.st_atime_ns, before.st_mtime_ns))
    found = poll(s, lambda: s.lookup("boot", None, "52:54:00:00:00:02").match, "two")
    assert tag(found) == "two"


def poll(store, get, want_tag, timeout=1.5):
    """The value of get() once its tag is `want_tag`, moving the store's clock
    20 ms between tries; fails after `timeout` seconds of that clock."""
    clock = store.files.clock
    deadline = clock.monotonic() + timeout
    while True:
        value = get()
        if value is not None and tag(value) == want_tag:
            return value
        assert clock.monotonic() < deadline, "still %r after %.1fs" % (value, timeout)
        clock.advance(0.02)


def test_in_place_edit_visible_within_a_second(tmp_path):
    path = str(tmp_path / "boot/default")
    write(path, boot_json(tag="v1"))
    s = make_store(tmp_path)
    assert tag(s.lookup("boot").match) == "v1"
    write(path, boot_json(tag="v2"))
    started = s.files.clock.monotonic()
    poll(s, lambda: s.lookup("boot").match, "v2")
    assert s.files.clock.monotonic() - started < 1.0


def test_half_written_file_serves_last_good(tmp_path, caplog):
    path = str(tmp_path / "boot/default")
    write(path, boot_json(tag="good"))
    s = make_store(tmp_path)
    assert tag(s.lookup("boot").match) == "good"
    full = boot_json(tag="next")
    write(path, full[:len(full) // 2])           # a writer caught mid-way
    for _ in range(40):                          # fresh and, later, settled but broken
        m = s.lookup("boot").match
        assert tag(m) == "good" and m.stale
        s.files.clock.advance(0.02)
    s.files.clock.advance(0.3)
    assert tag(s.lookup("boot").match) == "good"
    warnings = [r for r in caplog.records if "invalid JSON" in r.getMessage()]
    assert len(warnings) == 1, "logged once per change of the file"
    assert path in warnings[0].getMessage() and "last good" in warnings[0].getMessage()
    write(path, full)
    poll(s, lambda: s.lookup("boot").match, "next")
    assert not s.lookup("boot").match.stale


def test_half_written_cloud_config_not_served(tmp_path):
    path = str(tmp_path / "cloud/default")
    write(path, "#cloud-config\nhostname: a\n")
    s = make_store(tmp_path)
    assert s.lookup("cloud").match.value == b"#cloud-config\nhostname: a\n"
    write(path, "#cloud-con")                     # truncated and partly rewritten
    assert s.lookup("cloud").match.value == b"#cloud-config\nhostname: a\n"
    write(path, "#cloud-config\nhostname: b\n")
    deadline = s.files.clock.monotonic() + 1.0
    while s.lookup("cloud").match.value != b"#cloud-config\nhostname: b\n":
        assert s.files.clock.monotonic() < deadline
        s.files.clock.advance(0.02)


def test_never_parsed_is_an_error_not_a_fallback(tmp_path, caplog):
    write(str(tmp_path / "boot/uuid" / UUID1), "{broken")
    write(str(tmp_path / "boot/mac" / MAC1), boot_json(tag="mac"))
    write(str(tmp_path / "boot/default"), boot_json(tag="default"))
    os.utime(str(tmp_path / "boot/uuid" / UUID1), (time.time() - 5,) * 2)
    s = make_store(tmp_path)
    for _ in range(3):
        found = s.lookup("boot", UUID1, MAC1)
        assert found.match is None
        assert isinstance(found.error, LoadError)
        assert found.error.path == "boot/uuid/" + UUID1
        assert "invalid JSON" in found.error.reason
    errors = [r for r in caplog.records if "get 500" in r.getMessage()]
    assert len(errors) == 1 and UUID1 in errors[0].getMessage()
    assert errors[0].levelno == logging.WARNING
    assert [st.state for st in found.trail] == ["invalid"]


def test_fresh_file_waits_to_settle(tmp_path):
    """A new file with no good version yet is read once it stops changing."""
    path = str(tmp_path / "boot/default")
    write(path, boot_json(tag="new"))
    s = make_store(tmp_path, settled=False)
    assert tag(s.lookup("boot").match) == "new"
    assert s.files.clock.slept >= 0.1            # it waited for the file to settle


def test_deleted_file_falls_through(tmp_path):
    write(str(tmp_path / "boot/mac" / MAC1), boot_json(tag="mac"))
    write(str(tmp_path / "boot/default"), boot_json(tag="default"))
    s = make_store(tmp_path)
    assert tag(s.lookup("boot", None, MAC1).match) == "mac"
    os.unlink(str(tmp_path / "boot/mac" / MAC1))
    assert tag(s.lookup("boot", None, MAC1).match) == "default"


def test_cloud_config_byte_for_byte(tmp_path):
    blob = b"#cloud-config\r\nx: \x00\xff\xfe\n" + bytes(range(256))
    write(str(tmp_path / "cloud/default"), blob)
    assert make_store(tmp_path).lookup("cloud").match.value == blob


def test_small_cache_still_correct(tmp_path):
    for i in range(50):
        write(str(tmp_path / "cloud/mac" / ("52:54:00:00:00:%02x" % i)), "m%d" % i * 100)
    s = make_store(tmp_path, cache_bytes=2000)
    for _ in range(2):
        for i in range(50):
            assert s.lookup("cloud", None, "52:54:00:00:00:%02x" % i).match.value == \
                ("m%d" % i * 100).encode()
    assert s.files._cached_bytes <= 2000 + 600


def test_fifo_and_directory_do_not_hang(tmp_path):
    os.makedirs(str(tmp_path / "cloud"))
    os.mkfifo(str(tmp_path / "cloud/default"))
    found = make_store(tmp_path).lookup("cloud")
    assert found.error is not None and "regular file" in found.error.reason
    os.makedirs(str(tmp_path / "boot/default"))
    found = make_store(tmp_path).lookup("boot")
    assert found.error is not None


def test_unusable_after_good_keeps_last_good(tmp_path):
    path = str(tmp_path / "boot/default")
    write(path, boot_json(tag="good"))
    s = make_store(tmp_path)
    assert tag(s.lookup("boot").match) == "good"
    os.unlink(path)
    os.mkdir(path)              # unreadable as a config, whoever we run as
    m = s.lookup("boot").match
    assert tag(m) == "good" and m.stale
