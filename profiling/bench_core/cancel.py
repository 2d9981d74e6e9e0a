"""Figure 5: cancel of a running launch until its whole process group is gone (a setup
that starts two `sleep`s and waits), and until its worker process is gone."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from profiling._daemon import BenchDaemon, bounded_wait, pid_alive, pid_state
from profiling._report import agg
from profiling.bench_core.harness import (Config, Table, request_status, submit_async, wait_spares,
                                          worker_pid_of)
from skyd import protocol
from skyd.protocol import ApiCancel, Launch, Submit
from skyd.taskspec import Task

CANCEL_SETUP = """sleep 600 &
a=$!
sleep 600 &
b=$!
printf '%s\\n%s\\n%s\\n' "$a" "$b" "$$" > {f}.tmp && mv {f}.tmp {f}
wait
"""


def bench_cancel(cfg: Config, d: BenchDaemon, tmp: Path) -> dict:
    raw: list[list[dict]] = []
    for r in range(cfg.runs):
        samples = []
        for i in range(cfg.cancel_samples):
            wait_spares(d)
            pidfile = tmp / f"cancel-{r}-{i}.pids"
            rid = submit_async(d, Launch(task=Task(setup=CANCEL_SETUP.format(f=pidfile), name="cx"),
                                         cluster=f"x{r}-{i}"))
            if not bounded_wait(pidfile.exists, 15, 0.002):
                raise RuntimeError(f"pid file {pidfile} not written")
            pids = [int(x) for x in pidfile.read_text().split()]
            wpid = bounded_wait(lambda: worker_pid_of(d, rid), 5, 0.002)
            with d.connect() as c:
                t0 = time.perf_counter()
                protocol.send_msg(c.sock, Submit(ApiCancel(request_ids=[rid]), True))
                ack = c.read()
                t_ack = time.perf_counter()
                zombies_seen: set[int] = set()
                t_gone = t_worker_gone = None
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    now = time.perf_counter()
                    alive = []
                    for p in pids:
                        st = pid_state(p)
                        if st == "Z":
                            zombies_seen.add(p)
                        elif st is not None:
                            alive.append(p)
                    if not alive and t_gone is None:
                        t_gone = now
                    if t_worker_gone is None and wpid and not pid_alive(wpid):
                        t_worker_gone = now
                    if t_gone is not None and (t_worker_gone is not None or not wpid):
                        break
                    time.sleep(0.001)
            final = bounded_wait(lambda: request_status(d, rid).status.finished
                                 and request_status(d, rid), 10, 0.01)
            samples.append({
                "rid": rid, "pids": pids, "worker_pid": wpid,
                "ack": type(ack).__name__, "cancel_ack_ms": (t_ack - t0) * 1000,
                "cancel_to_group_gone_ms": (t_gone - t0) * 1000 if t_gone else None,
                "cancel_to_worker_gone_ms": (t_worker_gone - t0) * 1000 if t_worker_gone else None,
                "zombies_seen": sorted(zombies_seen),
                "zombie_roles": sorted({"sleep" if p in pids[:2] else "bash" for p in zombies_seen}),
                "final_status": final.status.value if final else None,
            })
        raw.append(samples)
        gone = [x["cancel_to_group_gone_ms"] for x in samples
                if x["cancel_to_group_gone_ms"] is not None]
        print(f"  [5] run {r + 1}/{cfg.runs}: cancel -> setup's processes gone "
              f"{statistics.median(gone):.2f} ms median"
              f"; zombies seen in {sum(1 for x in samples if x['zombies_seen'])}/{len(samples)}",
              flush=True)

    def med(run, k):
        xs = [x[k] for x in run if x[k] is not None]
        return statistics.median(xs) if xs else None
    figures = {k: agg([med(run, k) for run in raw])
               for k in ("cancel_to_group_gone_ms", "cancel_to_worker_gone_ms", "cancel_ack_ms")}
    figures["max_group_gone_ms"] = max((x["cancel_to_group_gone_ms"] or 1e9)
                                       for run in raw for x in run)
    figures["not_gone"] = sum(1 for run in raw for x in run if x["cancel_to_group_gone_ms"] is None)
    figures["samples_with_zombies"] = sum(1 for run in raw for x in run if x["zombies_seen"])
    figures["final_statuses"] = sorted({x["final_status"] for run in raw for x in run})
    figures["zombie_roles"] = sorted({r for run in raw for x in run for r in x["zombie_roles"]})
    return {"figures": figures, "raw": raw}


def table_rows(b5: dict, t: Table) -> None:
    f = b5["figures"]
    t.add("5. cancel → setup's process group gone (Z = gone)", "≤ 50 ms", f["cancel_to_group_gone_ms"],
          " ms", 2, 50)
    t.add("5. cancel → worker process gone", "—", f["cancel_to_worker_gone_ms"], " ms", 2)
