"""Measure what one long worker, one short request and the idle daemon cost in memory, and
write the calibration file that sizes skyd's queues (skyd.sizing.calibration, skyd.sizing.slots).

    python -m profiling.calibrate [--socket PATH | --start] [--out FILE] [--duration S]

With --start (the default without --socket or SKYD_HOST) it starts its own daemon in a
temporary directory, removed at the end. While profiling.sysprof samples the daemon's
process tree, it runs a standard load with profiling.loadtest:

  idle    a moment of nothing: the daemon's idle footprint (RSS)
  long    8 concurrent launches with `setup: sleep 3` (then their clusters are downed):
          the peak USS of one worker process running a request
  short   50 concurrent api_status clients for --duration seconds (default 5): the daemon's
          growth over its memory just before, divided by the peak number of short requests
          running at once (ApiInfo short_running): an estimate, short requests being
          coroutines inside the daemon

and derives, with 25 % headroom: long_worker_bytes (never below 4 MiB),
short_request_bytes (never below 64 KiB) and daemon_base_bytes (the idle RSS). It writes
them with skyd.sizing.calibration.write_calibration, with what was measured and on which machine,
to --out, by default the daemon's <state-dir>/calibration.json (with --start: the default
state dir's, which `skyd serve` and `skyd capacity` read). Then it prints the slots that
`skyd capacity` gives with it next to the built-in defaults, and checks that a daemon
started on a state dir holding the file names it in ApiInfo.slots_source.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from profiling import sysprof
from profiling._daemon import ROOT, BenchDaemon, daemon_env, kill_leftovers, server_info
from skyctl.connection import Connection, ServerError, Unreachable
from skyd import protocol
from skyd.sizing import capacity
from skyd.sizing.calibration import (DEFAULT_CALIBRATION, Calibration, CalibrationError, load_calibration,
                              write_calibration)
from skyd.sizing.hardware import detect
from skyd.sizing.units import KiB, MiB, format_size

HEADROOM = 1.25
LONG_FLOOR = 4 * MiB
SHORT_FLOOR = 64 * KiB


# ---- the arithmetic ----------------------------------------------------------------------------

def with_headroom(measured: float, floor: int) -> int:
    """measured + 25 %, rounded up to a whole byte, never below `floor`."""
    return max(floor, math.ceil(measured * HEADROOM))


def derive(long_worker_peak: float, short_request_peak: float, daemon_idle_rss: int) -> dict[str, int]:
    """The calibration values from what was measured (bytes)."""
    return {"long_worker_bytes": with_headroom(long_worker_peak, LONG_FLOOR),
            "short_request_bytes": with_headroom(short_request_peak, SHORT_FLOOR),
            "daemon_base_bytes": int(daemon_idle_rss) if daemon_idle_rss > 0
            else DEFAULT_CALIBRATION.daemon_base_bytes}


def phase_figures(idle: list[sysprof.Sample], long: list[sysprof.Sample],
                  short: list[sysprof.Sample], clients: int, short_peak: int = 0) -> dict:
    """The raw peaks from the samples of each phase (`short` starts with the last sample
    before the load: its baseline)."""
    if not idle or not long or len(short) < 2:
        raise RuntimeError("too few samples: the load ended before it could be measured")
    idle_rss = max((p.rss for s in idle for p in s.procs.get(sysprof.DAEMON, ())), default=0)
    lw = sysprof.summarize(long)["long_worker"]
    if lw is None:
        raise RuntimeError("no long worker was seen running during the launches")
    summ = sysprof.summarize(short)
    daemon_base, daemon_peak = summ["baseline"]["daemon_mem"], summ["peak"]["daemon_mem"]
    sr = summ["short_request"]
    # Requests in flight at once: each of the clients has one in flight nearly all the time
    # (its connection and buffers are what costs); the daemon's own peak count can be
    # lower (most finish within one turn of its loop) or higher (other traffic).
    candidates = [(clients, "the load's concurrent clients"),
                  (short_peak, "ApiInfo short_peak (the daemon's count since it started)")]
    if sr is not None:
        candidates.append((sr["peak_concurrent"], "ApiInfo short_running (sampled peak)"))
    concurrency, source = max(candidates)
    return {"daemon_idle_rss": idle_rss,
            "long_worker_peak": lw["peak_mem"], "long_worker_avg": round(lw["avg_mem"]),
            "long_worker_uss": lw["uss"], "long_workers_seen": lw["seen"],
            "long_workers_peak_concurrent": lw["peak_concurrent"],
            "short_daemon_baseline": daemon_base, "short_daemon_peak": daemon_peak,
            "short_peak_concurrency": concurrency, "short_concurrency_source": source,
            "short_request_peak": max(0, daemon_peak - daemon_base) / concurrency}


# ---- running the load --------------------------------------------------------------------------

def run_loadtest(socket: str, args: list[str], timeout: float) -> dict:
    """profiling.loadtest as a process of its own (its CPU and memory are not the daemon's);
    interrupted, it gets SIGINT so that it cleans up what it launched."""
    cmd = [sys.executable, "-m", "profiling.loadtest", "--socket", socket, "--json", *args]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=daemon_env(), cwd=str(ROOT))
    try:
        out, err = p.communicate(timeout=timeout)
    except BaseException:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        raise
    if p.returncode not in (0, 1) or not out.strip():
        raise RuntimeError(f"loadtest {' '.join(args)} failed ({p.returncode}): {err[-1500:]}")
    return json.loads(out)


def measure(socket: str, info: protocol.ServerInfo, a: argparse.Namespace) -> tuple[dict, dict]:
    """Sample the daemon through the three phases; (raw figures, load results)."""
    sampler = sysprof.Sampler(info.pid, Path(info.state_dir), socket)
    stop = threading.Event()
    thread = threading.Thread(target=sampler.run, args=(a.interval, None, stop), daemon=True)
    thread.start()
    loads = {}
    try:
        time.sleep(a.idle)
        long_at = time.monotonic() - sampler.t0
        print(f"calibrate: long: {a.launches} launches with setup `sleep {a.setup_sleep:g}`",
              file=sys.stderr, flush=True)
        loads["long"] = run_loadtest(socket, ["--api", "launch", "-n", str(a.launches), "--count",
                                              str(a.launches), "--setup", f"sleep {a.setup_sleep:g}"],
                                     timeout=a.setup_sleep * 4 + 120)
        time.sleep(2 * a.interval)
        short_at = time.monotonic() - sampler.t0
        print(f"calibrate: short: {a.clients} api_status clients for {a.duration:g} s",
              file=sys.stderr, flush=True)
        loads["short"] = run_loadtest(socket, ["--api", "api_status", "-n", str(a.clients),
                                               "--duration", f"{a.duration:g}"],
                                      timeout=a.duration + 120)
        time.sleep(2 * a.interval)
        end_at = time.monotonic() - sampler.t0
    finally:
        stop.set()
        thread.join(10)
        sampler.close()
    samples = list(sampler.samples)
    idle = [s for s in samples if s.t < long_at]
    long = [s for s in samples if long_at <= s.t < short_at]
    before = [s for s in samples if s.t < short_at][-1:]
    short = before + [s for s in samples if short_at <= s.t <= end_at]
    with Connection(socket, "calibrate", timeout=10).connect() as c:
        peak = c.call(protocol.ApiInfo()).short_peak     # since the daemon started
    return phase_figures(idle, long, short, a.clients, peak), loads


# ---- reporting and checking ----------------------------------------------------------------------

def capacity_table(calib: Calibration) -> str:
    """`skyd capacity` with this calibration, next to the built-in defaults and SkyPilot."""
    hw = detect()
    machines = [(hw.cpus, hw.memory_bytes),
                *[(float(c), m) for c, m in capacity.STANDARD_MACHINES]]
    mine = capacity.capacity_rows(machines, calib)
    default = capacity.capacity_rows(machines, DEFAULT_CALIBRATION)
    head = ["CPUs", "MEMORY", "LONG", "SHORT", "DEFAULT LONG", "DEFAULT SHORT", "SKYPILOT LONG",
            "SKYPILOT SHORT"]
    rows = []
    for i, (m, d) in enumerate(zip(mine, default)):
        rows.append([f"{m['cpus']:g}", m["memory"], f"{m['long']} ({m['long_bound']})",
                     f"{m['short']} ({m['short_bound']})", f"{d['long']} ({d['long_bound']})",
                     f"{d['short']} ({d['short_bound']})", str(m["skypilot_long"] or "-"),
                     str(m["skypilot_short"] or "-"),
                     "(this machine)" if i == 0 else ""])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) + ("  " + r[-1] if r[-1] else "")
              for r in rows]
    lines += ["(in brackets: what decided it: cpu, memory or the minimum)", "",
              capacity.calibration_line(calib),
              "default: " + capacity.calibration_line(DEFAULT_CALIBRATION)]
    return "\n".join(lines)


def verify(path: Path) -> tuple[bool, str]:
    """Start a daemon on a fresh state dir holding the file as calibration.json; does
    ApiInfo.slots_source name it? (ok, what it said)"""
    root = Path(tempfile.mkdtemp(prefix="skc-v-", dir="/tmp"))
    d = BenchDaemon(root, "v")
    try:
        d.state_dir.mkdir(parents=True)
        shutil.copyfile(path, d.state_dir / "calibration.json")
        d.start()
        info = d.call(protocol.ApiInfo())
        ok = str(d.state_dir / "calibration.json") in info.slots_source
        return ok, (f"slots_source: {info.slots_source!r}; long_slots {info.long_slots}, "
                    f"short_slots {info.short_slots}")
    except (RuntimeError, OSError, ServerError, Unreachable) as e:
        return False, f"the daemon did not start with it: {e}"
    finally:
        d.stop(timeout=15)
        kill_leftovers(root, d.sessions)
        shutil.rmtree(root, ignore_errors=True)


def default_out(info: protocol.ServerInfo, started: bool) -> Path:
    if not started:
        return Path(info.state_dir) / "calibration.json"
    from skyd.server import config
    try:
        return config.load({}).calibration_path
    except config.ConfigError:
        return config.default_state_dir() / "calibration.json"


def report(raw: dict, values: dict, a: argparse.Namespace) -> str:
    what = "USS" if raw["long_worker_uss"] else "USS (RSS where unreadable)"
    return "\n".join([
        f"long worker:   peak {what} {format_size(raw['long_worker_peak'])} (average "
        f"{format_size(raw['long_worker_avg'])}; {raw['long_workers_seen']} workers seen, at most "
        f"{raw['long_workers_peak_concurrent']} at once) -> {format_size(values['long_worker_bytes'])}"
        f" with {HEADROOM - 1:.0%} headroom (floor {format_size(LONG_FLOOR)})",
        f"short request: daemon {format_size(raw['short_daemon_baseline'])} -> peak "
        f"{format_size(raw['short_daemon_peak'])} with {raw['short_peak_concurrency']} short "
        f"requests at once ({raw['short_concurrency_source']}; {a.clients} clients): "
        f"{format_size(round(raw['short_request_peak']))} each (estimate) -> "
        f"{format_size(values['short_request_bytes'])} (headroom, floor {format_size(SHORT_FLOOR)})",
        f"daemon idle:   RSS {format_size(raw['daemon_idle_rss'])} -> "
        f"{format_size(values['daemon_base_bytes'])}"])


# ---- command line --------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m profiling.calibrate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    who = ap.add_mutually_exclusive_group()
    who.add_argument("--socket", help="measure this running daemon (default: SKYD_HOST)")
    who.add_argument("--start", action="store_true", help="start a daemon in a temp dir")
    ap.add_argument("--out", help="calibration file to write (default: see above)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of short load")
    ap.add_argument("--launches", type=int, default=8, help="concurrent launches (default 8)")
    ap.add_argument("--setup-sleep", type=float, default=3.0, help="their setup sleeps this long")
    ap.add_argument("--clients", type=int, default=50, help="api_status clients (default 50)")
    ap.add_argument("--interval", type=float, default=0.1, help="seconds between samples")
    ap.add_argument("--idle", type=float, default=1.0, help="seconds idle before the load")
    a = ap.parse_args(argv)
    if min(a.duration, a.setup_sleep, a.interval, a.idle) <= 0 or min(a.launches, a.clients) < 1:
        ap.error("durations and counts must be positive")
    socket = a.socket or (None if a.start else os.environ.get("SKYD_HOST"))
    if socket and socket.startswith("unix://"):
        socket = socket[len("unix://"):]

    def on_term(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    root = d = None
    try:
        if socket is None:
            root = Path(tempfile.mkdtemp(prefix="skc-", dir="/tmp"))
            d = BenchDaemon(root, "cal")
            d.start()
            socket = str(d.socket)
            print(f"calibrate: started a daemon in {d.state_dir}", file=sys.stderr, flush=True)
        info = server_info(socket, "calibrate")
        if info is None:
            return 4
        raw, loads = measure(socket, info, a)
    except KeyboardInterrupt:
        print("calibrate: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"calibrate: {e}", file=sys.stderr)
        return 1
    finally:
        if d is not None:
            d.stop(timeout=15)
            kill_leftovers(root, d.sessions)
            shutil.rmtree(root, ignore_errors=True)
    values = derive(raw["long_worker_peak"], raw["short_request_peak"], raw["daemon_idle_rss"])
    hw = detect()
    out = Path(a.out) if a.out else default_out(info, d is not None)
    extra = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": hw.cpus, "memory_bytes": hw.memory_bytes, "cpu_source": hw.cpu_source,
                    "memory_source": hw.memory_source},
        "raw": raw,
        "method": {"tool": "profiling.calibrate", "headroom": HEADROOM, "long_floor": LONG_FLOOR,
                   "short_floor": SHORT_FLOOR, "launches": a.launches,
                   "setup": f"sleep {a.setup_sleep:g}", "short_clients": a.clients,
                   "short_seconds": a.duration, "interval": a.interval,
                   "daemon": "started for it" if d is not None else f"pid {info.pid}",
                   "server_version": info.version},
        "load": {k: [{x: r[x] for x in ("kind", "count", "errors", "throughput_per_s")}
                     for r in v["results"]] for k, v in loads.items()},
    }
    try:
        write_calibration(out, **values, extra=extra)
        calib = load_calibration(out)
    except (CalibrationError, OSError) as e:
        print(f"calibrate: cannot write {out}: {e}", file=sys.stderr)
        return 1
    print(report(raw, values, a))
    print(f"wrote {out}")
    print()
    print("What `skyd capacity` gives with it (LONG, SHORT) and with the built-in defaults:")
    print(capacity_table(calib))
    ok, said = verify(out)
    print()
    print(f"check: a daemon started on a state dir holding it {'uses it' if ok else 'does NOT use it'}"
          f": {said}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
