"""Log line formats for `serve`: text (a terminal), journal (systemd: no timestamp -- the
journal adds its own --, and the `<N>` syslog priority prefix journald reads, so `journalctl
-p warning` works) and json (one object per line, for log shippers). "auto" is journal when
systemd started us (JOURNAL_STREAM is set), else text. Messages already went through
fmt.printable where a client's text is in them; json escapes the rest."""

from __future__ import annotations

import json
import logging
import os
import time

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prio = _PRIORITY.get(record.levelno, 6)
        # one journal entry per line: continuation lines (a traceback) keep the priority
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines() or [""])


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=True)


def formatter(kind: str) -> logging.Formatter:
    if kind == "auto":
        kind = "journal" if os.environ.get("JOURNAL_STREAM") else "text"
    if kind == "json":
        return JsonFormatter()
    if kind == "journal":
        return JournalFormatter("%(name)s: %(message)s")
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
