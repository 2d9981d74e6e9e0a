"""The load generator for SkyPilot's API server: ONE process, asyncio + aiohttp, loopback.

Run by vs_skypilot with SkyPilot's own interpreter (its venv has aiohttp; ours does not
need it), so that its CPU use is its own:

    venv/bin/python -m profiling._http_client '{"mode": "short", ...}'  -> JSON on stdout

Modes, the same shapes as profiling._client's, over SkyPilot's HTTP protocol
  short  closed loop: `clients` keep-alive connections, each doing what `sky.status()` +
         `sky.get()` do: `POST /status` (the request id comes back in the
         X-Skypilot-Request-ID header), then `GET /api/get?request_id=ID` (a server-side
         long poll) until the result; warm-up, then a fixed window per level.
  burst  `clients` submitters share `n` `POST /jobs/launch` without waiting for the
         result; latency = POST sent -> response with the id. Returns every id.

Only the base URL given is contacted; the bench checks it is loopback. Every loop is
bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from urllib.parse import urlsplit

import aiohttp

from profiling._stats import summarize

ID_HEADER = "X-Skypilot-Request-ID"
USER = {"SKYPILOT_USER_ID": "b3nchb3n", "SKYPILOT_USER": "bench"}
LOOPBACK = ("127.", "::1", "localhost")


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if not host.startswith(LOOPBACK):
        raise SystemExit(f"refusing a non-loopback server: {url}")


async def status_once(s: aiohttp.ClientSession, base: str) -> str | None:
    """One status request, submitted and awaited; an error string, or None."""
    async with s.post(f"{base}/status", json={"env_vars": USER}) as r:
        await r.read()
        rid = r.headers.get(ID_HEADER)
        if r.status != 200 or not rid:
            return f"POST /status: HTTP {r.status}"
    async with s.get(f"{base}/api/get", params={"request_id": rid}) as r:
        body = await r.read()
        if r.status != 200:
            return f"GET /api/get: HTTP {r.status} {body[:200]!r}"
    return None


async def run_short(spec: dict) -> dict:
    base, warmup, duration = spec["url"], float(spec["warmup"]), float(spec["duration"])
    levels_out = []
    for clients in spec["levels"]:
        samples: list[tuple[float, float]] = []
        errors: list[str] = []
        error_count = 0
        sending = True
        conn = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as s:
            async def client() -> None:
                nonlocal error_count
                while sending:
                    t = time.perf_counter()
                    try:
                        err = await status_once(s, base)
                    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                        err = f"{type(e).__name__}: {e}"
                    samples.append((t, time.perf_counter()))
                    if err:
                        error_count += 1
                        if len(errors) < 20:
                            errors.append(err)

            tasks = [asyncio.create_task(client()) for _ in range(clients)]
            await asyncio.sleep(warmup)
            t_start, cpu0 = time.perf_counter(), _cpu_self()
            await asyncio.sleep(duration)
            t_end, cpu1 = time.perf_counter(), _cpu_self()
            sending = False
            # In-flight requests may take seconds on a loaded server: bounded wait.
            _, pending = await asyncio.wait(tasks, timeout=float(spec.get("drain_timeout", 60)))
            drain_s = time.perf_counter() - t_end
            for t in pending:       # abandoned: the server still runs them (reported)
                t.cancel()
        window = t_end - t_start
        done_in = [(a, b) for a, b in samples if t_start <= b <= t_end]
        lat = sorted((b - a) * 1000 for a, b in done_in if a >= t_start)
        levels_out.append({
            "clients": clients, "window_s": window, "completed": len(done_in),
            "req_per_s": len(done_in) / window, "latencies_ms_summary": summarize(lat),
            # Requests that started before the window and ended in it count for
            # throughput; only those wholly inside it give latencies.
            "latency_samples": len(lat), "generator_cpu_cores": (cpu1 - cpu0) / window,
            "errors": errors, "error_count": error_count,
            "total_samples_incl_warmup": len(samples),
            "drain_s": drain_s, "abandoned": len(pending),
        })
    return {"mode": "short", "op": "status", "levels": levels_out}


async def run_burst(spec: dict) -> dict:
    base, n, clients = spec["url"], int(spec["n"]), int(spec["clients"])
    body = {"task": spec.get("task", "name: burst\nrun: echo hello from the burst\n"),
            "name": "burst", "env_vars": USER}
    ids: list[str] = []
    lat: list[float] = []
    errors: list[str] = []
    issued = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        async def submitter() -> None:
            nonlocal issued
            while issued < n:
                issued += 1
                t = time.perf_counter()
                try:
                    async with s.post(f"{base}/jobs/launch", json=body) as r:
                        await r.read()
                        rid = r.headers.get(ID_HEADER)
                        if r.status == 200 and rid:
                            lat.append((time.perf_counter() - t) * 1000)
                            ids.append(rid)
                        elif len(errors) < 20:
                            errors.append(f"HTTP {r.status}")
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    if len(errors) < 20:
                        errors.append(f"{type(e).__name__}: {e}")

        t0, cpu0 = time.perf_counter(), _cpu_self()
        try:
            await asyncio.wait_for(asyncio.gather(*(submitter() for _ in range(clients))),
                                   float(spec.get("timeout", 300)))
            timed_out = False
        except asyncio.TimeoutError:
            timed_out = True
        elapsed, cpu1 = time.perf_counter() - t0, _cpu_self()
    return {"mode": "burst", "clients": clients, "n": n, "issued": issued, "accepted": len(ids),
            "errors": errors, "error_count": issued - len(ids), "timed_out": timed_out,
            "elapsed_s": elapsed, "accepted_per_s": len(ids) / elapsed if elapsed > 0 else 0.0,
            "latencies_ms_summary": summarize(sorted(lat)),
            "generator_cpu_cores": (cpu1 - cpu0) / elapsed if elapsed > 0 else None,
            "accepted_ids": ids}


def main() -> int:
    spec = json.loads(sys.argv[1])
    _check_loopback(spec["url"])
    runner = {"short": run_short, "burst": run_burst}[spec["mode"]]
    try:
        import uvloop
        out = uvloop.run(runner(spec))
    except ImportError:
        out = asyncio.run(runner(spec))
    sys.stdout.write(json.dumps(out))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
