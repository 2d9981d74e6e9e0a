"""Core benchmarks of skyd and skyctl, measured against real daemons on this machine.

    python -m profiling.bench_core [--runs N] [--quick] [--out FILE.json] [--only 1,2,...]

Starts its own daemons in a temporary directory under /tmp, measures, stops everything it
started, prints a Markdown table (each figure: the median over runs, with min and max)
and writes every raw sample to --out (default bench-results/core.json).

  1  `skyctl status` as a fresh process: a regular install in a throw-away venv (the goal),
     the editable install (context), interpreter floors and -X importtime
  2  short requests (api_status, status): 1/10/50 persistent clients, req/s and latency
  3  --async Launch bursts accepted per second, each one durable (kill -9, count rows)
  4  accepted -> running in its worker, on an idle daemon (new and reused cluster)
  5  cancel of a running launch until its whole process group is gone
  6  memory: the daemon idle and after the rest; USS per running long worker
  7  `api status` with 100,000 requests stored; start until answering

Only the Unix socket is used; every loop is bounded in count and in time.
"""

# One module per figure (cold_start, short_load, async_burst, start_latency, cancel, memory,
# large_store): how it is measured and its rows of the table. What several of them use is in
# harness.py; the run itself (daemons, order, clean-up) and the table in cli.py.

from profiling.bench_core.cli import main

__all__ = ["main"]
