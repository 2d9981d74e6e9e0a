"""What every benchmark records and prints (the machine, the code that ran, Markdown
tables) and how a run stops cleanly on a signal."""

from __future__ import annotations

import hashlib
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def machine_info() -> dict:
    def sh(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": sh(["nproc"]), "free_g": sh(["free", "-g"]), "cpu_model": model,
            "kernel": platform.release(), "python": sys.version.split()[0],
            "python_executable": sys.executable}


def code_version() -> dict:
    """Which code ran: git HEAD and its subject, local changes in skyd/ and skyctl/, and a
    digest of their sources (the tree may be edited while a benchmark runs)."""
    h = hashlib.sha256()
    for path in sorted([*ROOT.glob("skyd/**/*.py"), *ROOT.glob("skyctl/**/*.py")]):
        h.update(str(path.relative_to(ROOT)).encode())
        try:
            h.update(path.read_bytes())
        except OSError:
            pass

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"head": git("rev-parse", "--short", "HEAD"),
            "subject": git("log", "-1", "--format=%s"),
            "dirty": git("status", "--porcelain", "--", "skyd", "skyctl"),
            "sources_sha256": h.hexdigest()[:16]}


def markdown(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


class Stopped(Exception):
    """Raised in the main thread by SIGINT/SIGTERM so that cleanup still runs."""


def stop_on_signal(signum, frame):
    raise Stopped(f"signal {signum}")


def agg(values: list[float | None]) -> dict:
    """Median with min and max over runs."""
    xs = [v for v in values if v is not None]
    if not xs:
        return {"median": None, "min": None, "max": None, "runs": 0, "values": values}
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": len(xs),
            "values": values}


def fmt_agg(a: dict | None, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    """'median unit (min–max)' of an agg() dict; '—' when absent."""
    if not a or a.get("median") is None:
        return "—"
    m, lo, hi = (a[k] * scale for k in ("median", "min", "max"))
    if a.get("runs", 1) == 1 or lo == hi:
        return f"{m:,.{digits}f}{unit}"
    return f"{m:,.{digits}f}{unit} ({lo:,.{digits}f}–{hi:,.{digits}f})"


def dig(d: Any, path: str) -> Any:
    """d["a"]["b"][0]... for "a.b.0"; None where any step is missing."""
    for key in path.split("."):
        if isinstance(d, dict):
            d = d.get(key)
        elif isinstance(d, list) and key.isdigit() and int(key) < len(d):
            d = d[int(key)]
        else:
            return None
    return d
