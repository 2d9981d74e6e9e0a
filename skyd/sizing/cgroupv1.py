"""Finding one controller's cgroup v1 hierarchy and a process's place in it, for the
cgroups the daemon makes itself: the device fence (skyd.infra.local.devicefence) and the
cpu pair where work yields to the daemon (cpugroups.py)."""

from __future__ import annotations

import os
from pathlib import Path


def mount_of(controller: str, mountinfo: str) -> tuple[Path, str] | None:
    """Where the v1 hierarchy holding `controller` is mounted, and which cgroup is its
    root there (a container's own, for instance); None: not mounted."""
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        fstype, options = fields[sep + 1], fields[sep + 3] if len(fields) > sep + 3 else ""
        if fstype == "cgroup" and controller in options.split(","):
            return Path(fields[4]), fields[3]
    return None


def group_of(controller: str, proc_cgroup: str) -> str | None:
    """The cgroup of `controller` in a /proc/<pid>/cgroup text ("5:devices:/a/b",
    "4:cpu,cpuacct:/")."""
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return None


def on_disk(mount: Path, mount_root: str, group: str) -> Path:
    """The directory of a cgroup named as /proc/<pid>/cgroup names it."""
    root = mount_root.rstrip("/")
    if root and group != root and not group.startswith(root + "/"):
        return mount               # not under the mount's root: the root is what we see
    return mount / group[len(root):].lstrip("/")


def write(path: Path, text: str) -> None:
    """One write to a cgroup file (each write is one rule or one id: the interface)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def subdirs(d: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(d) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []
