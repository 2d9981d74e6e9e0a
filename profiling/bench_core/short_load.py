"""Figure 2: short requests (api_status, status) from 1, 10 and 50 persistent clients of
the load generator (profiling._client): requests per second and latency."""

from __future__ import annotations

from profiling._client import run_generator
from profiling._daemon import BenchDaemon
from profiling._report import agg
from profiling.bench_core.harness import Config, Table, fmt

LOAD_HEADER = ["op", "clients", "req/s", "p50", "p95", "p99", "max", "generator CPU", "daemon CPU"]


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
                f"daemon {lv['daemon_cpu_cores'] or 0:.2f} cores" for lv in out["levels"]),
                flush=True)
    figures: dict[str, dict] = {}
    for op, runs in raw.items():
        for i, clients in enumerate(cfg.load_levels):
            lv = [run[i] for run in runs]
            key = f"{op}@{clients}"
            figures[key] = {
                "req_per_s": agg([x["req_per_s"] for x in lv]),
                **{q: agg([x["latencies_ms_summary"][q] for x in lv])
                   for q in ("p50", "p95", "p99", "max")},
                "generator_cpu_cores": agg([x["generator_cpu_cores"] for x in lv]),
                "daemon_cpu_cores": agg([x["daemon_cpu_cores"] for x in lv]),
                "errors": sum(len(x["errors"]) for x in lv),
            }
    return {"figures": figures, "raw": raw}


def table_rows(b2: dict, t: Table) -> None:
    f = b2["figures"]
    for op in ("api_status", "status"):
        k = f"{op}@50"
        if k in f:
            t.add(f"2. `{op}` 50 clients: throughput", "≥ 5,000/s", f[k]["req_per_s"], "/s", 0, 5000, True)
            t.add(f"2. `{op}` 50 clients: p99 latency", "≤ 25 ms", f[k]["p99"], " ms", 2, 25)


def load_table(res: dict) -> list[list[str]]:
    rows: list[list[str]] = []
    b2 = res.get("2")
    if not b2:
        return rows
    for key, f in b2["figures"].items():
        op, clients = key.split("@")
        rows.append([f"`{op}`", clients, fmt(f["req_per_s"], "", 0), fmt(f["p50"], "", 2),
                     fmt(f["p95"], "", 2), fmt(f["p99"], "", 2), fmt(f["max"], "", 1),
                     fmt(f["generator_cpu_cores"], "", 2), fmt(f["daemon_cpu_cores"], "", 2)])
    return rows
