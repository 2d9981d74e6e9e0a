"""What this machine can run: the CPUs and memory the daemon may use.

Pure standard library, so the daemon can size itself before anything else is imported.

Detection
---------
``detect()`` reports the CPUs and memory the daemon may *actually* use, which
inside a container or systemd slice is usually less than the host has:

* CPUs: the scheduler affinity mask (or ``sys/devices/system/cpu/online`` when
  reading a fake root), capped by the cgroup CPU quota (v2 ``cpu.max``, v1
  ``cpu.cfs_quota_us / cpu.cfs_period_us``).
* Memory: ``MemTotal`` from ``/proc/meminfo``, capped by the cgroup memory
  limit (v2 ``memory.max``, v1 ``memory.limit_in_bytes``).
* Limits are the minimum over the process's own cgroup and all its ancestors.
  On hybrid hosts the v1 controllers win. Missing or garbled files count as
  "unlimited" so detection never crashes.
* ``SKYD_CPUS`` and ``SKYD_MEMORY`` override detection when set (non-empty).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from skyd.sizing.units import GiB, KiB, format_cpus, parse_size

FALLBACK_MEMORY_BYTES = GiB  # when no figure can be read at all
CPU_FLOOR = 0.1  # a tiny quota still lets us run something
CGROUP_V1_UNLIMITED = 2**60  # v1 reports "no limit" as a huge page-aligned number
DEFAULT_CFS_PERIOD_US = 100_000
ENV_CPUS = "SKYD_CPUS"
ENV_MEMORY = "SKYD_MEMORY"


@dataclass(frozen=True)
class Hardware:
    cpus: float  # effective CPUs (may be fractional, e.g. cgroup quota 1.5)
    memory_bytes: int  # effective memory
    cpu_source: str  # where the CPU figure came from, for humans
    memory_source: str  # where the memory figure came from, for humans


@dataclass(frozen=True)
class _Limit:
    value: float  # CPUs or bytes
    source: str


def detect(
    root: str | os.PathLike = "/",
    pid: str = "self",
    env: Mapping[str, str] | None = None,
) -> Hardware:
    """Detect the CPUs and memory available to process `pid` under `root`.

    Raises ValueError only for invalid SKYD_CPUS / SKYD_MEMORY overrides;
    unreadable system files are treated as "no limit".
    """
    env = os.environ if env is None else env
    root_path = Path(root)
    cpu_override = _env_cpus(env)
    memory_override = _env_memory(env)

    cgroup = _CgroupView(root_path, pid)

    if cpu_override is not None:
        cpu = _Limit(cpu_override, f"env {ENV_CPUS}")
    else:
        cpu = _smallest(_count_cpus(root_path, pid), cgroup.cpu_limit())
        cpu = _Limit(max(cpu.value, CPU_FLOOR), cpu.source)

    if memory_override is not None:
        memory = _Limit(memory_override, f"env {ENV_MEMORY}")
    else:
        memory = _smallest(_physical_memory(root_path), cgroup.memory_limit())

    return Hardware(
        cpus=float(cpu.value),
        memory_bytes=max(1, int(memory.value)),
        cpu_source=cpu.source,
        memory_source=memory.source,
    )


def _smallest(base: _Limit, limit: _Limit | None) -> _Limit:
    """The cgroup limit if it is strictly tighter than the base figure."""
    if limit is not None and limit.value < base.value:
        return limit
    return base


# --- environment overrides -------------------------------------------------


def _env_value(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    # An empty variable counts as unset, so `SKYD_CPUS= skyd ...` clears it.
    if value is None or not value.strip():
        return None
    return value.strip()


def _env_cpus(env: Mapping[str, str]) -> float | None:
    text = _env_value(env, ENV_CPUS)
    if text is None:
        return None
    try:
        cpus = float(text)
    except ValueError:
        cpus = math.nan
    if not math.isfinite(cpus) or cpus <= 0:
        raise ValueError(f"{ENV_CPUS}={text!r} is invalid: use a positive number of CPUs, e.g. 4 or 1.5")
    return cpus


def _env_memory(env: Mapping[str, str]) -> int | None:
    text = _env_value(env, ENV_MEMORY)
    if text is None:
        return None
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise ValueError(f"{ENV_MEMORY}: {exc}") from None
    if size <= 0:
        raise ValueError(f"{ENV_MEMORY}={text!r} is invalid: memory must be more than 0")
    return size


# --- CPUs and physical memory ------------------------------------------------


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None


def _is_real_root(root: Path) -> bool:
    try:
        return root.resolve() == Path("/")
    except OSError:
        return False


def _count_cpus(root: Path, pid: str) -> _Limit:
    if _is_real_root(root):
        try:
            count = len(os.sched_getaffinity(0 if pid == "self" else int(pid)))
        except (AttributeError, OSError, ValueError):
            count = 0
        if count > 0:
            return _Limit(count, f"affinity ({format_cpus(count)})")
    else:
        online = root / "sys/devices/system/cpu/online"
        count = parse_cpu_list(_read_text(online) or "")
        if count > 0:
            return _Limit(count, f"/sys/devices/system/cpu/online ({format_cpus(count)})")
    count = os.cpu_count() or 0
    if count > 0:
        return _Limit(count, f"os.cpu_count() ({format_cpus(count)})")
    return _Limit(1, "fallback (1 CPU)")


def parse_cpu_list(text: str) -> int:
    """Count CPUs in a kernel CPU list like "0-3,5,7-8"; 0 when garbled."""
    text = text.strip()
    if not text:
        return 0
    count = 0
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        if not first.isdigit() or (sep and not last.isdigit()):
            return 0
        low, high = int(first), int(last) if sep else int(first)
        if high < low:
            return 0
        count += high - low + 1
    return count


def _physical_memory(root: Path) -> _Limit:
    text = _read_text(root / "proc/meminfo") or ""
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key.strip() == "MemTotal":
            fields = rest.split()
            if fields and fields[0].isdigit() and int(fields[0]) > 0:
                return _Limit(int(fields[0]) * KiB, "/proc/meminfo")
            break
    # meminfo unreadable: the kernel's page count is the next best thing.
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        total = 0
    if total > 0:
        return _Limit(total, "sysconf (no /proc/meminfo)")
    return _Limit(FALLBACK_MEMORY_BYTES, "fallback (no /proc/meminfo)")


# --- cgroups ------------------------------------------------------------------


class _CgroupView:
    """The cgroup limits that apply to one process under a (possibly fake) root."""

    def __init__(self, root: Path, pid: str) -> None:
        self.root = root
        self.base = root / "sys/fs/cgroup"
        self.v2_path, self.v1_paths = parse_proc_cgroup(_read_text(root / "proc" / pid / "cgroup") or "")
        # A cgroup.controllers file at the top means a pure v2 host: any
        # directory named "memory" there is a child cgroup, not a v1 hierarchy.
        self.pure_v2 = (self.base / "cgroup.controllers").is_file()

    def cpu_limit(self) -> _Limit | None:
        v1_mount = self._v1_mount("cpu")
        if v1_mount is not None:
            return self._walk_min(v1_mount, self.v1_paths.get("cpu", "/"), _v1_cpu, "cgroup v1 cpu.cfs_quota_us")
        v2_mount = self._v2_mount()
        if v2_mount is not None:
            return self._walk_min(v2_mount, self.v2_path or "/", _v2_cpu, "cgroup v2 cpu.max")
        return None

    def memory_limit(self) -> _Limit | None:
        v1_mount = self._v1_mount("memory")
        if v1_mount is not None:
            return self._walk_min(
                v1_mount, self.v1_paths.get("memory", "/"), _v1_memory, "cgroup v1 memory.limit_in_bytes"
            )
        v2_mount = self._v2_mount()
        if v2_mount is not None:
            return self._walk_min(v2_mount, self.v2_path or "/", _v2_memory, "cgroup v2 memory.max")
        return None

    def _v1_mount(self, controller: str) -> Path | None:
        """The v1 hierarchy holding `controller`, e.g. sys/fs/cgroup/cpu,cpuacct."""
        if self.pure_v2:
            return None
        try:
            entries = sorted(self.base.iterdir())
        except OSError:
            return None
        for entry in entries:
            if controller in entry.name.split(",") and entry.is_dir():
                return entry
        return None

    def _v2_mount(self) -> Path | None:
        if self.pure_v2:
            return self.base
        unified = self.base / "unified"  # hybrid hosts mount v2 here
        if (unified / "cgroup.controllers").is_file():
            return unified
        return None

    def _walk_min(
        self, mount: Path, cgroup_path: str, read_level: Callable[[Path], float | None], label: str
    ) -> _Limit | None:
        """Smallest limit over the process's cgroup and its ancestors."""
        best: _Limit | None = None
        for level in _own_and_ancestors(mount, cgroup_path):
            value = read_level(level)
            if value is not None and (best is None or value < best.value):
                best = _Limit(value, f"{label} at {self._display(level)}")
        return best

    def _display(self, path: Path) -> str:
        """Show paths as they would appear on the real machine."""
        try:
            return "/" + path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


def parse_proc_cgroup(text: str) -> tuple[str | None, dict[str, str]]:
    """Parse /proc/<pid>/cgroup into (v2 path, {v1 controller: path})."""
    v2_path: str | None = None
    v1_paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue  # garbled line: skip it, keep the rest
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2_path = path
        else:
            for controller in controllers.split(","):
                if controller:
                    v1_paths[controller] = path
    return v2_path, v1_paths


def _own_and_ancestors(mount: Path, cgroup_path: str) -> list[Path]:
    """Directories from the process's cgroup up to the mount root, leaf first.

    With cgroup namespaces the named path often does not exist under the mount
    (or climbs above it with ".."); then the mount root is the process's cgroup.
    """
    parts = [p for p in cgroup_path.strip().split("/") if p and p != "."]
    if ".." in parts or not (mount.joinpath(*parts)).is_dir():
        parts = []
    levels = [mount.joinpath(*parts[:depth]) for depth in range(len(parts), 0, -1)]
    levels.append(mount)
    return levels


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _v2_cpu(level: Path) -> float | None:
    fields = (_read_text(level / "cpu.max") or "").split()
    if not fields or fields[0] == "max":
        return None
    try:
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else DEFAULT_CFS_PERIOD_US
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def _v2_memory(level: Path) -> int | None:
    text = (_read_text(level / "memory.max") or "").strip()
    if text == "max" or not text.isdigit():
        return None
    value = int(text)
    return value if value > 0 else None


def _v1_cpu(level: Path) -> float | None:
    quota = _read_int(level / "cpu.cfs_quota_us")
    period = _read_int(level / "cpu.cfs_period_us")
    if quota is None or period is None or quota <= 0 or period <= 0:
        return None  # -1 means unlimited
    return quota / period


def _v1_memory(level: Path) -> int | None:
    value = _read_int(level / "memory.limit_in_bytes")
    if value is None or value <= 0 or value >= CGROUP_V1_UNLIMITED:
        return None
    return value
