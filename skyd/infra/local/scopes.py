"""Local jobs out of the daemon's cgroup: where systemd runs the host, each job node's
runner starts through `systemd-run --scope`, in a transient scope of its own under
skyd-jobs.slice, so a runaway job is charged to its scope (not to skyd.service: its memory
is not the service's, and the OOM killer or an admin's cap on the slice meets the job, not
the daemon) and a stop or restart of the service never reaches it.

- `systemd-run --scope` asks systemd to put its own pid in the new scope, waits until it
  is there, then execs the command in place: the runner keeps the pid (and start time)
  the daemon tracks, its session, its descriptors and its environment; no window in which
  it runs outside the scope.
- A system scope needs root, so the child starts as root with its owner's groups and
  systemd-run switches gid then uid before it execs (skyd.privilege.scope_identity).
- The device fence (cgroup v1, devicefence.py) and a scope do not combine: on v1 systemd
  moves a pid it adds to a scope in every hierarchy it manages, the devices one included
  (to the nearest cgroup of its own there), which would take the runner out of the
  fence. A runner the fence takes (a host with GPUs, the fence usable) starts without a
  scope, as before: keeping a job off others' GPUs comes first. Under the shipped unit
  the fence is never usable (ProtectControlGroups=yes), so there every job gets a scope.

Elsewhere — systemd not PID 1 (containers, CI), no systemd-run, a daemon not run as root —
jobs stay in the daemon's cgroup (skyd.service: KillMode=process keeps them across a
restart). Which applies is found once, at the daemon's start, and logged."""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("skyd.infra.local.scopes")

BOOTED = Path("/run/systemd/system")   # exists while systemd is PID 1 (sd_booted(3))
SLICE = "skyd-jobs.slice"              # every job's scope; an admin may cap it (MemoryMax=)
EXPAND_OPTION_SINCE = 254              # systemd-run --expand-environment=
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")    # what a unit name may hold


@dataclass(frozen=True)
class Scopes:
    """`systemd_run`: its absolute path (a runner's PATH is its owner's login PATH);
    `version`: systemd's (0: not known)."""

    systemd_run: str
    version: int = 0

    def command(self, ctl: str, identity: list[str], argv: list[str]) -> list[str]:
        """`argv` run in a new scope for the job node whose control directory is `ctl`
        (<state>/jobs/<cluster>/<job>/node-<rank>); `identity`: who it runs as
        (skyd.privilege.scope_identity)."""
        cluster, job, node = Path(ctl).parts[-3:]
        rank = node.removeprefix("node-")
        # A random tail: a runner started again for the same node (after a daemon crash)
        # must not meet the first one's scope.
        unit = (f"skyd-job-{_UNSAFE.sub('_', cluster)[:64]}-{_UNSAFE.sub('_', job)}-"
                f"{_UNSAFE.sub('_', rank)}-{secrets.token_hex(3)}.scope")
        options = [
            "--scope", "--quiet", "--collect", f"--slice={SLICE}", f"--unit={unit}",
            # Else the description is the whole command line: the runner's script.
            f"--description=skyd job {job} of cluster {cluster}, node {rank}",
            # Its own memory cgroup on cgroup v1 hosts too (v2 counts it anyway).
            "-p", "MemoryAccounting=yes",
        ]
        if self.version >= EXPAND_OPTION_SINCE:
            # Never expand the runner's "$1" as systemd-run's own variable (not the
            # default for scopes yet, announced to become it).
            options.append("--expand-environment=no")
        return [self.systemd_run, *options, *identity, "--", *argv]


def detect(booted: Path = BOOTED, path: str | None = None) -> Scopes | None:
    """Whether local jobs get scopes here, logged: systemd is PID 1 (`booted` exists),
    systemd-run is on `path` (the daemon's PATH by default) and the daemon is root."""
    scopes, why = _try_detect(booted, os.environ.get("PATH", os.defpath) if path is None
                              else path)
    if scopes is None:
        log.info("local jobs run in the daemon's own cgroup: %s", why)
    else:
        log.info("local jobs run each node in a scope of its own under %s (%s, systemd %s)",
                 SLICE, scopes.systemd_run, scopes.version or "of unknown version")
    return scopes


def _try_detect(booted: Path, path: str) -> tuple[Scopes | None, str]:
    if not booted.is_dir():
        return None, f"systemd is not PID 1 here (no {booted})"
    found = shutil.which("systemd-run", path=path)
    if found is None:
        return None, "systemd-run is not on PATH"
    if os.geteuid() != 0:
        return None, "the daemon does not run as root (a system scope needs root)"
    return Scopes(os.path.abspath(found), _version(found)), ""


def _version(systemd_run: str) -> int:
    """systemd's version from `systemd-run --version` ("systemd 255 (255.4-1)"); 0 when
    it does not say."""
    try:
        out = subprocess.run([systemd_run, "--version"], capture_output=True, text=True,
                             timeout=10, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    m = re.match(r"systemd (\d+)", out)
    return int(m.group(1)) if m else 0
