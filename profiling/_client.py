"""The load generator: ONE process, asyncio + uvloop, raw frames over the Unix socket.

Run by bench_core and vs_skypilot as a subprocess (run_generator below) so that its CPU use
(resource.getrusage) is its own:

    python -m profiling._client '{"mode": "short", ...}'   -> one JSON object on stdout

Modes
  short  closed loop: `clients` persistent connections, each sending one short request and
         sending the next as soon as the Result arrives; for each level a warm-up, then a
         fixed measuring window. Latency = Submit written -> Result decoded.
  burst  `clients` persistent connections share `n` Launch (or, with "op": "jobs_launch",
         JobsLaunch) submissions with wait=False;
         latency = Submit written -> Accepted decoded. Returns every accepted id.

Every loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import time

import msgspec
import uvloop

from profiling._stats import summarize
from skyd import protocol
from skyd.protocol import (Accepted, ApiStatus, ClusterStatus, Error, Hello, Launch, Result,
                           ServerMsg, Submit, Welcome, encode_frame)
from skyd.taskspec import Task

_dec = msgspec.msgpack.Decoder(ServerMsg)
_HEADER = protocol.HEADER


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cpu_of(pid: int | None) -> float | None:
    """user+system seconds of another process (all its threads), from /proc."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class FrameConn(asyncio.Protocol):
    """One client connection driven by callbacks: no coroutine per request."""

    def __init__(self, on_msg):
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.on_msg = on_msg
        self.welcomed = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.t_sent = 0.0
        self.inflight = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(encode_frame(Hello(protocol.PROTOCOL_VERSION, "bench")))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            (size,) = _HEADER.unpack_from(buf, pos)
            if n - pos - 4 < size:
                break
            msg = _dec.decode(memoryview(buf)[pos + 4:pos + 4 + size])
            pos += 4 + size
            if not self.welcomed.done():
                if isinstance(msg, Welcome):
                    self.welcomed.set_result(msg)
                else:
                    self.welcomed.set_exception(RuntimeError(f"handshake: {msg!r}"))
                continue
            self.on_msg(self, msg)
        if pos:
            del buf[:pos]

    def connection_lost(self, exc) -> None:
        if not self.welcomed.done():
            self.welcomed.set_exception(ConnectionError("closed during handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, payload: bytes) -> None:
        self.inflight = True
        self.t_sent = time.perf_counter()
        self.transport.write(payload)


async def _connect(sock: str, clients: int, on_msg) -> list[FrameConn]:
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(clients):
        _, proto = await loop.create_unix_connection(lambda: FrameConn(on_msg), sock)
        conns.append(proto)
    await asyncio.wait_for(asyncio.gather(*(c.welcomed for c in conns)), 10)
    return conns


async def _close(conns: list[FrameConn]) -> None:
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    await asyncio.wait([c.closed for c in conns], timeout=5)


# ---- short: closed-loop throughput and latency ---------------------------------------------

def _short_op(name: str):
    if name == "api_status":
        return ApiStatus()
    if name == "status":
        return ClusterStatus()
    raise ValueError(name)


async def run_short(spec: dict) -> dict:
    payload = encode_frame(Submit(_short_op(spec["op"]), True))
    warmup, duration = float(spec["warmup"]), float(spec["duration"])
    levels_out = []
    for clients in spec["levels"]:
        samples: list[tuple[float, float]] = []     # (sent, done)
        errors: list[str] = []
        state = {"sending": True}

        def on_msg(conn: FrameConn, msg, samples=samples, errors=errors, state=state) -> None:
            if isinstance(msg, (Result, Error)):
                now = time.perf_counter()
                samples.append((conn.t_sent, now))
                if isinstance(msg, Error) or (isinstance(msg, Result) and msg.error is not None):
                    if len(errors) < 20:
                        errors.append(repr(msg))
                conn.inflight = False
                if state["sending"]:
                    conn.send(payload)

        conns = await _connect(spec["socket"], clients, on_msg)
        for c in conns:
            c.send(payload)
        await asyncio.sleep(warmup)
        t_start = time.perf_counter()
        cpu0, dcpu0 = _cpu_self(), _cpu_of(spec.get("daemon_pid"))
        await asyncio.sleep(duration)
        t_end = time.perf_counter()
        cpu1, dcpu1 = _cpu_self(), _cpu_of(spec.get("daemon_pid"))
        state["sending"] = False
        deadline = time.monotonic() + 10
        while any(c.inflight for c in conns) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await _close(conns)
        window = t_end - t_start
        done_in = [(s, d) for s, d in samples if t_start <= d <= t_end]
        lat = sorted(d - s for s, d in done_in if s >= t_start)
        levels_out.append({
            "clients": clients,
            "window_s": window,
            "completed": len(done_in),
            "req_per_s": len(done_in) / window,
            "latencies_ms_summary": summarize([x * 1000 for x in lat]),
            "generator_cpu_cores": (cpu1 - cpu0) / window,
            "daemon_cpu_cores": ((dcpu1 - dcpu0) / window) if dcpu0 is not None and dcpu1 is not None else None,
            "errors": errors,
            "total_samples_incl_warmup": len(samples),
        })
    return {"mode": "short", "op": spec["op"], "levels": levels_out}


# ---- burst: --async long submissions ------------------------------------------------------

async def run_burst(spec: dict) -> dict:
    n, clients = int(spec["n"]), int(spec["clients"])
    task = Task(run=spec.get("run", "echo hello from the burst"), name="burst")
    if spec.get("op", "launch") == "jobs_launch":      # a managed job, queued by the daemon
        op = protocol.JobsLaunch(task=task, name="burst")
    else:
        op = Launch(task=task, cluster=spec["cluster"])
    payload = encode_frame(Submit(op, False))
    issued = 0
    accepted: list[str] = []
    lat: list[float] = []
    errors: list[str] = []
    finished = asyncio.get_running_loop().create_future()

    def next_or_stop(conn: FrameConn) -> None:
        nonlocal issued
        if issued < n and not finished.done():
            issued += 1
            conn.send(payload)
        elif not any(c.inflight for c in conns) and not finished.done():
            finished.set_result(None)

    def on_msg(conn: FrameConn, msg) -> None:
        now = time.perf_counter()
        conn.inflight = False
        if isinstance(msg, Accepted):
            accepted.append(msg.request_id)
            lat.append(now - conn.t_sent)
        else:
            if len(errors) < 20:
                errors.append(repr(msg))
            errors_count[0] += 1
        next_or_stop(conn)

    errors_count = [0]
    conns = await _connect(spec["socket"], clients, on_msg)
    t0 = time.perf_counter()
    cpu0, dcpu0 = _cpu_self(), _cpu_of(spec.get("daemon_pid"))
    for c in conns:
        next_or_stop(c)
    try:
        await asyncio.wait_for(asyncio.shield(finished), float(spec.get("timeout", 300)))
        timed_out = False
    except asyncio.TimeoutError:
        timed_out = True
    t1 = time.perf_counter()
    cpu1, dcpu1 = _cpu_self(), _cpu_of(spec.get("daemon_pid"))
    await _close(conns)
    elapsed = t1 - t0
    return {
        "mode": "burst", "clients": clients, "n": n, "issued": issued,
        "accepted": len(accepted), "errors": errors, "error_count": errors_count[0],
        "timed_out": timed_out, "elapsed_s": elapsed,
        "accepted_per_s": len(accepted) / elapsed if elapsed > 0 else 0.0,
        "latencies_ms_summary": summarize(sorted(x * 1000 for x in lat)),
        "generator_cpu_cores": (cpu1 - cpu0) / elapsed if elapsed > 0 else None,
        "daemon_cpu_cores": ((dcpu1 - dcpu0) / elapsed
                             if dcpu0 is not None and dcpu1 is not None and elapsed > 0 else None),
        "accepted_ids": accepted,
    }


def run_generator(spec: dict, timeout: float) -> dict:
    """This module as a process of its own, on `spec`; its JSON answer."""
    from profiling._daemon import ROOT, daemon_env
    p = subprocess.run([sys.executable, "-m", "profiling._client", json.dumps(spec)],
                       capture_output=True, text=True, timeout=timeout, env=daemon_env(),
                       cwd=str(ROOT))
    if p.returncode != 0:
        raise RuntimeError(f"load generator failed ({p.returncode}): {p.stderr[-2000:]}")
    return json.loads(p.stdout)


def main() -> int:
    spec = json.loads(sys.argv[1])
    runner = {"short": run_short, "burst": run_burst}[spec["mode"]]
    out = uvloop.run(runner(spec))
    sys.stdout.write(json.dumps(out))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
