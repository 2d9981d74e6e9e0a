"""Set-up, outside the network namespace: SkyPilot in its own virtualenv (the only step
that needs the package registry), then this command again inside a namespace that has only
loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from profiling._daemon import ROOT
from profiling.vs_skypilot.config import NETNS_FLAG, SKYPILOT_VERSION


def ensure_skypilot(venv: Path) -> dict:
    sky = venv / "bin" / "sky"
    out: dict[str, Any] = {"venv": str(venv)}
    if not sky.exists():
        print(f"installing skypilot=={SKYPILOT_VERSION} into {venv} (once)...", flush=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        p = subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                            f"skypilot=={SKYPILOT_VERSION}", "aiohttp"],
                           capture_output=True, text=True, timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"pip install skypilot failed: {p.stderr[-1500:]}")
        out["install_s"] = time.perf_counter() - t0
    v = subprocess.run([str(venv / "bin" / "python"), "-c",
                        "import importlib.metadata as m; print(m.version('skypilot'))"],
                       capture_output=True, text=True, timeout=60)
    out["version"] = v.stdout.strip()
    if out["version"] != SKYPILOT_VERSION:
        raise RuntimeError(f"{venv} has skypilot {out['version']!r}, not {SKYPILOT_VERSION}")
    return out


def enter_netns(argv: list[str]) -> int | None:
    """Re-run this command in a new network namespace with only loopback; its exit code,
    or None if we are already inside one (or cannot make one: then say so)."""
    if os.environ.get(NETNS_FLAG) == "1":
        return None
    env = dict(os.environ, **{NETNS_FLAG: "1"})
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        print("cannot create a network namespace (unshare --net): running on the host's "
              "loopback instead", flush=True)
        return None
    cmd = ["unshare", "--net", "--", sys.executable, "-m", "profiling.vs_skypilot", *argv]
    return subprocess.run(cmd, env=env, cwd=str(ROOT)).returncode
