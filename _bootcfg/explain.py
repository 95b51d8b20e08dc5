"""`bootcfg explain`: what one machine would boot, and why.

It searches with the server's store and asks the same App the server runs, so
what it prints is byte for byte what the machine would get from a running
bootcfg on the same data.
"""

from urllib.parse import quote

import store
from _bootcfg.answers import Request

STATES = {
    "absent": "no key given",
    "missing": "no file",
    "matched": "MATCHED",
    "stale": "MATCHED, last good version (the file on disk is unusable)",
    "invalid": "INVALID, never parsed: the machine gets 500",
}


def machine_keys(uuid_raw, mac_raw):
    """(uuid, mac, notes): canonical keys as the server derives them from a query."""
    notes, keys = [], []
    for name, raw in (("uuid", uuid_raw), ("mac", mac_raw)):
        value = None
        if raw:
            try:
                value = store.KEY_PARSERS[name](raw)
                if value is None:
                    notes.append("%s %s is a placeholder many machines report: treated as "
                                 "absent" % (name, raw))
            except ValueError as e:
                notes.append("%s: %s; the server ignores it" % (name, e))
        keys.append(value)
    return keys[0], keys[1], notes


def requests(uuid_raw, mac_raw):
    """The requests the machine's firmware would make: (label, method, path,
    query, as shown); GRUB's is asked over TFTP, as a Secure Boot machine does."""
    query = {"uuid": uuid_raw or "", "mac": mac_raw or ""}
    qs = "uuid=%s&mac=%s" % (quote(uuid_raw or ""), quote(mac_raw or ""))
    out = [("ipxe", "GET", "/ipxe", query, "/ipxe?" + qs)]
    if mac_raw:
        path = "/pixiecore/v1/boot/" + quote(mac_raw, safe=":")
        out.append(("pixiecore", "GET", path, {}, path))
    out.append(("cloud", "GET", "/cloud", query, "/cloud?" + qs))
    out.append(("ignition", "GET", "/ignition", query, "/ignition?" + qs))
    out.append(("grub", "TFTP", "grub", query, "grub?" + qs))
    return out


def answers(app, uuid_raw, mac_raw):
    """{label: (shown request, Response)} from `app`, as the server would answer."""
    found = {}
    for label, method, path, query, shown in requests(uuid_raw, mac_raw):
        if method == "TFTP":
            resp = app.tftp(Request("RRQ", path, query, {}, "explain"))
        else:
            resp = app(Request(method, path, query, {}, "explain"))
        found[label] = ("%s %s" % (method, shown), resp)
    return found


def report(app, uuid_raw, mac_raw, platform):
    """The full explanation as text."""
    fs = app.store
    uuid, mac, notes = machine_keys(uuid_raw, mac_raw)
    lines = ["machine  uuid=%s mac=%s platform=%s" % (uuid or "-", mac or "-",
                                                     platform or "-")]
    lines += ["  note: " + n for n in notes]
    for kind in store.KINDS:
        found = fs.lookup(kind, uuid, mac)
        lines.append("")
        lines.append("%s config, searched uuid -> mac -> default:" % kind)
        seen = set()
        for step in found.trail:
            seen.add(step.how)
            detail = STATES[step.state] + (": " + step.detail if step.detail else "")
            lines.append("  %-8s %-50s %s" % (step.how, step.path or "-", detail))
        for how in ("uuid", "mac", "default"):
            if how not in seen:
                lines.append("  %-8s %-50s %s" % (how, "-", "not looked at (decided above)"))
        chosen = found.match.path if found.match else \
            "none (500)" if found.error else "none (404)"
        lines.append("  chosen: %s" % chosen)
    if platform == "efi":
        lines += ["", "platform efi: the kernel's EFI stub finds each initrd only through "
                      "its initrd=<name> argument, which the iPXE script carries."]
    elif platform == "pcbios":
        lines += ["", "platform pcbios: the kernel ignores initrd=<name> arguments; iPXE "
                      "hands it the initrds itself."]
    for label, (shown, resp) in answers(app, uuid_raw, mac_raw).items():
        lines += ["", "==> %s -> %d" % (shown, resp.status)]
        body = resp.body.decode("utf-8", "replace")
        lines.append(body[:-1] if body.endswith("\n") else body)
    if not mac_raw:
        lines += ["", "(no MAC given: Pixiecore asks by MAC only, so it is not shown)"]
    return "\n".join(lines) + "\n"
