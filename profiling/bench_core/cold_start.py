"""Figure 1: `skyctl status` as a fresh process. A regular install in a throw-away venv
(the goal), the editable install (context), interpreter floors and -X importtime."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import msgspec

from profiling._daemon import ROOT, BenchDaemon, with_pycache
from profiling._report import agg
from profiling._venv import user_install
from profiling.bench_core.harness import Config, Table, client_env, time_cmd


def resolve_console_script() -> dict:
    found = shutil.which("skyctl")
    # `python` run through a pyenv shim has the version's bin/ first on PATH, so which()
    # may find the real script; a user's shell finds the shim: time that too.
    shim = Path(os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))) / "shims" / "skyctl"
    out = {"which": found, "resolved": found, "is_pyenv_shim": False,
           "pyenv_shim": str(shim) if shim.exists() else None}
    if not found:
        out["resolved"] = str(Path(sys.executable).parent / "skyctl")
        return out
    try:
        head = Path(found).read_bytes()[:400]
    except OSError:
        head = b""
    if b"pyenv" in head and head.startswith(b"#!/usr/bin/env bash"):
        out["is_pyenv_shim"] = True
        try:
            r = subprocess.run(["pyenv", "which", "skyctl"], capture_output=True, text=True,
                               timeout=10)
            out["resolved"] = r.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            out["resolved"] = None
        if not out["resolved"]:
            out["resolved"] = str(Path(sys.executable).parent / "skyctl")
    return out


def parse_importtime(stderr: str) -> dict[str, dict]:
    """{module: {self_us, cumulative_us, depth}} from -X importtime output."""
    out = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        parts = line[len("import time:"):].split("|")
        if len(parts) != 3:
            continue
        name = parts[2].rstrip()
        depth = (len(name) - len(name.lstrip(" "))) // 2
        out[name.strip()] = {"self_us": int(parts[0]), "cumulative_us": int(parts[1]),
                             "depth": depth}
    return out


def bench_cold(cfg: Config, d: BenchDaemon, tmp: Path) -> dict:
    py = sys.executable
    env = client_env(d)
    cwd = str(tmp)
    script = resolve_console_script()
    # This environment sets PYTHONDONTWRITEBYTECODE=1 and skyd is installed editable, so
    # every start compiles skyctl's and skyd's modules again; the "bytecode cached"
    # variants let Python cache them under the temp dir (never in the repository).
    pyc = str(tmp / "pycache")
    env_pyc = with_pycache(env, pyc)
    site_packages = str(Path(msgspec.__file__).resolve().parent.parent)
    env_nopth = dict(env_pyc, PYTHONPATH=str(ROOT) + os.pathsep + site_packages)
    user = user_install(tmp)
    print(f"  [1] regular install in a venv: "
          f"{'ok' if user['ok'] else 'FAILED: ' + user.get('reason', '?')}", flush=True)
    variants: dict[str, tuple[list[str], dict]] = {}
    if user["ok"]:
        variants["venv skyctl status"] = ([user["skyctl"], "status"], env)
    variants |= {
        "python -m skyctl status": ([py, "-m", "skyctl", "status"], env),
        "console script skyctl status": ([script["resolved"], "status"], env),
    }
    if script["pyenv_shim"]:
        variants["pyenv shim skyctl status"] = ([script["pyenv_shim"], "status"], env)
    variants["python -m skyctl status, bytecode cached"] = ([py, "-m", "skyctl", "status"], env_pyc)
    variants["python -S -m skyctl status, no .pth files, bytecode cached"] = (
        [py, "-S", "-m", "skyctl", "status"], env_nopth)
    floors = {
        "python -c pass": ([py, "-c", "pass"], env),
        "python -c 'import msgspec'": ([py, "-c", "import msgspec"], env),
        "python -S -c pass": ([py, "-S", "-c", "pass"], env),
    }
    if user["ok"]:
        floors["venv python -c pass"] = ([user["python"], "-c", "pass"], env)
        floors["venv python -c 'import msgspec'"] = ([user["python"], "-c", "import msgspec"], env)
    allv = {**variants, **floors}
    for name, (argv, e) in allv.items():       # untimed: fills the bytecode cache
        time_cmd(argv, e, cwd)
    raw: dict[str, list[list[float]]] = {k: [] for k in allv}
    imports: list[list[dict]] = []
    imports_venv: list[list[dict]] = []
    for r in range(cfg.runs):
        per = {k: [] for k in allv}
        for _ in range(cfg.cold_invocations):
            for name, (argv, e) in allv.items():      # interleaved: drift hits all alike
                check = b"warm" if name in variants else None
                per[name].append(time_cmd(argv, e, cwd, check_out=check))
        for k in allv:
            raw[k].append(per[k])
        reps = []
        for _ in range(cfg.importtime_reps):
            p = subprocess.run([py, "-X", "importtime", "-c", "import skyctl.cli"], env=env,
                               cwd=cwd, capture_output=True, text=True, timeout=30)
            reps.append(parse_importtime(p.stderr))
        imports.append(reps)
        if user["ok"]:
            reps = []
            for _ in range(cfg.importtime_reps):
                p = subprocess.run([user["python"], "-X", "importtime", "-c", "import skyctl.cli"],
                                   env=env, cwd=cwd, capture_output=True, text=True, timeout=30)
                reps.append(parse_importtime(p.stderr))
            imports_venv.append(reps)
        print(f"  [1] run {r + 1}/{cfg.runs}: " + ", ".join(
            f"{k} {statistics.median(per[k]) * 1000:.1f} ms" for k in allv), flush=True)
    figures = {k: agg([statistics.median(v) * 1000 for v in raw[k]]) for k in allv}
    modules = ["site", "__editable___skyd_0_1_0_finder", "certifi", "msgspec", "skyd.protocol",
               "skyctl.output", "skyctl.cli", "encodings"]

    def cumulative(runs: list[list[dict]]) -> dict:
        it = {}
        for m in modules:
            per_run = []
            for reps in runs:
                vals = [rep[m]["cumulative_us"] / 1000 for rep in reps if m in rep]
                per_run.append(statistics.median(vals) if vals else None)
            it[m] = agg(per_run)
        return it
    if user["ok"]:
        shutil.rmtree(user["venv"], ignore_errors=True)     # throw-away: gone after the figure
        shutil.rmtree(user["src"], ignore_errors=True)
        user["removed"] = not Path(user["venv"]).exists()
    return {"console_script": script, "site_packages": site_packages, "user_install": user,
            "ms": figures, "importtime_cumulative_ms": cumulative(imports),
            "importtime_cumulative_ms_venv": cumulative(imports_venv) if imports_venv else {},
            "raw_seconds": raw, "importtime_raw": imports, "importtime_raw_venv": imports_venv}


def table_rows(b1: dict, t: Table) -> None:
    ms = b1["ms"]
    script = b1["console_script"]
    user = b1.get("user_install") or {}
    venv_status = "1. `venv/bin/skyctl status`, regular `pip install` in a venv, fresh process"
    if user.get("ok"):
        t.add(venv_status, "≤ 40 ms", ms["venv skyctl status"], " ms", 1, 40)
    else:
        t.row(venv_status, "≤ 40 ms", "n/a", "0", f"not measured: {user.get('reason', 'no venv')}")
    for k in ("venv python -c pass", "venv python -c 'import msgspec'"):
        if k in ms:
            t.add(f"1. floor: `{k.replace('venv python', 'venv/bin/python')}`", "—", ms[k], " ms")
    itv = b1.get("importtime_cumulative_ms_venv") or {}
    for m, label in (("site", "site"), ("msgspec", "msgspec"), ("skyctl.cli", "skyctl.cli")):
        if m in itv:
            t.add(f"1. venv -X importtime cumulative: {label}", "—", itv[m], " ms", 1)
    t.add("1. `python -m skyctl status`, editable install, system interpreter (context)", "(≤ 40 ms)",
          ms["python -m skyctl status"], " ms", 1, 40)
    t.add(f"1. console script `{script['resolved']} status`, editable (context)", "(≤ 40 ms)",
          ms["console script skyctl status"], " ms", 1, 40)
    t.add("1. `python -m skyctl status`, bytecode cached (what-if)", "(≤ 40 ms)",
          ms["python -m skyctl status, bytecode cached"], " ms", 1, 40)
    t.add("1. `python -S -m skyctl status`: no .pth files, bytecode cached (what-if)", "(≤ 40 ms)",
          ms["python -S -m skyctl status, no .pth files, bytecode cached"], " ms", 1, 40)
    if "pyenv shim skyctl status" in ms:
        t.add(f"1. `skyctl status` via pyenv shim ({script['pyenv_shim']})", "—",
              ms["pyenv shim skyctl status"], " ms")
    for k in ("python -c pass", "python -c 'import msgspec'", "python -S -c pass"):
        t.add(f"1. floor: `{k}`", "—", ms[k], " ms")
    it = b1["importtime_cumulative_ms"]
    for m, label in (("site", "site (all .pth files)"),
                     ("certifi", "certifi, imported by _sandboxing_egress_ca.pth"),
                     ("__editable___skyd_0_1_0_finder", "editable-install finder (.pth)"),
                     ("msgspec", "msgspec"), ("skyctl.cli", "skyctl.cli")):
        t.add(f"1. -X importtime cumulative: {label}", "—", it.get(m), " ms", 1)
