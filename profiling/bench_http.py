"""The HTTP side's figures (issue 16; DESIGN.md §5: /metrics ≤ 10 ms with 100k requests, ten
dashboard pages cost < 5 % of short throughput).

    python -m profiling.bench_http [--runs 3] [--quick] [--out bench-results/http.json]

Real `skyd serve` processes (state dirs under /tmp), each figure per run, median (min–max):
  1. the daemon's idle VmRSS with the HTTP side off, on, and on after a scrape and a page;
  2. GET /metrics on a keep-alive connection, with 100,000 requests stored and 2,000 managed
     jobs in the controller (one launching: its setup sleeps; 1,999 queued behind
     --jobs-parallelism 1);
  3. short requests (`status`) from 50 clients of the load generator (profiling._client):
     with HTTP off and on (what counting each request costs), and on the daemon of 2. with
     no page open and with 10 dashboard pages following the state (server-sent events,
     as root: an admin's document, the largest) and a scrape every second, alternating;
     in both, a managed job submitted every 0.25 s changes every page's document at every
     tick (else an idle dashboard sends nothing).
The pages and the scraper are one process (profiling/http_pages.py); its CPU is reported.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from profiling._client import _cpu_of, run_generator
from profiling._daemon import ROOT, BenchDaemon, bounded_wait, daemon_env, kill_leftovers
from profiling._report import agg, code_version, fmt_agg, machine_info, markdown
from profiling.bench_core.large_store import fill_db
from skyd import protocol
from skyd.taskspec import Task

MiB = 1024 * 1024
PAGES, CLIENTS = 10, 50


def vm_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmRSS:"))


def settled_rss(pid: int, seconds: float = 3.0) -> float:
    """VmRSS once it stays put for half a second (bounded)."""
    last, still = -1.0, 0
    for _ in range(int(seconds / 0.1)):
        rss = vm_rss_mib(pid)
        still, last = (still + 1 if rss == last else 0), rss
        if still >= 5:
            break
        time.sleep(0.1)
    return last


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HttpDaemon(BenchDaemon):
    def __init__(self, root: Path, name: str, serving: bool, args: list[str] | None = None):
        self.port = free_port() if serving else None
        extra = ["--http", f"127.0.0.1:{self.port}"] if serving else []
        super().__init__(root, name, [*extra, *(args or [])])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def get(d: HttpDaemon, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {path}: {r.status} {body[:200]!r}")
        return body
    finally:
        conn.close()


# ---- 1. idle memory --------------------------------------------------------------------------

def idle_rss(root: Path, run: int) -> dict:
    out = {}
    for label, serving in (("off", False), ("on", True)):
        d = HttpDaemon(root, f"rss-{label}-{run}", serving)
        try:
            d.start()
            time.sleep(1.0)
            out[label] = settled_rss(d.pid)
            if serving:                      # what serving once adds: a scrape and a page
                get(d, "/metrics")
                get(d, "/")
                pages = start_pages(d, 1, 2.0)
                pages.wait(30)
                out["on_after_use"] = settled_rss(d.pid)
        finally:
            d.stop()
            kill_leftovers(d.state_dir, d.sessions)
    return out


# ---- 2. /metrics with a big state ---------------------------------------------------------------

def big_daemon(root: Path, rows: int, jobs: int) -> HttpDaemon:
    d = HttpDaemon(root, "big", True, ["--jobs-parallelism", "1"])
    d.start()
    d.stop()
    fill_db(d.db_path, rows)
    d.start(timeout=60)
    # One managed job launching (its setup sleeps), the others queued behind it.
    op = protocol.JobsLaunch(task=Task(setup="sleep 3600", run="true", name="bench"))
    with d.connect(timeout=60) as c:
        for _ in range(jobs):
            frames = list(c.submit(op, False))
            assert isinstance(frames[-1], protocol.Accepted), frames[-1]
    queued = bounded_wait(lambda: _managed(d) == jobs, 30, 0.1)
    assert queued, f"{_managed(d)} of {jobs} managed jobs in the controller"
    return d


def _managed(d: HttpDaemon) -> int:
    text = get(d, "/metrics").decode()
    return int(sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                   if ln.startswith("skyd_managed_jobs{")))


def scrape_ms(d: HttpDaemon, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    times = []
    try:
        for _ in range(n):
            t = time.perf_counter()
            conn.request("GET", "/metrics")
            r = conn.getresponse()
            r.read()
            times.append((time.perf_counter() - t) * 1000)
    finally:
        conn.close()
    return times


# ---- 3. short throughput, with and without pages ---------------------------------------------------

class Changes:
    """What keeps the pages' documents changing at every tick, in both runs compared: a
    managed job submitted every quarter second (a new request and a new queued job in the
    lists; queued behind the first, they start nothing)."""

    def __init__(self, d: BenchDaemon, every: float = 0.25):
        self.d, self.every = d, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.submitted = 0

    def _run(self) -> None:
        op = protocol.JobsLaunch(task=Task(run="true", name="change"))
        with self.d.connect(timeout=30) as c:
            while not self.stop.wait(self.every):
                list(c.submit(op, False))
                self.submitted += 1

    def __enter__(self) -> "Changes":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)


def throughput(d: BenchDaemon, warmup: float, duration: float) -> dict:
    spec = {"mode": "short", "op": "status", "socket": str(d.socket), "levels": [CLIENTS],
            "warmup": warmup, "duration": duration, "daemon_pid": d.pid}
    level = run_generator(spec, warmup + duration + 60)["levels"][0]
    if level["errors"]:
        raise RuntimeError(f"errors under load: {level['errors'][:3]}")
    cpu = level["daemon_cpu_cores"]
    # The daemon's CPU per request: what a page costs it even while other processes take
    # turns on the cores (throughput alone drifts with them).
    return {"req_per_s": level["req_per_s"], "daemon_cpu": cpu,
            "cpu_us_per_req": cpu / level["req_per_s"] * 1e6 if cpu else None,
            "p99_ms": level["latencies_ms_summary"]["p99"]}


def start_pages(d: HttpDaemon, pages: int, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "profiling.http_pages", d.base,
                             str(pages), str(seconds)], stdout=subprocess.PIPE, text=True,
                            env=daemon_env(), cwd=str(ROOT))


def with_pages(d: HttpDaemon, warmup: float, duration: float) -> dict:
    pages = start_pages(d, PAGES, warmup + duration + 4)
    time.sleep(2)                           # every page has its first document
    try:
        out = throughput(d, warmup, duration)
    finally:
        seen, _ = pages.communicate(timeout=60)
    out["pages"] = json.loads(seen)
    return out


def pages_cpu(d: HttpDaemon, seconds: float) -> dict:
    """The daemon's CPU (cores) with no load but the changes: without pages, then with
    10 pages and a scrape a second. CPU time is the daemon's own, whatever else runs."""
    out = {}
    with Changes(d):
        time.sleep(1.0)
        cpu0 = _cpu_of(d.pid)
        time.sleep(seconds)
        out["none"] = (_cpu_of(d.pid) - cpu0) / seconds
        pages = start_pages(d, PAGES, seconds + 3)
        time.sleep(2.0)
        cpu0 = _cpu_of(d.pid)
        time.sleep(seconds)
        out["pages"] = (_cpu_of(d.pid) - cpu0) / seconds
        pages.communicate(timeout=60)
    return out


def count_cost_us(n: int = 200_000) -> dict:
    """What counting one finished short request costs, in this process: off and on."""
    from skyd import metrics
    rec = protocol.RequestRecord(id="x", name="status", queue=protocol.Queue.SHORT,
                                 status=protocol.Status.SUCCEEDED, user="u", uid=1000,
                                 created_at=1.0, started_at=1.0001, finished_at=1.0003)
    out = {}
    for label in ("off", "on"):
        if label == "on":
            metrics.enable()
        t = time.perf_counter()
        for _ in range(n):
            metrics.request_finished(rec)
        out[label] = (time.perf_counter() - t) / n * 1e6
        metrics.disable()
    return out


# ---- the run --------------------------------------------------------------------------------------

def run(runs: int, quick: bool) -> dict:
    warmup, duration = (0.5, 2.0) if quick else (1.0, 5.0)
    rows, jobs, scrapes = (100_000, 2_000, 50 if quick else 200)
    root = Path(tempfile.mkdtemp(prefix="skyd-bh-", dir="/tmp"))
    out: dict = {"machine": machine_info(), "code": code_version(), "runs": runs,
                 "loadavg_start": os.getloadavg(), "rss": [], "hooks": [], "scrape": [],
                 "pages": [], "count_us": [], "pages_cpu": []}
    daemons: list[BenchDaemon] = []
    try:
        for r in range(runs):
            out["rss"].append(idle_rss(root, r))
            print(f"  [1] run {r + 1}: idle RSS {out['rss'][-1]}", flush=True)
        for r in range(runs):
            out["count_us"].append(count_cost_us())
        print(f"  [3a] counting one request in-process: {out['count_us']}", flush=True)
        # What counting costs the short path: the same empty daemon, HTTP off and on.
        off, on = HttpDaemon(root, "off", False), HttpDaemon(root, "on", True)
        daemons += [off, on]
        off.start()
        on.start()
        for r in range(runs):
            pair = {}
            for kind in (("on", "off") if r % 2 else ("off", "on")):
                pair[kind] = throughput(on if kind == "on" else off, warmup, duration)
            out["hooks"].append(pair)
            print(f"  [3a] run {r + 1}: HTTP off {pair['off']['req_per_s']:.0f}/s, on "
                  f"{pair['on']['req_per_s']:.0f}/s", flush=True)
        off.stop()
        on.stop()
        big = big_daemon(root, rows, jobs)
        daemons.append(big)
        scrape_ms(big, 10)                               # warm
        for r in range(runs):
            xs = sorted(scrape_ms(big, scrapes))
            out["scrape"].append({"median_ms": statistics.median(xs), "max_ms": xs[-1],
                                  "p95_ms": xs[int(0.95 * (len(xs) - 1))],
                                  "bytes": len(get(big, "/metrics"))})
            print(f"  [2] run {r + 1}: GET /metrics {out['scrape'][-1]}", flush=True)
        for r in range(runs):
            out["pages_cpu"].append(pages_cpu(big, duration))
            print(f"  [3b] run {r + 1}: daemon CPU, no load: {out['pages_cpu'][-1]}", flush=True)
        for r in range(runs):
            # Alternate which goes first: this machine's speed drifts within minutes.
            first_pages = r % 2 == 1
            pair = {}
            for kind in (("pages", "none") if first_pages else ("none", "pages")):
                with Changes(big):
                    pair[kind] = (with_pages(big, warmup, duration) if kind == "pages"
                                  else throughput(big, warmup, duration))
            pair["ratio"] = pair["pages"]["req_per_s"] / pair["none"]["req_per_s"]
            out["pages"].append(pair)
            print(f"  [3b] run {r + 1}: none {pair['none']['req_per_s']:.0f}/s, {PAGES} pages "
                  f"{pair['pages']['req_per_s']:.0f}/s: ratio {pair['ratio']:.3f}; pages "
                  f"{pair['pages']['pages']}", flush=True)
    finally:
        for d in daemons:
            d.stop(timeout=15)
            kill_leftovers(d.state_dir, d.sessions)
        shutil.rmtree(root, ignore_errors=True)
    out["loadavg_end"] = os.getloadavg()
    return out


def table(res: dict) -> str:
    rss, hooks, scrape, pages = res["rss"], res["hooks"], res["scrape"], res["pages"]
    ratio_hooks = agg([h["on"]["req_per_s"] / h["off"]["req_per_s"] for h in hooks])
    rows = [
        ["daemon idle VmRSS, HTTP off", "—", fmt_agg(agg([x["off"] for x in rss]), 1, 1, " MiB")],
        ["daemon idle VmRSS, HTTP on", "—", fmt_agg(agg([x["on"] for x in rss]), 1, 1, " MiB")],
        ["… on, after a scrape and a page", "—",
         fmt_agg(agg([x["on_after_use"] for x in rss]), 1, 1, " MiB")],
        ["GET /metrics, 100k requests stored, 2,000 managed jobs (median of each run)", "≤ 10 ms",
         fmt_agg(agg([s["median_ms"] for s in scrape]), 1, 2, " ms")],
        ["… p95 / max of each run", "—",
         fmt_agg(agg([s["p95_ms"] for s in scrape]), 1, 2, " ms") + " / "
         + fmt_agg(agg([s["max_ms"] for s in scrape]), 1, 2, " ms")],
        ["/metrics size", "—", fmt_agg(agg([s["bytes"] / 1024 for s in scrape]), 1, 1, " KiB")],
        [f"`status` at {CLIENTS} clients, HTTP off / on (empty state)", "—",
         fmt_agg(agg([h["off"]["req_per_s"] for h in hooks]), 1, 0, "/s") + " / "
         + fmt_agg(agg([h["on"]["req_per_s"] for h in hooks]), 1, 0, "/s")],
        ["… ratio on / off (the cost of counting each request)", "—", fmt_agg(ratio_hooks, 1, 3)],
        ["… counting one finished request, in-process, off / on", "—",
         fmt_agg(agg([c["off"] for c in res["count_us"]]), 1, 3, " µs") + " / "
         + fmt_agg(agg([c["on"] for c in res["count_us"]]), 1, 3, " µs")],
        ["… daemon CPU per request, off / on", "—",
         fmt_agg(agg([h["off"]["cpu_us_per_req"] for h in hooks]), 1, 1, " µs") + " / "
         + fmt_agg(agg([h["on"]["cpu_us_per_req"] for h in hooks]), 1, 1, " µs")],
        [f"`status` at {CLIENTS} clients, big state: no page / {PAGES} pages + a scrape a second",
         "—", fmt_agg(agg([p["none"]["req_per_s"] for p in pages]), 1, 0, "/s") + " / "
         + fmt_agg(agg([p["pages"]["req_per_s"] for p in pages]), 1, 0, "/s")],
        [f"… ratio {PAGES} pages / none", "≥ 0.95", fmt_agg(agg([p["ratio"] for p in pages]), 1, 3)],
        ["… daemon CPU per request, no page / pages (ratio none / pages)", "(≥ 0.95)",
         fmt_agg(agg([p["none"]["cpu_us_per_req"] for p in pages]), 1, 1, " µs") + " / "
         + fmt_agg(agg([p["pages"]["cpu_us_per_req"] for p in pages]), 1, 1, " µs") + " ("
         + fmt_agg(agg([p["none"]["cpu_us_per_req"] / p["pages"]["cpu_us_per_req"]
                        for p in pages]), 1, 3) + ")"],
        [f"… daemon CPU with no load: none / {PAGES} pages + a scrape a second", "—",
         fmt_agg(agg([c["none"] for c in res["pages_cpu"]]), 1, 4, " cores") + " / "
         + fmt_agg(agg([c["pages"] for c in res["pages_cpu"]]), 1, 4, " cores")],
        ["… what the pages leave of a saturated core (1 − the CPU they add)", "(≥ 0.95)",
         fmt_agg(agg([1 - (c["pages"] - c["none"]) for c in res["pages_cpu"]]), 1, 3)],
        ["… the pages' own process (events/s, CPU)", "—",
         fmt_agg(agg([p["pages"]["pages"]["events"] / p["pages"]["pages"]["seconds"]
                      for p in pages]), 1, 1, "/s") + ", "
         + fmt_agg(agg([p["pages"]["pages"]["cpu_cores"] for p in pages]), 1, 2, " cores")],
    ]
    m = res["machine"]
    head = (f"{m['nproc']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, Python {m['python']}; "
            f"code `{res['code']['head']}` (sources {res['code']['sources_sha256']}); "
            f"{res['runs']} runs; load average {res['loadavg_start'][0]:.2f} at the start, "
            f"{res['loadavg_end'][0]:.2f} at the end.")
    return head + "\n\n" + markdown(["figure", "goal", "measured"], rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m profiling.bench_http",
                                description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="shorter load windows, fewer scrapes")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results" / "http.json")
    a = p.parse_args(argv)
    res = run(a.runs, a.quick)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1))
    print(table(res))
    print(f"\nraw results: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
