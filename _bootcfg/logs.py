"""Log lines: text for people, or one JSON object per line for log pipelines.

Access lines and config warnings carry their fields in `record.fields` (client,
method, path, status, bytes, ms, uuid, mac, file; file, reason), which the JSON
format writes as keys of the object.
"""

import datetime
import json
import logging
import sys

TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's
    structured `fields`."""

    def format(self, record):
        when = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        obj = {"time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
               "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        obj.update(getattr(record, "fields", {}))
        if record.exc_info:
            obj["traceback"] = self.formatException(record.exc_info)
        return json.dumps(obj, separators=(",", ":"), default=str)


def formatter(fmt):
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def setup(level, fmt="text", stream=None):
    """Send every log line at `level` or above to stderr in format `fmt`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


# Start and stop lines are shown at every -log-level: a logger's own level is the
# only one checked for its records, and this one is pinned to INFO.
lifecycle = logging.getLogger("bootcfg.lifecycle")
lifecycle.setLevel(logging.INFO)
