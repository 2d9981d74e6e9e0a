"""Figure 7: `api status` with 100,000 requests stored (in-process and as a fresh `skyctl`
process), and a daemon's start until it answers, on an empty and on that state dir."""

from __future__ import annotations

import random
import sqlite3
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec

from profiling._daemon import BenchDaemon, kill_leftovers
from profiling._report import agg
from profiling.bench_core.harness import Config, Table, client_env, time_cmd
from skyd import protocol
from skyd.protocol import ApiStatus, Error, Launch
from skyd.taskspec import Resources, Task

_enc = msgspec.msgpack.Encoder()
QUERIES = ("ApiStatus() (active only)", "ApiStatus(all_statuses=True) limit 50",
           "ApiStatus(request_ids=[8-char prefix])")


def fill_db(db: Path, rows: int, seed: int = 7) -> list[str]:
    rnd = random.Random(seed)
    now = time.time()
    users = [(0, "root")] * 7 + [(1000 + i, f"user{i}") for i in range(3)]
    task = Task(name="train", setup="pip install -r requirements.txt",
                run="python train.py --epochs $EPOCHS", envs={"EPOCHS": 3},
                resources=Resources(cpus="2+"))
    ids = []
    data = []
    created = now - 20 * 3600              # inside the 24 h retention: not collected at start
    step = (20 * 3600 - 120) / rows
    for i in range(rows):
        rid = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        ids.append(rid)
        uid, user = rnd.choice(users)
        cluster = f"c{rnd.randrange(200)}"
        kind = rnd.random()
        if kind < 0.6:
            name, op = "launch", Launch(task=task, cluster=cluster)
        elif kind < 0.85:
            name, op = "exec", protocol.Exec(task=task, cluster=cluster)
        else:
            name, op = "down", protocol.Down(cluster=cluster)
        st = rnd.random()
        status = "succeeded" if st < 0.9 else ("failed" if st < 0.97 else "cancelled")
        c_at = created + i * step
        s_at = c_at + rnd.uniform(0.001, 0.05)
        f_at = s_at + rnd.uniform(0.5, 60)
        if status == "succeeded":
            result = _enc.encode(protocol.LaunchResult(cluster=cluster, job_id=rnd.randrange(1, 50))
                                 if name != "down" else cluster)
            error = None
        elif status == "failed":
            err = Error(protocol.ErrorCode.FAILED, "setup failed on node 0 (local) with exit status 1")
            result, error = _enc.encode(err), err.message
        else:
            result, error = _enc.encode(None), None
        data.append((rid, name, "long", status, uid, user, cluster, _enc.encode(op), c_at, s_at,
                     f_at, result, error))
    con = sqlite3.connect(str(db), timeout=30)
    try:
        with con:
            con.executemany(
                "INSERT INTO requests (id, name, queue, status, uid, user, cluster, op, created_at,"
                " started_at, finished_at, result, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", data)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    return ids


def unique_prefix(ids: list[str]) -> str:
    prefixes: dict[str, int] = {}
    for i in ids:
        prefixes[i[:8]] = prefixes.get(i[:8], 0) + 1
    for i in ids[len(ids) // 2:]:
        if prefixes[i[:8]] == 1:
            return i[:8]
    raise RuntimeError("no unique 8-char prefix")


def bench_big(cfg: Config, root: Path, registry: list[BenchDaemon], tmp: Path) -> dict:
    raw: dict[str, Any] = {"start_empty_s": [], "start_100k_s": [], "queries": [], "cli": []}
    # start until answering on an empty state dir (a fresh one each run)
    raw["start_empty_pyc_s"] = []
    pyc = str(tmp / "pycache-daemon")
    warm = BenchDaemon(root, "ewarm", pycache=pyc)     # fills the bytecode cache, untimed
    registry.append(warm)
    warm.start()
    warm.stop()
    kill_leftovers(warm.state_dir, warm.sessions)
    for r in range(cfg.runs):
        for key, cache in (("start_empty_s", None), ("start_empty_pyc_s", pyc)):
            d = BenchDaemon(root, f"e{r}{'p' if cache else ''}", pycache=cache)
            registry.append(d)
            raw[key].append(d.start())
            d.stop()
            kill_leftovers(d.state_dir, d.sessions)
    big = BenchDaemon(root, "big")
    registry.append(big)
    big.start()
    big.stop()
    t0 = time.perf_counter()
    ids = fill_db(big.db_path, cfg.big_rows)
    raw["fill_s"] = time.perf_counter() - t0
    con = sqlite3.connect(str(big.db_path))
    mine = {r[0] for r in con.execute("SELECT id FROM requests WHERE uid = 0")}
    con.close()
    prefix = unique_prefix([i for i in ids if i in mine])
    raw["prefix"] = prefix
    env = client_env(big)
    ops = {"ApiStatus() (active only)": ApiStatus(),
           "ApiStatus(all_statuses=True) limit 50": ApiStatus(all_statuses=True),
           "ApiStatus(request_ids=[8-char prefix])": ApiStatus(request_ids=[prefix])}
    for r in range(cfg.runs):
        raw["start_100k_s"].append(big.start())
        q = {}
        with big.connect() as c:
            for name, op in ops.items():
                xs = []
                for _ in range(cfg.query_reps):
                    t = time.perf_counter()
                    value = c.call(op)
                    xs.append((time.perf_counter() - t) * 1000)
                q[name] = {"ms": xs, "returned": len(value)}
        raw["queries"].append(q)
        cli = [time_cmd([sys.executable, "-m", "skyctl", "api", "status", "-a"], env, str(tmp),
                        check_out=b"SUCCEEDED") * 1000 for _ in range(cfg.cli_reps)]
        raw["cli"].append(cli)
        big.stop()
        print(f"  [7] run {r + 1}/{cfg.runs}: start with {cfg.big_rows} rows "
              f"{raw['start_100k_s'][-1] * 1000:.0f} ms (empty {raw['start_empty_s'][r] * 1000:.0f} ms); "
              + ", ".join(f"{k} {statistics.median(v['ms']):.2f} ms ({v['returned']} rows)"
                          for k, v in q.items())
              + f"; skyctl api status -a {statistics.median(cli):.1f} ms", flush=True)
    kill_leftovers(big.state_dir, big.sessions)
    figures = {
        "start_empty_ms": agg([x * 1000 for x in raw["start_empty_s"]]),
        "start_100k_ms": agg([x * 1000 for x in raw["start_100k_s"]]),
        "start_empty_pyc_ms": agg([x * 1000 for x in raw["start_empty_pyc_s"]]),
        "skyctl_api_status_a_ms": agg([statistics.median(x) for x in raw["cli"]]),
    }
    for name in ops:
        figures[name] = agg([statistics.median(q[name]["ms"]) for q in raw["queries"]])
        figures[name + " returned"] = raw["queries"][0][name]["returned"]
    return {"figures": figures, "raw": raw}


def table_rows(b7: dict, t: Table) -> None:
    f = b7["figures"]
    for name in QUERIES:
        t.add(f"7. 100k rows: {name}, in-process", "≤ 100 ms", f[name], " ms", 2, 100)
    t.add("7. 100k rows: `skyctl api status -a`, fresh process", "≤ 100 ms", f["skyctl_api_status_a_ms"],
          " ms", 1, 100)
    t.add("7. daemon start until answering, 100k rows", "≤ 500 ms", f["start_100k_ms"], " ms", 0, 500)
    t.add("7. daemon start until answering, empty state dir", "≤ 500 ms", f["start_empty_ms"], " ms", 0, 500)
    t.add("7. daemon start until answering, empty, bytecode cached (what-if)", "(≤ 500 ms)",
          f["start_empty_pyc_ms"], " ms", 0, 500)
