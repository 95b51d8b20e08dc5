"""`bootcfg explain`: what one machine would boot, and why.

It searches with the server's store and asks the same App the server runs, so
what it prints is byte for byte what the machine would get from a running
bootcfg on the same data. For each kind of answer it lists every candidate (the
seed files of that kind and every group), best first, with why each one lost,
then the winning group's variables and each rendered answer.
"""

import json
import os
from urllib.parse import quote, urlencode

import store
from _bootcfg import groups, machine
from _bootcfg.answers import Request

STATES = {
    "absent": "no key given",
    "missing": "no file",
    "matched": "MATCHED",
    "stale": "MATCHED, last good version (the file on disk is unusable)",
    "invalid": "INVALID, never parsed: the machine gets 500",
}


def machine_keys(uuid_raw, mac_raw):
    """(uuid, mac, notes): canonical keys as the server derives them from a query
    (machine.from_query), and why a given value is not used."""
    found = machine.from_query({"uuid": uuid_raw or "", "mac": mac_raw or ""})
    notes = ["%s: %s; the server ignores it" % (name, reason)
             for name, reason in found.problems]
    return found.uuid or None, found.mac or None, notes


def requests(uuid_raw, mac_raw, labels=()):
    """The requests the machine would make: (label, method, path, query, as
    shown); GRUB's is asked over TFTP, as a Secure Boot machine does. `labels`
    are more (name, value) query parameters, e.g. ("os", "installed")."""
    query = {"uuid": uuid_raw or "", "mac": mac_raw or ""}
    query.update(labels)
    qs = "uuid=%s&mac=%s" % (quote(uuid_raw or ""), quote(mac_raw or ""))
    if labels:
        qs += "&" + urlencode(list(labels))
    out = [("ipxe", "GET", "/ipxe", query, "/ipxe?" + qs)]
    if mac_raw:
        path = "/pixiecore/v1/boot/" + quote(mac_raw, safe=":")
        out.append(("pixiecore", "GET", path, {}, path))
    out.append(("cloud", "GET", "/cloud", query, "/cloud?" + qs))
    out.append(("ignition", "GET", "/ignition", query, "/ignition?" + qs))
    out.append(("generic", "GET", "/generic", query, "/generic?" + qs))
    out.append(("metadata", "GET", "/metadata", query, "/metadata?" + qs))
    out.append(("grub", "TFTP", "grub", query, "grub?" + qs))
    return out


def answers(app, uuid_raw, mac_raw, labels=()):
    """{label: (shown request, Response)} from `app`, as the server would answer."""
    found = {}
    for label, method, path, query, shown in requests(uuid_raw, mac_raw, labels):
        raw = shown.partition("?")[2]
        if method == "TFTP":
            resp = app.tftp(Request("RRQ", path, query, {}, "explain", (), raw))
        else:
            resp = app(Request(method, path, query, {}, "explain", (), raw))
        found[label] = ("%s %s" % (method, shown), resp)
    return found


def candidate_lines(fs, kind, labels):
    """One line per candidate for `kind`, best first, and the chosen one."""
    found = fs.select(kind, labels)
    tried = {step.path: step for step in found.trail}
    winner = found.trail[-1].path if found.trail else None
    lines = []
    for cand in fs.candidates(kind, labels, everything=True):
        sel = "{%s}" % groups.selector_text(cand.selector)
        step = tried.get(cand.path)
        if step is not None:
            state = STATES[step.state] + (": " + step.detail if step.detail else "")
        elif cand.how != "group" and not os.path.lexists(os.path.join(fs.root, cand.path)):
            state = "no file"
        elif not cand.matches(labels):
            wanted = ["%s=%s" % kv for kv in cand.selector if labels.get(kv[0]) != kv[1]]
            state = "does not match: needs " + ", ".join(wanted)
        elif winner is not None:
            state = "matches, ranks below %s" % winner
        else:
            state = "not looked at (decided above)"
        if cand.how in ("uuid", "mac") and not labels.get(cand.how):
            continue
        lines.append("  %-8s %-40s %-28s %s" % (cand.how, cand.path, sel, state))
    for how in ("uuid", "mac"):
        if kind in store.KINDS and not labels.get(how):
            lines.append("  %-8s %-40s %-28s %s" % (how, "-", "", STATES["absent"]))
    for path, reason in sorted(fs.groups.broken.items()):
        lines.append("  %-8s %-40s %-28s %s" % ("group", path, "{?}",
                                                "INVALID, never parsed: " + reason))
    if found.match:
        chosen = found.match.path
        if found.match.group is not None:
            chosen += " (group %s, profile %s)" % (found.match.group_path,
                                                  found.match.group.profile)
    else:
        chosen = "none (500)" if found.error else "none (404)"
    lines.append("  chosen: %s" % chosen)
    return lines, found


def report(app, uuid_raw, mac_raw, platform, labels=()):
    """The full explanation as text."""
    fs = app.store
    uuid, mac, notes = machine_keys(uuid_raw, mac_raw)
    label_map = {k: v for k, v in labels if v}
    if uuid:
        label_map["uuid"] = uuid
    if mac:
        label_map["mac"] = mac
    lines = ["machine  uuid=%s mac=%s platform=%s" % (uuid or "-", mac or "-",
                                                     platform or "-")]
    if labels:
        lines.append("labels   " + " ".join("%s=%s" % kv for kv in labels))
    lines += ["  note: " + n for n in notes]
    has_groups = bool(fs.groups.files)
    winner_group = None
    for kind in store.GROUP_KINDS if has_groups else store.KINDS:
        lines.append("")
        lines.append("%s: candidates, best first (more labels, then matchbox's order):"
                     % kind)
        more, found = candidate_lines(fs, kind, label_map)
        lines += more
        if found.match is not None and found.match.group is not None:
            winner_group = winner_group or found.match.group
    if winner_group is not None:
        raw = requests(uuid_raw, mac_raw, labels)[0][4].partition("?")[2]
        values = groups.variables(winner_group, label_map, raw)
        lines += ["", "variables of group %s (metadata, then selector, then request):"
                  % (winner_group.id or winner_group.profile),
                  json.dumps(values, indent=2, sort_keys=True)]
    if platform == "efi":
        lines += ["", "platform efi: the kernel's EFI stub finds each initrd only through "
                      "its initrd=<name> argument, which the iPXE script carries."]
    elif platform == "pcbios":
        lines += ["", "platform pcbios: the kernel ignores initrd=<name> arguments; iPXE "
                      "hands it the initrds itself."]
    for label, (shown, resp) in answers(app, uuid_raw, mac_raw, labels).items():
        if label in ("generic", "metadata") and not has_groups:
            continue
        lines += ["", "==> %s -> %d" % (shown, resp.status)]
        body = resp.body.decode("utf-8", "replace")
        lines.append(body[:-1] if body.endswith("\n") else body)
    if not mac_raw:
        lines += ["", "(no MAC given: Pixiecore asks by MAC only, so it is not shown)"]
    return "\n".join(lines) + "\n"
