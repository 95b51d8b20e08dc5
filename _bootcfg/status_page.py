"""/status (HTML for people) and /status.json (the same data for tools).

The page is one self-contained document: no scripts, no external styles or
fonts; it refreshes itself (meta refresh), filters and pages through a plain GET
form, and every value that came from a request is HTML-escaped. It is sent with
a Content-Security-Policy that allows no scripts at all.
"""

import datetime
import html
import json
from urllib.parse import urlencode

from _bootcfg.status import STATES, state

CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
       "base-uri 'none'; frame-ancestors 'none'")
PAGE = 200


def machines(records, stuck_after, now, want_state="", text="", offset=0, limit=PAGE):
    """(counts by state, total matching, the page of machine dicts), newest first."""
    counts = {s: 0 for s in STATES}
    rows = []
    text = text.strip().lower()
    for rec in sorted(records, key=lambda r: r["last"], reverse=True):
        st, problem = state(rec["attempt"], stuck_after, now)
        counts[st] += 1
        if want_state and st != want_state:
            continue
        if text and not any(text in str(rec.get(k, "")).lower()
                            for k in ("key", "mac", "uuid", "hostname", "serial", "client")):
            continue
        rows.append((rec, st, problem))
    page = [to_dict(rec, st, problem) for rec, st, problem in rows[offset:offset + limit]]
    return counts, len(rows), page


def to_dict(rec, st, problem):
    attempt = rec["attempt"] or {"started": rec["first"], "steps": [], "expects": [],
                                 "via": ""}
    done = {s["step"] for s in attempt["steps"] if s["complete"]}
    return {"key": rec["key"], "mac": rec.get("mac", ""), "uuid": rec.get("uuid", ""),
            "hostname": rec.get("hostname", ""), "serial": rec.get("serial", ""),
            "arch": rec.get("arch", ""), "platform": rec.get("platform", ""),
            "client": rec.get("client", ""), "replica": rec.get("replica", ""),
            "first_seen": iso(rec["first"]),
            "last_seen": iso(rec["last"]), "state": st, "problem": problem,
            "via": attempt["via"], "attempt_started": iso(attempt["started"]),
            "expected": [step for step, _ in attempt["expects"]],
            "expected_done": sum(1 for step, _ in attempt["expects"] if step in done),
            "note": note(attempt),
            "steps": [{"step": s["step"], "status": s["status"], "file": s["file"],
                       "path": s["path"], "ms": s["ms"], "bytes": s["bytes"],
                       "total": s["total"], "complete": s["complete"], "at": iso(s["at"])}
                      for s in attempt["steps"]],
            "previous": [dict(p, started=iso(p["started"])) for p in rec["previous"]]}


def note(attempt):
    if attempt["via"] == "/pixiecore/v1/boot/":
        return "Pixiecore downloads kernel and initrd itself: only the config is tracked"
    if attempt["expects"] and all(step != "kernel" for step, _ in attempt["expects"]):
        return "kernel and initrd are served elsewhere: not tracked here"
    return ""


def iso(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def render_json(records, stuck_after, now, query, problems=()):
    """`problems` are data directory troubles every machine may feel (group files
    that never parsed), shown above the machines."""
    counts, total, page = machines(records, stuck_after, now, **filters(query))
    return (json.dumps({"generated": iso(now), "stuck_after_seconds": stuck_after,
                        "counts": counts, "matching": total, "problems": list(problems),
                        "machines": page}, indent=1) + "\n").encode()


def filters(query):
    def number(name, default):
        value = query.get(name, "")
        return int(value) if value.isdigit() else default
    st = query.get("state", "")
    return {"want_state": st if st in STATES else "", "text": query.get("q", "")[:100],
            "offset": number("offset", 0), "limit": min(number("limit", PAGE), 1000) or PAGE}


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em;color:#222}
h1{font-size:1.3em;margin:0 0 .6em}
.counts span{display:inline-block;margin-right:1.2em;padding:.3em .7em;border-radius:4px}
.booting{background:#e8f0fe}.handed-off{background:#e6f4ea}.stuck{background:#fef7e0}
.failed{background:#fce8e6}
table{border-collapse:collapse;width:100%;margin-top:.8em}
th,td{border-bottom:1px solid #ddd;padding:.35em .5em;text-align:left;vertical-align:top}
tr.failed td{background:#fce8e6}tr.stuck td{background:#fef7e0}
.bar{width:10em;height:.8em;background:#eee;border-radius:3px;overflow:hidden}
.bar i{display:block;height:100%;background:#34a853}
.problem{color:#a50e0e;font-weight:600}.steps{font-size:.85em;color:#555}
code{font-size:.9em}form{margin:.6em 0}
"""


def render_html(records, stuck_after, now, query, refresh=5, problems=()):
    f = filters(query)
    counts, total, page = machines(records, stuck_after, now, **f)
    e = html.escape
    out = ["<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
           '<meta http-equiv="refresh" content="%d">' % refresh,
           "<title>bootcfg: %d booting, %d handed off, %d stuck, %d failed</title>" % (
               counts["booting"], counts["handed off"], counts["stuck"], counts["failed"]),
           "<style>%s</style></head><body>" % STYLE,
           "<h1>bootcfg: boot progress</h1><p class=counts id=counts>"]
    for st in STATES:
        out.append('<span class="%s">%s: <b id="count-%s">%d</b></span>'
                   % (st.replace(" ", "-"), st, st.replace(" ", "-"), counts[st]))
    out.append("</p>")
    for problem in problems:
        out.append('<p class=failed id=problem>%s</p>' % e(problem))
    out.append("<form method=get action=status><label>state <select name=state>"
               "<option value=''>any</option>")
    for st in STATES:
        out.append("<option%s>%s</option>" % (" selected" if f["want_state"] == st else "", st))
    out.append("</select></label> <label>MAC, UUID, hostname <input name=q value=\"%s\">"
               "</label> <button>filter</button></form>" % e(f["text"]))
    out.append("<p>%d machine(s) match; stuck means no progress for %ds. Updated %s, "
               "every %ds.</p>" % (total, stuck_after, iso(now), refresh))
    replicas = any(m["replica"] for m in page)          # -peers: who saw each machine
    out.append("<table><thead><tr><th>machine</th><th>state</th><th>progress</th>"
               "<th>steps</th><th>last seen</th>%s</tr></thead><tbody>"
               % ("<th>replica</th>" if replicas else ""))
    for m in page:
        expected = len(m["expected"]) or 1
        pct = 100 * m["expected_done"] // expected if m["expected"] else \
            (100 if m["state"] == "handed off" else 0)
        who = "<b>%s</b><br><code>%s</code>" % (e(m["hostname"] or m["mac"] or m["client"]),
                                                e(m["mac"] or "-"))
        if m["uuid"]:
            who += "<br><code>%s</code>" % e(m["uuid"])
        if m["serial"]:
            who += "<br>serial %s" % e(m["serial"])
        steps = ", ".join("%s %s" % (e(s["step"]), s["status"] if s["complete"] or
                                     s["status"] >= 400 else "cut off")
                          for s in m["steps"])
        out.append('<tr class="%s" data-key="%s"><td>%s</td><td><span class=state>%s</span>%s'
                   "</td><td><div class=bar title=\"%d of %d expected steps\"><i style=\"width:"
                   "%d%%\"></i></div>%d/%d%s</td><td class=steps>%s</td><td>%s<br>%s</td>%s</tr>"
                   % (m["state"].replace(" ", "-"), e(m["key"]), who, e(m["state"]),
                      "<div class=problem>%s</div>" % e(m["problem"]) if m["problem"] else "",
                      m["expected_done"], len(m["expected"]), pct, m["expected_done"],
                      len(m["expected"]),
                      "<br><small>%s</small>" % e(m["note"]) if m["note"] else "",
                      steps, e(m["last_seen"]), e(m["client"]),
                      "<td class=replica>%s</td>" % e(m["replica"]) if replicas else ""))
    out.append("</tbody></table>")
    if f["offset"] + f["limit"] < total or f["offset"]:
        def link(offset, label):
            q = dict(state=f["want_state"], q=f["text"], offset=offset, limit=f["limit"])
            return '<a href="status?%s">%s</a>' % (e(urlencode(q)), label)
        out.append("<p>")
        if f["offset"]:
            out.append(link(max(0, f["offset"] - f["limit"]), "newer") + " ")
        if f["offset"] + f["limit"] < total:
            out.append(link(f["offset"] + f["limit"], "older"))
        out.append("</p>")
    out.append("<p><a href=status.json>status.json</a> has the same data.</p></body></html>\n")
    return "".join(out).encode("utf-8")
