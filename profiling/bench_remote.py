"""Remote access figures (issue 14; DESIGN.md §5: TCP+TLS short throughput ≥ 0.5 of the
Unix socket's).

    python -m profiling.bench_remote [--runs 3] [--quick] [--out bench-results/remote.json]

One real daemon listening on its Unix socket and on TCP (127.0.0.1, TLS with a self-signed
certificate made by openssl, a bearer token), measured through both in the same run,
alternating, each figure per run, median (min–max):
  1. short throughput: 50 persistent connections in a closed loop of `status`
     (ClusterStatus), from a load generator process of its own (this module, `generator`);
     TCP+TLS / Unix is the goal's ratio. The daemon's CPU per request is reported too: on
     a shared machine it moves far less than throughput, and Unix / TLS of it is the
     throughput ratio where the daemon is what limits;
  2. one call as a command makes it: a new connection, its handshake (TLS and the token
     checked, or SO_PEERCRED), one `api status`, close — the real skyctl Connection;
  3. the same call on an open connection (what a shell or a follower pays);
  4. `skyctl api status` as a process (cold start included), over both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from profiling._client import FrameConn, _cpu_of, _cpu_self
from profiling._daemon import ROOT, BenchDaemon, daemon_env, kill_leftovers
from profiling._report import agg, code_version, machine_info, markdown
from profiling._stats import summarize
from skyd import protocol
from skyd.protocol import Error, Hello, Result, Submit, encode_frame

CLIENTS = 50


# ---- the load generator (a process of its own: its CPU is not the daemon's) ---------------

class TokenConn(FrameConn):
    """The load generator's connection, with a token in its hello (TCP)."""

    token = ""

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(encode_frame(Hello(protocol.PROTOCOL_VERSION, "bench", self.token)))


async def short_loop(spec: dict) -> dict:
    loop = asyncio.get_running_loop()
    payload = encode_frame(Submit(protocol.ClusterStatus(), True))
    samples: list[tuple[float, float]] = []
    errors: list[str] = []
    sending = [True]

    def on_msg(conn: FrameConn, msg) -> None:
        if isinstance(msg, (Result, Error)):
            samples.append((conn.t_sent, time.perf_counter()))
            if (isinstance(msg, Error) or msg.error is not None) and len(errors) < 10:
                errors.append(repr(msg))
            conn.inflight = False
            if sending[0]:
                conn.send(payload)

    TokenConn.token = spec.get("token", "")
    ctx = None
    if spec.get("ca"):
        ctx = ssl.create_default_context(cafile=spec["ca"])
    conns = []
    for _ in range(spec["clients"]):
        if spec.get("port"):
            _, c = await loop.create_connection(lambda: TokenConn(on_msg), "127.0.0.1",
                                                spec["port"], ssl=ctx,
                                                server_hostname="localhost" if ctx else None)
        else:
            _, c = await loop.create_unix_connection(lambda: TokenConn(on_msg), spec["socket"])
        conns.append(c)
    await asyncio.wait_for(asyncio.gather(*(c.welcomed for c in conns)), 30)
    for c in conns:
        c.send(payload)
    await asyncio.sleep(spec["warmup"])
    t0, dcpu0, gcpu0 = time.perf_counter(), _cpu_of(spec["daemon_pid"]), _cpu_self()
    await asyncio.sleep(spec["duration"])
    t1, dcpu1, gcpu1 = time.perf_counter(), _cpu_of(spec["daemon_pid"]), _cpu_self()
    sending[0] = False
    deadline = time.monotonic() + 10
    while any(c.inflight for c in conns) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    for c in conns:
        c.transport.close()
    done = [(s, d) for s, d in samples if t0 <= d <= t1]
    return {"req_per_s": len(done) / (t1 - t0),
            "latency_ms": summarize(sorted((d - s) * 1000 for s, d in done if s >= t0)),
            "daemon_cpu_cores": None if dcpu0 is None or dcpu1 is None
            else (dcpu1 - dcpu0) / (t1 - t0),
            "generator_cpu_cores": (gcpu1 - gcpu0) / (t1 - t0),
            "errors": errors}


def _generator(spec: dict) -> dict:
    p = subprocess.run([sys.executable, "-m", "profiling.bench_remote", "generator",
                        json.dumps(spec)], capture_output=True, text=True, env=daemon_env(),
                       cwd=str(ROOT), timeout=spec["warmup"] + spec["duration"] + 120)
    if p.returncode != 0:
        raise RuntimeError(f"load generator failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout)


# ---- single calls -------------------------------------------------------------------------

def _client_env(token: str, ca: Path) -> dict[str, str]:
    return {"SKYD_TOKEN": token, "SKYD_TLS_CA": str(ca)}


def call_latencies(address, env: dict[str, str], n: int, fresh: bool) -> list[float]:
    """Seconds per `api status`: each on a new connection (`fresh`), or all on one."""
    from skyctl.connection import Connection
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        out = []
        conn = None if fresh else Connection(address, "bench", timeout=30).connect()
        for _ in range(n):
            t0 = time.perf_counter()
            if fresh:
                with Connection(address, "bench", timeout=30).connect() as c:
                    c.call(protocol.ApiStatus(limit=10))
            else:
                assert conn is not None
                conn.call(protocol.ApiStatus(limit=10))
            out.append(time.perf_counter() - t0)
        if conn is not None:
            conn.close()
        return out
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cli_latencies(host: str, env: dict[str, str], n: int) -> list[float]:
    """Seconds per `skyctl api status` process (the command's cold start included)."""
    full = {**daemon_env(), **env, "SKYD_HOST": host}
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "skyctl", "api", "status"], env=full,
                           capture_output=True, text=True, timeout=60, cwd=str(ROOT))
        out.append(time.perf_counter() - t0)
        if p.returncode != 0:
            raise RuntimeError(f"skyctl api status over {host} failed: {p.stderr[-500:]}")
    return out


# ---- the run --------------------------------------------------------------------------------

def _cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True,
                   capture_output=True, timeout=60)
    return cert, key


def run(runs: int, quick: bool) -> dict:
    from skyctl.endpoint import parse
    root = Path(tempfile.mkdtemp(prefix="skyd-bremote-", dir="/tmp"))
    cert, key = _cert(root)
    d = BenchDaemon(root, "d", ["--tcp", "127.0.0.1:0", "--tls-cert", str(cert),
                                "--tls-key", str(key), "--connections-per-user", "0"])
    warmup, duration = (1.0, 3.0) if quick else (2.0, 8.0)
    calls, clis = (100, 5) if quick else (300, 15)
    figures: dict[str, list] = {k: [] for k in (
        "unix_req_per_s", "tls_req_per_s", "ratio", "unix_p50_ms", "tls_p50_ms",
        "unix_fresh_ms", "tls_fresh_ms", "unix_warm_ms", "tls_warm_ms", "unix_cli_ms",
        "tls_cli_ms", "unix_daemon_cpu", "tls_daemon_cpu", "unix_generator_cpu",
        "tls_generator_cpu", "unix_cpu_us", "tls_cpu_us", "cpu_ratio")}
    try:
        d.start()
        info = d.call(protocol.ApiInfo())
        port = int(info.tcp.rpartition(":")[2])
        token = subprocess.run([sys.executable, "-m", "skyd", "token", "--state-dir",
                                str(d.state_dir), "--socket", str(d.socket), "create", "bench"],
                               capture_output=True, text=True, env=daemon_env(), cwd=str(ROOT),
                               check=True).stdout.strip()
        env = _client_env(token, cert)
        tcp = parse(f"tcp://localhost:{port}")
        base = {"clients": CLIENTS, "warmup": warmup, "duration": duration,
                "daemon_pid": d.pid}
        for _ in range(runs):
            unix = _generator({**base, "socket": str(d.socket)})
            tls = _generator({**base, "port": port, "token": token, "ca": str(cert)})
            for name, r in (("unix", unix), ("tls", tls)):
                if r["errors"]:
                    raise RuntimeError(f"{name}: {r['errors']}")
                figures[f"{name}_req_per_s"].append(r["req_per_s"])
                figures[f"{name}_p50_ms"].append(r["latency_ms"]["p50"])
                figures[f"{name}_daemon_cpu"].append(r["daemon_cpu_cores"])
                figures[f"{name}_generator_cpu"].append(r["generator_cpu_cores"])
            figures["ratio"].append(tls["req_per_s"] / unix["req_per_s"])
            for name, r in (("unix", unix), ("tls", tls)):     # daemon CPU per request, µs
                figures[f"{name}_cpu_us"].append(r["daemon_cpu_cores"] / r["req_per_s"] * 1e6)
            figures["cpu_ratio"].append(figures["unix_cpu_us"][-1] / figures["tls_cpu_us"][-1])
            for name, addr, e in (("unix", str(d.socket), {}), ("tls", tcp, env)):
                figures[f"{name}_fresh_ms"].append(
                    statistics.median(call_latencies(addr, e, calls, True)) * 1000)
                figures[f"{name}_warm_ms"].append(
                    statistics.median(call_latencies(addr, e, calls, False)) * 1000)
            figures["unix_cli_ms"].append(
                statistics.median(cli_latencies(f"unix://{d.socket}", {}, clis)) * 1000)
            figures["tls_cli_ms"].append(
                statistics.median(cli_latencies(f"tcp://localhost:{port}", env, clis)) * 1000)
    finally:
        d.stop()
        kill_leftovers(root, d.sessions)
    return {"machine": machine_info(), "code": code_version(), "runs": runs, "quick": quick,
            "clients": CLIENTS, "figures": {k: agg(v) for k, v in figures.items()}}


def _fmt(a: dict, digits: int = 0) -> str:
    if a["median"] is None:
        return "—"
    f = f"{{:,.{digits}f}}"
    return f"{f.format(a['median'])} ({f.format(a['min'])}–{f.format(a['max'])})"


def table(res: dict) -> str:
    f = res["figures"]
    rows = [
        ["short throughput, 50 clients, req/s", _fmt(f["unix_req_per_s"]),
         _fmt(f["tls_req_per_s"]), _fmt(f["ratio"], 2)],
        ["… its latency p50, ms", _fmt(f["unix_p50_ms"], 2), _fmt(f["tls_p50_ms"], 2), ""],
        ["… daemon CPU, cores", _fmt(f["unix_daemon_cpu"], 2), _fmt(f["tls_daemon_cpu"], 2), ""],
        ["… load generator CPU, cores", _fmt(f["unix_generator_cpu"], 2),
         _fmt(f["tls_generator_cpu"], 2), ""],
        ["… daemon CPU per request, µs (ratio: Unix / TLS)", _fmt(f["unix_cpu_us"], 1),
         _fmt(f["tls_cpu_us"], 1), _fmt(f["cpu_ratio"], 2)],
        ["`api status`: connect, handshake, call, close, ms", _fmt(f["unix_fresh_ms"], 2),
         _fmt(f["tls_fresh_ms"], 2), ""],
        ["`api status` on an open connection, ms", _fmt(f["unix_warm_ms"], 3),
         _fmt(f["tls_warm_ms"], 3), ""],
        ["`skyctl api status` process, ms", _fmt(f["unix_cli_ms"], 1), _fmt(f["tls_cli_ms"], 1),
         ""],
    ]
    return markdown(["figure", "Unix socket", "TCP + TLS + token", "TLS / Unix"], rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["generator"]:
        import uvloop
        print(json.dumps(uvloop.run(short_loop(json.loads(argv[1])))))
        return 0
    p = argparse.ArgumentParser(prog="python -m profiling.bench_remote",
                                description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="shorter windows, fewer calls")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results" / "remote.json")
    a = p.parse_args(argv)
    res = run(a.runs, a.quick)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1))
    print(table(res))
    print(f"\nraw results: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
