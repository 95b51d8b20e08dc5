"""Background work: a task a thread repeats every few seconds until closed.

The one way bootcfg runs a thread of its own (status events and counters moved
to shared memory, lease files followed), so every such thread stops on close().
"""

import threading


class Repeat:
    """Call `task` every `seconds` in a daemon thread named `name`; close() stops
    it and waits for it, after one last call when `last` is true."""

    def __init__(self, seconds, task, name, last=False):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(seconds, task, last),
                                        name=name, daemon=True)
        self._thread.start()

    def _run(self, seconds, task, last):
        while not self._stop.wait(seconds):
            task()
        if last:
            task()

    def close(self):
        self._stop.set()
        self._thread.join()
