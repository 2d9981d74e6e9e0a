"""Core benchmarks of skyd and skyctl, measured against real daemons on this machine.

    python -m profiling.bench_core [--runs N] [--quick] [--out FILE.json] [--only 1,2,...]

Starts its own daemons in a temporary directory under /tmp, measures, stops everything it
started, prints a Markdown table (each figure: the median over runs, with min and max)
and writes every raw sample to --out (default bench-results/core.json).

  1  `skyctl status` as a fresh process: a regular install in a throw-away venv (the goal),
     the editable install (context), interpreter floors and -X importtime
  2  short requests (api_status, status): 1/10/50 persistent clients, req/s and latency
  3  --async Launch bursts accepted per second, each one durable (kill -9, count rows)
  4  accepted -> running in its worker, on an idle daemon (new and reused cluster)
  5  cancel of a running launch until its whole process group is gone
  6  memory: the daemon idle and after the rest; USS per running long worker
  7  `api status` with 100,000 requests stored; start until answering

Only the Unix socket is used; every loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import psutil

from profiling._report import agg, code_version, machine_info, markdown, stop_on_signal
from profiling._daemon import (ROOT, BenchDaemon, bounded_wait, daemon_env, kill_leftovers, ours,
                               pid_alive, pid_state, with_pycache)
from skyd import protocol
from skyd.protocol import (Accepted, ApiCancel, ApiStatus, Chunk, Error, Hello, Launch, Result,
                           ServerMsg, Submit, encode_frame)
from skyd.taskspec import Resources, Task

MiB = 1024 * 1024
_dec = msgspec.msgpack.Decoder(ServerMsg)
_enc = msgspec.msgpack.Encoder()
WORKER_LINE = re.compile(rb"\[skyd\] running \w+ in worker process (\d+)")
WORKER_FIRST = (b"Provisioning cluster", b"Reusing cluster")


class Config:
    def __init__(self, runs: int, quick: bool):
        self.runs = runs
        self.quick = quick
        self.cold_invocations = 10 if quick else 30
        self.importtime_reps = 3 if quick else 5
        self.load_warmup = 0.5 if quick else 1.0
        self.load_duration = 2.0 if quick else 5.0
        self.load_levels = [1, 10, 50]
        self.burst_n = 1000 if quick else 5000
        self.burst_n_single = 300 if quick else 1000
        self.latency_samples = 8 if quick else 20
        self.cancel_samples = 4 if quick else 10
        self.mem_launches = 8
        self.big_rows = 100_000
        self.query_reps = 10 if quick else 20
        self.cli_reps = 5 if quick else 10


# ---- small helpers ----------------------------------------------------------------------------

def client_env(d: BenchDaemon) -> dict[str, str]:
    """A user's environment: the installed package (no PYTHONPATH), the daemon's socket."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYD_")}
    env.pop("PYTHONPATH", None)
    env["SKYD_HOST"] = f"unix://{d.socket}"
    env["NO_COLOR"] = "1"
    return env


def time_cmd(argv: list[str], env: dict, cwd: str, timeout: float = 30.0,
             check_out: bytes | None = None) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{argv} -> {p.returncode}: {p.stderr.decode(errors='replace')[-500:]}")
    if check_out is not None and check_out not in p.stdout:
        raise RuntimeError(f"{argv}: expected {check_out!r} in output, got {p.stdout[:300]!r}")
    return dt


def spares_of(d: BenchDaemon) -> dict[str, list[int]]:
    """The daemon's process tree by kind (zombies excluded)."""
    out: dict[str, list[int]] = {"daemon": [d.pid], "resource_tracker": [], "forkserver": [],
                                 "workers": [], "other": []}
    try:
        kids = psutil.Process(d.pid).children()
    except psutil.Error:
        return out
    for k in kids:
        try:
            if k.status() == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(k.cmdline())
        except psutil.Error:
            continue
        if "resource_tracker" in cmd:
            out["resource_tracker"].append(k.pid)
        elif "forkserver" in cmd:
            out["forkserver"].append(k.pid)
            try:
                for w in k.children():
                    if w.status() != psutil.STATUS_ZOMBIE:
                        out["workers"].append(w.pid)
            except psutil.Error:
                pass
        else:
            out["other"].append(k.pid)
    return out


def mem_of(pid: int) -> dict | None:
    try:
        m = psutil.Process(pid).memory_full_info()
    except psutil.Error:
        return None
    return {"rss": m.rss, "uss": m.uss, "pss": getattr(m, "pss", None)}


def wait_spares(d: BenchDaemon, n: int = 2, timeout: float = 5.0) -> bool:
    """Idle daemon: exactly the spares under the forkserver, nothing busy."""
    return bool(bounded_wait(lambda: len(spares_of(d)["workers"]) == n and not d_busy(d),
                             timeout, 0.01))


def d_busy(d: BenchDaemon) -> bool:
    info = d.call(protocol.ApiInfo())
    return bool(info.long_running or info.long_pending)


def launch_wait(d: BenchDaemon, op: Launch, timeout: float = 60.0) -> Result:
    with d.connect(timeout=timeout) as c:
        frames = list(c.submit(op, True))
    res = frames[-1]
    if not isinstance(res, Result) or res.status is not protocol.Status.SUCCEEDED:
        raise RuntimeError(f"launch failed: {frames[-3:]}")
    return res


def submit_async(d: BenchDaemon, op: Launch) -> str:
    frames = d.frames(op, wait=False)
    if not isinstance(frames[-1], Accepted):
        raise RuntimeError(f"not accepted: {frames}")
    return frames[-1].request_id


def request_status(d: BenchDaemon, rid: str) -> protocol.RequestRecord:
    return d.call(ApiStatus(request_ids=[rid]))[0]


def worker_pid_of(d: BenchDaemon, rid: str) -> int | None:
    try:
        m = WORKER_LINE.search(d.request_log(rid).read_bytes())
    except OSError:
        return None
    return int(m.group(1)) if m else None


# ---- 1: skyctl as a fresh process -------------------------------------------------------------

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
        out[name.strip()] = {"self_us": int(parts[0]), "cumulative_us": int(parts[1]), "depth": depth}
    return out


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
            out["reason"] = f"installed skyctl not importable from the venv: {probe.stdout}{probe.stderr[-800:]}"
            return out
        lines = probe.stdout.split()
        pycs = list((venv / "lib").glob("python3*/site-packages/skyctl/__pycache__/*.pyc"))
        out.update(ok=True, python=str(venv / "bin" / "python"), skyctl=str(venv / "bin" / "skyctl"),
                   skyctl_module=lines[0], msgspec_version=lines[1],
                   skyctl_pyc_files=len(pycs))
    except (OSError, subprocess.SubprocessError) as e:
        out["reason"] = f"{type(e).__name__}: {e}"
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


# ---- 2: short-request load --------------------------------------------------------------------

def run_generator(spec: dict, timeout: float) -> dict:
    p = subprocess.run([sys.executable, "-m", "profiling._client", json.dumps(spec)],
                       capture_output=True, text=True, timeout=timeout, env=daemon_env(),
                       cwd=str(ROOT))
    if p.returncode != 0:
        raise RuntimeError(f"load generator failed ({p.returncode}): {p.stderr[-2000:]}")
    return json.loads(p.stdout)


def bench_short(cfg: Config, d: BenchDaemon) -> dict:
    raw: dict[str, list] = {"api_status": [], "status": []}
    for r in range(cfg.runs):
        for op in raw:
            spec = {"mode": "short", "op": op, "socket": str(d.socket), "levels": cfg.load_levels,
                    "warmup": cfg.load_warmup, "duration": cfg.load_duration, "daemon_pid": d.pid}
            budget = len(cfg.load_levels) * (cfg.load_warmup + cfg.load_duration + 15) + 30
            out = run_generator(spec, budget)
            raw[op].append(out["levels"])
            print(f"  [2] run {r + 1}/{cfg.runs} {op}: " + "; ".join(
                f"{lv['clients']}c {lv['req_per_s']:.0f}/s p99 "
                f"{lv['latencies_ms_summary']['p99']:.2f} ms gen {lv['generator_cpu_cores']:.2f} "
                f"daemon {lv['daemon_cpu_cores'] or 0:.2f} cores" for lv in out["levels"]), flush=True)
    figures: dict[str, dict] = {}
    for op, runs in raw.items():
        for i, clients in enumerate(cfg.load_levels):
            lv = [run[i] for run in runs]
            key = f"{op}@{clients}"
            figures[key] = {
                "req_per_s": agg([x["req_per_s"] for x in lv]),
                **{q: agg([x["latencies_ms_summary"][q] for x in lv]) for q in ("p50", "p95", "p99", "max")},
                "generator_cpu_cores": agg([x["generator_cpu_cores"] for x in lv]),
                "daemon_cpu_cores": agg([x["daemon_cpu_cores"] for x in lv]),
                "errors": sum(len(x["errors"]) for x in lv),
            }
    return {"figures": figures, "raw": raw}


# ---- 3: --async bursts, durable -----------------------------------------------------------

def count_rows(db: Path, ids: list[str]) -> dict:
    con = sqlite3.connect(str(db), timeout=10)
    try:
        total = con.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        by_status = dict(con.execute("SELECT status, COUNT(*) FROM requests GROUP BY status"))
        stored = {r[0] for r in con.execute("SELECT id FROM requests")}
    finally:
        con.close()
    missing = [i for i in ids if i not in stored]
    return {"rows": total, "by_status": by_status, "accepted_missing": len(missing)}


def bench_burst(cfg: Config, root: Path, registry: list[BenchDaemon]) -> dict:
    # "50d": the same 50-client burst on a daemon with its default (sized) long slots.
    raw: dict[str, list] = {"50": [], "1": [], "50d": []}
    for r in range(cfg.runs):
        for key, clients, n, args in (("50", 50, cfg.burst_n, ["--long-slots", "1"]),
                                      ("1", 1, cfg.burst_n_single, ["--long-slots", "1"]),
                                      ("50d", 50, cfg.burst_n, [])):
            d = BenchDaemon(root, f"b{r}c{key}", args)
            registry.append(d)
            d.start()
            hold = submit_async(d, Launch(task=Task(setup="sleep 600", name="hold"), cluster="hold"))
            ok = bounded_wait(lambda: request_status(d, hold).status is protocol.Status.RUNNING
                              and worker_pid_of(d, hold) is not None, 15, 0.02)
            if not ok:
                raise RuntimeError("the hold request did not start")
            spec = {"mode": "burst", "socket": str(d.socket), "n": n, "clients": clients,
                    "cluster": "hold", "daemon_pid": d.pid, "timeout": 240}
            out = run_generator(spec, 300)
            ids = out.pop("accepted_ids")
            info = d.call(protocol.ApiInfo())
            pending_before_kill = info.long_pending
            out["long_slots"] = info.long_slots
            d.kill9()
            rows = count_rows(d.db_path, ids)
            out["durability"] = {**rows, "expected_rows": len(ids) + 1,
                                 "pending_reported_before_kill": pending_before_kill,
                                 "durable": rows["rows"] == len(ids) + 1 and rows["accepted_missing"] == 0}
            kill_leftovers(d.state_dir, d.sessions)
            raw[key].append(out)
            print(f"  [3] run {r + 1}/{cfg.runs} {clients} client(s), long slots {out['long_slots']}: "
                  f"{out['accepted']}/{n} accepted "
                  f"in {out['elapsed_s']:.2f} s = {out['accepted_per_s']:.0f}/s, p99 "
                  f"{out['latencies_ms_summary']['p99']:.2f} ms; after kill -9: {rows['rows']} rows "
                  f"(expected {len(ids) + 1}), missing {rows['accepted_missing']}; "
                  f"daemon {out['daemon_cpu_cores'] or 0:.2f} cores, gen "
                  f"{out['generator_cpu_cores']:.2f}", flush=True)
    figures = {}
    for k, runs in raw.items():
        figures[k] = {
            "accepted_per_s": agg([x["accepted_per_s"] for x in runs]),
            "p50_ms": agg([x["latencies_ms_summary"]["p50"] for x in runs]),
            "p99_ms": agg([x["latencies_ms_summary"]["p99"] for x in runs]),
            "max_ms": agg([x["latencies_ms_summary"]["max"] for x in runs]),
            "generator_cpu_cores": agg([x["generator_cpu_cores"] for x in runs]),
            "daemon_cpu_cores": agg([x["daemon_cpu_cores"] for x in runs]),
            "all_durable": all(x["durability"]["durable"] for x in runs),
            "lost_total": sum(x["durability"]["accepted_missing"] for x in runs),
            "errors": sum(x["error_count"] for x in runs),
        }
    return {"figures": figures, "raw": raw}


# ---- 4: accepted -> running in the worker -----------------------------------------------------

def follow_launch(d: BenchDaemon, op: Launch, timeout: float = 20.0, poll: float = 0.0005) -> dict:
    """Submit with wait=True; timestamp frames and the request log's first worker line."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(d.socket))
    try:
        protocol.send_msg(s, Hello(protocol.PROTOCOL_VERSION, "bench"))
        _dec.decode(protocol.recv_frame(s))
        s.setblocking(False)
        buf = bytearray()
        t: dict[str, float | None] = {"sent": None, "accepted": None, "chunk_daemon_running": None,
                                      "chunk_worker": None, "file_worker": None, "result": None}
        rid = None
        logpath: Path | None = None
        last_size = -1
        status = None
        t["sent"] = time.perf_counter()
        s.sendall(encode_frame(Submit(op, True)))
        deadline = time.monotonic() + timeout
        while t["result"] is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"launch did not finish in {timeout}s: {t}")
            r, _, _ = select.select([s], [], [], poll)
            now = time.perf_counter()
            if r:
                data = s.recv(1 << 20)
                if not data:
                    raise RuntimeError("connection closed")
                buf += data
                while len(buf) >= 4:
                    (size,) = protocol.HEADER.unpack_from(buf, 0)
                    if len(buf) < 4 + size:
                        break
                    msg = _dec.decode(bytes(buf[4:4 + size]))
                    del buf[:4 + size]
                    if isinstance(msg, Accepted):
                        t["accepted"] = now
                        rid = msg.request_id
                        logpath = d.request_log(rid)
                    elif isinstance(msg, Chunk):
                        if t["chunk_daemon_running"] is None and b"[skyd] running" in msg.data:
                            t["chunk_daemon_running"] = now
                        if t["chunk_worker"] is None and any(m in msg.data for m in WORKER_FIRST):
                            t["chunk_worker"] = now
                    elif isinstance(msg, (Result, Error)):
                        t["result"] = now
                        status = getattr(msg, "status", None)
            if logpath is not None and t["file_worker"] is None:
                try:
                    size = os.stat(logpath).st_size
                except OSError:
                    size = -1
                if size != last_size and size > 0:
                    last_size = size
                    content = logpath.read_bytes()
                    if any(m in content for m in WORKER_FIRST):
                        t["file_worker"] = now
    finally:
        s.close()
    acc = t["accepted"]

    def since(k: str) -> float | None:
        return (t[k] - acc) * 1000 if t[k] is not None and acc is not None else None
    return {"rid": rid, "status": getattr(status, "value", status),
            "submit_to_accepted_ms": (acc - t["sent"]) * 1000 if acc else None,
            "accepted_to_worker_line_in_log_ms": since("file_worker"),
            "accepted_to_worker_chunk_ms": since("chunk_worker"),
            "accepted_to_daemon_running_chunk_ms": since("chunk_daemon_running"),
            "accepted_to_result_ms": since("result")}


def bench_start_latency(cfg: Config, d: BenchDaemon) -> dict:
    raw: dict[str, list] = {"new": [], "reused": []}
    for r in range(cfg.runs):
        for kind in raw:
            samples = []
            for i in range(cfg.latency_samples):
                wait_spares(d)
                time.sleep(0.05)
                cluster = f"n{r}-{i}" if kind == "new" else "warm"
                samples.append(follow_launch(d, Launch(task=Task(setup="true", name="lat"),
                                                       cluster=cluster)))
            raw[kind].append(samples)
            med = statistics.median(x["accepted_to_worker_line_in_log_ms"] for x in samples)
            medc = statistics.median(x["accepted_to_worker_chunk_ms"] for x in samples)
            print(f"  [4] run {r + 1}/{cfg.runs} {kind} cluster: accepted -> worker line in log "
                  f"{med:.2f} ms median; -> first worker Chunk {medc:.2f} ms median", flush=True)
    # Live following: a setup that prints, then sleeps 1 s. The worker's first line is in the
    # request log within milliseconds; a client following the request should see it as soon.
    raw["live_1s"] = []
    for r in range(cfg.runs):
        wait_spares(d)
        x = follow_launch(d, Launch(task=Task(setup="echo first-line; sleep 1; echo last-line",
                                              name="live"), cluster=f"lf{r}"))
        raw["live_1s"].append([x])
        print(f"  [4] run {r + 1}/{cfg.runs} live follow (setup sleeps 1 s): worker line in log "
              f"{x['accepted_to_worker_line_in_log_ms']:.1f} ms, at the client "
              f"{x['accepted_to_worker_chunk_ms']:.1f} ms, result {x['accepted_to_result_ms']:.1f} ms",
              flush=True)
    figures = {}
    for kind, runs in raw.items():
        figures[kind] = {k: agg([statistics.median(x[k] for x in run) for run in runs])
                         for k in ("accepted_to_worker_line_in_log_ms", "accepted_to_worker_chunk_ms",
                                   "accepted_to_daemon_running_chunk_ms", "accepted_to_result_ms",
                                   "submit_to_accepted_ms")}
        figures[kind]["failed"] = sum(1 for run in runs for x in run if x["status"] != "succeeded")
    return {"figures": figures, "raw": raw}


# ---- 5: cancel until the process group is gone -----------------------------------------------

CANCEL_SETUP = """sleep 600 &
a=$!
sleep 600 &
b=$!
printf '%s\\n%s\\n%s\\n' "$a" "$b" "$$" > {f}.tmp && mv {f}.tmp {f}
wait
"""


def bench_cancel(cfg: Config, d: BenchDaemon, tmp: Path) -> dict:
    raw: list[list[dict]] = []
    for r in range(cfg.runs):
        samples = []
        for i in range(cfg.cancel_samples):
            wait_spares(d)
            pidfile = tmp / f"cancel-{r}-{i}.pids"
            rid = submit_async(d, Launch(task=Task(setup=CANCEL_SETUP.format(f=pidfile), name="cx"),
                                         cluster=f"x{r}-{i}"))
            if not bounded_wait(pidfile.exists, 15, 0.002):
                raise RuntimeError(f"pid file {pidfile} not written")
            pids = [int(x) for x in pidfile.read_text().split()]
            wpid = bounded_wait(lambda: worker_pid_of(d, rid), 5, 0.002)
            with d.connect() as c:
                t0 = time.perf_counter()
                protocol.send_msg(c.sock, Submit(ApiCancel(request_ids=[rid]), True))
                ack = c.read()
                t_ack = time.perf_counter()
                zombies_seen: set[int] = set()
                t_gone = t_worker_gone = None
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    now = time.perf_counter()
                    alive = []
                    for p in pids:
                        st = pid_state(p)
                        if st == "Z":
                            zombies_seen.add(p)
                        elif st is not None:
                            alive.append(p)
                    if not alive and t_gone is None:
                        t_gone = now
                    if t_worker_gone is None and wpid and not pid_alive(wpid):
                        t_worker_gone = now
                    if t_gone is not None and (t_worker_gone is not None or not wpid):
                        break
                    time.sleep(0.001)
            final = bounded_wait(lambda: request_status(d, rid).status.finished and request_status(d, rid), 10, 0.01)
            samples.append({
                "rid": rid, "pids": pids, "worker_pid": wpid,
                "ack": type(ack).__name__, "cancel_ack_ms": (t_ack - t0) * 1000,
                "cancel_to_group_gone_ms": (t_gone - t0) * 1000 if t_gone else None,
                "cancel_to_worker_gone_ms": (t_worker_gone - t0) * 1000 if t_worker_gone else None,
                "zombies_seen": sorted(zombies_seen),
                "zombie_roles": sorted({"sleep" if p in pids[:2] else "bash" for p in zombies_seen}),
                "final_status": final.status.value if final else None,
            })
        raw.append(samples)
        print(f"  [5] run {r + 1}/{cfg.runs}: cancel -> setup's processes gone "
              f"{statistics.median(x['cancel_to_group_gone_ms'] for x in samples if x['cancel_to_group_gone_ms'] is not None):.2f} ms median"
              f"; zombies seen in {sum(1 for x in samples if x['zombies_seen'])}/{len(samples)}", flush=True)

    def med(run, k):
        xs = [x[k] for x in run if x[k] is not None]
        return statistics.median(xs) if xs else None
    figures = {k: agg([med(run, k) for run in raw])
               for k in ("cancel_to_group_gone_ms", "cancel_to_worker_gone_ms", "cancel_ack_ms")}
    figures["max_group_gone_ms"] = max((x["cancel_to_group_gone_ms"] or 1e9) for run in raw for x in run)
    figures["not_gone"] = sum(1 for run in raw for x in run if x["cancel_to_group_gone_ms"] is None)
    figures["samples_with_zombies"] = sum(1 for run in raw for x in run if x["zombies_seen"])
    figures["final_statuses"] = sorted({x["final_status"] for run in raw for x in run})
    figures["zombie_roles"] = sorted({r for run in raw for x in run for r in x["zombie_roles"]})
    return {"figures": figures, "raw": raw}


# ---- 6: memory --------------------------------------------------------------------------------

def tree_memory(d: BenchDaemon) -> dict:
    kinds = spares_of(d)
    out = {}
    for kind, pids in kinds.items():
        out[kind] = [{"pid": p, **(mem_of(p) or {})} for p in pids]
    total = [m for ms in out.values() for m in ms if m.get("rss") is not None]
    out["totals"] = {"processes": len(total), "rss_sum": sum(m["rss"] for m in total),
                     "uss_sum": sum(m["uss"] for m in total),
                     "pss_sum": sum(m["pss"] or 0 for m in total)}
    return out


def bench_worker_memory(cfg: Config, d: BenchDaemon) -> dict:
    raw = []
    for r in range(cfg.runs):
        wait_spares(d)
        rids = [submit_async(d, Launch(task=Task(setup="sleep 5", name="mem"), cluster=f"m{r}-{i}"))
                for i in range(cfg.mem_launches)]
        wpids = {}
        for rid in rids:
            wpids[rid] = bounded_wait(lambda rid=rid: worker_pid_of(d, rid), 15, 0.01)
        # every setup has started its sleep
        bounded_wait(lambda: all(any(c.name() == "sleep" for c in psutil.Process(p).children(recursive=True))
                                 for p in wpids.values() if p and psutil.pid_exists(p)), 10, 0.02)
        time.sleep(0.5)
        workers, setups = [], []
        for rid, wpid in wpids.items():
            if not wpid:
                continue
            m = mem_of(wpid)
            if m:
                workers.append({"pid": wpid, **m})
            try:
                for c in psutil.Process(wpid).children(recursive=True):
                    cm = mem_of(c.pid)
                    if cm:
                        setups.append({"pid": c.pid, "name": c.name(), **cm})
            except psutil.Error:
                pass
        for rid in rids:
            bounded_wait(lambda rid=rid: request_status(d, rid).status.finished, 20, 0.05)
        raw.append({"workers": workers, "setup_processes": setups})
        uss = sorted(w["uss"] / MiB for w in workers)
        print(f"  [6] run {r + 1}/{cfg.runs}: {len(workers)} running workers, USS median "
              f"{statistics.median(uss):.2f} MiB max {max(uss):.2f} MiB; setup processes: "
              + ", ".join(sorted({f"{s['name']}" for s in setups})), flush=True)
    figures = {
        "worker_uss_median_mib": agg([statistics.median(w["uss"] / MiB for w in run["workers"]) for run in raw]),
        "worker_uss_max_mib": agg([max(w["uss"] / MiB for w in run["workers"]) for run in raw]),
        "worker_rss_median_mib": agg([statistics.median(w["rss"] / MiB for w in run["workers"]) for run in raw]),
        "worker_pss_median_mib": agg([statistics.median(w["pss"] / MiB for w in run["workers"]) for run in raw]),
    }
    names = sorted({s["name"] for run in raw for s in run["setup_processes"]})
    for name in names:
        figures[f"setup_{name}_uss_median_mib"] = agg([
            statistics.median([s["uss"] / MiB for s in run["setup_processes"] if s["name"] == name] or [0])
            for run in raw])
        figures[f"setup_{name}_count_per_launch"] = statistics.median(
            sum(1 for s in run["setup_processes"] if s["name"] == name) / max(1, len(run["workers"]))
            for run in raw)
    return {"figures": figures, "raw": raw}


# ---- 7: 100,000 requests stored -----------------------------------------------------------

def fill_db(db: Path, rows: int, seed: int = 7) -> list[str]:
    rnd = random.Random(seed)
    now = time.time()
    users = [(0, "root")] * 7 + [(1000 + i, f"user{i}") for i in range(3)]
    task = Task(name="train", setup="pip install -r requirements.txt",
                run="python train.py --epochs $EPOCHS", envs={"EPOCHS": 3},
                resources=Resources(cpus="2+"))
    ids = []
    data = []
    created = now - 20 * 3600              # inside the 24 h retention: not collected at start
    step = (20 * 3600 - 120) / rows
    for i in range(rows):
        rid = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        ids.append(rid)
        uid, user = rnd.choice(users)
        cluster = f"c{rnd.randrange(200)}"
        kind = rnd.random()
        if kind < 0.6:
            name, op = "launch", Launch(task=task, cluster=cluster)
        elif kind < 0.85:
            name, op = "exec", protocol.Exec(task=task, cluster=cluster)
        else:
            name, op = "down", protocol.Down(cluster=cluster)
        st = rnd.random()
        status = "succeeded" if st < 0.9 else ("failed" if st < 0.97 else "cancelled")
        c_at = created + i * step
        s_at = c_at + rnd.uniform(0.001, 0.05)
        f_at = s_at + rnd.uniform(0.5, 60)
        if status == "succeeded":
            result = _enc.encode(protocol.LaunchResult(cluster=cluster, job_id=rnd.randrange(1, 50))
                                 if name != "down" else cluster)
            error = None
        elif status == "failed":
            err = Error(protocol.ErrorCode.FAILED, "setup failed on node 0 (local) with exit status 1")
            result, error = _enc.encode(err), err.message
        else:
            result, error = _enc.encode(None), None
        data.append((rid, name, "long", status, uid, user, cluster, _enc.encode(op), c_at, s_at,
                     f_at, result, error))
    con = sqlite3.connect(str(db), timeout=30)
    try:
        with con:
            con.executemany(
                "INSERT INTO requests (id, name, queue, status, uid, user, cluster, op, created_at,"
                " started_at, finished_at, result, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", data)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    return ids


def unique_prefix(ids: list[str]) -> str:
    prefixes: dict[str, int] = {}
    for i in ids:
        prefixes[i[:8]] = prefixes.get(i[:8], 0) + 1
    for i in ids[len(ids) // 2:]:
        if prefixes[i[:8]] == 1:
            return i[:8]
    raise RuntimeError("no unique 8-char prefix")


def bench_big(cfg: Config, root: Path, registry: list[BenchDaemon], tmp: Path) -> dict:
    raw: dict[str, Any] = {"start_empty_s": [], "start_100k_s": [], "queries": [], "cli": []}
    # start until answering on an empty state dir (a fresh one each run)
    raw["start_empty_pyc_s"] = []
    pyc = str(tmp / "pycache-daemon")
    warm = BenchDaemon(root, "ewarm", pycache=pyc)     # fills the bytecode cache, untimed
    registry.append(warm)
    warm.start()
    warm.stop()
    kill_leftovers(warm.state_dir, warm.sessions)
    for r in range(cfg.runs):
        for key, cache in (("start_empty_s", None), ("start_empty_pyc_s", pyc)):
            d = BenchDaemon(root, f"e{r}{'p' if cache else ''}", pycache=cache)
            registry.append(d)
            raw[key].append(d.start())
            d.stop()
            kill_leftovers(d.state_dir, d.sessions)
    big = BenchDaemon(root, "big")
    registry.append(big)
    big.start()
    big.stop()
    t0 = time.perf_counter()
    ids = fill_db(big.db_path, cfg.big_rows)
    raw["fill_s"] = time.perf_counter() - t0
    con = sqlite3.connect(str(big.db_path))
    mine = {r[0] for r in con.execute("SELECT id FROM requests WHERE uid = 0")}
    con.close()
    prefix = unique_prefix([i for i in ids if i in mine])
    raw["prefix"] = prefix
    env = client_env(big)
    ops = {"ApiStatus() (active only)": ApiStatus(),
           "ApiStatus(all_statuses=True) limit 50": ApiStatus(all_statuses=True),
           "ApiStatus(request_ids=[8-char prefix])": ApiStatus(request_ids=[prefix])}
    for r in range(cfg.runs):
        raw["start_100k_s"].append(big.start())
        q = {}
        with big.connect() as c:
            for name, op in ops.items():
                xs = []
                for _ in range(cfg.query_reps):
                    t = time.perf_counter()
                    value = c.call(op)
                    xs.append((time.perf_counter() - t) * 1000)
                q[name] = {"ms": xs, "returned": len(value)}
        raw["queries"].append(q)
        cli = [time_cmd([sys.executable, "-m", "skyctl", "api", "status", "-a"], env, str(tmp),
                        check_out=b"SUCCEEDED") * 1000 for _ in range(cfg.cli_reps)]
        raw["cli"].append(cli)
        big.stop()
        print(f"  [7] run {r + 1}/{cfg.runs}: start with {cfg.big_rows} rows "
              f"{raw['start_100k_s'][-1] * 1000:.0f} ms (empty {raw['start_empty_s'][r] * 1000:.0f} ms); "
              + ", ".join(f"{k} {statistics.median(v['ms']):.2f} ms ({v['returned']} rows)" for k, v in q.items())
              + f"; skyctl api status -a {statistics.median(cli):.1f} ms", flush=True)
    kill_leftovers(big.state_dir, big.sessions)
    figures = {
        "start_empty_ms": agg([x * 1000 for x in raw["start_empty_s"]]),
        "start_100k_ms": agg([x * 1000 for x in raw["start_100k_s"]]),
        "start_empty_pyc_ms": agg([x * 1000 for x in raw["start_empty_pyc_s"]]),
        "skyctl_api_status_a_ms": agg([statistics.median(x) for x in raw["cli"]]),
    }
    for name in ops:
        figures[name] = agg([statistics.median(q[name]["ms"]) for q in raw["queries"]])
        figures[name + " returned"] = raw["queries"][0][name]["returned"]
    return {"figures": figures, "raw": raw}


# ---- the table -------------------------------------------------------------------------------

def fmt(a: dict, unit: str = "", digits: int = 1) -> str:
    if not a or a.get("median") is None:
        return "n/a"
    f = f"{{:.{digits}f}}"
    return f"{f.format(a['median'])}{unit} ({f.format(a['min'])}–{f.format(a['max'])})"


def verdict(a: dict, goal: float, higher_is_better: bool, unit: str, digits: int = 1) -> str:
    if not a or a.get("median") is None:
        return "not measured"
    m = a["median"]
    if higher_is_better:
        return "met" if m >= goal else f"missed by {goal - m:.{digits}f}{unit}"
    return "met" if m <= goal else f"missed by {m - goal:.{digits}f}{unit}"


def build_table(res: dict) -> list[list[str]]:
    rows: list[list[str]] = []
    R = lambda a: str(a.get("runs", 0)) if a else "0"  # noqa: E731

    def add(name, goal, a, unit="", digits=1, goalv=None, higher=False):
        rows.append([name, goal, fmt(a, unit, digits), R(a),
                     verdict(a, goalv, higher, unit, digits) if goalv is not None else "—"])

    b1 = res.get("1")
    if b1:
        ms = b1["ms"]
        script = b1["console_script"]
        user = b1.get("user_install") or {}
        if user.get("ok"):
            add("1. `venv/bin/skyctl status`, regular `pip install` in a venv, fresh process", "≤ 40 ms",
                ms["venv skyctl status"], " ms", 1, 40)
        else:
            rows.append(["1. `venv/bin/skyctl status`, regular `pip install` in a venv, fresh process",
                         "≤ 40 ms", "n/a", "0", f"not measured: {user.get('reason', 'no venv')}"])
        for k in ("venv python -c pass", "venv python -c 'import msgspec'"):
            if k in ms:
                add(f"1. floor: `{k.replace('venv python', 'venv/bin/python')}`", "—", ms[k], " ms")
        itv = b1.get("importtime_cumulative_ms_venv") or {}
        for m, label in (("site", "site"), ("msgspec", "msgspec"), ("skyctl.cli", "skyctl.cli")):
            if m in itv:
                add(f"1. venv -X importtime cumulative: {label}", "—", itv[m], " ms", 1)
        add("1. `python -m skyctl status`, editable install, system interpreter (context)", "(≤ 40 ms)",
            ms["python -m skyctl status"], " ms", 1, 40)
        add(f"1. console script `{script['resolved']} status`, editable (context)", "(≤ 40 ms)",
            ms["console script skyctl status"], " ms", 1, 40)
        add("1. `python -m skyctl status`, bytecode cached (what-if)", "(≤ 40 ms)",
            ms["python -m skyctl status, bytecode cached"], " ms", 1, 40)
        add("1. `python -S -m skyctl status`: no .pth files, bytecode cached (what-if)", "(≤ 40 ms)",
            ms["python -S -m skyctl status, no .pth files, bytecode cached"], " ms", 1, 40)
        if "pyenv shim skyctl status" in ms:
            add(f"1. `skyctl status` via pyenv shim ({script['pyenv_shim']})", "—", ms["pyenv shim skyctl status"], " ms")
        for k in ("python -c pass", "python -c 'import msgspec'", "python -S -c pass"):
            add(f"1. floor: `{k}`", "—", ms[k], " ms")
        it = b1["importtime_cumulative_ms"]
        for m, label in (("site", "site (all .pth files)"), ("certifi", "certifi, imported by _sandboxing_egress_ca.pth"),
                         ("__editable___skyd_0_1_0_finder", "editable-install finder (.pth)"),
                         ("msgspec", "msgspec"), ("skyctl.cli", "skyctl.cli")):
            add(f"1. -X importtime cumulative: {label}", "—", it.get(m), " ms", 1)
    b2 = res.get("2")
    if b2:
        f = b2["figures"]
        for op in ("api_status", "status"):
            k = f"{op}@50"
            if k in f:
                add(f"2. `{op}` 50 clients: throughput", "≥ 5,000/s", f[k]["req_per_s"], "/s", 0, 5000, True)
                add(f"2. `{op}` 50 clients: p99 latency", "≤ 25 ms", f[k]["p99"], " ms", 2, 25)
    b3 = res.get("3")
    if b3:
        f = b3["figures"]
        for k, label in (("50", "50 clients"), ("1", "1 client"),
                         ("50d", "50 clients, default (sized) long slots")):
            if k in f:
                goal = ("≥ 5,000/s", 5000) if k == "50" else (("(≥ 5,000/s)", 5000) if k == "50d" else ("—", None))
                add(f"3. `--async` Launch accepted/s, {label}", goal[0], f[k]["accepted_per_s"], "/s", 0, goal[1], True)
                add(f"3. submit latency p50, {label}", "—", f[k]["p50_ms"], " ms", 2)
                add(f"3. submit latency p99, {label}", "—", f[k]["p99_ms"], " ms", 2)
                runs = len(b3["raw"][k])
                ok = sum(1 for x in b3["raw"][k] if x["durability"]["durable"])
                rows.append([f"3. durable after kill -9, {label}: rows == accepted", "all",
                             f"{ok}/{runs} runs; {f[k]['lost_total']} accepted requests lost",
                             str(runs), "met" if ok == runs else f"missed: {runs - ok} run(s) lost rows"])
    b4 = res.get("4")
    if b4:
        f = b4["figures"]
        for kind in ("new", "reused"):
            if kind in f:
                add(f"4. accepted → worker's first line in request log, {kind} cluster", "≤ 10 ms",
                    f[kind]["accepted_to_worker_line_in_log_ms"], " ms", 2, 10)
                add(f"4. accepted → first worker Chunk at client, {kind} cluster", "≤ 10 ms",
                    f[kind]["accepted_to_worker_chunk_ms"], " ms", 2, 10)
                add(f"4. accepted → Result at client, {kind} cluster (setup `true`)", "—",
                    f[kind]["accepted_to_result_ms"], " ms", 2)
        if "live_1s" in f:
            add("4. live follow, setup prints then sleeps 1 s: worker line in request log", "≤ 10 ms",
                f["live_1s"]["accepted_to_worker_line_in_log_ms"], " ms", 1, 10)
            add("4. live follow, setup prints then sleeps 1 s: same line at the client", "≤ 10 ms",
                f["live_1s"]["accepted_to_worker_chunk_ms"], " ms", 1, 10)
    b5 = res.get("5")
    if b5:
        f = b5["figures"]
        add("5. cancel → setup's process group gone (Z = gone)", "≤ 50 ms", f["cancel_to_group_gone_ms"], " ms", 2, 50)
        add("5. cancel → worker process gone", "—", f["cancel_to_worker_gone_ms"], " ms", 2)
    b6 = res.get("6")
    if b6:
        for key, label in (("idle", "right after start"), ("after", "after the other benchmarks")):
            runs = b6.get(key)
            if runs:
                add(f"6. daemon RSS, {label}", "≤ 60 MiB", agg([x["daemon"][0]["rss"] / MiB for x in runs]), " MiB", 1, 60)
                add(f"6. daemon USS, {label}", "—", agg([x["daemon"][0]["uss"] / MiB for x in runs]), " MiB", 1)
                add(f"6. whole tree PSS, {label} ({runs[0]['totals']['processes']} processes)", "—",
                    agg([x["totals"]["pss_sum"] / MiB for x in runs]), " MiB", 1)
        w = b6.get("workers")
        if w:
            add("6. USS per running long worker, median", "≤ 15 MiB", w["figures"]["worker_uss_median_mib"], " MiB", 2, 15)
            add("6. USS per running long worker, max", "≤ 15 MiB", w["figures"]["worker_uss_max_mib"], " MiB", 2, 15)
            for k, v in w["figures"].items():
                if k.startswith("setup_") and k.endswith("_uss_median_mib"):
                    add(f"6. setup's own `{k[6:-15]}` process USS (separate)", "—", v, " MiB", 2)
    b7 = res.get("7")
    if b7:
        f = b7["figures"]
        for name in ("ApiStatus() (active only)", "ApiStatus(all_statuses=True) limit 50",
                     "ApiStatus(request_ids=[8-char prefix])"):
            add(f"7. 100k rows: {name}, in-process", "≤ 100 ms", f[name], " ms", 2, 100)
        add("7. 100k rows: `skyctl api status -a`, fresh process", "≤ 100 ms", f["skyctl_api_status_a_ms"], " ms", 1, 100)
        add("7. daemon start until answering, 100k rows", "≤ 500 ms", f["start_100k_ms"], " ms", 0, 500)
        add("7. daemon start until answering, empty state dir", "≤ 500 ms", f["start_empty_ms"], " ms", 0, 500)
        add("7. daemon start until answering, empty, bytecode cached (what-if)", "(≤ 500 ms)",
            f["start_empty_pyc_ms"], " ms", 0, 500)
    return rows


def load_table(res: dict) -> list[list[str]]:
    rows = []
    b2 = res.get("2")
    if not b2:
        return rows
    for key, f in b2["figures"].items():
        op, clients = key.split("@")
        rows.append([f"`{op}`", clients, fmt(f["req_per_s"], "", 0), fmt(f["p50"], "", 2),
                     fmt(f["p95"], "", 2), fmt(f["p99"], "", 2), fmt(f["max"], "", 1),
                     fmt(f["generator_cpu_cores"], "", 2), fmt(f["daemon_cpu_cores"], "", 2)])
    return rows




# ---- main ------------------------------------------------------------------------------------



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m profiling.bench_core", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, help="runs per figure (default 5; --quick: 2)")
    ap.add_argument("--quick", action="store_true", help="2 runs and smaller counts")
    ap.add_argument("--out", default="bench-results/core.json", help="raw results JSON")
    ap.add_argument("--only", default="1,2,3,4,5,6,7", help="which benchmarks, e.g. 1,3")
    args = ap.parse_args(argv)
    cfg = Config(args.runs or (2 if args.quick else 5), args.quick)
    only = {s.strip() for s in args.only.split(",")}
    signal.signal(signal.SIGTERM, stop_on_signal)

    root = Path(tempfile.mkdtemp(prefix="skb-", dir="/tmp"))
    tmp = root / "tmp"
    tmp.mkdir()
    registry: list[BenchDaemon] = []
    res: dict[str, Any] = {}
    meta = {"machine": machine_info(), "loadavg_start": os.getloadavg(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "runs": cfg.runs,
            "quick": cfg.quick, "config": vars(cfg), "root": str(root),
            "code_start": code_version()}
    print(f"skyd core benchmarks: {cfg.runs} run(s) per figure; temp dir {root}; "
          f"load average {meta['loadavg_start']}; code {meta['code_start']}", flush=True)
    t_all = time.perf_counter()
    leftovers: list[int] = []
    try:
        main_d = BenchDaemon(root, "main")
        registry.append(main_d)
        main_d.start()
        wait_spares(main_d)
        time.sleep(0.5)
        res["6"] = {"idle": [tree_memory(main_d)]}
        launch_wait(main_d, Launch(task=Task(setup="true", name="warm"), cluster="warm"))
        if "1" in only:
            print("[1] skyctl status as a fresh process", flush=True)
            res["1"] = bench_cold(cfg, main_d, tmp)
        if "2" in only:
            print("[2] short requests under load", flush=True)
            res["2"] = bench_short(cfg, main_d)
        if "4" in only:
            print("[4] accepted -> running in its worker", flush=True)
            res["4"] = bench_start_latency(cfg, main_d)
        if "5" in only:
            print("[5] cancel until the process group is gone", flush=True)
            res["5"] = bench_cancel(cfg, main_d, tmp)
        if "6" in only:
            print("[6] memory per running long worker", flush=True)
            res["6"]["workers"] = bench_worker_memory(cfg, main_d)
            wait_spares(main_d)
            time.sleep(0.5)
            res["6"]["after"] = [tree_memory(main_d)]
            # idle-after-start on fresh daemons, one per further run
            for r in range(1, cfg.runs):
                d = BenchDaemon(root, f"i{r}")
                registry.append(d)
                d.start()
                wait_spares(d)
                time.sleep(0.5)
                res["6"]["idle"].append(tree_memory(d))
                d.stop()
                kill_leftovers(d.state_dir, d.sessions)
        else:
            res.pop("6")
        main_d.stop()
        kill_leftovers(main_d.state_dir, main_d.sessions)
        if "3" in only:
            print("[3] --async submission bursts, durable", flush=True)
            res["3"] = bench_burst(cfg, root, registry)
        if "7" in only:
            print("[7] api status with 100,000 stored requests; start until answering", flush=True)
            res["7"] = bench_big(cfg, root, registry, tmp)
    finally:
        for d in registry:
            try:
                d.stop(timeout=10)
            except Exception:  # noqa: BLE001 - keep cleaning up
                pass
        sessions = set().union(*(d.sessions for d in registry)) if registry else set()
        leftovers = kill_leftovers(root, sessions)
        remaining = ours(root, sessions)
        shutil.rmtree(root, ignore_errors=True)
        meta["loadavg_end"] = os.getloadavg()
        meta["elapsed_s"] = time.perf_counter() - t_all
        meta["leftovers_killed"] = len(leftovers)
        meta["processes_remaining"] = remaining
        meta["code_end"] = code_version()
        meta["code_changed_during_run"] = (meta["code_end"]["sources_sha256"]
                                      != meta["code_start"]["sources_sha256"])
    table = build_table(res)
    load = load_table(res)
    text = ["", "## Results (median over runs, min–max in brackets)", "",
            markdown(["figure", "goal", "skyd median (min–max)", "runs", "met?"], table)]
    if load:
        text += ["", "### Short requests under load (per level; latency in ms; CPU in cores)", "",
                 markdown(["op", "clients", "req/s", "p50", "p95", "p99", "max", "generator CPU",
                           "daemon CPU"], load)]
    text += ["", f"load average at start {tuple(round(x, 2) for x in meta['loadavg_start'])}, "
                 f"at end {tuple(round(x, 2) for x in meta['loadavg_end'])}; "
                 f"{meta['elapsed_s']:.0f} s; leftover processes killed at the end: "
                 f"{meta['leftovers_killed']}, remaining: {len(meta['processes_remaining'])}"]
    c = meta["code_start"]
    text += [f"code: git {c['head']}{' + local changes' if c['dirty'] else ''}, "
             f"skyd+skyctl sources sha256 {c['sources_sha256']}"]
    if meta["code_changed_during_run"]:
        text += [f"WARNING: skyd/skyctl sources changed during the run "
                 f"({c['sources_sha256']} -> {meta['code_end']['sources_sha256']}); "
                 "figures mix versions: run again"]
    print("\n".join(text), flush=True)
    out = Path(args.out)
    if not out.is_absolute():
        out = Path.cwd() / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": res, "table": table, "load_table": load},
                              indent=1, default=str))
    print(f"raw results: {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
