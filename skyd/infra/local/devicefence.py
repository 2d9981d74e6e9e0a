"""Keeping a local job to its GPUs with the cgroup v1 `devices` controller, where the host
has it and the daemon runs as root: each node's runner (and so all it starts) goes into a
cgroup of its own that denies every NVIDIA GPU device (char 195:N, /dev/nvidiaN) but those
the job holds. /dev/nvidiactl (195:255), /dev/nvidia-modeset (195:254) and nvidia-uvm (a
major of its own) stay open: every CUDA process needs them.

The runner is in its cgroup before its first instruction, with no window: the daemon's
thread moves itself (`tasks` takes a thread id) into the job's cgroup, forks the runner
there, which inherits it, and moves back.

The cgroups live under the daemon's own devices cgroup, one directory per daemon (a hash
of its control directory: several daemons share a host in tests), one per job node:
`<devices>/<daemon's own>/skyd/<daemon>/<cluster>.<job>.node-<rank>`. One is removed when
its job ends (still holding a process the job left behind, it stays until that ends: that
process stays fenced); empty ones left over are removed at the daemon's start.

Elsewhere — cgroup v2 alone (its device control is an eBPF program; systemd's DeviceAllow=
would also shut every device not listed, InfiniBand's included), no devices controller, not
root — isolation is by environment only (CUDA_VISIBLE_DEVICES)."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Callable, TypeVar

from skyd.sizing import cgroupv1

log = logging.getLogger("skyd.infra.local.devicefence")

NVIDIA_MAJOR = 195
GPU_MINORS = range(254)       # /dev/nvidiaN; 254 is nvidia-modeset, 255 nvidiactl
ENFORCED = "devices-cgroup"   # the values of protocol.GpuHost.isolation
ENVIRONMENT = "environment"
TRIES = 3                     # another daemon's sweep may remove a directory being made

T = TypeVar("T")
_detecting = threading.Lock()    # the first use may be on a thread of the loop's pool


class DeviceFence:
    """`base`: the directory of skyd's device cgroups (under the daemon's own);
    `mount`, `mount_root`: where the devices hierarchy is mounted, and which of its
    cgroups is the mount's root (a container's own, for instance)."""

    def __init__(self, base: Path, mount: Path, mount_root: str = "/") -> None:
        self.base = base
        self.mount = mount
        self.mount_root = mount_root

    def group_dir(self, ctl: str) -> Path:
        """The directory of one daemon's cgroups: from a job node's control directory
        (<state>/jobs/<cluster>/<job>/node-<rank>), the daemon is its state directory."""
        root = str(Path(ctl).parents[2])
        return self.base / hashlib.sha256(root.encode()).hexdigest()[:12]

    def spawn_inside(self, ctl: str, allowed: list[int], start: Callable[[], T]) -> T:
        """Run `start` (a fork+exec) on this thread while it is in a new cgroup that
        denies the GPUs not in `allowed`: what it starts stays there."""
        tid = str(threading.get_native_id())
        home = self._thread_group()
        group = self._enter(ctl, allowed, tid)
        try:
            return start()
        finally:
            cgroupv1.write(home / "tasks", tid)
            with contextlib.suppress(OSError):  # not empty: the runner is in it
                group.rmdir()

    def _enter(self, ctl: str, allowed: list[int], tid: str) -> Path:
        for attempt in range(TRIES):
            group = None
            try:
                group = _fresh(self.group_dir(ctl), _stem(ctl))
                deny = os.open(group / "devices.deny", os.O_WRONLY)
                try:
                    for minor in GPU_MINORS:
                        if minor not in allowed:   # one rule a write: that is the interface
                            os.write(deny, f"c {NVIDIA_MAJOR}:{minor} rwm".encode())
                finally:
                    os.close(deny)
                cgroupv1.write(group / "tasks", tid)
                return group
            except OSError as e:
                if group is not None:
                    with contextlib.suppress(OSError):
                        group.rmdir()
                # Gone under us (another daemon's sweep at its start): make it again.
                if not isinstance(e, FileNotFoundError) or attempt == TRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _thread_group(self) -> Path:
        """This thread's devices cgroup now, as a directory."""
        return self.on_disk(_devices_path(Path("/proc/thread-self/cgroup").read_text()))

    def on_disk(self, group: str) -> Path:
        """The directory of a devices cgroup named as /proc/<pid>/cgroup names it."""
        return cgroupv1.on_disk(self.mount, self.mount_root, group)

    def sweep(self, ctl: str | None = None) -> None:
        """Remove the empty cgroups: one daemon's (that of `ctl`), else every daemon's;
        one that still holds a process (EBUSY) stays."""
        dirs = [self.group_dir(ctl)] if ctl else cgroupv1.subdirs(self.base)
        for d in dirs:
            for group in cgroupv1.subdirs(d):
                with contextlib.suppress(OSError):
                    group.rmdir()
            if ctl is None:
                with contextlib.suppress(OSError):
                    d.rmdir()


def _stem(ctl: str) -> str:
    cluster, job, node = Path(ctl).parts[-3:]
    return f"{cluster}.{job}.{node}"


def _fresh(parent: Path, stem: str) -> Path:
    """A new cgroup: `stem`, else stem.1, stem.2 … (one of that name may still hold a
    process left behind by an earlier job of a cluster of the same name)."""
    parent.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        group = parent / (stem if n == 0 else f"{stem}.{n}")
        try:
            group.mkdir()
            return group
        except FileExistsError:
            with contextlib.suppress(OSError):   # an empty leftover: reuse its name
                group.rmdir()
                group.mkdir()
                return group
            n += 1


def _devices_path(proc_cgroup: str) -> str:
    path = cgroupv1.group_of("devices", proc_cgroup)
    if path is None:
        raise OSError(errno.ENOENT, "no devices cgroup")
    return path


def detect() -> DeviceFence | None:
    """This host's device fence, found once: None where jobs are kept to their GPUs by
    their environment only (the reason is logged)."""
    with _detecting:
        return _detect_once()


@functools.cache
def _detect_once() -> DeviceFence | None:
    fence, why = _try_detect()
    if fence is None:
        log.info("GPU isolation is by environment only: %s", why)
    else:
        log.info("GPU isolation is enforced by the devices cgroup under %s", fence.base)
    return fence


def _try_detect() -> tuple[DeviceFence | None, str]:
    if os.geteuid() != 0:
        return None, "the daemon does not run as root"
    try:
        found = cgroupv1.mount_of("devices", Path("/proc/self/mountinfo").read_text())
        if found is None:
            return None, "no cgroup v1 devices controller is mounted"
        mount, mount_root = found
        fence = DeviceFence(Path(), mount, mount_root)
        own = fence.on_disk(_devices_path(Path("/proc/self/cgroup").read_text()))
        fence.base = own / "skyd"
        fence.base.mkdir(exist_ok=True)
        # A rule written and the cgroup gone again: the controller is ours to use.
        probe = _fresh(fence.base, f"probe-{os.getpid()}")
        try:
            cgroupv1.write(probe / "devices.deny", f"c {NVIDIA_MAJOR}:{GPU_MINORS[-1]} rwm")
        finally:
            probe.rmdir()
    except OSError as e:
        return None, f"the devices cgroup cannot be used: {e}"
    return fence, ""
