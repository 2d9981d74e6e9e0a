"""One run of one server: two sessions, each on a fresh server in a fresh Box (start, idle
tree, CLI status, short load twice; then a burst until none is active), watched by a
memory guard that stops the session past the cap."""

from __future__ import annotations

import statistics
import threading
import time
import urllib.error
from pathlib import Path
from typing import Any

import psutil

from profiling._box import Box
from profiling.vs_skypilot.config import Config
from profiling.vs_skypilot.servers import SkyPilot, Skyd


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
    res["cli_status_s"] = {"median": statistics.median(times), "min": min(times),
                           "max": max(times), "n": len(times)}
    for pass_name in ("first", "second"):
        print(f"  [{server.name}] short requests, {pass_name} pass, clients {cfg.levels}",
              flush=True)
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
          f"{b['tree']['peak_rss_mib']:.0f} MiB / {b['tree']['peak_processes']} processes",
          flush=True)


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
