"""``--log-format json``: the server's own log as one JSON object per line, for log collectors."""

from __future__ import annotations

import json
import logging
import time

__all__ = ["JsonLines"]


class JsonLines(logging.Formatter):
    """``{"time": "2026-12-02T06:21:08.123Z", "level": "INFO", "logger": ..., "message": ..., "pid": ...}``,
    with ``"exception"`` (the traceback) when there is one."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # (UTC: the "Z" below)
        return time.strftime(datefmt or "%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                "level": record.levelname, "logger": record.name, "message": record.getMessage(),
                "pid": record.process}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)
