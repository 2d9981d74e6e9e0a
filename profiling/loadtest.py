"""Concurrent requests against a running skyd: latency and throughput per request kind.

    python -m profiling.loadtest --api KIND[,KIND...]|all [-n N] [--duration S | --count N]
    python -m profiling.loadtest -r KIND|all [-n N] [--duration S | --count N]
        [--async] [--setup CMD] [--socket PATH] [--json]

Kinds: status, api_status, logs (JobLogs without follow, on a cluster it launches first),
launch, exec (on clusters it launches first), jobs_launch (managed jobs: only if the
server's protocol has such an op; otherwise it says so and exits with 2).

  --api   one process, N persistent connections over the protocol (profiling._client's
          uvloop frame connections), each in a closed loop: send, wait for the answer, send
          the next. Latency: Submit written -> Result (or, with --async, -> Accepted).
  -r      real `skyctl` processes (like SkyPilot's CLI mode): N at a time, each command a
          fresh process. Latency: the process's wall time; an error is a non-zero exit.

`-n` clients run until `--count` requests in all have been answered, or until
`--duration` seconds have passed (then the ones in flight finish); default: --count N.
Long kinds use one cluster per client (lt-<tag>-l<k>: the first launch provisions it,
the next ones reuse it), so requests of different clients never wait for one another.
It talks only to --socket (or SKYD_HOST=unix://...), and at the end cancels the requests it
left running and downs every cluster it created.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import re
import secrets
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

from profiling._client import FrameConn, _close, _connect
from profiling._stats import percentile
from profiling._daemon import server_info
from skyctl.connection import Connection, ServerError, Unreachable
from skyd import protocol
from skyd.protocol import Accepted, Error, Result, Status, Submit, encode_frame
from skyd.taskspec import Task

KINDS = ("status", "api_status", "logs", "launch", "exec", "jobs_launch")
LONG = {"launch", "exec", "jobs_launch"}
RUN = "echo loadtest"


# ---- results -------------------------------------------------------------------------------

@dataclass
class KindResult:
    kind: str
    mode: str                   # "api" or "cli"
    clients: int
    wait: bool = True
    latencies: list[float] = field(default_factory=list)   # seconds, successful requests
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    note: str = ""

    @property
    def count(self) -> int:
        return len(self.latencies) + self.errors

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(text[:300])

    def to_json(self) -> dict:
        return {"kind": self.kind, "mode": self.mode, "clients": self.clients,
                "async": not self.wait, "count": self.count, "errors": self.errors,
                "elapsed_s": round(self.elapsed_s, 4),
                "throughput_per_s": round(self.count / self.elapsed_s, 2) if self.elapsed_s > 0 else 0.0,
                "latency_ms": latency_ms(self.latencies), "error_samples": self.error_samples,
                "note": self.note}


def latency_ms(latencies: list[float]) -> dict:
    xs = sorted(x * 1000 for x in latencies)
    if not xs:
        return {k: None for k in ("min", "avg", "p50", "p95", "p99", "max")}
    return {"min": xs[0], "avg": statistics.fmean(xs), "p50": percentile(xs, 50),
            "p95": percentile(xs, 95), "p99": percentile(xs, 99), "max": xs[-1]}


def render_table(results: list[KindResult]) -> str:
    head = ["kind", "mode", "clients", "count", "errors", "req/s", "min", "avg", "p50", "p95",
            "p99", "max"]
    rows = []
    for r in results:
        j = r.to_json()
        lat = j["latency_ms"]
        rows.append([r.kind + (" --async" if not r.wait else ""), r.mode, str(r.clients),
                     str(j["count"]), str(j["errors"]), f"{j['throughput_per_s']:.1f}",
                     *("-" if lat[k] is None else f"{lat[k]:.2f}"
                       for k in ("min", "avg", "p50", "p95", "p99", "max"))])
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))))
    lines.append("(latency in ms; req/s = answered requests / elapsed)")
    for r in results:
        for e in r.error_samples:
            lines.append(f"{r.kind}: error: {e}")
        if r.note:
            lines.append(f"{r.kind}: {r.note}")
    return "\n".join(lines)


# ---- what each kind sends --------------------------------------------------------------------

def unsupported(kind: str) -> str | None:
    if kind == "jobs_launch" and "jobs_launch" not in protocol.OPS:
        return ("jobs_launch: not supported by this server (its protocol has no 'jobs_launch' "
                f"op; it has: {', '.join(sorted(protocol.OPS))})")
    return None


class Plan:
    """The clusters a run needs and creates, and the requests to clean up afterwards."""

    def __init__(self, socket: str, setup: str | None):
        self.socket = socket
        self.tag = secrets.token_hex(3)
        self.task = Task(name="loadtest", setup=setup or None, run=RUN)
        self.created: list[str] = []       # clusters to down at the end
        self.request_ids: list[str] = []   # long requests accepted (cancelled if still running)
        self.job_ids: list[int] = []       # managed jobs queued (cancelled if unfinished)
        self._yaml: Path | None = None

    def cluster(self, kind: str, k: int) -> str:
        prefix = {"logs": "g", "exec": "x", "launch": "l", "jobs_launch": "j"}[kind]
        return f"lt-{self.tag}-{prefix}{0 if kind == 'logs' else k}"

    def prepare(self, kind: str, clients: int) -> None:
        """Launch (and wait for) the clusters that logs and exec run against."""
        if kind == "logs":
            names = [self.cluster(kind, 0)]
        elif kind == "exec":
            names = [self.cluster(kind, k) for k in range(clients)]
        else:
            if kind in LONG:
                self.created += [self.cluster(kind, k) for k in range(clients)]
            return
        self.created += names
        failures = launch_clusters(self.socket, names, Task(name="loadtest", run=RUN))
        if failures:
            raise RuntimeError(f"could not prepare clusters for {kind}: {failures[0]}")

    def op(self, kind: str, k: int) -> protocol.Op:
        if kind == "status":
            return protocol.ClusterStatus()
        if kind == "api_status":
            return protocol.ApiStatus()
        if kind == "logs":
            return protocol.JobLogs(cluster=self.cluster(kind, k), follow=False)
        if kind == "launch":
            return protocol.Launch(task=self.task, cluster=self.cluster(kind, k))
        if kind == "exec":
            return protocol.Exec(task=Task(name="loadtest", run=RUN), cluster=self.cluster(kind, k))
        return protocol.OPS[kind](task=self.task)  # type: ignore[call-arg]

    def yaml(self) -> Path:
        if self._yaml is None:
            fd, name = tempfile.mkstemp(prefix="skyd-loadtest-", suffix=".yaml")
            body = f"name: loadtest\nrun: {RUN}\n"
            if self.task.setup:
                body += f"setup: {json.dumps(self.task.setup)}\n"
            os.write(fd, body.encode())
            os.close(fd)
            self._yaml = Path(name)
        return self._yaml

    def argv(self, kind: str, k: int, wait: bool) -> list[str]:
        """A skyctl command line for the kind (-r mode)."""
        asy = [] if wait else ["--async"]
        if kind == "status":
            return ["status"]
        if kind == "api_status":
            return ["api", "status"]
        if kind == "logs":
            return ["logs", self.cluster(kind, k), "--no-follow"]
        if kind == "launch":
            return ["launch", "-y", "-c", self.cluster(kind, k), *asy, str(self.yaml())]
        if kind == "exec":
            return ["exec", "-c", self.cluster(kind, k), *asy, str(self.yaml())]
        return ["jobs", "launch", "-y", "-n", self.cluster(kind, k), *asy, str(self.yaml())]

    def close(self) -> None:
        if self._yaml is not None:
            self._yaml.unlink(missing_ok=True)
            self._yaml = None


# ---- blocking protocol helpers (preparation and clean-up) --------------------------------------

def _call(socket: str, op: protocol.Op, timeout: float = 120.0) -> Result | Error:
    with Connection(socket, "loadtest", timeout=timeout).connect() as c:
        frames = list(c.submit(op, True))
    return frames[-1]


def _failed(last) -> str | None:
    if isinstance(last, Error):
        return f"{last.code.value}: {last.message}"
    if isinstance(last, Result) and (last.error is not None or last.status is not Status.SUCCEEDED):
        if last.error is None:
            return last.status.value
        return f"{last.status.value}: {last.error.code.value}: {last.error.message}"
    return None


def _parallel(fn, items: list, workers: int = 8) -> list:
    if not items:
        return []
    with concurrent.futures.ThreadPoolExecutor(min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


def launch_clusters(socket: str, names: list[str], task: Task) -> list[str]:
    def one(name: str) -> str | None:
        try:
            return _failed(_call(socket, protocol.Launch(task=task, cluster=name)))
        except (Unreachable, ServerError, OSError) as e:
            return str(e)
    return [f for f in _parallel(one, names) if f]


_QUEUED_JOB = re.compile(r"Managed job (\d+) queued")


def cleanup(socket: str, plan: Plan, timeout: float = 120.0) -> dict:
    """Cancel the managed jobs not finished and the long requests still pending or running,
    then down the clusters."""
    cancelled: list[str] = []
    jobs = list(dict.fromkeys(plan.job_ids))
    for i in range(0, len(jobs), 500):
        try:
            with Connection(socket, "loadtest", timeout=timeout).connect() as c:
                left = [j.job_id for j in c.call(protocol.JobsQueue(job_ids=jobs[i:i + 500],
                                                                    skip_finished=True))]
                if left:
                    c.call(protocol.JobsCancel(job_ids=left))
        except (Unreachable, ServerError, OSError):
            pass
    ids = list(dict.fromkeys(plan.request_ids))
    for i in range(0, len(ids), 500):
        try:
            with Connection(socket, "loadtest", timeout=timeout).connect() as c:
                cancelled += c.call(protocol.ApiCancel(request_ids=ids[i:i + 500]))
        except (Unreachable, ServerError, OSError):
            pass

    def down(name: str) -> str | None:
        try:
            failure = _failed(_call(socket, protocol.Down(cluster=name), timeout))
        except (Unreachable, ServerError, OSError) as e:
            return f"{name}: {e}"
        if failure and "not_found" not in failure and "does not exist" not in failure \
                and "no cluster" not in failure.lower():
            return f"{name}: {failure}"
        return None
    names = list(dict.fromkeys(plan.created))
    errors = [e for e in _parallel(down, names) if e]
    return {"clusters": len(names), "down_errors": errors, "requests_cancelled": len(cancelled)}


# ---- API mode: one process, persistent connections ---------------------------------------------

async def api_loop(socket: str, plan: Plan, kind: str, clients: int, count: int | None,
                   duration: float | None, wait: bool, timeout: float) -> KindResult:
    res = KindResult(kind, "api", clients, wait=wait)
    payloads = [encode_frame(Submit(plan.op(kind, k), wait)) for k in range(clients)]
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    state = {"issued": 0, "last": 0.0}
    deadline = None if duration is None else time.perf_counter() + duration
    conns: list[FrameConn] = []

    def more() -> bool:
        if count is not None and state["issued"] >= count:
            return False
        return deadline is None or time.perf_counter() < deadline

    def settle() -> None:
        if not finished.done() and not any(c.inflight for c in conns):
            finished.set_result(None)

    def next_or_stop(conn: FrameConn) -> None:
        if more() and not finished.done() and not conn.closed.done():
            state["issued"] += 1
            conn.send(payloads[conn.k])
        else:
            settle()

    def on_msg(conn: FrameConn, msg) -> None:
        if isinstance(msg, Accepted):
            if kind in LONG:
                plan.request_ids.append(msg.request_id)
            if msg.job_id is not None:
                plan.job_ids.append(msg.job_id)
            if wait:
                return
        elif not isinstance(msg, (Result, Error)):
            return                      # Chunk, Notice, End: the answer is still coming
        now = time.perf_counter()
        state["last"] = now
        conn.inflight = False
        failure = _failed(msg)
        if failure:
            res.error(failure)
        else:
            res.latencies.append(now - conn.t_sent)
        next_or_stop(conn)

    def on_lost(conn: FrameConn) -> None:
        if conn.inflight:
            conn.inflight = False
            res.error("connection closed by the server")
        settle()

    conns += await _connect(socket, clients, on_msg)
    for k, c in enumerate(conns):
        c.k = k
        c.closed.add_done_callback(lambda _f, c=c: on_lost(c))
    t0 = time.perf_counter()
    for c in conns:
        next_or_stop(c)
    try:
        await asyncio.wait_for(asyncio.shield(finished), timeout)
    except asyncio.TimeoutError:
        stuck = sum(1 for c in conns if c.inflight)
        for _ in range(stuck):
            res.error(f"no answer within the --timeout of {timeout:g} s")
        res.note = f"stopped by the --timeout of {timeout:g} s"
    res.elapsed_s = (state["last"] or time.perf_counter()) - t0
    await _close(conns)
    return res


# ---- CLI mode: real skyctl processes -------------------------------------------------------------

async def cli_loop(socket: str, plan: Plan, kind: str, clients: int, count: int | None,
                   duration: float | None, wait: bool, timeout: float, skyctl: list[str]) -> KindResult:
    res = KindResult(kind, "cli", clients, wait=wait)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYD_")}
    env.update(SKYD_HOST=f"unix://{socket}", NO_COLOR="1")
    state = {"issued": 0, "last": 0.0}
    t0 = time.perf_counter()
    stop_at = t0 + timeout
    deadline = None if duration is None else t0 + duration

    def more() -> bool:
        if count is not None and state["issued"] >= count:
            return False
        now = time.perf_counter()
        return now < stop_at and (deadline is None or now < deadline)

    async def client(k: int) -> None:
        while more():
            state["issued"] += 1
            argv = [*skyctl, *plan.argv(kind, k, wait)]
            t = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=env)
            try:
                out, err = await asyncio.wait_for(proc.communicate(), max(1.0, stop_at - t))
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                res.error(f"`skyctl {' '.join(argv[len(skyctl):])}` did not finish in time")
                continue
            state["last"] = time.perf_counter()
            if proc.returncode != 0:
                tail = (err or out).decode(errors="replace").strip().splitlines()[-1:] or [""]
                res.error(f"exit {proc.returncode}: {tail[0]}")
            else:
                res.latencies.append(state["last"] - t)
                queued = _QUEUED_JOB.search(err.decode(errors="replace"))
                if queued:
                    plan.job_ids.append(int(queued.group(1)))
    await asyncio.gather(*(client(k) for k in range(clients)))
    res.elapsed_s = (state["last"] or time.perf_counter()) - t0
    return res


# ---- command line --------------------------------------------------------------------------------

def parse_kinds(text: str) -> list[str]:
    if text == "all":
        return list(KINDS)
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown kind {bad[0]!r}: use one of {', '.join(KINDS)} or all")
    return kinds


def socket_path(flag: str | None) -> str | None:
    value = flag or os.environ.get("SKYD_HOST")
    if not value:
        return None
    return value[len("unix://"):] if value.startswith("unix://") else value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m profiling.loadtest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--api", metavar="KIND", help="kinds through the protocol (comma list or all)")
    mode.add_argument("-r", "--run", metavar="KIND", help="kinds as real skyctl processes (or all)")
    ap.add_argument("-n", "--clients", type=int, default=10, help="concurrent clients (default 10)")
    stop = ap.add_mutually_exclusive_group()
    stop.add_argument("--duration", type=float, help="seconds of load per kind")
    stop.add_argument("--count", type=int, help="requests per kind (default: one per client)")
    ap.add_argument("--async", dest="async_", action="store_true",
                    help="long kinds: submit without waiting (latency until accepted)")
    ap.add_argument("--setup", help="setup command of the launched task (default: none)")
    ap.add_argument("--socket", help="the daemon's socket (default: SKYD_HOST=unix://...)")
    ap.add_argument("--timeout", type=float, default=300.0, help="give up on a kind after this")
    ap.add_argument("--skyctl", default=f"{sys.executable} -m skyctl",
                    help="the skyctl command for -r (default: this Python's -m skyctl)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    if args.clients < 1 or (args.count is not None and args.count < 1) \
            or (args.duration is not None and args.duration <= 0):
        ap.error("-n, --count and --duration must be positive")
    try:
        kinds = parse_kinds(args.api or args.run)
    except ValueError as e:
        ap.error(str(e))
    socket = socket_path(args.socket)
    if socket is None:
        ap.error("no server: give --socket PATH or set SKYD_HOST=unix:///path/skyd.sock")
    explicit = (args.api or args.run) != "all"
    notes = []
    for kind in list(kinds):
        why = unsupported(kind)
        if why:
            if explicit:
                print(f"loadtest: {why}", file=sys.stderr)
                return 2
            kinds.remove(kind)
            notes.append(why)
    info = server_info(socket, "loadtest")
    if info is None:
        return 4
    count = args.count if args.count or args.duration else args.clients

    def on_term(*_):
        raise KeyboardInterrupt          # clean up as on Ctrl-C
    signal.signal(signal.SIGTERM, on_term)
    plan = Plan(socket, args.setup)
    results: list[KindResult] = []
    clean: dict = {}
    try:
        for kind in kinds:
            wait = not (args.async_ and kind in LONG)
            print(f"loadtest: {kind} ({'api' if args.api else 'skyctl'}), {args.clients} clients, "
                  + (f"{args.duration:g} s" if args.duration else f"{count} requests")
                  + ("" if wait else ", --async"), file=sys.stderr, flush=True)
            plan.prepare(kind, args.clients)
            if args.api:
                r = uvloop.run(api_loop(socket, plan, kind, args.clients, count, args.duration,
                                        wait, args.timeout))
            else:
                r = uvloop.run(cli_loop(socket, plan, kind, args.clients, count, args.duration,
                                        wait, args.timeout, args.skyctl.split()))
            results.append(r)
    except RuntimeError as e:
        print(f"loadtest: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("loadtest: interrupted", file=sys.stderr)
        return 130
    finally:
        if plan.created or plan.request_ids or plan.job_ids:
            print(f"loadtest: cleaning up ({len(set(plan.created))} clusters)", file=sys.stderr,
                  flush=True)
            clean = cleanup(socket, plan)
        plan.close()
    if args.json:
        print(json.dumps({"socket": socket, "server": {"version": info.version, "pid": info.pid,
                                                        "long_slots": info.long_slots,
                                                        "short_slots": info.short_slots},
                          "results": [r.to_json() for r in results], "cleanup": clean,
                          "notes": notes}, indent=1))
    else:
        print(render_table(results))
        for n in notes:
            print(n)
        if clean:
            print(f"cleanup: {clean['clusters']} clusters downed, "
                  f"{clean['requests_cancelled']} requests cancelled"
                  + (f"; errors: {clean['down_errors']}" if clean["down_errors"] else ""))
    return 1 if any(r.errors for r in results) or clean.get("down_errors") else 0


if __name__ == "__main__":
    sys.exit(main())
