"""The two servers behind one interface (start, cli_status, short, burst, active, cancel,
final_statuses, stop): skyd serve and SkyPilot's API server, each in its Box; and what
they use to drive them (the load generators, a timed command)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from profiling._box import Box
from profiling._client import run_generator
from profiling._daemon import ROOT, BenchDaemon, kill_leftovers
from profiling.bench_jobs import jobs_state
from profiling.vs_skypilot.config import PORT, TASK_YAML, URL, Config


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
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SKYD_") and k != "PYTHONPATH"}
        env["SKYD_HOST"] = self.d.host
        return timed([self.skyctl, "status"], env)

    def short(self, cfg: Config) -> dict:
        spec = {"mode": "short", "op": "status", "socket": str(self.d.socket),
                "levels": cfg.levels, "warmup": cfg.warmup, "duration": cfg.duration,
                "daemon_pid": self.d.pid}
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
        raise RuntimeError(f"{argv} exited {p.returncode}: "
                           f"{p.stderr.decode(errors='replace')[-500:]}")
    return dt


def budget(cfg: Config) -> float:
    return len(cfg.levels) * (cfg.warmup + cfg.duration + 240) + 60


def run_http_generator(venv: Path, spec: dict, timeout: float) -> dict:
    env = {"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8"}
    p = subprocess.run([str(venv / "bin" / "python"), "-m", "profiling._http_client",
                        json.dumps(spec)],
                       capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
    if p.returncode != 0:
        raise RuntimeError(f"HTTP load generator failed ({p.returncode}): {p.stderr[-2000:]}")
    return json.loads(p.stdout)
