"""Cluster benchmarks: launch and exec end to end, on the `local` infra and on an `ssh` host.

    python -m profiling.bench_clusters [--runs N] [--quick] [--out FILE.json] [--only A,B,...]

Starts real sshd servers on loopback addresses (tests/sshd.py's SshHosts: 127.0.0.2-4, a
throw-away login with an empty home) and a real `skyd serve` whose node pools are those
hosts, measures, stops everything it started, prints Markdown tables (each figure: the
median over runs, with min and max) and writes every raw sample to --out (default
bench-results/clusters.json).

  launch  `launch` of a trivial task (workdir of 20 small files, `setup: true`,
          `run: echo hi`) on a new cluster, local and on ONE ssh host: Submit(wait=True) ->
          Result -> the job's first output chunk through JobLogs(follow=True), as
          `skyctl launch` does; each phase timed by the arrival at the client of the lines
          the worker prints. A fresh cluster per sample, `down` (untimed) after it. The ssh
          samples have the ssh ControlMasters warm (a previous launch less than
          ControlPersist=120 s ago), plus one per run with every master closed first.
  exec    `exec` of `run: echo hi` on a warm (UP) cluster: Submit(Exec, wait=True) ->
          Result -> first output chunk; each job finishes before the next exec.
  burst   20 concurrent `--async` launches of 1-node local clusters (distinct names) until
          every job has finished, observed by one follower per launch (ApiLogs, then
          JobLogs); and 3 concurrent launches on the 3-host ssh pool plus a 4th, submitted
          once those 3 are accepted, that must fail with "free host(s)".
  ssh     the cost of one ssh command on this machine: `ssh host true` over a fresh
          connection and over the multiplexed ControlMaster (skyd's own ssh options),
          `bash -s` with a small script and rsync of the workdir over the master.

Only loopback addresses and Unix sockets are used; every loop is bounded in count and in
time. Needs root (the throw-away login) and sshd, ssh, ssh-keygen and rsync.
"""

# One module per figure: launch.py (launch, and exec on a warm cluster), burst.py (concurrent
# launches, local and on the ssh pool), ssh_cost.py (one ssh command): how each is measured
# and its tables. What they share (following a request as skyctl does, ssh ControlMasters) is
# in harness.py; the run itself (sshd hosts, the daemon, clean-up) in cli.py.

from profiling.bench_clusters.cli import main

__all__ = ["main"]
