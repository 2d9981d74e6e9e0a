"""README's "Which server": with no --host, SKYD_HOST or config file, skyctl talks to the
per-user daemon if its socket exists, else to the system service's `/run/skyd/skyd.sock`.
Checked against real daemons, with the real skyctl given a `/run/skyd` of its own in a
private mount namespace (nothing on this machine's /run is touched)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

# In the new namespace: an empty /run, the system daemon's directory as /run/skyd, skyctl.
IN_OWN_RUN = 'mount -t tmpfs skyd-test /run && mkdir /run/skyd && mount --bind "$0" /run/skyd && exec "$@"'


def _namespaces_work() -> str | None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "needs root and unshare(1) for a private /run"
    p = subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs skyd-test /run"],
                       capture_output=True, text=True)
    return None if p.returncode == 0 else f"cannot mount in a new namespace: {p.stderr.strip()}"


def skyctl_with_system_dir(system_dir: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    """The real skyctl, no address given, where `system_dir` is /run/skyd."""
    env = {k: v for k, v in os.environ.items() if k != "SKYD_HOST"}
    env.update(PYTHONPATH=str(ROOT), NO_COLOR="1", XDG_STATE_HOME=str(home / "state"),
               XDG_CONFIG_HOME=str(home / "config"))
    return subprocess.run(["unshare", "--mount", "sh", "-c", IN_OWN_RUN, str(system_dir),
                           sys.executable, "-m", "skyctl", *args],
                          capture_output=True, text=True, env=env, timeout=60)


def test_skyctl_falls_back_to_the_system_socket_and_prefers_its_own(make_daemon, workdir):
    why = _namespaces_work()
    if why:
        if os.environ.get("CI"):
            raise AssertionError(why)
        pytest.skip(why)
    # Two real daemons told apart by their long slots: the system service's socket is
    # <sysrun>/skyd.sock, seen as /run/skyd/skyd.sock; the per-user one's is where skyctl
    # looks first, $XDG_STATE_HOME/skyd/skyd.sock.
    system = make_daemon("--long-slots", "3", name="sysrun")
    home = workdir / "home"
    p = skyctl_with_system_dir(system.state_dir, home, "api", "info", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["long_slots"] == 3            # no per-user daemon: the system's
    (home / "state").mkdir(parents=True)
    mine = make_daemon("--long-slots", "5", name="home/state/skyd")
    assert mine.socket == home / "state" / "skyd" / "skyd.sock"
    p = skyctl_with_system_dir(system.state_dir, home, "api", "info", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["long_slots"] == 5            # its own, once it exists
