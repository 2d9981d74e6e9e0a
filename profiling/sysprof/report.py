"""What sampling gives: the summary (in the shape of SkyPilot's sys_profiling.py: baseline,
peaks, per long worker and per short request, averages) and every sample as CSV."""

from __future__ import annotations

import csv
import statistics
import time
from pathlib import Path

from profiling.sysprof.processes import DAEMON, KINDS, LONG_WORKER, MACHINE
from profiling.sysprof.sampling import Sample
from skyd.sizing.units import format_size


def summarize(samples: list[Sample], cpus: int = 1, duration: float | None = None) -> dict:
    """Baseline (the first sample), peaks, averages, per kind, per long worker and per
    short request (an estimate) from a list of samples."""
    if not samples:
        raise ValueError("no samples")
    first = samples[0]
    n = len(samples)
    if duration is None:
        duration = samples[-1].t - first.t
    daemon = [s.mem(DAEMON) for s in samples]
    peak_used = max(s.machine_mem_used for s in samples)
    out: dict = {
        "samples": n,
        "duration_s": duration,
        "cpus": cpus,
        "baseline": {"cpu_percent": first.machine_cpu_percent, "mem_used": first.machine_mem_used,
                     "mem_percent": first.machine_mem_percent, "daemon_mem": daemon[0]},
        "peak": {"cpu_percent": max(s.machine_cpu_percent for s in samples),
                 "mem_used": peak_used,
                 "mem_percent": max(s.machine_mem_percent for s in samples),
                 "mem_delta": peak_used - first.machine_mem_used,
                 "daemon_mem": max(daemon), "daemon_mem_delta": max(daemon) - daemon[0]},
        "average": {"cpu_percent": statistics.fmean(s.machine_cpu_percent for s in samples),
                    "mem_used": statistics.fmean(s.machine_mem_used for s in samples),
                    "mem_percent": statistics.fmean(s.machine_mem_percent for s in samples)},
        "kinds": {},
    }
    for kind in KINDS:
        present = [s for s in samples if s.procs.get(kind)]
        if not present:
            continue
        out["kinds"][kind] = {
            "peak_processes": max(len(s.procs[kind]) for s in present),
            "peak_mem": max(s.mem(kind) for s in present),
            "avg_mem": statistics.fmean(s.mem(kind) for s in present),
            "peak_cpu_cores": max(s.cpu(kind) for s in present),
            "avg_cpu_cores": statistics.fmean(s.cpu(kind) for s in samples),
            "samples": len(present),
        }
    workers = [p for s in samples for p in s.procs.get(LONG_WORKER, ())]
    out["long_worker"] = None if not workers else {
        "seen": len({p.pid for p in workers}),
        "peak_concurrent": max(len(s.procs.get(LONG_WORKER, ())) for s in samples),
        "peak_mem": max(p.mem for p in workers),
        "avg_mem": statistics.fmean(p.mem for p in workers),
        "uss": all(p.uss is not None for p in workers),
    }
    running = [(s.short_running, s.mem(DAEMON)) for s in samples if s.short_running]
    if running:
        peak_conc = max(r for r, _ in running)
        out["short_request"] = {
            "peak_concurrent": peak_conc,
            "peak_mem_estimate": max(0, max(daemon) - daemon[0]) / peak_conc,
            "avg_mem_estimate": statistics.fmean(max(0, m - daemon[0]) / r for r, m in running),
        }
    else:
        out["short_request"] = None
    out["short_running_known"] = any(s.short_running is not None for s in samples)
    return out


def _pct_cores(percent: float, cpus: int) -> str:
    return f"{percent:.1f}% ({percent / 100 * cpus:.2f} of {cpus} CPUs)"


def render_summary(summ: dict, interval: float | None = None, note: str = "") -> str:
    b, p, a = summ["baseline"], summ["peak"], summ["average"]
    cpus = summ["cpus"]
    bar = "=" * 50
    lines = ["", bar, "MONITORING SUMMARY", bar,
             f"Duration: {summ['duration_s']:.1f} seconds ({summ['duration_s'] / 3600:.2f} hours), "
             f"{summ['samples']} samples" + (f" every {interval:g} s" if interval else "")]
    if note:
        lines.append(note)
    lines += ["", "BASELINE USAGE (first sample):",
              f"Baseline CPU: {_pct_cores(b['cpu_percent'], cpus)}",
              f"Baseline Memory: {format_size(b['mem_used'])} ({b['mem_percent']:.1f}%)",
              f"Baseline daemon memory: {format_size(b['daemon_mem'])}",
              "", "PEAK USAGE:",
              f"Peak CPU: {_pct_cores(p['cpu_percent'], cpus)}",
              f"Peak Memory: {format_size(p['mem_used'])} ({p['mem_percent']:.1f}%)",
              f"Memory Delta: {format_size(p['mem_delta'])}",
              f"Peak daemon memory: {format_size(p['daemon_mem'])} "
              f"(delta {format_size(p['daemon_mem_delta'])})",
              "", "BY KIND OF PROCESS (memory: USS, RSS where unreadable; CPU in cores):",
              f"  {'kind':<17} {'procs':>5} {'peak mem':>10} {'avg mem':>10} {'peak CPU':>8} "
              f"{'avg CPU':>8}"]
    for kind, k in summ["kinds"].items():
        lines.append(f"  {kind:<17} {k['peak_processes']:>5} {format_size(k['peak_mem']):>10} "
                     f"{format_size(round(k['avg_mem'])):>10} {k['peak_cpu_cores']:>8.2f} "
                     f"{k['avg_cpu_cores']:>8.2f}")
    lw = summ["long_worker"]
    lines += ["", "MEMORY PER LONG WORKER (a worker process running a request):"]
    if lw:
        what = "USS" if lw["uss"] else "USS, RSS where unreadable"
        lines += [f"Peak memory per long worker: {format_size(lw['peak_mem'])} ({what})",
                  f"Average memory per long worker: {format_size(round(lw['avg_mem']))}",
                  f"Long workers seen: {lw['seen']}, at most {lw['peak_concurrent']} at once"]
    else:
        lines.append("no long worker was running during the samples")
    sr = summ["short_request"]
    lines += ["", "MEMORY PER SHORT REQUEST (estimate: (daemon peak - daemon baseline) / peak "
                  "concurrent short requests):"]
    if sr:
        lines += [f"Peak concurrent short requests: {sr['peak_concurrent']} (ApiInfo short_running)",
                  f"Peak memory per short request: {format_size(round(sr['peak_mem_estimate']))} "
                  "(estimate)",
                  f"Average memory per short request: {format_size(round(sr['avg_mem_estimate']))} "
                  "(estimate)"]
    elif summ.get("short_running_known"):
        lines.append("ApiInfo short_running was 0 at every sample (each short request finished "
                     "between two samples): no estimate")
    else:
        lines.append("no estimate: the number of short requests running needs the daemon's socket")
    lines += ["", "AVERAGE USAGE:",
              f"Average CPU: {_pct_cores(a['cpu_percent'], cpus)}",
              f"Average Memory: {format_size(round(a['mem_used']))} ({a['mem_percent']:.1f}%)",
              bar]
    return "\n".join(lines)


CSV_FIELDS = ["t_s", "time", "kind", "processes", "cpu_cores", "cpu_percent", "mem_bytes",
              "rss_bytes", "uss_bytes", "max_process_mem_bytes", "short_running", "long_running"]


def write_csv(samples: list[Sample], path: Path, cpus: int) -> int:
    """One row per sample per kind present, plus one `machine` row per sample (its
    mem_bytes: memory used). cpu_cores: 1.0 = one core busy; cpu_percent: of all the
    machine's CPUs. mem_bytes: USS summed (RSS where unreadable). Returns rows written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for s in samples:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(s.wall)) if s.wall else ""
            common = [s.short_running if s.short_running is not None else "",
                      s.long_running if s.long_running is not None else ""]
            w.writerow([f"{s.t:.3f}", stamp, MACHINE, "",
                        f"{s.machine_cpu_percent / 100 * cpus:.3f}", f"{s.machine_cpu_percent:.1f}",
                        s.machine_mem_used, "", "", "", *common])
            rows += 1
            for kind in KINDS:
                ps = s.procs.get(kind)
                if not ps:
                    continue
                uss = [p.uss for p in ps if p.uss is not None]
                w.writerow([f"{s.t:.3f}", stamp, kind, len(ps), f"{s.cpu(kind):.3f}",
                            f"{s.cpu(kind) / cpus * 100:.1f}", s.mem(kind), sum(p.rss for p in ps),
                            sum(uss) if len(uss) == len(ps) else "", max(p.mem for p in ps),
                            *common])
                rows += 1
    return rows
