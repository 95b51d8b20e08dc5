"""systemd integration: socket activation and readiness notification.

Both follow the documented protocols (sd_listen_fds(3), sd_notify(3)) with the
standard library alone; outside systemd they do nothing.
"""

import os
import socket

SD_LISTEN_FDS_START = 3


def listen_sockets():
    """The listening sockets systemd passed (LISTEN_FDS/LISTEN_PID), or [].
    The variables are removed so child processes do not inherit them."""
    try:
        pid = int(os.environ.get("LISTEN_PID", ""))
        count = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if pid != os.getpid() or count <= 0:
        return []
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets


def notify(message):
    """Send `message` (e.g. "READY=1") to $NOTIFY_SOCKET; False when there is none
    or it cannot be reached."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]           # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(message.encode())
        return True
    except OSError:
        return False
