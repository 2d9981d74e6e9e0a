"""The run: one daemon shared by figures 1, 2, 4, 5 and 6, fresh ones for 3, 6's idle
runs and 7; everything it started is stopped; then the table and the raw JSON."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import profiling.bench_core as package
from profiling._daemon import BenchDaemon, kill_leftovers, ours
from profiling._report import code_version, machine_info, markdown, stop_on_signal
from profiling.bench_core import (async_burst, cancel, cold_start, large_store, memory, short_load,
                                  start_latency)
from profiling.bench_core.harness import Config, Table, launch_wait, wait_spares
from skyd.protocol import Launch
from skyd.taskspec import Task

# The table's figures in order: the key in the results, the module that adds its rows.
FIGURES = [("1", cold_start), ("2", short_load), ("3", async_burst), ("4", start_latency),
           ("5", cancel), ("6", memory), ("7", large_store)]


def build_table(res: dict) -> list[list[str]]:
    t = Table()
    for key, figure in FIGURES:
        if res.get(key):
            figure.table_rows(res[key], t)
    return t.rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m profiling.bench_core", description=package.__doc__,
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
        res["6"] = {"idle": [memory.tree_memory(main_d)]}
        launch_wait(main_d, Launch(task=Task(setup="true", name="warm"), cluster="warm"))
        if "1" in only:
            print("[1] skyctl status as a fresh process", flush=True)
            res["1"] = cold_start.bench_cold(cfg, main_d, tmp)
        if "2" in only:
            print("[2] short requests under load", flush=True)
            res["2"] = short_load.bench_short(cfg, main_d)
        if "4" in only:
            print("[4] accepted -> running in its worker", flush=True)
            res["4"] = start_latency.bench_start_latency(cfg, main_d)
        if "5" in only:
            print("[5] cancel until the process group is gone", flush=True)
            res["5"] = cancel.bench_cancel(cfg, main_d, tmp)
        if "6" in only:
            print("[6] memory per running long worker", flush=True)
            res["6"]["workers"] = memory.bench_worker_memory(cfg, main_d)
            wait_spares(main_d)
            time.sleep(0.5)
            res["6"]["after"] = [memory.tree_memory(main_d)]
            # idle-after-start on fresh daemons, one per further run
            for r in range(1, cfg.runs):
                d = BenchDaemon(root, f"i{r}")
                registry.append(d)
                d.start()
                wait_spares(d)
                time.sleep(0.5)
                res["6"]["idle"].append(memory.tree_memory(d))
                d.stop()
                kill_leftovers(d.state_dir, d.sessions)
        else:
            res.pop("6")
        main_d.stop()
        kill_leftovers(main_d.state_dir, main_d.sessions)
        if "3" in only:
            print("[3] --async submission bursts, durable", flush=True)
            res["3"] = async_burst.bench_burst(cfg, root, registry)
        if "7" in only:
            print("[7] api status with 100,000 stored requests; start until answering", flush=True)
            res["7"] = large_store.bench_big(cfg, root, registry, tmp)
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
    load = short_load.load_table(res)
    text = ["", "## Results (median over runs, min–max in brackets)", "",
            markdown(Table.HEADER, table)]
    if load:
        text += ["", "### Short requests under load (per level; latency in ms; CPU in cores)", "",
                 markdown(short_load.LOAD_HEADER, load)]
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
