"""A regular (non-editable) install of this tree in a throw-away virtualenv: skyd and
skyctl as a user's `pip install .` gives them. Used by bench_core (skyctl's cold start),
bench_jobs (`skyctl jobs launch` as processes) and vs_skypilot (skyd's side)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from profiling._daemon import ROOT


def user_install(tmp: Path) -> dict:
    """What a user's `pip install .` gives: a regular (non-editable) install of this tree in
    a throw-away virtualenv under `tmp` (outside the repository). A venv loads no .pth file
    of the base interpreter's site-packages (the sandbox certifi one, the editable finder),
    and pip compiles the bytecode at install time. pip builds from a copy of the tree's
    files (git's tracked and untracked-not-ignored ones), so that nothing is written into
    the repository and no stale build/ there is installed. {"ok": False, "reason": ...}
    when it cannot be made."""
    src, venv = tmp / "src", tmp / "venv"
    out: dict[str, Any] = {"ok": False, "venv": str(venv), "src": str(src)}
    try:
        ls = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, timeout=30)
        if ls.returncode == 0 and (ROOT / ".git").exists():
            for rel in filter(None, ls.stdout.decode().split("\0")):
                f = ROOT / rel
                if f.is_file():
                    (src / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, src / rel)
        else:                   # not a git checkout (an exported tree): all but build output
            shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
                ".git", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", "bench-results",
                ".hypothesis", ".pytest_cache"))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True,
                       timeout=120, check=True)
        p = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(src)],
                           capture_output=True, text=True, timeout=900)
        out["install_s"] = time.perf_counter() - t0
        if p.returncode != 0:
            out["reason"] = f"pip install exited {p.returncode}: {p.stderr.strip()[-1500:]}"
            return out
        probe = subprocess.run(
            [str(venv / "bin" / "python"), "-c",
             "import sys, skyctl, skyd, msgspec; print(skyctl.__file__); print(msgspec.__version__);"
             "print(sys.flags.dont_write_bytecode); print(len(sys.path))"],
            capture_output=True, text=True, timeout=30, cwd=str(tmp),
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        if probe.returncode != 0 or not probe.stdout.startswith(str(venv)):
            out["reason"] = ("installed skyctl not importable from the venv: "
                             f"{probe.stdout}{probe.stderr[-800:]}")
            return out
        lines = probe.stdout.split()
        pycs = list((venv / "lib").glob("python3*/site-packages/skyctl/__pycache__/*.pyc"))
        out.update(ok=True, python=str(venv / "bin" / "python"), skyctl=str(venv / "bin" / "skyctl"),
                   skyctl_module=lines[0], msgspec_version=lines[1],
                   skyctl_pyc_files=len(pycs))
    except (OSError, subprocess.SubprocessError) as e:
        out["reason"] = f"{type(e).__name__}: {e}"
    return out
