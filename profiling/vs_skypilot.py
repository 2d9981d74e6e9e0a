"""Side by side with SkyPilot's API server, in one run: the same workloads against skyd and
against `skypilot==0.14.1`, on this machine, one server at a time.

    python -m profiling.vs_skypilot [--runs 3] [--quick] [--burst 20] [--mem-cap-gib 12]
                                    [--venv DIR] [--out bench-results/vs_skypilot.json]

Set-up (before anything is measured)
  - SkyPilot in its own virtualenv outside the project (default
    ~/.cache/skyd-bench/skypilot-0.14.1; created with `pip install skypilot==0.14.1
    aiohttp` if missing: the only step that needs the package registry).
  - skyd as a user gets it: a regular `pip install` of this tree in a throw-away venv.
  - Then the bench re-runs itself in a new network namespace (`unshare --net`) that has
    only loopback: neither server can reach anything but 127.0.0.1 (`--no-netns` to skip).

Per run, for each server in turn (fresh state each time: a new state dir for skyd, a new
throw-away HOME for SkyPilot, usage collection off, local mode, 127.0.0.1:46580):
  start        spawn until it answers (skyd: a handshake; SkyPilot: `sky api start`
               until `GET /api/health` answers, and until the command returns)
  idle         after a settle time, its whole process tree: processes, RSS, USS, PSS
  cli status   `skyctl status` / `sky status` as fresh processes, median of each run
  short        closed-loop status requests at 1, 10 and 50 concurrent clients, twice:
               on the fresh server ("first pass"), then again ("second pass"). skyd: the
               `status` op over its socket; SkyPilot: `POST /status` + `GET /api/get`.
  burst        N `--async` long requests from one submitter: skyd `jobs_launch`,
               SkyPilot `POST /jobs/launch` (it fails them without cloud credentials,
               which still measures acceptance and queueing; skyd's really run `echo` on
               the local infra). Accept rate, submit latency, until none is active.
  stop         skyd: SIGTERM; SkyPilot: `sky api stop`; then everything left is killed.

Guarding the machine: each server runs in a box (profiling/_box.py: a memory cgroup with
a hard limit of --mem-cap-gib + 2 GiB where possible), a sampler watches the box's RSS
every 0.5 s and, past --mem-cap-gib, cancels the burst and kills the box (the run is then
reported as aborted). The burst size for SkyPilot is capped at --burst-cap (default 50:
its local mode forks a ~200 MiB process per request). At the end every box is emptied.

Prints the tables (median over runs, min–max, and the ratio skyd / SkyPilot of the
medians) and writes everything to --out. A benchmark, not a test: about 6 minutes a run
here (3 runs: 18 minutes).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from profiling._box import Box
from profiling._daemon import ROOT, BenchDaemon, kill_leftovers
from profiling._report import agg, code_version, dig, fmt_agg, machine_info, markdown, stop_on_signal
from profiling.bench_core import run_generator, user_install
from profiling.bench_jobs import jobs_state

SKYPILOT_VERSION = "0.14.1"
DEFAULT_VENV = Path.home() / ".cache" / "skyd-bench" / f"skypilot-{SKYPILOT_VERSION}"
PORT = 46580
URL = f"http://127.0.0.1:{PORT}"
NETNS_FLAG = "SKYD_BENCH_IN_NETNS"
GiB = 2**30
TASK_YAML = "name: burst\nrun: echo hello from the burst\n"


class Config:
    def __init__(self, args: argparse.Namespace):
        quick = args.quick
        self.runs = args.runs or (1 if quick else 3)
        self.levels = [1, 10, 50]
        # SkyPilot's latency at 50 clients is ~10-20 s: a shorter window sees no request
        # that started and ended inside it.
        self.warmup = 2.0
        self.duration = 10.0 if quick else 20.0
        self.cli_reps = {"skyd": 10 if quick else 20, "SkyPilot": 3 if quick else 5}
        self.burst = min(args.burst, args.burst_cap)
        self.burst_requested = args.burst
        self.mem_cap_gib = args.mem_cap_gib
        # SkyPilot starts its daemons' workers for ~10 s after it answers
        self.settle = {"skyd": 1.0, "SkyPilot": 15.0}
        self.drain_timeout = 300.0


# ---- set-up, outside the namespace ------------------------------------------------------------

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


# ---- the servers ------------------------------------------------------------------------------

class BoxedDaemon(BenchDaemon):
    """skyd serve (production defaults: sized slots), inside a Box."""

    def __init__(self, root: Path, name: str, box: Box):
        super().__init__(root, name)
        self.box = box

    def command(self, extra: list[str] | None = None) -> list[str]:
        return self.box.wrap(super().command(extra))


class Skyd:
    name = "skyd"

    def __init__(self, root: Path, run: str, box: Box, skyctl: str):
        root.mkdir(parents=True, exist_ok=True)
        self.d = BoxedDaemon(root, f"skyd{run}", box)
        self.box, self.skyctl = box, skyctl

    def start(self) -> dict:
        return {"until_answering_s": self.d.start()}

    def cli_status(self) -> float:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKYD_") and k != "PYTHONPATH"}
        env["SKYD_HOST"] = self.d.host
        return timed([self.skyctl, "status"], env)

    def short(self, cfg: Config) -> dict:
        spec = {"mode": "short", "op": "status", "socket": str(self.d.socket), "levels": cfg.levels,
                "warmup": cfg.warmup, "duration": cfg.duration, "daemon_pid": self.d.pid}
        return run_generator(spec, budget(cfg))

    def burst(self, cfg: Config) -> dict:
        spec = {"mode": "burst", "op": "jobs_launch", "socket": str(self.d.socket), "n": cfg.burst,
                "clients": 1, "cluster": "-", "daemon_pid": self.d.pid}
        return run_generator(spec, 300)

    def active(self, ids: list[str]) -> int:
        """Jobs not finished yet (or still tearing their cluster down)."""
        return jobs_state(self.d)[2]

    def cancel(self, ids: list[str]) -> None:
        pass                        # never needed: skyd's burst stays small in memory

    def final_statuses(self, ids: list[str]) -> dict[str, int]:
        done, bad, busy = jobs_state(self.d)
        return {"SUCCEEDED": done, "other finished": bad, "unfinished": busy}

    def stop(self) -> dict:
        t0 = time.perf_counter()
        self.d.stop(signal.SIGTERM, timeout=30)
        out = {"stop_s": time.perf_counter() - t0, "leftovers_killed": self.box.kill()}
        kill_leftovers(self.d.state_dir, self.d.sessions)
        return out


class SkyPilot:
    name = "SkyPilot"

    def __init__(self, root: Path, run: str, box: Box, venv: Path):
        self.home = root / f"sky-home{run}"
        self.home.mkdir(parents=True)
        self.box, self.venv = box, venv
        self.sky = str(venv / "bin" / "sky")
        self.log = root / f"sky{run}.log"

    def env(self) -> dict[str, str]:
        return {"HOME": str(self.home), "PATH": f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
                "LANG": "C.UTF-8", "TERM": "dumb", "NO_COLOR": "1",
                "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"}

    def http(self, method: str, path: str, body: dict | None = None, timeout: float = 10):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(URL + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")

    def healthy(self) -> bool:
        try:
            return self.http("GET", "/api/health", timeout=2).get("status") == "healthy"
        except (OSError, ValueError, urllib.error.URLError, http.client.HTTPException):
            return False

    def start(self) -> dict:
        if port_open(PORT):
            raise RuntimeError(f"127.0.0.1:{PORT} is taken: another SkyPilot server is running")
        t0 = time.perf_counter()
        with open(self.log, "ab") as log:
            p = subprocess.Popen(self.box.wrap([self.sky, "api", "start"]), env=self.env(),
                                 stdout=log, stderr=subprocess.STDOUT, cwd=str(self.home))
        healthy_s = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and healthy_s is None:
            if self.healthy():
                healthy_s = time.perf_counter() - t0
            else:
                time.sleep(0.02)
        p.wait(max(1.0, deadline - time.monotonic()))
        command_s = time.perf_counter() - t0
        if healthy_s is None or p.returncode != 0:
            raise RuntimeError(f"sky api start failed (rc {p.returncode}); see {self.log}")
        return {"until_answering_s": healthy_s, "command_s": command_s}

    def cli_status(self) -> float:
        return timed([self.sky, "status"], self.env(), timeout=180)

    def short(self, cfg: Config) -> dict:
        spec = {"mode": "short", "url": URL, "levels": cfg.levels, "warmup": cfg.warmup,
                "duration": cfg.duration, "drain_timeout": 240}
        return run_http_generator(self.venv, spec, budget(cfg) + 3 * 60)

    def burst(self, cfg: Config) -> dict:
        spec = {"mode": "burst", "url": URL, "n": cfg.burst, "clients": 1, "task": TASK_YAML,
                "timeout": 240}
        return run_http_generator(self.venv, spec, 300)

    def active(self, ids: list[str]) -> int:
        rows = self.http("GET", "/api/status?fields=request_id&fields=status", timeout=30)
        wanted = set(ids)
        return sum(1 for r in rows if r.get("request_id") in wanted)

    def cancel(self, ids: list[str]) -> None:
        try:
            self.http("POST", "/api/cancel", {"request_ids": ids}, timeout=30)
        except (OSError, ValueError, urllib.error.URLError):
            pass

    def final_statuses(self, ids: list[str]) -> dict[str, int]:
        rows = self.http("GET", "/api/status?all_status=true&fields=request_id&fields=status",
                         timeout=30)
        wanted, counts = set(ids), {}
        for r in rows:
            if r.get("request_id") in wanted:
                counts[r["status"]] = counts.get(r["status"], 0) + 1
        return counts

    def stop(self) -> dict:
        t0 = time.perf_counter()
        try:
            subprocess.run([self.sky, "api", "stop"], env=self.env(), capture_output=True,
                           timeout=120)
        except subprocess.TimeoutExpired:
            pass
        stop_s = time.perf_counter() - t0
        alive = len(self.box.pids())
        return {"stop_s": stop_s, "processes_after_stop": alive, "leftovers_killed": self.box.kill()}


# ---- helpers ----------------------------------------------------------------------------------

def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def timed(argv: list[str], env: dict, timeout: float = 60) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(argv, env=env, capture_output=True, timeout=timeout, cwd="/tmp")
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{argv} exited {p.returncode}: {p.stderr.decode(errors='replace')[-500:]}")
    return dt


def budget(cfg: Config) -> float:
    return len(cfg.levels) * (cfg.warmup + cfg.duration + 240) + 60


def run_http_generator(venv: Path, spec: dict, timeout: float) -> dict:
    env = {"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8"}
    p = subprocess.run([str(venv / "bin" / "python"), "-m", "profiling._http_client", json.dumps(spec)],
                       capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
    if p.returncode != 0:
        raise RuntimeError(f"HTTP load generator failed ({p.returncode}): {p.stderr[-2000:]}")
    return json.loads(p.stdout)


class Watch(threading.Thread):
    """Every 0.5 s: the box's processes and RSS; the peaks; and the guard: past `cap_mib`
    it calls `on_trip` once (cancel what was submitted, kill the box)."""

    def __init__(self, box: Box, cap_mib: float, on_trip=None):
        super().__init__(daemon=True)
        self.box, self.cap_mib, self.on_trip = box, cap_mib, on_trip
        self.peak_rss_mib, self.peak_processes, self.tripped = 0.0, 0, False
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            m = self.box.memory()
            self.peak_rss_mib = max(self.peak_rss_mib, m["rss_mib"])
            self.peak_processes = max(self.peak_processes, m["processes"])
            if m["rss_mib"] > self.cap_mib and not self.tripped:
                self.tripped = True
                print(f"  GUARD: {m['rss_mib'] / 1024:.1f} GiB RSS > cap: stopping", flush=True)
                if self.on_trip:
                    self.on_trip()
            self.halt.wait(0.5)

    def finish(self) -> dict:
        self.halt.set()
        self.join(5)
        return {"peak_rss_mib": self.peak_rss_mib, "peak_processes": self.peak_processes,
                "guard_tripped": self.tripped}


# ---- one run of one server: two sessions, each on a fresh server ----------------------------

def quiet_cpu(max_wait: float = 90.0) -> float:
    """Wait until the machine's CPUs are mostly idle again (what the previous server left
    behind exiting), at most `max_wait` s; the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait and psutil.cpu_percent(interval=1.0) > 15:
        pass
    return time.perf_counter() - t0


def session_short(server, cfg: Config, res: dict) -> None:
    """Start, idle tree, CLI status, then the closed-loop levels twice."""
    box = server.box
    print(f"  [{server.name}] start", flush=True)
    res["start"] = server.start()
    time.sleep(cfg.settle[server.name])
    res["idle"] = box.memory(full=True)
    reps = cfg.cli_reps[server.name]
    print(f"  [{server.name}] cli status x{reps}", flush=True)
    times = [server.cli_status() for _ in range(reps)]
    res["cli_status_s"] = {"median": statistics.median(times), "min": min(times), "max": max(times),
                           "n": len(times)}
    for pass_name in ("first", "second"):
        print(f"  [{server.name}] short requests, {pass_name} pass, clients {cfg.levels}", flush=True)
        w = Watch(box, cfg.mem_cap_gib * 1024, on_trip=box.kill)
        w.start()
        out = server.short(cfg)
        res[f"short_{pass_name}"] = {"levels": out["levels"], "tree": w.finish()}
        for lv in out["levels"]:
            p99 = lv["latencies_ms_summary"]["p99"]
            print(f"    {lv['clients']:>3} clients: {lv['req_per_s']:.1f}/s, p99 "
                  f"{'-' if p99 is None else round(p99, 2)} ms, errors "
                  f"{lv.get('error_count', len(lv['errors']))}", flush=True)
        if w.tripped:
            res["aborted"] = "memory guard during short requests"
            return
    res["after_short"] = box.memory(full=True)


def session_burst(server, cfg: Config, res: dict) -> None:
    """Start a fresh server, then N async long requests; until none is active."""
    box = server.box
    print(f"  [{server.name}] start; burst of {cfg.burst} async long requests", flush=True)
    res["burst_start"] = server.start()
    time.sleep(cfg.settle[server.name])
    ids: list[str] = []
    w = Watch(box, cfg.mem_cap_gib * 1024, on_trip=lambda: (server.cancel(ids), box.kill()))
    w.start()
    t0 = time.perf_counter()
    b = server.burst(cfg)
    ids.extend(b.pop("accepted_ids"))
    until_idle = None
    deadline = time.monotonic() + cfg.drain_timeout
    while time.monotonic() < deadline and not w.tripped:
        try:
            if server.active(ids) == 0:
                until_idle = time.perf_counter() - t0
                break
        except (OSError, ValueError, urllib.error.URLError):
            pass                    # a busy server may time out a poll: poll again
        time.sleep(0.25)
    b["until_none_active_s"] = until_idle
    b["tree"] = w.finish()
    if w.tripped:
        res["aborted"] = "memory guard during the burst"
    else:
        b["final_statuses"] = server.final_statuses(ids)
    res["burst"] = b
    print(f"    accepted {b['accepted']}/{b['issued']} in {b['elapsed_s']:.2f} s, none active "
          f"after {until_idle if until_idle is None else round(until_idle, 1)} s, tree peak "
          f"{b['tree']['peak_rss_mib']:.0f} MiB / {b['tree']['peak_processes']} processes", flush=True)


def run_server(who: str, run: int, cfg: Config, root: Path, prep: dict, limit: int) -> dict:
    res: dict[str, Any] = {}
    for tag, session in (("short", session_short), ("burst", session_burst)):
        res[f"cpu_settle_{tag}_s"] = quiet_cpu()
        box = Box(who.lower(), limit)
        res.setdefault("box", box.kind)
        server = (Skyd(root / "state", f"{run}{tag}", box, prep["skyd"]["skyctl"]) if who == "skyd"
                  else SkyPilot(root, f"{run}{tag}", box, Path(prep["skypilot"]["venv"])))
        try:
            session(server, cfg, res)
        except Exception as e:  # noqa: BLE001 - record it, clean up, go on
            res.setdefault("error", []).append(f"{tag}: {type(e).__name__}: {e}")
            print(f"  {who} {tag} failed: {e}", flush=True)
        finally:
            try:
                res[f"stop_{tag}"] = server.stop()
            except Exception as e:  # noqa: BLE001
                res[f"stop_{tag}"] = {"error": str(e)}
            res[f"oom_kills_{tag}"] = box.oom_kills()
            res[f"charged_peak_mib_{tag}"] = box.charged_peak_mib()
            box.close()
    return res


# ---- figures and tables -----------------------------------------------------------------------

def figures(runs: list[dict], who: str) -> dict[str, dict]:
    """Each figure of one server as agg() over the runs (None where a run lacks it)."""
    def get(path: str) -> dict:
        return agg([dig(r.get(who), path) for r in runs])

    f = {"start_s": get("start.until_answering_s"), "idle_processes": get("idle.processes"),
         "idle_rss_mib": get("idle.rss_mib"), "idle_uss_mib": get("idle.uss_mib"),
         "idle_pss_mib": get("idle.pss_mib"), "cli_status_s": get("cli_status_s.median"),
         "burst_accepted_per_s": get("burst.accepted_per_s"), "burst_accept_s": get("burst.elapsed_s"),
         "burst_p50_ms": get("burst.latencies_ms_summary.p50"),
         "burst_p99_ms": get("burst.latencies_ms_summary.p99"),
         "burst_until_none_active_s": get("burst.until_none_active_s"),
         "burst_peak_rss_mib": get("burst.tree.peak_rss_mib"),
         "burst_peak_processes": get("burst.tree.peak_processes"),
         "after_short_rss_mib": get("after_short.rss_mib"),
         "after_short_processes": get("after_short.processes")}
    for pass_name in ("first", "second"):
        for i, c in enumerate((1, 10, 50)):
            base = f"short_{pass_name}.levels.{i}"
            f[f"short_{pass_name}_{c}_rps"] = get(f"{base}.req_per_s")
            for q in ("p50", "p99"):
                f[f"short_{pass_name}_{c}_{q}_ms"] = get(f"{base}.latencies_ms_summary.{q}")
        f[f"short_{pass_name}_peak_rss_mib"] = get(f"short_{pass_name}.tree.peak_rss_mib")
        f[f"short_{pass_name}_peak_processes"] = get(f"short_{pass_name}.tree.peak_processes")
    return f


def ratio(a: dict, b: dict) -> str:
    if not a["median"] or not b["median"]:
        return "—"
    r = a["median"] / b["median"]
    return f"{r:.3g}" if r >= 0.001 else f"{r:.2e}"


def _pass_rows(p: str) -> list[tuple]:
    """The rows of one pass of the short load: each level, then the tree's peaks."""
    return [*[(f"short_{p}_{c}_{k}", f"status, {c} client{'s' * (c > 1)}, {p} pass: {label}", 1, d, u)
              for c in (1, 10, 50) for k, label, d, u in (("rps", "req/s", 1, ""),
                                                         ("p50_ms", "p50", 2, " ms"),
                                                         ("p99_ms", "p99", 2, " ms"))],
            (f"short_{p}_peak_rss_mib", f"{p} pass: tree RSS peak", 1, 0, " MiB"),
            (f"short_{p}_peak_processes", f"{p} pass: processes peak", 1, 0, "")]


ROWS = [  # key, label, scale, digits, unit
    ("cli_status_s", "status as a fresh CLI process (`skyctl status` / `sky status`)", 1000, 1, " ms"),
    ("start_s", "start until answering", 1000, 0, " ms"),
    ("idle_processes", "idle: processes in the tree", 1, 0, ""),
    ("idle_rss_mib", "idle: tree RSS (sum)", 1, 1, " MiB"),
    ("idle_uss_mib", "idle: tree USS (sum)", 1, 1, " MiB"),
    ("idle_pss_mib", "idle: tree PSS (sum)", 1, 1, " MiB"),
    *_pass_rows("first"),
    *_pass_rows("second"),
    ("after_short_rss_mib", "after the short load, idle: tree RSS", 1, 0, " MiB"),
    ("after_short_processes", "after the short load, idle: processes", 1, 0, ""),
    ("burst_accepted_per_s", "burst: accepted per second (one submitter)", 1, 1, "/s"),
    ("burst_accept_s", "burst: until all accepted", 1, 2, " s"),
    ("burst_p50_ms", "burst: submit latency p50", 1, 2, " ms"),
    ("burst_p99_ms", "burst: submit latency p99", 1, 2, " ms"),
    ("burst_until_none_active_s", "burst: until none is active", 1, 1, " s"),
    ("burst_peak_rss_mib", "burst: tree RSS peak", 1, 0, " MiB"),
    ("burst_peak_processes", "burst: processes peak", 1, 0, ""),
]


def table(res: dict) -> str:
    a, b = figures(res["runs"], "skyd"), figures(res["runs"], "SkyPilot")
    rows = [[label, fmt_agg(a[k], s, d, u), fmt_agg(b[k], s, d, u), ratio(a[k], b[k])]
            for k, label, s, d, u in ROWS]
    return markdown(["figure", "skyd median (min–max)", "SkyPilot 0.14.1 median (min–max)",
                     "skyd / SkyPilot"], rows)


def notes(res: dict) -> str:
    lines = []
    for r_i, r in enumerate(res["runs"], 1):
        for who in ("skyd", "SkyPilot"):
            x = r.get(who, {})
            if x.get("aborted") or x.get("error"):
                lines.append(f"- run {r_i}, {who}: {x.get('aborted') or x.get('error')}")
            fs = x.get("burst", {}).get("final_statuses")
            if fs:
                lines.append(f"- run {r_i}, {who}: burst outcome {fs}")
            errs = sum(lv.get("error_count", len(lv.get("errors", [])))
                       for p in ("short_first", "short_second") for lv in x.get(p, {}).get("levels", []))
            if errs:
                lines.append(f"- run {r_i}, {who}: {errs} short requests failed")
    return "\n".join(lines)


# ---- main -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m profiling.vs_skypilot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, help="runs (default 3; --quick: 1)")
    ap.add_argument("--quick", action="store_true", help="1 run, shorter levels")
    ap.add_argument("--burst", type=int, default=20, help="async long requests per burst")
    ap.add_argument("--burst-cap", type=int, default=50, help="never more than this many")
    ap.add_argument("--mem-cap-gib", type=float, default=12.0, help="memory guard per server")
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="SkyPilot's virtualenv")
    ap.add_argument("--only", default="skyd,SkyPilot", help="which servers")
    ap.add_argument("--no-netns", action="store_true", help="do not enter a network namespace")
    ap.add_argument("--prepared", help=argparse.SUPPRESS)     # set by the outer process
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "vs_skypilot.json"))
    args = ap.parse_args(argv)
    cfg = Config(args)
    servers = [s for s in ("skyd", "SkyPilot") if s in args.only.split(",")]

    if args.prepared is None:
        # Outside: install (needs the registry), then re-run inside the namespace.
        root = Path(tempfile.mkdtemp(prefix="skyvs-", dir="/tmp"))
        try:
            prep = {"skypilot": ensure_skypilot(args.venv) if "SkyPilot" in servers else None,
                    "skyd": user_install(root / "user")}
            if not prep["skyd"]["ok"]:
                raise RuntimeError(f"cannot install skyd in a venv: {prep['skyd'].get('reason')}")
            (root / "prepared.json").write_text(json.dumps(prep))
            inner = [*argv, "--prepared", str(root)]
            if not args.no_netns:
                rc = enter_netns(inner)
                if rc is not None:
                    return rc
            return main(inner)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    if os.environ.get(NETNS_FLAG) == "1":       # a new namespace's loopback starts down
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
        # 46580 lies in the default ephemeral range: a health poll could then connect to
        # itself (source port = destination port) and hold the server's port. The range
        # is the namespace's own.
        Path("/proc/sys/net/ipv4/ip_local_port_range").write_text("50000 60999")
    root = Path(args.prepared)
    prep = json.loads((root / "prepared.json").read_text())
    signal.signal(signal.SIGTERM, stop_on_signal)
    res: dict[str, Any] = {
        "machine": machine_info(), "code": code_version(), "skypilot": prep.get("skypilot"),
        "config": vars(cfg), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "loadavg_start": os.getloadavg(), "netns": os.environ.get(NETNS_FLAG) == "1",
        "interfaces": [name for _, name in socket.if_nameindex()], "runs": []}
    if args.burst > args.burst_cap:
        print(f"burst capped at {args.burst_cap} (asked {args.burst})", flush=True)
    print(f"skyd vs SkyPilot {SKYPILOT_VERSION}: {cfg.runs} run(s); interfaces "
          f"{res['interfaces']}; load average {res['loadavg_start']}", flush=True)
    t_all = time.perf_counter()
    limit = int((cfg.mem_cap_gib + 2) * GiB)
    try:
        for run in range(cfg.runs):
            one: dict[str, Any] = {}
            res["runs"].append(one)
            for who in servers:
                print(f"[run {run + 1}/{cfg.runs}] {who}", flush=True)
                one[who] = run_server(who, run, cfg, root, prep, limit)
    finally:
        res["elapsed_s"] = time.perf_counter() - t_all
        res["loadavg_end"] = os.getloadavg()
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1, default=str))
    print()
    print(table(res))
    n = notes(res)
    if n:
        print("\n" + n)
    print(f"\n{res['elapsed_s']:.0f} s; load average at end {res['loadavg_end']}; raw: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
