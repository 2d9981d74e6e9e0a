"""The daemon's log lines on stderr, for a terminal or for the journal.

Under systemd, stderr goes to the journal, which reads a `<N>` prefix on each line as its
priority (sd-daemon(3)): with it, `journalctl -u skyd -p warning` shows warnings and
errors only. The prefix is written only when stderr is the journal — JOURNAL_STREAM names
stderr's device and inode, as systemd sets it — and then without a timestamp (the journal
keeps its own). Anywhere else (a terminal, a file, a test) lines stay plain and dated.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

# syslog priorities: err 3, warning 4, notice 5, info 6, debug 7
PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
            logging.DEBUG: 7}
PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def is_journal(stream: TextIO) -> bool:
    """Whether `stream` is the journal's (JOURNAL_STREAM is "DEVICE:INODE" of it)."""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


class JournalFormatter(logging.Formatter):
    """Each line (a traceback's too) with its record's priority, so none is read as info."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prio = PRIORITY.get(record.levelno)
        if prio is None:
            prio = next((p for lvl, p in sorted(PRIORITY.items()) if record.levelno <= lvl), 2)
        prefix = f"<{prio}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def setup(level: str, stream: TextIO = sys.stderr) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter() if is_journal(stream) else logging.Formatter(PLAIN))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
