"""Figure 3: `--async` Launch bursts accepted per second from 1 and 50 clients, each one
durable: after the burst the daemon is killed with -9 and its rows are counted."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from profiling._client import run_generator
from profiling._daemon import BenchDaemon, bounded_wait, kill_leftovers
from profiling._report import agg
from profiling.bench_core.harness import Config, Table, request_status, submit_async, worker_pid_of
from skyd import protocol
from skyd.protocol import Launch
from skyd.taskspec import Task


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
            hold = submit_async(d, Launch(task=Task(setup="sleep 600", name="hold"),
                                          cluster="hold"))
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
                                 "durable": (rows["rows"] == len(ids) + 1
                                             and rows["accepted_missing"] == 0)}
            kill_leftovers(d.state_dir, d.sessions)
            raw[key].append(out)
            print(f"  [3] run {r + 1}/{cfg.runs} {clients} client(s), long slots "
                  f"{out['long_slots']}: "
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


def table_rows(b3: dict, t: Table) -> None:
    f = b3["figures"]
    for k, label in (("50", "50 clients"), ("1", "1 client"),
                     ("50d", "50 clients, default (sized) long slots")):
        if k not in f:
            continue
        goal = ("≥ 5,000/s", 5000) if k == "50" else (("(≥ 5,000/s)", 5000) if k == "50d" else ("—", None))
        t.add(f"3. `--async` Launch accepted/s, {label}", goal[0], f[k]["accepted_per_s"], "/s", 0, goal[1], True)
        t.add(f"3. submit latency p50, {label}", "—", f[k]["p50_ms"], " ms", 2)
        t.add(f"3. submit latency p99, {label}", "—", f[k]["p99_ms"], " ms", 2)
        runs = len(b3["raw"][k])
        ok = sum(1 for x in b3["raw"][k] if x["durability"]["durable"])
        t.row(f"3. durable after kill -9, {label}: rows == accepted", "all",
              f"{ok}/{runs} runs; {f[k]['lost_total']} accepted requests lost",
              str(runs), "met" if ok == runs else f"missed: {runs - ok} run(s) lost rows")
