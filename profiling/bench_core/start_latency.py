"""Figure 4: accepted -> running in its worker, on an idle daemon (a new and a reused
cluster): when the worker's first line is in the request log and when it reaches the
client; and a live follow of a setup that prints, then sleeps."""

from __future__ import annotations

import os
import select
import socket
import statistics
import time
from pathlib import Path

import msgspec

from profiling._daemon import BenchDaemon
from profiling._report import agg
from profiling.bench_core.harness import Config, Table, wait_spares
from skyd import protocol
from skyd.protocol import Accepted, Chunk, Error, Hello, Launch, Result, ServerMsg, Submit, encode_frame
from skyd.taskspec import Task

_dec = msgspec.msgpack.Decoder(ServerMsg)
WORKER_FIRST = (b"Provisioning cluster", b"Reusing cluster")


def follow_launch(d: BenchDaemon, op: Launch, timeout: float = 20.0, poll: float = 0.0005) -> dict:
    """Submit with wait=True; timestamp frames and the request log's first worker line."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(d.socket))
    try:
        protocol.send_msg(s, Hello(protocol.PROTOCOL_VERSION, "bench"))
        _dec.decode(protocol.recv_frame(s))
        s.setblocking(False)
        buf = bytearray()
        t: dict[str, float | None] = {"sent": None, "accepted": None, "chunk_daemon_running": None,
                                      "chunk_worker": None, "file_worker": None, "result": None}
        rid = None
        logpath: Path | None = None
        last_size = -1
        status = None
        t["sent"] = time.perf_counter()
        s.sendall(encode_frame(Submit(op, True)))
        deadline = time.monotonic() + timeout
        while t["result"] is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"launch did not finish in {timeout}s: {t}")
            r, _, _ = select.select([s], [], [], poll)
            now = time.perf_counter()
            if r:
                data = s.recv(1 << 20)
                if not data:
                    raise RuntimeError("connection closed")
                buf += data
                while len(buf) >= 4:
                    (size,) = protocol.HEADER.unpack_from(buf, 0)
                    if len(buf) < 4 + size:
                        break
                    msg = _dec.decode(bytes(buf[4:4 + size]))
                    del buf[:4 + size]
                    if isinstance(msg, Accepted):
                        t["accepted"] = now
                        rid = msg.request_id
                        logpath = d.request_log(rid)
                    elif isinstance(msg, Chunk):
                        if t["chunk_daemon_running"] is None and b"[skyd] running" in msg.data:
                            t["chunk_daemon_running"] = now
                        if t["chunk_worker"] is None and any(m in msg.data for m in WORKER_FIRST):
                            t["chunk_worker"] = now
                    elif isinstance(msg, (Result, Error)):
                        t["result"] = now
                        status = getattr(msg, "status", None)
            if logpath is not None and t["file_worker"] is None:
                try:
                    size = os.stat(logpath).st_size
                except OSError:
                    size = -1
                if size != last_size and size > 0:
                    last_size = size
                    content = logpath.read_bytes()
                    if any(m in content for m in WORKER_FIRST):
                        t["file_worker"] = now
    finally:
        s.close()
    acc = t["accepted"]

    def since(k: str) -> float | None:
        return (t[k] - acc) * 1000 if t[k] is not None and acc is not None else None
    return {"rid": rid, "status": getattr(status, "value", status),
            "submit_to_accepted_ms": (acc - t["sent"]) * 1000 if acc else None,
            "accepted_to_worker_line_in_log_ms": since("file_worker"),
            "accepted_to_worker_chunk_ms": since("chunk_worker"),
            "accepted_to_daemon_running_chunk_ms": since("chunk_daemon_running"),
            "accepted_to_result_ms": since("result")}


def bench_start_latency(cfg: Config, d: BenchDaemon) -> dict:
    raw: dict[str, list] = {"new": [], "reused": []}
    for r in range(cfg.runs):
        for kind in raw:
            samples = []
            for i in range(cfg.latency_samples):
                wait_spares(d)
                time.sleep(0.05)
                cluster = f"n{r}-{i}" if kind == "new" else "warm"
                samples.append(follow_launch(d, Launch(task=Task(setup="true", name="lat"),
                                                       cluster=cluster)))
            raw[kind].append(samples)
            med = statistics.median(x["accepted_to_worker_line_in_log_ms"] for x in samples)
            medc = statistics.median(x["accepted_to_worker_chunk_ms"] for x in samples)
            print(f"  [4] run {r + 1}/{cfg.runs} {kind} cluster: accepted -> worker line in log "
                  f"{med:.2f} ms median; -> first worker Chunk {medc:.2f} ms median", flush=True)
    # Live following: a setup that prints, then sleeps 1 s. The worker's first line is in the
    # request log within milliseconds; a client following the request should see it as soon.
    raw["live_1s"] = []
    for r in range(cfg.runs):
        wait_spares(d)
        x = follow_launch(d, Launch(task=Task(setup="echo first-line; sleep 1; echo last-line",
                                              name="live"), cluster=f"lf{r}"))
        raw["live_1s"].append([x])
        print(f"  [4] run {r + 1}/{cfg.runs} live follow (setup sleeps 1 s): worker line in log "
              f"{x['accepted_to_worker_line_in_log_ms']:.1f} ms, at the client "
              f"{x['accepted_to_worker_chunk_ms']:.1f} ms, result "
              f"{x['accepted_to_result_ms']:.1f} ms",
              flush=True)
    figures = {}
    for kind, runs in raw.items():
        figures[kind] = {k: agg([statistics.median(x[k] for x in run) for run in runs])
                         for k in ("accepted_to_worker_line_in_log_ms",
                                   "accepted_to_worker_chunk_ms",
                                   "accepted_to_daemon_running_chunk_ms", "accepted_to_result_ms",
                                   "submit_to_accepted_ms")}
        figures[kind]["failed"] = sum(1 for run in runs for x in run if x["status"] != "succeeded")
    return {"figures": figures, "raw": raw}


def table_rows(b4: dict, t: Table) -> None:
    f = b4["figures"]
    for kind in ("new", "reused"):
        if kind in f:
            t.add(f"4. accepted → worker's first line in request log, {kind} cluster", "≤ 10 ms",
                  f[kind]["accepted_to_worker_line_in_log_ms"], " ms", 2, 10)
            t.add(f"4. accepted → first worker Chunk at client, {kind} cluster", "≤ 10 ms",
                  f[kind]["accepted_to_worker_chunk_ms"], " ms", 2, 10)
            t.add(f"4. accepted → Result at client, {kind} cluster (setup `true`)", "—",
                  f[kind]["accepted_to_result_ms"], " ms", 2)
    if "live_1s" in f:
        t.add("4. live follow, setup prints then sleeps 1 s: worker line in request log", "≤ 10 ms",
              f["live_1s"]["accepted_to_worker_line_in_log_ms"], " ms", 1, 10)
        t.add("4. live follow, setup prints then sleeps 1 s: same line at the client", "≤ 10 ms",
              f["live_1s"]["accepted_to_worker_chunk_ms"], " ms", 1, 10)
