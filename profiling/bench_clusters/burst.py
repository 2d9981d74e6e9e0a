"""Figure `burst`: 20 concurrent `--async` launches of local clusters, each observed to its
job's end by a follower; and 3 concurrent launches on the 3-host ssh pool plus a 4th that
must fail for want of a free host."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

import msgspec

from profiling._daemon import BenchDaemon
from profiling._report import agg, markdown
from profiling._stats import percentile
from profiling.bench_clusters.harness import (SAMPLE_TIMEOUT, Config, Failed, close_masters, clusters,
                                              down, fmt, launch_task)
from skyctl.connection import Connection
from skyd import protocol
from skyd.protocol import Accepted, ApiLogs, Chunk, Error, JobLogs, Launch, LaunchResult, Result


def async_launch_observed(d: BenchDaemon, op: Launch, t0: float, out: dict) -> None:
    """What a user's `skyctl launch --async` does (Submit wait=False -> Accepted), observed by a
    follower on the same connection: the request's log to its Result, then the job's log to
    its end. Times in ms from the common start `t0`."""
    try:
        with Connection(str(d.socket), "bench", timeout=SAMPLE_TIMEOUT * 2).connect() as c:
            out["sent"] = (time.perf_counter() - t0) * 1000
            frames = list(c.submit(op, False))
            if not isinstance(frames[-1], Accepted):
                raise Failed(f"not accepted: {frames[-1]!r}")
            out["accepted"] = (time.perf_counter() - t0) * 1000
            rid = frames[-1].request_id
            result = None
            for msg in c.submit(ApiLogs(request_id=rid, follow=True)):
                if isinstance(msg, Result):
                    result = msg
                elif isinstance(msg, Error):
                    raise Failed(msg.message)
            out["launch_done"] = (time.perf_counter() - t0) * 1000
            if result is None or result.status is not protocol.Status.SUCCEEDED:
                raise Failed(f"launch failed: {result!r}")
            lr = msgspec.convert(result.value, LaunchResult)
            data = bytearray()
            for msg in c.submit(JobLogs(cluster=lr.cluster, job_id=lr.job_id, follow=True)):
                if isinstance(msg, Chunk):
                    out.setdefault("first_output", (time.perf_counter() - t0) * 1000)
                    data += msg.data
                elif isinstance(msg, Result):
                    out["job_end"] = (time.perf_counter() - t0) * 1000
                    out["job_status"] = msgspec.convert(msg.value, protocol.JobRecord).status
            if b"hi" not in data or out.get("job_status") not in ("SUCCEEDED", "RUNNING"):
                raise Failed(f"job: {out.get('job_status')} {bytes(data)!r}")
    except Exception as e:  # noqa: BLE001 - recorded, checked by the caller
        out["error"] = f"{type(e).__name__}: {e}"


def run_threads(targets: list[Callable[[], None]], timeout: float) -> None:
    threads = [threading.Thread(target=f, daemon=True) for f in targets]
    for th in threads:
        th.start()
    deadline = time.monotonic() + timeout
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    if any(th.is_alive() for th in threads):
        raise Failed(f"threads still running after {timeout:.0f} s")


def bench_burst_local(cfg: Config, d: BenchDaemon, workdir: Path, run: int) -> dict:
    n = cfg.burst_local
    names = [f"b{run}-{i}" for i in range(n)]
    outs: list[dict] = [{} for _ in names]
    gate = threading.Barrier(n + 1)
    t0_box: list[float] = []

    def one(i: int) -> Callable[[], None]:
        def go() -> None:
            gate.wait(10)
            async_launch_observed(d, Launch(task=launch_task(workdir, "local"), cluster=names[i]),
                                  t0_box[0], outs[i])
        return go

    threads = [threading.Thread(target=one(i), daemon=True) for i in range(n)]
    for th in threads:
        th.start()
    t0_box.append(time.perf_counter())
    gate.wait(10)
    deadline = time.monotonic() + 240
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    alive = sum(th.is_alive() for th in threads)
    errors = [o["error"] for o in outs if "error" in o]
    for name in clusters(d):
        down(d, name)
    if alive or errors:
        raise Failed(f"burst: {alive} still running, errors: {errors[:3]}")
    wall = max(o["job_end"] for o in outs)
    res = {"samples": outs, "wall_ms": wall}
    for key in ("accepted", "launch_done", "first_output", "job_end"):
        xs = sorted(o[key] - o["sent"] for o in outs)
        res[key] = {"p50": percentile(xs, 50), "p90": percentile(xs, 90), "max": xs[-1],
                    "min": xs[0]}
    print(f"  [burst] run {run + 1} local x{n}: all jobs finished after {wall:.0f} ms; launch "
          f"Result p50 {res['launch_done']['p50']:.0f} max {res['launch_done']['max']:.0f} ms; "
          f"job end p50 {res['job_end']['p50']:.0f} max {res['job_end']['max']:.0f} ms",
          flush=True)
    return res


def bench_burst_ssh(cfg: Config, d: BenchDaemon, workdir: Path, run: int, cold: bool) -> dict:
    tag = "c" if cold else "w"
    names = [f"p{run}{tag}-{i}" for i in range(3)]
    masters_closed = close_masters(d) if cold else None
    outs: list[dict] = [{} for _ in names]
    fourth: dict = {}
    accepted = threading.Semaphore(0)
    t0 = time.perf_counter()

    def one(i: int) -> Callable[[], None]:
        def go() -> None:
            o = outs[i]
            try:
                with Connection(str(d.socket), "bench", timeout=SAMPLE_TIMEOUT).connect() as c:
                    o["sent"] = (time.perf_counter() - t0) * 1000
                    result = None
                    op = Launch(task=launch_task(workdir, "ssh/p"), cluster=names[i])
                    for msg in c.submit(op, True):
                        if isinstance(msg, Accepted):
                            o["accepted"] = (time.perf_counter() - t0) * 1000
                            accepted.release()
                        elif isinstance(msg, Result):
                            result = msg
                    o["launch_done"] = (time.perf_counter() - t0) * 1000
                    if result is None or result.status is not protocol.Status.SUCCEEDED:
                        raise Failed(f"launch {names[i]}: {result!r}")
                    lr = msgspec.convert(result.value, LaunchResult)
                    for msg in c.submit(JobLogs(cluster=lr.cluster, job_id=lr.job_id)):
                        if isinstance(msg, Chunk):
                            o.setdefault("first_output", (time.perf_counter() - t0) * 1000)
                        elif isinstance(msg, Result):
                            o["job_end"] = (time.perf_counter() - t0) * 1000
                            o["job_status"] = msgspec.convert(msg.value, protocol.JobRecord).status
            except Exception as e:  # noqa: BLE001
                o["error"] = f"{type(e).__name__}: {e}"
                accepted.release()
        return go

    def fourth_launch() -> None:
        for _ in range(3):
            if not accepted.acquire(timeout=30):
                fourth["error"] = "the first three were not accepted within 30 s"
                return
        try:
            with Connection(str(d.socket), "bench", timeout=SAMPLE_TIMEOUT).connect() as c:
                t1 = time.perf_counter()
                fourth["sent"] = (t1 - t0) * 1000
                op = Launch(task=launch_task(workdir, "ssh/p"), cluster=f"p{run}{tag}-x")
                for msg in c.submit(op, True):
                    if isinstance(msg, Accepted):
                        fourth["accepted_ms"] = (time.perf_counter() - t1) * 1000
                    elif isinstance(msg, (Result, Error)):
                        fourth["failed_ms"] = (time.perf_counter() - t1) * 1000
                        err = msg if isinstance(msg, Error) else msg.error
                        fourth["status"] = getattr(msg, "status", "error frame")
                        fourth["message"] = err.message if err is not None else None
        except Exception as e:  # noqa: BLE001
            fourth["error"] = f"{type(e).__name__}: {e}"

    run_threads([one(0), one(1), one(2), fourth_launch], 120)
    left = clusters(d)
    for name in left:
        down(d, name)
    errors = [o["error"] for o in outs + [fourth] if "error" in o]
    if errors:
        raise Failed(f"ssh pool burst: {errors}")
    if "free host(s)" not in (fourth.get("message") or ""):
        raise Failed(f"the 4th launch did not fail with 'free host(s)': {fourth}")
    res = {"samples": outs, "fourth": fourth, "clusters_after": left, "cold": cold,
           "masters_closed": masters_closed,
           "wall_first_output_ms": max(o["first_output"] for o in outs),
           "wall_job_end_ms": max(o["job_end"] for o in outs)}
    for key in ("launch_done", "first_output", "job_end"):
        xs = sorted(o[key] - o["sent"] for o in outs)
        res[key] = {"p50": percentile(xs, 50), "max": xs[-1], "min": xs[0]}
    firsts = ", ".join(f"{o['first_output'] - o['sent']:.0f}" for o in outs)
    how = "masters closed first" if cold else "masters warm"
    print(f"  [burst] run {run + 1} ssh x3 ({how}): first outputs {firsts} ms; "
          f"4th failed after {fourth['failed_ms']:.1f} ms: {fourth['message']!r}; "
          f"clusters left: {left}", flush=True)
    return res


def tables(res: dict) -> list[str]:
    """Markdown of the local burst and of the ssh pool's, where measured."""
    out: list[str] = []
    runs = res.get("burst_local", [])
    if runs:
        rows = [["all 20 jobs finished (wall, from the first Submit)",
                 fmt(agg([r["wall_ms"] for r in runs]), 0)]]
        for key, label in (("accepted", "Submit -> Accepted"),
                           ("launch_done", "Submit -> launch Result"),
                           ("first_output", "Submit -> job's first output"),
                           ("job_end", "Submit -> job finished")):
            for q in ("p50", "p90", "max"):
                rows.append([f"per launch: {label}, {q}", fmt(agg([r[key][q] for r in runs]), 0)])
        out += ["### 20 concurrent --async launches, local, distinct clusters (ms)", "",
                markdown(["figure", "median (min–max)"], rows), ""]
    variants = [(k, label) for k, label in (("burst_ssh", "masters warm"),
                                             ("burst_ssh_cold", "no master (closed first)"))
                if res.get(k)]
    if variants:
        specs = [("3 launches: last first output (wall)",
                  lambda r: r["wall_first_output_ms"], 0),
                 ("3 launches: per launch Submit -> first output, p50",
                  lambda r: r["first_output"]["p50"], 0),
                 ("3 launches: per launch Submit -> first output, max",
                  lambda r: r["first_output"]["max"], 0),
                 ("3 launches: per launch Submit -> Result, max",
                  lambda r: r["launch_done"]["max"], 0),
                 ("4th launch: Submit -> failed with 'free host(s)'",
                  lambda r: r["fourth"]["failed_ms"], 1)]
        rows = [[name] + [fmt(agg([f(r) for r in res[k]]), dg) for k, _ in variants]
                for name, f, dg in specs]
        out += ["### 3 concurrent launches on the 3-host ssh pool, and a 4th (ms)", "",
                markdown(["figure"] + [label for _, label in variants], rows)]
        out += [f"- the 4th's message: {res[variants[0][0]][0]['fourth']['message']!r}", ""]
    return out
