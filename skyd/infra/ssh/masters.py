"""Ending the ssh masters of a state directory. Every ssh multiplexes through a master
(ControlPersist: a background `ssh: <socket> [mux]` process behind `<state>/ssh/<who>/%C`)
that would outlive the daemon by minutes, and with it every command still running through
it (job watchers, log tails). The daemon ends them all when it stops, and at start those a
killed daemon left, before it serves. Jobs on the nodes are detached: they go on.

A master runs as whoever made its socket (the daemon, a worker as its requester, or the
daemon acting as a cluster's owner): it is asked to exit by that account, not by root, and
killed by pid when it does not answer in time (hung, or its account is gone)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

from skyd import privilege

log = logging.getLogger("skyd.infra.ssh.masters")

EXIT_TIMEOUT = 5.0      # seconds for every master together to answer `ssh -O exit`


def control_sockets(ssh_dir: Path) -> list[tuple[str, int]]:
    """(path, owner uid) of every socket in `<ssh_dir>/<who>/`."""
    found: list[tuple[str, int]] = []
    with contextlib.suppress(FileNotFoundError), os.scandir(ssh_dir) as whos:
        for who in whos:
            if not who.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError), os.scandir(who.path) as entries:
                for entry in entries:
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISSOCK(st.st_mode):
                        found.append((entry.path, st.st_uid))
    return found


def close_masters(ssh_dir: str | Path, timeout: float = EXIT_TIMEOUT) -> int:
    """End the master behind every control socket under `ssh_dir`, all at once, within
    about `timeout` seconds: `ssh -O exit`, then SIGKILL for one that did not go. Sockets
    whose master is gone already are removed. Blocking. Returns how many masters ended."""
    sockets = control_sockets(Path(ssh_dir))
    if not sockets:
        return 0
    asked = [(path, uid, _ask_exit(path, uid)) for path, uid in sockets]
    deadline = time.monotonic() + timeout
    ended, unanswered = 0, []
    for path, uid, proc in asked:
        if proc is not None and _wait(proc, deadline) == 0:
            ended += 1
        else:
            unanswered.append((path, uid))
    if unanswered:
        ended += _kill_masters(dict(unanswered))
    return ended


def _ask_exit(path: str, uid: int) -> subprocess.Popen | None:
    """`ssh -O exit` on one control socket, as its owner; None if it cannot start."""
    argv = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes",
            "-o", "ControlPath=" + path.replace("%", "%%"), "-O", "exit", "--", "skyd-master"]
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True,
                                **_as_owner(uid))
    except OSError as e:
        log.warning("cannot ask the ssh master of %s to exit: %s", path, e)
        return None


def _wait(proc: subprocess.Popen, deadline: float) -> int | None:
    """Its exit status, or None (and it is killed) past the deadline."""
    try:
        return proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def _as_owner(uid: int) -> dict[str, Any]:
    """Popen arguments that run ssh as `uid` (from root), with a clean environment."""
    if os.geteuid() != 0 or uid == os.geteuid():
        return {}
    env = {"PATH": privilege.STANDARD_PATH, "HOME": "/", "LANG": "C.UTF-8"}
    with contextlib.suppress(KeyError, OSError):
        env = privilege.login_env(uid)
    return {"user": uid, "group": _gid_of(uid), "extra_groups": [], "env": env, "cwd": "/"}


def _gid_of(uid: int) -> int:
    try:
        return privilege.identity(uid)[1]
    except (KeyError, OSError):
        return uid


def _kill_masters(sockets: dict[str, int]) -> int:
    """SIGKILL the `ssh: <socket> [mux]` process of each socket (run by the socket's
    owner); remove a socket whose master is gone. How many were killed."""
    titles = {f"ssh: {path} [mux]": (path, uid) for path, uid in sockets.items()}
    killed = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            owner = os.stat(entry.path).st_uid
        except OSError:
            continue
        match = titles.get(title)
        if match is not None and owner == match[1]:
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
    for path in sockets:
        with contextlib.suppress(OSError):
            os.unlink(path)
    if killed:
        log.warning("killed %d ssh masters that did not answer `ssh -O exit`", killed)
    return killed
