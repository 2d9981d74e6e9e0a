"""Calibration: the measured memory cost of a long worker, a short request and the idle
daemon, which size the queues (see skyd.sizing.slots.size_slots).

`profiling.calibrate` writes the file from what it measured; without one, skyd uses the
built-in defaults. Stdlib only.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB

@dataclass(frozen=True)
class Calibration:
    long_worker_bytes: int  # unique memory of one running long-request worker, with headroom
    short_request_bytes: int  # memory of one in-flight short request (a coroutine + buffers), with headroom
    daemon_base_bytes: int  # the daemon's own idle footprint
    source: str  # the file path, or "built-in defaults"


DEFAULT_CALIBRATION = Calibration(
    long_worker_bytes=24 * MiB,
    short_request_bytes=512 * KiB,
    daemon_base_bytes=64 * MiB,
    source="built-in defaults",
)

_CALIBRATION_KEYS = ("long_worker_bytes", "short_request_bytes", "daemon_base_bytes")


class CalibrationError(ValueError):
    """A calibration file exists but cannot be used."""


def _valid_bytes(value: object) -> bool:
    # bool is an int subclass; `true` is not a byte count.
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def load_calibration(path: str | os.PathLike | None) -> Calibration:
    """Load a calibration file; defaults when `path` is None or does not exist.

    Missing keys take their default; extra keys are ignored.
    """
    if path is None:
        return DEFAULT_CALIBRATION
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return DEFAULT_CALIBRATION
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"calibration file {path}: cannot read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"calibration file {path}: invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CalibrationError(f"calibration file {path}: expected a JSON object, got {type(data).__name__}")
    values = {}
    for key in _CALIBRATION_KEYS:
        value = data.get(key, getattr(DEFAULT_CALIBRATION, key))
        if not _valid_bytes(value):
            raise CalibrationError(
                f"calibration file {path}: {key!r} must be a positive integer number of bytes, got {value!r}"
            )
        values[key] = value
    return Calibration(**values, source=str(path))


def write_calibration(
    path: str | os.PathLike,
    long_worker_bytes: int,
    short_request_bytes: int,
    daemon_base_bytes: int,
    extra: dict | None = None,
) -> None:
    """Write a calibration file atomically (temp file + rename) as pretty JSON."""
    values = {
        "long_worker_bytes": long_worker_bytes,
        "short_request_bytes": short_request_bytes,
        "daemon_base_bytes": daemon_base_bytes,
    }
    for key, value in values.items():
        if not _valid_bytes(value):
            raise CalibrationError(f"{key!r} must be a positive integer number of bytes, got {value!r}")
    data = {**(extra or {}), **values}  # extra keys never shadow the real ones
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise


