"""-workers N: a master process that starts N workers, reaps and replaces them.

The master binds (or is handed) the listening sockets, forks the workers and then
only waits for signals: it serves nothing and starts no thread, so it never forks
from a threaded process. A worker that dies is logged with its exit status,
counted (`bootcfg_worker_restarts_total`, in the memory every worker shares:
shared.py), and replaced: at once the first time, then with a doubling delay
while it keeps dying young. When every worker keeps dying the master exits 1 and
leaves the restarting to systemd. SIGTERM or SIGINT to the master stops every
worker and waits for them to finish their requests.
"""

import logging
import os
import signal
import time

from _bootcfg.logs import lifecycle

log = logging.getLogger("bootcfg")

SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}


class _Slot:
    def __init__(self, number):
        self.number = number
        self.pid = None
        self.started = 0.0
        self.crashes = 0          # deaths in a row, each sooner than worker_min_uptime
        self.restart_at = None    # monotonic time of the next start, when waiting


def supervise(count, run_worker, limits, shared, on_ready=None):
    """Run as the master of `count` workers; returns the exit status.

    `run_worker()` runs in each forked child (with `shared.slot` set to the
    child's slot: a replacement takes over its predecessor's) and returns its
    exit status;
    `on_ready()` is called once every worker has been started."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    # SIGCHLD's default action is to discard it; with a handler it stays pending
    # for sigtimedwait (the handler itself never runs while it is blocked).
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    slots = [_Slot(i) for i in range(count)]
    for slot in slots:
        _start(slot, run_worker, shared)
    lifecycle.info("%d worker processes share the listening sockets (master pid %d)",
                   count, os.getpid())
    if on_ready is not None:
        on_ready()
    while True:
        now = time.monotonic()
        waits = [s.restart_at - now for s in slots if s.restart_at is not None]
        timeout = max(0.0, min(waits + [1.0]))
        info = signal.sigtimedwait(SIGNALS, timeout)
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
            lifecycle.info("%s: stopping %d workers", signal.Signals(info.si_signo).name,
                           count)
            return _stop(slots, limits)
        _reap(slots, limits, shared)
        now = time.monotonic()
        for slot in slots:
            if slot.pid is not None and slot.crashes and \
                    now - slot.started >= limits["worker_min_uptime"]:
                slot.crashes = 0          # it has stayed up: the loop is over
            if slot.restart_at is not None and now >= slot.restart_at:
                _start(slot, run_worker, shared)
        if all(s.crashes >= limits["worker_crash_limit"] for s in slots):
            log.error("every worker died %d times in a row, each within %.0fs of its "
                      "start; exiting so that the service manager restarts bootcfg",
                      limits["worker_crash_limit"], limits["worker_min_uptime"])
            _stop(slots, limits)
            return 1


def _start(slot, run_worker, shared):
    slot.restart_at = None
    pid = os.fork()
    if pid == 0:
        status = 1
        shared.slot = slot.number
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
            os.environ.pop("NOTIFY_SOCKET", None)
            status = run_worker()
        except BaseException:          # noqa: B902 - a worker must never return
            log.exception("worker %d failed", os.getpid())
        finally:
            logging.shutdown()
            os._exit(status)
    slot.pid, slot.started = pid, time.monotonic()


def _reap(slots, limits, shared):
    by_pid = {s.pid: s for s in slots if s.pid is not None}
    while by_pid:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        slot = by_pid.pop(pid, None)
        if slot is None:
            continue
        now = time.monotonic()
        uptime = now - slot.started
        slot.pid = None
        slot.crashes = slot.crashes + 1 if uptime < limits["worker_min_uptime"] else 1
        delay = 0.0 if slot.crashes <= 1 else min(
            limits["restart_delay"] * 2 ** (slot.crashes - 2), limits["restart_delay_max"])
        slot.restart_at = now + delay
        shared.add_restart()
        log.error("worker %d %s after %.1fs; %s", pid, describe(status), uptime,
                  "replacing it" if not delay else
                  "replacing it in %.1fs (%d quick deaths in a row)" % (delay, slot.crashes))


def _stop(slots, limits):
    """SIGTERM every worker, wait for them (their in-flight requests get
    stop_grace), SIGKILL what is left. Returns 0."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    live = {s.pid for s in slots if s.pid is not None}
    for pid in live:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + limits["stop_grace"] + 2.0
    while live and time.monotonic() < deadline:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.02)
            continue
        live.discard(pid)
        if status:
            log.warning("worker %d %s while stopping", pid, describe(status))
    for pid in live:
        log.error("worker %d did not stop within %.0fs; killing it", pid,
                  limits["stop_grace"] + 2.0)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return 0


def describe(status):
    """A wait status in words: "exited with status 3", "was killed by SIGKILL"."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "signal %d" % sig
        return "was killed by %s" % name
    return "exited with status %d" % os.WEXITSTATUS(status)
