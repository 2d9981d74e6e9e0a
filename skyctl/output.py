"""How skyctl speaks. stdout carries only the command's product: the task's output, the
listing, the ids asked for, or the JSON. Everything skyd and skyctl say about what they
are doing (progress, notes, hints, warnings, errors, and skyd's `[skyd] ...` lines inside
a log) goes to stderr. Colour only on a terminal, and never with NO_COLOR."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, BinaryIO, Iterable, Protocol, Sequence

import msgspec

_COLORS = {"green": "32", "red": "31", "yellow": "33", "blue": "34", "dim": "2", "bold": "1"}
STATUS_COLORS = {
    "SUCCEEDED": "green", "UP": "green", "RUNNING": "blue", "SETTING_UP": "blue",
    "STARTING": "blue", "FAILED": "red", "FAILED_SETUP": "red", "FAILED_PRECHECKS": "red",
    "FAILED_NO_RESOURCE": "red", "FAILED_CONTROLLER": "red", "UNHEALTHY": "red",
    "CANCELLED": "yellow", "CANCELLING": "yellow", "RECOVERING": "yellow", "INIT": "yellow",
    "STOPPED": "yellow", "PENDING": "dim",
}


def _color_enabled(stream) -> bool:
    return "NO_COLOR" not in os.environ and hasattr(stream, "isatty") and stream.isatty() \
        and os.environ.get("TERM") != "dumb"


def paint(text: str, color: str | None, stream=None) -> str:
    stream = stream or sys.stdout
    if not color or not _color_enabled(stream):
        return text
    return f"\033[{_COLORS[color]}m{text}\033[0m"


def status_text(status: str) -> str:
    """A status as every table and JSON shows it: upper case (requests' are lower case
    on the wire)."""
    shown = str(status).upper()
    return paint(shown, STATUS_COLORS.get(shown))


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


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], out=None) -> None:
    out = out or sys.stdout
    cells = [list(map(str, r)) for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        for i, cell in enumerate(r):
            widths[i] = max(widths[i], _visible_len(cell))
    lines = ["  ".join(paint(h, "bold").ljust(widths[i] + len(paint(h, "bold")) - len(h))
                       for i, h in enumerate(headers)).rstrip()]
    for r in cells:
        lines.append("  ".join(c + " " * (widths[i] - _visible_len(c))
                               for i, c in enumerate(r)).rstrip())
    out.write("\n".join(lines) + "\n")


def _one_case(value: Any) -> Any:
    """Every `status` field in upper case, whatever record it is in."""
    if isinstance(value, dict):
        return {k: (v.upper() if k == "status" and isinstance(v, str) else _one_case(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_one_case(v) for v in value]
    return value


def print_json(value: Any) -> None:
    """One JSON document on stdout: the command's whole product with --json."""
    doc = msgspec.json.encode(_one_case(msgspec.to_builtins(value)))
    sys.stdout.write(msgspec.json.format(doc, indent=2).decode() + "\n")
    sys.stdout.flush()


def info(text: str) -> None:
    """Progress, notes and hints for people: stderr, so stdout stays the product."""
    sys.stderr.write(paint(text, "dim", sys.stderr) + "\n")
    sys.stderr.flush()


def warn(text: str) -> None:
    sys.stderr.write(paint(text, "yellow", sys.stderr) + "\n")
    sys.stderr.flush()


def error(text: str, hint: str = "") -> None:
    sys.stderr.write(paint("error:", "red", sys.stderr) + f" {text}\n")
    if hint:
        sys.stderr.write(f"{hint}\n")
    sys.stderr.flush()


class Sink(Protocol):
    """Where a followed log's bytes go."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class LogWriter:
    """Writes a log as it streams in: the task's bytes to `out` (stdout; stderr with
    --json), the lines skyd adds (`[skyd] ...`) to stderr. A line is skyd's when it starts
    with the prefix; the undecided start of a line waits for its next bytes (at most 7),
    everything else is written at once, partial lines included."""

    PREFIX = b"[skyd] "

    def __init__(self, out: BinaryIO | None = None):
        self.out = out or sys.stdout.buffer
        self.err = sys.stderr.buffer
        self._line: BinaryIO | None = None      # where the current line goes; None: at a start
        self._held = b""

    def write(self, data: bytes) -> None:
        buf, self._held = self._held + data, b""
        i, touched = 0, set()
        while i < len(buf):
            if self._line is None:
                rest = buf[i:i + len(self.PREFIX)]
                if len(rest) < len(self.PREFIX) and self.PREFIX.startswith(rest):
                    self._held = buf[i:]
                    break
                self._line = self.err if rest == self.PREFIX else self.out
            end = buf.find(b"\n", i)
            end = len(buf) if end < 0 else end + 1
            self._line.write(buf[i:end])
            touched.add(self._line)
            if buf[end - 1:end] == b"\n":
                self._line = None
            i = end
        for stream in touched:
            stream.flush()

    def close(self) -> None:
        """The stream ended: what was held back is the task's."""
        if self._held:
            self.out.write(self._held)
            self.out.flush()
            self._held = b""
