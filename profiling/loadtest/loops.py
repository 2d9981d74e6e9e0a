"""The closed loops of one kind: N clients, each sending its next request as soon as the
previous one is answered, until --count or --duration. API mode: one process, persistent
frame connections (profiling._client's); CLI mode: real skyctl processes."""

from __future__ import annotations

import asyncio
import os
import re
import time

from profiling._client import FrameConn, _close, _connect
from profiling.loadtest.kinds import LONG, Plan, failure_of
from profiling.loadtest.results import KindResult
from skyd.protocol import Accepted, Error, Result, Submit, encode_frame

_QUEUED_JOB = re.compile(r"Managed job (\d+) queued")


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
        failure = failure_of(msg)
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
                   duration: float | None, wait: bool, timeout: float,
                   skyctl: list[str]) -> KindResult:
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
