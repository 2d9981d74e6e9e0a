"""Figure 6: memory. The daemon's whole tree idle (right after start, and after the other
figures), and the USS of each worker process while it runs a long request."""

from __future__ import annotations

import statistics
import time

import psutil

from profiling._daemon import BenchDaemon, bounded_wait
from profiling._report import agg
from profiling.bench_core.harness import (MiB, Config, Table, mem_of, request_status, spares_of,
                                          submit_async, wait_spares, worker_pid_of)
from skyd.protocol import Launch
from skyd.taskspec import Task


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
                                 for p in wpids.values() if p and psutil.pid_exists(p)),
                     10, 0.02)
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
    def per_run(f, key: str) -> dict:
        return agg([f(w[key] / MiB for w in run["workers"]) for run in raw])
    figures = {
        "worker_uss_median_mib": per_run(statistics.median, "uss"),
        "worker_uss_max_mib": per_run(max, "uss"),
        "worker_rss_median_mib": per_run(statistics.median, "rss"),
        "worker_pss_median_mib": per_run(statistics.median, "pss"),
    }
    names = sorted({s["name"] for run in raw for s in run["setup_processes"]})
    for name in names:
        figures[f"setup_{name}_uss_median_mib"] = agg([
            statistics.median([s["uss"] / MiB for s in run["setup_processes"]
                               if s["name"] == name] or [0])
            for run in raw])
        figures[f"setup_{name}_count_per_launch"] = statistics.median(
            sum(1 for s in run["setup_processes"] if s["name"] == name) / max(1, len(run["workers"]))
            for run in raw)
    return {"figures": figures, "raw": raw}


def table_rows(b6: dict, t: Table) -> None:
    for key, label in (("idle", "right after start"), ("after", "after the other benchmarks")):
        runs = b6.get(key)
        if runs:
            t.add(f"6. daemon RSS, {label}", "≤ 60 MiB", agg([x["daemon"][0]["rss"] / MiB for x in runs]),
                  " MiB", 1, 60)
            t.add(f"6. daemon USS, {label}", "—", agg([x["daemon"][0]["uss"] / MiB for x in runs]), " MiB", 1)
            t.add(f"6. whole tree PSS, {label} ({runs[0]['totals']['processes']} processes)", "—",
                  agg([x["totals"]["pss_sum"] / MiB for x in runs]), " MiB", 1)
    w = b6.get("workers")
    if w:
        f = w["figures"]
        t.add("6. USS per running long worker, median", "≤ 15 MiB", f["worker_uss_median_mib"], " MiB", 2, 15)
        t.add("6. USS per running long worker, max", "≤ 15 MiB", f["worker_uss_max_mib"], " MiB", 2, 15)
        for k, v in f.items():
            if k.startswith("setup_") and k.endswith("_uss_median_mib"):
                t.add(f"6. setup's own `{k[6:-15]}` process USS (separate)", "—", v, " MiB", 2)
