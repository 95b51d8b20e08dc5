"""Static files under the images directory: kernels, initrds, ISOs.

`serve` resolves a request path safely inside the root and answers with the
validators and range handling HTTP clients expect (ETag, Last-Modified, 304,
one Range -> 206/416), or raises Refusal for what it will not serve. It opens
the file; the caller sends it with sendfile and closes it. No sockets here.
"""

import datetime
import email.utils
import mimetypes
import os
import stat
from urllib.parse import unquote_to_bytes

from _bootcfg.answers import Refusal


# Types the system's mime.types may lack: UEFI HTTP Boot clients check that an
# .efi boot file comes as application/efi; the rest are common boot files.
TYPES = {".efi": "application/efi", ".ipxe": "text/plain", ".kpxe": "application/octet-stream",
         ".img": "application/octet-stream", ".iso": "application/x-iso9660-image",
         ".ign": "application/vnd.coreos.ignition+json"}


def resolve(root, raw_path):
    """The real path of `raw_path` (as sent, percent-encoded) under `root` (a real
    path). Refuses NUL, backslashes, `.`/`..` segments and anything whose real
    path, symlinks followed, is not inside root."""
    raw = unquote_to_bytes(raw_path)
    if b"\0" in raw or b"\\" in raw:
        raise Refusal("bad request", "NUL or backslash in image path")
    parts = [p for p in raw.split(b"/") if p]
    if not parts:
        raise Refusal("not found", "no such image")
    if any(p in (b".", b"..") for p in parts):
        raise Refusal("bad request", "'.' or '..' in image path")
    root_b = os.fsencode(root)
    real = os.path.realpath(os.path.join(root_b, *parts))
    if not real.startswith(root_b.rstrip(b"/") + b"/"):
        raise Refusal("forbidden", "image path leads outside the images directory")
    return real


def serve(root, raw_path, headers):
    """(status, headers, (file, offset, count)) for GET/HEAD of one image."""
    path = resolve(root, raw_path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise Refusal("not found", "no such image") from None
    except OSError as e:
        raise Refusal("not found" if not os.path.exists(path) else "forbidden",
                      "cannot open image: %s" % e.strerror) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise Refusal("not found", "no such image (not a file)")
    f = os.fdopen(fd, "rb")
    try:
        return _answer(f, st, path, headers)
    except BaseException:
        f.close()
        raise


def _answer(f, st, path, headers):
    size = st.st_size
    etag = '"%x-%x-%x"' % (st.st_ino, st.st_mtime_ns, size)
    last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
    name = os.fsdecode(path)
    ctype = TYPES.get(os.path.splitext(name)[1].lower()) or mimetypes.guess_type(name)[0] \
        or "application/octet-stream"
    common = [("ETag", etag), ("Last-Modified", last_modified), ("Accept-Ranges", "bytes")]
    if not_modified(headers, etag, int(st.st_mtime)):
        f.close()
        return 304, common, None
    span = byte_range(headers.get("Range"), size)
    if span is not None and not _if_range_holds(headers.get("If-Range"), etag,
                                                last_modified):
        span = None
    if span == "unsatisfiable":
        f.close()
        raise Refusal("range", "range not satisfiable for %d bytes" % size,
                      [("Content-Range", "bytes */%d" % size)] + common)
    extra = [("Content-Type", ctype)] + common
    if span is None:
        return 200, extra, (f, 0, size)
    start, end = span
    extra.append(("Content-Range", "bytes %d-%d/%d" % (start, end, size)))
    return 206, extra, (f, start, end - start + 1)


def not_modified(headers, etag, mtime):
    """RFC 9110 13.1.2/13.1.3: If-None-Match decides when present."""
    inm = headers.get("If-None-Match")
    if inm is not None:
        tags = [t.strip() for t in inm.split(",")]
        return "*" in tags or any(t.replace("W/", "", 1) == etag for t in tags)
    ims = headers.get("If-Modified-Since")
    if ims:
        try:
            when = email.utils.parsedate_to_datetime(ims)
        except (TypeError, ValueError, IndexError):
            return False
        if when is None:
            return False
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        return mtime <= when.timestamp()
    return False


def byte_range(header, size):
    """(first, last) inclusive for a single `bytes=` range, None to send the whole
    file (no header, a malformed one, or several ranges), or "unsatisfiable"."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()):
        return None
    if not first:                                    # bytes=-N: the last N bytes
        n = int(last) if last.isdigit() else -1
        if n < 0:
            return None
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start = int(first)
    end = int(last) if last else max(start, size - 1)
    if end < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


def _if_range_holds(value, etag, last_modified):
    return value is None or value.strip() in (etag, last_modified)
