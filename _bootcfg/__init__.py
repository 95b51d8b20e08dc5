"""bootcfg's private package: everything but the CLI, the store and the renderers.

The user's card names three top-level modules (bootcfg.py, the CLI; store.py;
render.py); the rest lives here, under a name no other distribution uses:

    machine.py   a machine's identity: MAC, UUID and client address spellings
    settings.py  every setting once (flags, BOOTCFG_*, --help, docs) and LIMITS
    files.py     the cached view of files and directories, one clock
    answers.py   Request, Response, Refusal and the one table of statuses
    app.py       App and ROUTES: every endpoint with its policy, the handlers
    server.py    the HTTP server (knows an app, never a config)
    guard.py     per-client connection caps, idle eviction, trusted proxies
    leases.py    -bind-configs: which MAC holds which address (lease files, neighbors)
    fleet.py     -peers: the merged /status of several replicas
    workers.py   -workers N: a master that starts, reaps and replaces workers
    shared.py    memory all workers share (counters, boot events)
    repeat.py    background work: a task a thread repeats until closed
    tftp.py      the read-only TFTP server
    ignition.py  Ignition configs: validation per spec version
    groups.py    groups and profiles; template.py the Go text/template subset
    status.py    boot tracking; status_page.py renders /status and /status.json
    images.py    static files under /images/ (ranges, validators, confinement)
    metrics.py   counters in Prometheus text format
    check.py     `bootcfg check`
    explain.py   `bootcfg explain`
    logs.py      text and JSON log lines
    systemd.py   socket activation and sd_notify
"""

__version__ = "0.2.0"
