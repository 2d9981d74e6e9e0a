"""The soak's runs, each against a daemon of its own in a temporary state directory: crash
bursts, fuzzing, the steady mix. Each returns a Row of RELIABILITY.md's table (and details)."""

from __future__ import annotations

import random
import shutil
import signal
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from hypothesis import HealthCheck, given, settings

from profiling._daemon import BenchDaemon, kill_leftovers
from profiling.soak import fuzz_files as ff
from profiling.soak import fuzz_wire as fw
from profiling.soak import procs
from profiling.soak.burst import Burst, stop_schedule
from profiling.soak.steady import Steady
from skyctl.connection import Connection
from skyd import protocol
from skyd.taskspec import Task


@dataclass
class Row:
    test: str
    cases: int = 0                  # requests accepted, fuzz cases sent, seconds of load
    faults: str = ""                # what was injected
    accepted: int = 0
    lost: int = 0
    duplicated: int = 0
    run_twice: int = 0
    orphans: int = 0
    crashes: int = 0
    problems: list[str] = field(default_factory=list)   # every broken promise, in words
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.problems or self.lost or self.duplicated or self.run_twice or self.orphans
                    or self.crashes)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@contextmanager
def daemon(name: str, args: list[str], keep: bool = False) -> Iterator[BenchDaemon]:
    """A daemon of its own under /tmp; everything it started is killed at the end."""
    root = Path(tempfile.mkdtemp(prefix=f"skyd-soak-{name}-", dir="/tmp"))
    d = BenchDaemon(root, "state", args)
    d.start()
    try:
        yield d
    finally:
        d.stop(signal.SIGTERM)
        kill_leftovers(root, d.sessions)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _orphans_after_stop(d: BenchDaemon) -> list[str]:
    """SIGTERM the daemon: what of its helpers (not its jobs) is still alive after 10 s."""
    assert d.proc is not None
    snap = procs.started_by(d.proc.pid, d.state_dir)
    d.stop(signal.SIGTERM)
    left = procs.wait_gone(snap, 10)
    procs.kill(left)
    return procs.describe(left)


# ---- crash bursts -----------------------------------------------------------------------------

def crash(requests: int, clients: int, kills: int, duration: float, clusters: int, seed: int | None,
          keep: bool = False, log=print) -> Row:
    seed = random.randrange(1 << 30) if seed is None else seed
    args = ["--long-slots", "4", "--jobs-parallelism", "2", "--retention-hours", "-1"]
    with daemon("crash", args, keep) as d:
        burst = Burst(d, d.state_dir.parent, clients=clients, requests=requests, clusters=clusters,
                      duration=duration, seed=seed, timeout=30)
        burst.prepare()
        stops = stop_schedule(random.Random(seed), duration, kills)
        log(f"crash: seed {seed}, {requests} requests from {clients} clients over {duration:.0f}s, "
            f"{kills} kill -9 and a SIGTERM")
        t0 = time.monotonic()
        burst.run(stops)
        log(f"crash: burst done in {time.monotonic() - t0:.0f}s; waiting for everything to run")
        burst.settle(max(300.0, requests / 5))
        t = burst.verify()
        orphans = _orphans_after_stop(d)
        d.start()                       # for the fixture's clean stop
    failures = t.failures()
    return Row(test="crash burst (kill -9 at random moments, then SIGTERM)", cases=t.accepted,
               faults=f"{kills} kill -9 + 1 SIGTERM", accepted=t.accepted, lost=len(t.lost),
               duplicated=len(t.duplicated), run_twice=len(t.run_twice), orphans=len(orphans),
               crashes=t.crashes,
               problems=[f"{k}: {v[:5]}" for k, v in failures.items()] + orphans,
               details={"seed": seed, "stops": t.stops, "waiting_at_stops": t.waiting_at_stops,
                        "submitted": t.submitted, "accepted_short": t.accepted_short,
                        "refused": dict(t.refused), "unknown": t.unknown, "unreachable": t.unreachable,
                        "unacknowledged": t.unacknowledged, "interrupted": t.interrupted,
                        "cancels_acked": t.cancels_acked, "cancel_undone": t.cancel_undone,
                        "tasks_run": t.tasks_run})


# ---- fuzzing ------------------------------------------------------------------------------------

def _hypothesis(cases: int) -> settings:
    return settings(max_examples=cases, deadline=None, database=None, print_blob=True,
                    suppress_health_check=list(HealthCheck))


def fuzz_wire(cases: int, keep: bool = False, log=print) -> Row:
    row = Row(test="wire fuzzing (frames and messages)", faults="hypothesis cases")
    with daemon("wire", [], keep) as d:
        rid = list(Connection(str(d.socket), "soak").connect().submit(
            protocol.Launch(task=Task(run="true"), cluster=fw.EXISTING_CLUSTER)))[-1]
        assert isinstance(rid, protocol.Result), rid
        time.sleep(1)                                   # its job ends
        db = d.state_dir / "skyd.db"
        before = fw.db_state(db)
        sent = [0]

        @_hypothesis(cases)
        @given(case=fw.wire_cases())
        def connection(case: fw.WireCase) -> None:
            want = fw.expected(case.stream())
            if want.changes:
                return
            frames = fw.exchange(d.socket, case)
            why = fw.check(frames, want)
            assert why == "", f"{why}\nthe rules say: {want.replies}\nthe daemon said: {frames}"
            assert d.proc is not None and d.proc.poll() is None, "the daemon died"
            sent[0] += 1
            if sent[0] % 1000 == 0:
                assert fw.db_state(db) == before, "the database changed within the last 1000 cases"
                log(f"wire: {sent[0]} cases")
        _run_property(connection, row)
        if fw.db_state(db) != before:
            row.problems.append("the database changed")
        if d.proc is None or d.proc.poll() is not None:
            row.crashes += 1
        row.orphans = len(_orphans_after_stop(d))
        d.start()
    row.cases = sent[0]
    return row


def fuzz_tasks(cases: int, launches: int, keep: bool = False, log=print) -> Row:
    row = Row(test="task YAML fuzzing (skyctl and the daemon)", faults="hypothesis cases")
    with daemon("tasks", ["--long-slots", "2"], keep) as d:
        path = d.state_dir.parent / "task.yaml"
        counts = {"sent": 0, "accepted": 0, "launched": 0}
        with Connection(str(d.socket), "soak", timeout=60).connect() as conn:
            @_hypothesis(cases)
            @given(data=ff.yaml_texts(ff.task_docs()))
            def task_file(data: bytes) -> None:
                why, task = ff.check_task(conn, path, data)
                assert why == "", why
                counts["sent"] += 1
                counts["accepted"] += task is not None
                run = ff.runnable(task) if task is not None and counts["launched"] < launches else None
                if run is not None:
                    last = list(conn.submit(protocol.Launch(task=run, cluster=f"fz{counts['launched']}")))[-1]
                    counts["launched"] += 1
                    ok = (isinstance(last, protocol.Result) and last.status is protocol.Status.SUCCEEDED) or (
                        isinstance(last, protocol.Error) and last.code is protocol.ErrorCode.INVALID_TASK)
                    assert ok, f"{run} launched: {last}"
                if counts["sent"] % 1000 == 0:
                    log(f"tasks: {counts['sent']} cases")
            _run_property(task_file, row)
        if d.proc is None or d.proc.poll() is not None:
            row.crashes += 1
    row.cases, row.details = counts["sent"], counts
    return row


def fuzz_pools(cases: int, keep: bool = False, log=print) -> Row:
    row = Row(test="node-pool file fuzzing", faults="hypothesis cases")
    root = Path(tempfile.mkdtemp(prefix="skyd-soak-pools-", dir="/tmp"))
    pools = root / "pools.yaml"
    missing = f"fuzz-{uuid.uuid4().hex}"
    with daemon("pools", ["--node-pools", str(pools)], keep) as d:
        stamp = [10**18]
        with Connection(str(d.socket), "soak", timeout=60).connect() as conn:
            @_hypothesis(cases)
            @given(data=ff.yaml_texts(ff.pool_docs()))
            def pool_file(data: bytes) -> None:
                stamp[0] += 1
                ff.write_pool_file(pools, data, stamp[0])
                why = ff.check_pool_reply(ff.ask_for_missing_pool(conn, missing), pools)
                assert why == "", why
                row.cases += 1
                if row.cases % 1000 == 0:
                    log(f"pools: {row.cases} cases")
            _run_property(pool_file, row)
        if d.proc is None or d.proc.poll() is not None:
            row.crashes += 1
    shutil.rmtree(root, ignore_errors=True)
    return row


def _run_property(test, row: Row) -> None:
    """Run a hypothesis property; its (shrunk) failure becomes the row's problem."""
    try:
        test()
    except Exception as e:  # noqa: BLE001 - reported, the soak goes on with the next run
        row.problems.append(f"{type(e).__name__}: {e}"[:2000])


# ---- load held ---------------------------------------------------------------------------------

def steady(seconds: float, short_rate: float, long_rate: float, managed_rate: float,
           csv: Path | None = None, keep: bool = False, log=print) -> Row:
    args = ["--long-slots", "4", "--jobs-parallelism", "2"]
    with daemon("steady", args, keep) as d:
        load = Steady(d, short_rate=short_rate, long_rate=long_rate, managed_rate=managed_rate)
        load.prepare()

        def every_minute(s) -> None:
            if int(s.t) % 60 == 0:
                log(f"steady: {s.t:.0f}s, daemon {s.rss_mib} MiB, short p99 {s.short_p99_ms} ms")
        report = load.run(seconds, on_second=every_minute)
        orphans = _orphans_after_stop(d)
        d.start()
    if csv is not None:
        from profiling.soak.steady import write_csv
        write_csv(report.samples, csv)
    details = {k: v for k, v in report.as_dict().items() if k != "samples"}
    return Row(test="steady mix (short, long, managed)", cases=int(report.seconds),
               faults="none (load held)", accepted=report.long_total + report.managed_total,
               orphans=len(orphans), problems=orphans, details=details)
