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

# The package: kinds.py (what each kind sends, the clusters it needs, the clean-up),
# loops.py (the closed loops: over the protocol, or as skyctl processes), results.py
# (latency and throughput per kind, the table), cli.py (the command).

from profiling.loadtest.cli import main

__all__ = ["main"]
