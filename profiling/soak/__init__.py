"""The reliability soak: what tests/reliability checks in CI, at sizes CI cannot afford.

    python3 -m profiling.soak crash  [--requests 10000] [--clients 8] [--kills 20]
    python3 -m profiling.soak fuzz   [--cases 100000] [--kind wire,task,pools]
    python3 -m profiling.soak steady [--minutes 10]
    python3 -m profiling.soak all    (the three, at their default sizes)

Modules: burst.py (crash bursts: kill -9 and SIGTERM under several clients, then every
promise checked), fuzz_wire.py / fuzz_files.py (hypothesis strategies for frames, task YAML
and node-pool files, and the checks of one case), steady.py (a steady mix with latency and
memory every second), procs.py (what a daemon started, for the orphan checks), cli.py.
RELIABILITY.md has the figures and how to reproduce each row.
"""
