"""A box for a server under benchmark: every process it starts, found reliably, capped in
memory, and killed at the end.

Where this process may create a memory cgroup (root, cgroup v1 or v2 with the memory
controller), the box is a child cgroup of our own with a hard memory limit: membership is
the kernel's (cgroup.procs), a fork bomb of 200 MiB workers meets the limit instead of the
machine's, and nothing escapes the final kill. Elsewhere it falls back to an environment
marker that every descendant inherits (found through /proc/PID/environ) and no hard limit;
the benchmark's own memory guard still applies.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import psutil

MiB = 2**20
MARKER = "SKYD_BENCH_BOX"


def _own_memory_cgroup() -> tuple[Path, int] | None:
    """(directory of this process's memory cgroup, cgroup version), if one is writable."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hid, controllers, rel = line.split(":", 2)
        if "memory" in controllers.split(","):          # v1
            for m in mounts:
                fields = m.split()
                if " - cgroup " in m and "memory" in fields[-1].split(","):
                    return Path(fields[4]) / rel.lstrip("/"), 1
    for line in lines:
        hid, controllers, rel = line.split(":", 2)
        if hid == "0" and controllers == "":               # v2
            for m in mounts:
                fields = m.split()
                if " - cgroup2 " in m:
                    root = Path(fields[4]) / rel.lstrip("/")
                    try:
                        if "memory" in (root / "cgroup.subtree_control").read_text().split():
                            return root, 2
                    except OSError:
                        pass
    return None


def _alive(pid: int) -> bool:
    """Exists and is not a zombie (a killed process may wait a while to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


class Box:
    """See the module docstring. `limit_bytes` is the hard cap where cgroups allow it."""

    def __init__(self, name: str, limit_bytes: int | None = None):
        self.token = f"{name}-{uuid.uuid4().hex[:8]}"
        self.dir: Path | None = None
        self.version = 0
        found = _own_memory_cgroup()
        if found is not None:
            parent, version = found
            try:
                d = parent / f"skyd-bench-{self.token}"
                d.mkdir()
                if limit_bytes:
                    limit_file = "memory.limit_in_bytes" if version == 1 else "memory.max"
                    (d / limit_file).write_text(str(int(limit_bytes)))
                self.dir, self.version = d, version
            except OSError:
                self.dir = None
        self.limit_bytes = limit_bytes if self.dir is not None else None

    @property
    def kind(self) -> str:
        return f"cgroup v{self.version} {self.dir}" if self.dir else f"env marker {MARKER}"

    def wrap(self, argv: list[str]) -> list[str]:
        """The command that runs `argv` inside the box (same pid: sh execs it)."""
        if self.dir is not None:
            return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.dir / "cgroup.procs"), *argv]
        return ["env", f"{MARKER}={self.token}", *argv]

    def pids(self) -> list[int]:
        if self.dir is not None:
            try:
                return [int(x) for x in (self.dir / "cgroup.procs").read_text().split()]
            except OSError:
                return []
        needle = f"{MARKER}={self.token}".encode()
        found = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    if needle in Path(entry.path, "environ").read_bytes().split(b"\0"):
                        found.append(int(entry.name))
                except OSError:
                    pass
        return found

    def memory(self, full: bool = False) -> dict:
        """Processes (zombies left out) and their summed RSS; with `full`, USS and PSS too
        (slower: reads smaps)."""
        out = {"processes": 0, "rss_mib": 0.0}
        if full:
            out.update(uss_mib=0.0, pss_mib=0.0)
        for pid in self.pids():
            try:
                p = psutil.Process(pid)
                if p.status() == psutil.STATUS_ZOMBIE:
                    continue
                if full:
                    m = p.memory_full_info()
                    out["uss_mib"] += m.uss / MiB
                    out["pss_mib"] += m.pss / MiB
                else:
                    m = p.memory_info()
                out["rss_mib"] += m.rss / MiB
                out["processes"] += 1
            except psutil.Error:
                pass
        return out

    def charged_peak_mib(self) -> float | None:
        """The kernel's peak charge of the box (v1 max_usage; v2 memory.peak if present)."""
        if self.dir is None:
            return None
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        try:
            return int((self.dir / name).read_text()) / MiB
        except (OSError, ValueError):
            return None

    def oom_kills(self) -> int | None:
        if self.dir is None:
            return None
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            for line in (self.dir / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return None

    def kill(self, timeout: float = 15.0) -> int:
        """SIGKILL everything in the box until it is empty (bounded); how many were killed."""
        killed = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = [p for p in self.pids() if p != os.getpid() and _alive(p)]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except OSError:
                    pass
            time.sleep(0.1)
        return killed

    def close(self) -> None:
        self.kill()
        if self.dir is not None:
            for _ in range(50):     # rmdir fails while the last killed tasks are exiting
                try:
                    self.dir.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
