"""A read-only TFTP server (RFC 1350) with the blksize, tsize, timeout (RFC 2347-
2349) and windowsize (RFC 7440) options, for machines whose boot loader speaks
nothing else (Debian's signed GRUB under Secure Boot, firmware PXE).

Like the HTTP server it knows no configs: each read request becomes a Request
(method "RRQ", the file name as path) answered by `app.tftp(request)`, and the
transfer is reported back with `app.record` and one access line, complete or
not. Each transfer runs in its own thread from its own UDP port (its transfer ID,
as the RFC asks); their number is bounded, a block is sent again after a timeout
a bounded number of times, duplicate ACKs are ignored (no Sorcerer's Apprentice),
and block numbers roll over past 65,535 so files of any size transfer.
"""

import logging
import os
import select
import socket
import struct
import threading
import time

from _bootcfg.answers import Refusal, Request, parse_query, printable, refused
from _bootcfg.guard import Throttled
from _bootcfg.settings import LIMITS

log = logging.getLogger("bootcfg")
access = logging.getLogger("bootcfg.access")

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
# TFTP error codes (RFC 1350, 2347).
NOT_DEFINED, NOT_FOUND, ACCESS_VIOLATION, ILLEGAL_OPERATION, UNKNOWN_TID, BAD_OPTION = \
    0, 1, 2, 4, 5, 8
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)       # Linux's value


def error_packet(code, message):
    return struct.pack("!HH", ERROR, code) + message.encode("ascii", "replace")[:400] + b"\0"


def read_request(name, client, local):
    """The app's Request for a TFTP read of `name` (`grub?mac=...`): the same
    query rules as HTTP (answers.parse_query)."""
    path, _, qs = name.lstrip("/").partition("?")
    return Request("RRQ", path, parse_query(qs), {}, client, local, qs)


def parse_request(packet):
    """(opcode, name, mode, {option: value}) of an RRQ/WRQ; ValueError if malformed."""
    opcode = struct.unpack("!H", packet[:2])[0]
    fields = packet[2:].split(b"\0")
    if len(fields) < 3 or fields[-1] != b"":
        raise ValueError("not a request")
    fields = fields[:-1]
    if len(fields) % 2:
        raise ValueError("options come in name/value pairs")
    name = fields[0].decode("latin-1")
    mode = fields[1].decode("latin-1").lower()
    options = {}
    for i in range(2, len(fields), 2):
        options[fields[i].decode("latin-1").lower()] = fields[i + 1].decode("latin-1")
    return opcode, name, mode, options


class TftpServer:
    """Serves read requests arriving on `sock` (a bound UDP socket) with `app`."""

    def __init__(self, sock, app, limits=None):
        self.socket = sock
        self.app = app
        self.limits = dict(LIMITS, **(limits or {}))
        self.server_address = sock.getsockname()
        self.tls = None
        self.transfers = 0
        self.per_client = {}      # client address -> transfers running
        self._lock = threading.Lock()
        self.throttled = Throttled()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._wildcard = self.server_address[0] in ("0.0.0.0", "::")
        if self._wildcard and sock.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)

    def serve_forever(self, poll_interval=0.5):
        try:
            while not self._stop.is_set():
                ready = select.select([self.socket], [], [], poll_interval)[0]
                if not ready:
                    continue
                try:
                    packet, local, client = self._receive()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    if self._stop.is_set():
                        break
                    log.warning("tftp: receive failed: %s", e)
                    continue
                self._handle(packet, local, client)
        finally:
            self._stopped.set()

    def _receive(self):
        if self._wildcard and self.socket.family == socket.AF_INET:
            packet, ancillary, _, client = self.socket.recvmsg(
                65536, socket.CMSG_SPACE(12))
            local = self.server_address[0]
            for level, kind, data in ancillary:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
                    local = socket.inet_ntoa(data[4:8])    # the address to answer from
            return packet, local, client
        packet, client = self.socket.recvfrom(65536)
        return packet, self.server_address[0], client

    def _handle(self, packet, local, client):
        started = time.perf_counter()
        try:
            opcode, name, mode, options = parse_request(packet)
        except (ValueError, struct.error):
            self._refuse(client, local, ILLEGAL_OPERATION, "malformed request", None, started)
            return
        if opcode == WRQ:
            self._refuse(client, local, ACCESS_VIOLATION,
                         "read-only server: writes are refused", name, started, "WRQ",
                         kind="bad method")
            return
        if opcode != RRQ:
            return                # a stray DATA/ACK for a finished transfer
        if mode not in ("octet", "netascii"):
            self._refuse(client, local, ILLEGAL_OPERATION, "mode %s not supported"
                         % printable(mode, 20), name, started)
            return
        cap = self.limits["tftp_transfers_per_client"]
        with self._lock:
            busy = self.transfers >= self.limits["tftp_transfers"]
            greedy = cap and self.per_client.get(client[0], 0) >= cap
            if not busy and not greedy:
                self.transfers += 1
                self.per_client[client[0]] = self.per_client.get(client[0], 0) + 1
        if greedy:
            self.app.connection_cut("tftp_per_client")
            self.throttled.warn(client[0], "tftp_per_client", "tftp: %s refused: %d "
                                "transfers of its own running (tftp_transfers_per_client)",
                                client[0], cap)
            self._refuse(client, local, NOT_DEFINED, "too many transfers from %s, try again"
                         % client[0], name, started, kind="busy")
            return
        if busy:
            log.warning("tftp: %s refused: %d transfers running (tftp_transfers)",
                        client[0], self.transfers)
            self._refuse(client, local, NOT_DEFINED, "server busy, try again", name, started,
                         kind="busy")
            return
        threading.Thread(target=self._transfer, args=(name, options, local, client, started),
                         daemon=True).start()

    def _refuse(self, client, local, code, message, name, started, method="RRQ",
                kind="bad request"):
        try:
            self.socket.sendto(error_packet(code, message), client)
        except OSError:
            pass
        resp = refused(Refusal(kind, message))
        resp.route = "tftp:other"
        self._finish(method, name or "-", client, resp, 0, True, started, None)

    def _transfer(self, name, options, local, client, started):
        sock = None
        resp = req = None
        sent, complete = 0, False
        try:
            sock = socket.socket(socket.AF_INET if "." in local or not local else
                                 socket.AF_INET6, socket.SOCK_DGRAM)
            sock.bind((local if local not in ("0.0.0.0", "::") else "", 0))
            sock.connect(client)
            req = read_request(name, client[0], sock.getsockname()[:2])
            resp = self.app.tftp(req)
            if resp.status != 200:
                code = NOT_FOUND if resp.status == 404 else \
                    ACCESS_VIOLATION if resp.status in (400, 403) else NOT_DEFINED
                sock.send(error_packet(code, resp.body.decode("utf-8", "replace").strip()))
                complete = True
                return
            sent, complete = _Sender(sock, resp, options, self.limits, self._stop).run()
        except OSError as e:
            log.info("tftp: %s went away during %s: %s", client[0], printable(name),
                     e.__class__.__name__)
        except Exception:
            log.exception("tftp: internal error serving %s to %s", printable(name), client[0])
        finally:
            if resp is not None and resp.file is not None:
                resp.file[0].close()
            if sock is not None:
                sock.close()
            with self._lock:
                self.transfers -= 1
                left = self.per_client.pop(client[0]) - 1
                if left:
                    self.per_client[client[0]] = left
            if resp is None:
                resp = refused(Refusal("internal", "internal error"))
            self._finish("RRQ", name, client, resp, sent, complete, started, req)

    def _finish(self, method, name, client, resp, sent, complete, started, req):
        ms = (time.perf_counter() - started) * 1000
        self.app.record(resp, sent if complete else -1, req, ms)
        if not access.isEnabledFor(logging.INFO):
            return
        request = "%s %s" % (method, printable(name))
        uuid, mac = resp.machine or ("", "")
        fields = {"client": client[0], "method": method, "path": printable(name),
                  "request": request, "status": resp.status, "bytes": sent,
                  "aborted": not complete, "ms": round(ms, 2), "uuid": uuid or None,
                  "mac": mac or None, "file": resp.matched or None, "protocol": "tftp"}
        access.info('%s "%s" %d %s %.1fms uuid=%s mac=%s file=%s', client[0], request,
                    resp.status, "size only" if complete == "size" else
                    "%dB" % sent if complete else "aborted after %dB" % sent,
                    ms, uuid or "-", mac or "-", resp.matched or "-",
                    extra={"fields": fields})

    def shutdown(self):
        self._stop.set()
        self._stopped.wait(5)

    def stop(self, grace=None):
        """Refuse new requests, then give running transfers `grace` seconds."""
        self._stop.set()
        deadline = time.monotonic() + (self.limits["stop_grace"] if grace is None else grace)
        while self.transfers and time.monotonic() < deadline:
            time.sleep(0.05)
        self.socket.close()


class _Sender:
    """One file to one client: options, blocks in windows, retransmission."""

    def __init__(self, sock, resp, options, limits, stopping):
        self.sock, self.resp, self.limits, self.stopping = sock, resp, limits, stopping
        self.size = resp.length
        self.blksize, self.window = 512, 1
        self.timeout = limits["tftp_timeout"]
        self.accepted = {}
        for name, value in options.items():
            if not value.isdigit():
                continue
            n = int(value)
            if name == "blksize" and 8 <= n <= 65464:
                self.blksize = min(n, limits["tftp_max_blksize"])
                self.accepted["blksize"] = str(self.blksize)
            elif name == "tsize":
                self.accepted["tsize"] = str(self.size)
            elif name == "timeout" and 1 <= n <= 255:
                self.timeout = float(n)
                self.accepted["timeout"] = str(n)
            elif name == "windowsize" and 1 <= n <= 65535:
                self.window = min(n, limits["tftp_max_windowsize"])
                self.accepted["windowsize"] = str(self.window)
        self.blocks = self.size // self.blksize + 1      # the last one is short
        self.client_ended = False

    def block(self, n):
        """DATA packet of block n (1-based, any size: the number on the wire wraps)."""
        start = (n - 1) * self.blksize
        count = max(0, min(self.blksize, self.size - start))
        if self.resp.file is not None:
            f, offset, _ = self.resp.file
            data = os.pread(f.fileno(), count, offset + start) if count else b""
        else:
            data = self.resp.body[start:start + count]
        return struct.pack("!HH", DATA, n & 0xFFFF) + data

    def run(self):
        """(body bytes the client acknowledged, complete?)"""
        acked = 0                                    # blocks the client has
        if self.accepted:
            oack = struct.pack("!H", OACK) + b"".join(
                k.encode() + b"\0" + v.encode() + b"\0" for k, v in self.accepted.items())
            if self._exchange([oack], 0, 0) is None:
                # Firmware asks for tsize, then ends the transfer to size its
                # buffer and asks again: that answer was complete.
                return 0, "size" if self.client_ended and "tsize" in self.accepted else False
        while acked < self.blocks:
            last = min(self.blocks, acked + self.window)
            packets = [self.block(n) for n in range(acked + 1, last + 1)]
            got = self._exchange(packets, acked, last)
            if got is None:
                return min(acked * self.blksize, self.size), False
            acked = got
        return self.size, True

    def _exchange(self, packets, acked, last):
        """Send `packets` (blocks acked+1..last, or the OACK with last 0) until the
        client acknowledges something new: the new acked count (0 for the OACK's
        ACK 0); None if it never does within the retries, or gives up."""
        for _ in range(self.limits["tftp_retries"] + 1):
            for p in packets:
                self.sock.send(p)
            deadline = time.monotonic() + self.timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or self.stopping.is_set():
                    break
                if not select.select([self.sock], [], [], left)[0]:
                    break
                reply = self.sock.recv(65536)
                if len(reply) < 4:
                    continue
                opcode, number = struct.unpack("!HH", reply[:4])
                if opcode == ERROR:
                    self.client_ended = True         # it gave up (or refused an option)
                    return None
                if opcode != ACK:
                    continue
                # Map the 16-bit number back onto the window acked..last.
                n = acked + ((number - acked) & 0xFFFF)
                if last == 0:                        # the OACK's answer is ACK 0
                    if number == 0:
                        return 0
                    continue
                if acked < n <= last:
                    return n
                # an old or duplicate ACK: wait on, do not resend (RFC 1123 4.2.3.1)
            if self.stopping.is_set():
                return None
        return None
