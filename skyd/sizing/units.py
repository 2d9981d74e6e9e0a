"""Sizes and CPU counts as people write and read them (binary units)."""

from __future__ import annotations

import re
from fractions import Fraction

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_UNIT_BYTES = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": TiB}


def parse_size(text: str) -> int:
    """Parse a human memory size into bytes.

    Accepts a number (integer or decimal) with an optional unit K, M, G or T,
    optionally followed by "i" and/or "B", case-insensitively: "8G", "8Gi",
    "8GiB", "8gb", "1.5G", "512M", "1024K", "1048576", "1048576B".
    All units are binary (powers of 1024): "8GB" means 8 GiB, because that is
    what people mean when they size a VM or a pod.
    """
    match = _SIZE_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"invalid size {text!r}: use e.g. 8G, 512M")
    number, unit, binary, byte_suffix = match.groups()
    if binary and not unit:  # a bare "i" ("12i", "12iB") is not a unit
        raise ValueError(f"invalid size {text!r}: use e.g. 8G, 512M")
    # Fraction keeps big byte counts exact (a float would round above 2**53).
    return round(Fraction(number) * _UNIT_BYTES[unit.lower()])


def format_size(n: int) -> str:
    """Render bytes for humans: "8.0 GiB", "512 MiB", "1.5 MiB", "900 KiB".

    GiB and TiB always show one decimal; smaller units show one only when
    the value is not a whole number of that unit.
    """
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, name in ((TiB, "TiB"), (GiB, "GiB")):
        if n >= unit:
            return f"{sign}{n / unit:.1f} {name}"
    for unit, name in ((MiB, "MiB"), (KiB, "KiB")):
        if n >= unit:
            if n % unit == 0:
                return f"{sign}{n // unit} {name}"
            return f"{sign}{n / unit:.1f} {name}"
    return f"{sign}{n} B"


def format_cpus(cpus: float) -> str:
    """"1 CPU", "2 CPUs", "1.5 CPUs"."""
    count = f"{round(cpus, 2):g}"
    return f"{count} CPU" if count == "1" else f"{count} CPUs"
