"""`skyd capacity`: how many long and short requests a machine can run at once.

Shows the slot sizing from skyd.sizing.slots for this machine and for the standard
machine sizes, next to the figures SkyPilot documents for its API server, so
operators can pick a VM size before deploying.
"""

from __future__ import annotations

import json
import math
import sys
from typing import TextIO

from skyd.sizing.calibration import Calibration, load_calibration
from skyd.sizing.hardware import Hardware, detect
from skyd.sizing.slots import size_slots
from skyd.sizing.units import GiB, format_cpus, format_size, parse_size

STANDARD_MACHINES = [(4, "8Gi"), (16, "32Gi"), (32, "64Gi"), (64, "128Gi"), (128, "256Gi")]

# (cpus, GiB) -> (long, short) concurrency from SkyPilot's API server docs.
SKYPILOT_DOCUMENTED = {
    (4, 8): (8, 11),
    (16, 32): (32, 60),
    (32, 64): (64, 145),
    (64, 128): (128, 299),
    (128, 256): (256, 589),
}

THIS_MACHINE = "this machine"

_COLUMNS = ("CPUs", "MEMORY", "LONG", "SHORT", "SKYPILOT LONG", "SKYPILOT SHORT")


def _documented(cpus: float, memory_bytes: int) -> tuple[int, int] | None:
    """SkyPilot's figures, only for machines that exactly match a documented size."""
    if cpus != int(cpus) or memory_bytes % GiB:
        return None
    return SKYPILOT_DOCUMENTED.get((int(cpus), memory_bytes // GiB))


def capacity_rows(machines: list[tuple[float, int]], calib: Calibration) -> list[dict]:
    """One row per (cpus, memory_bytes) machine; memory may also be a size string."""
    rows = []
    for cpus, memory in machines:
        memory_bytes = parse_size(memory) if isinstance(memory, str) else int(memory)
        hw = Hardware(cpus=float(cpus), memory_bytes=memory_bytes, cpu_source="given", memory_source="given")
        slots = size_slots(hw, calib)
        documented = _documented(hw.cpus, memory_bytes)
        rows.append(
            {
                "cpus": hw.cpus,
                "memory_bytes": memory_bytes,
                "memory": format_size(memory_bytes),
                "long": slots.long,
                "short": slots.short,
                "long_bound": slots.long_bound,
                "short_bound": slots.short_bound,
                "skypilot_long": documented[0] if documented else None,
                "skypilot_short": documented[1] if documented else None,
            }
        )
    return rows


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _cpus_cell(cpus: float) -> str:
    return format_cpus(cpus).split()[0]  # "1.5 CPUs" -> "1.5"


def calibration_line(calib: Calibration) -> str:
    return (
        f"sized with {calib.source}: long worker {format_size(calib.long_worker_bytes)}, "
        f"short request {format_size(calib.short_request_bytes)}, "
        f"daemon {format_size(calib.daemon_base_bytes)}"
    )


def render_table(rows: list[dict], calib: Calibration) -> str:
    """A plain aligned table (numbers right-aligned) plus the calibration line.

    Rows carrying a "label" (e.g. "this machine") get it appended after the
    last column.
    """
    body = [
        [
            _cpus_cell(row["cpus"]),
            row["memory"],
            _cell(row["long"]),
            _cell(row["short"]),
            _cell(row["skypilot_long"]),
            _cell(row["skypilot_short"]),
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [list(_COLUMNS), *body]) for i in range(len(_COLUMNS))]
    lines = ["  ".join(title.rjust(width) for title, width in zip(_COLUMNS, widths))]
    for row, cells in zip(rows, body):
        line = "  ".join(cell.rjust(width) for cell, width in zip(cells, widths))
        if row.get("label"):
            line += f"  ({row['label']})"
        lines.append(line)
    lines.append("")
    lines.append(calibration_line(calib))
    return "\n".join(lines) + "\n"


def _detected_line(hw: Hardware, cpus_detected: bool, memory_detected: bool) -> str:
    """Say where the detected figures came from, so surprises can be traced."""
    parts = []
    if cpus_detected:
        parts.append(f"{format_cpus(hw.cpus)} via {hw.cpu_source}")
    if memory_detected:
        parts.append(f"{format_size(hw.memory_bytes)} via {hw.memory_source}")
    return "detected: " + "; ".join(parts) + "\n"


def _machines_to_show(cpus: float | None, memory: str | None) -> tuple[list[tuple[float, int]], Hardware | None]:
    """The machines to size, and the detected hardware when detection was used."""
    memory_bytes = parse_size(memory) if memory is not None else None
    if memory_bytes is not None and memory_bytes <= 0:
        raise ValueError(f"invalid size {memory!r}: memory must be more than 0")
    if cpus is not None and (not math.isfinite(cpus) or cpus <= 0):
        raise ValueError(f"invalid CPU count {cpus!r}: use a positive number, e.g. 4 or 1.5")
    if cpus is not None and memory_bytes is not None:
        return [(cpus, memory_bytes)], None
    hw = detect()
    if cpus is None and memory_bytes is None:
        standard = [(float(c), parse_size(m)) for c, m in STANDARD_MACHINES]
        return [(hw.cpus, hw.memory_bytes), *standard], hw
    return [(cpus if cpus is not None else hw.cpus, memory_bytes if memory_bytes is not None else hw.memory_bytes)], hw


def run(
    cpus: float | None,
    memory: str | None,
    as_json: bool,
    calibration_path: str | None,
    out: TextIO | None = None,
) -> int:
    """Print the capacity table (or JSON); 0 on success, 2 on bad input."""
    out = sys.stdout if out is None else out  # looked up now so redirection works
    try:
        calib = load_calibration(calibration_path)
        machines, hw = _machines_to_show(cpus, memory)
    except ValueError as exc:  # includes CalibrationError
        print(f"skyd capacity: error: {exc}", file=sys.stderr)
        return 2

    rows = capacity_rows(machines, calib)
    if hw is not None and cpus is None and memory is None:
        rows[0]["label"] = THIS_MACHINE

    if as_json:
        document: dict = {
            "calibration": {
                "source": calib.source,
                "long_worker_bytes": calib.long_worker_bytes,
                "short_request_bytes": calib.short_request_bytes,
                "daemon_base_bytes": calib.daemon_base_bytes,
            },
            "rows": rows,
        }
        if hw is not None:
            document["detected"] = {
                "cpus": hw.cpus,
                "memory_bytes": hw.memory_bytes,
                "cpu_source": hw.cpu_source,
                "memory_source": hw.memory_source,
            }
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        out.write(render_table(rows, calib))
        if hw is not None:
            out.write(_detected_line(hw, cpus is None, memory is None))
    return 0

