"""How skyctl speaks: tables for people, JSON for scripts, colour only on a terminal,
and exit codes that mean one thing each."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Sequence

import msgspec

from skyd.protocol import ErrorCode

# Exit codes: one table, documented in README.md.
OK = 0            # the request succeeded
FAILED = 1        # the request (or the job it ran) failed
USAGE = 2         # bad arguments, bad task file, unknown name or id
CANCELLED = 3     # the request or job was cancelled
UNREACHABLE = 4   # the daemon cannot be reached (or speaks another protocol)
DENIED = 5        # permission denied
DETACHED = 130    # Ctrl-C: stopped following; the request goes on

EXIT_FOR_ERROR = {
    ErrorCode.BAD_REQUEST: USAGE, ErrorCode.TOO_LARGE: USAGE, ErrorCode.UNKNOWN_OP: USAGE,
    ErrorCode.INVALID_TASK: USAGE, ErrorCode.NOT_FOUND: USAGE, ErrorCode.AMBIGUOUS: USAGE,
    ErrorCode.UNSUPPORTED_VERSION: UNREACHABLE, ErrorCode.PERMISSION_DENIED: DENIED,
}


def exit_code_for(code: ErrorCode) -> int:
    return EXIT_FOR_ERROR.get(code, FAILED)


def _color_enabled(stream) -> bool:
    return "NO_COLOR" not in os.environ and hasattr(stream, "isatty") and stream.isatty() \
        and os.environ.get("TERM") != "dumb"


_COLORS = {"green": "32", "red": "31", "yellow": "33", "blue": "34", "dim": "2", "bold": "1"}
STATUS_COLORS = {
    "succeeded": "green", "SUCCEEDED": "green", "UP": "green", "running": "blue",
    "RUNNING": "blue", "failed": "red", "FAILED": "red", "FAILED_SETUP": "red",
    "cancelled": "yellow", "CANCELLED": "yellow", "pending": "dim", "PENDING": "dim",
    "INIT": "yellow", "STOPPED": "yellow", "SETTING_UP": "blue",
}


def paint(text: str, color: str | None, stream=None) -> str:
    stream = stream or sys.stdout
    if not color or not _color_enabled(stream):
        return text
    return f"\033[{_COLORS[color]}m{text}\033[0m"


def status_text(status: str) -> str:
    return paint(status.upper(), STATUS_COLORS.get(status))


def age(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "-"
    secs = max(0, int((now or time.time()) - ts))
    if secs < 60:
        return f"{secs}s ago"
    if secs < 3600:
        return f"{secs // 60}m ago"
    if secs < 86400:
        return f"{secs // 3600}h ago"
    return f"{secs // 86400}d ago"


def duration(start: float | None, end: float | None) -> str:
    if not start:
        return "-"
    secs = int((end or time.time()) - start)
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _visible_len(text: str) -> int:
    # Escape sequences take no room on screen.
    n, i = 0, 0
    while i < len(text):
        if text[i] == "\033":
            i = text.index("m", i) + 1
            continue
        n += 1
        i += 1
    return n


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], out=None) -> None:
    out = out or sys.stdout
    rows = [list(map(str, r)) for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        for i, cell in enumerate(r):
            widths[i] = max(widths[i], _visible_len(cell))
    lines = ["  ".join(paint(h, "bold").ljust(widths[i] + len(paint(h, "bold")) - len(h))
                       for i, h in enumerate(headers)).rstrip()]
    for r in rows:
        lines.append("  ".join(c + " " * (widths[i] - _visible_len(c))
                               for i, c in enumerate(r)).rstrip())
    out.write("\n".join(lines) + "\n")


def print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")


def info(text: str) -> None:
    """Progress for people: stderr, so stdout stays the log or the data."""
    sys.stderr.write(paint(text, "dim", sys.stderr) + "\n")
    sys.stderr.flush()


def error(text: str, hint: str = "") -> None:
    sys.stderr.write(paint("error:", "red", sys.stderr) + f" {text}\n")
    if hint:
        sys.stderr.write(f"{hint}\n")
    sys.stderr.flush()
