"""Side by side with SkyPilot's API server, in one run: the same workloads against skyd and
against `skypilot==0.14.1`, on this machine, one server at a time.

    python -m profiling.vs_skypilot [--runs 3] [--quick] [--burst 20] [--mem-cap-gib 12]
                                    [--venv DIR] [--out bench-results/vs_skypilot.json]

Set-up (before anything is measured)
  - SkyPilot in its own virtualenv outside the project (default
    ~/.cache/skyd-bench/skypilot-0.14.1; created with `pip install skypilot==0.14.1
    aiohttp` if missing: the only step that needs the package registry).
  - skyd as a user gets it: a regular `pip install` of this tree in a throw-away venv.
  - Then the bench re-runs itself in a new network namespace (`unshare --net`) that has
    only loopback: neither server can reach anything but 127.0.0.1 (`--no-netns` to skip).

Per run, for each server in turn (fresh state each time: a new state dir for skyd, a new
throw-away HOME for SkyPilot, usage collection off, local mode, 127.0.0.1:46580):
  start        spawn until it answers (skyd: a handshake; SkyPilot: `sky api start`
               until `GET /api/health` answers, and until the command returns)
  idle         after a settle time, its whole process tree: processes, RSS, USS, PSS
  cli status   `skyctl status` / `sky status` as fresh processes, median of each run
  short        closed-loop status requests at 1, 10 and 50 concurrent clients, twice:
               on the fresh server ("first pass"), then again ("second pass"). skyd: the
               `status` op over its socket; SkyPilot: `POST /status` + `GET /api/get`.
  burst        N `--async` long requests from one submitter: skyd `jobs_launch`,
               SkyPilot `POST /jobs/launch` (it fails them without cloud credentials,
               which still measures acceptance and queueing; skyd's really run `echo` on
               the local infra). Accept rate, submit latency, until none is active.
  stop         skyd: SIGTERM; SkyPilot: `sky api stop`; then everything left is killed.

Guarding the machine: each server runs in a box (profiling/_box.py: a memory cgroup with
a hard limit of --mem-cap-gib + 2 GiB where possible), a sampler watches the box's RSS
every 0.5 s and, past --mem-cap-gib, cancels the burst and kills the box (the run is then
reported as aborted). The burst size for SkyPilot is capped at --burst-cap (default 50:
its local mode forks a ~200 MiB process per request). At the end every box is emptied.

Prints the tables (median over runs, min–max, and the ratio skyd / SkyPilot of the
medians) and writes everything to --out. A benchmark, not a test: about 6 minutes a run
here (3 runs: 18 minutes).
"""

# The package: config.py (versions, the port, a run's sizes), prepare.py (SkyPilot's venv, the
# network namespace), servers.py (skyd and SkyPilot behind one interface), sessions.py (one
# run of one server, its memory guard), tables.py (figures, ratios, notes), cli.py (the run).

from profiling.vs_skypilot.cli import main
from profiling.vs_skypilot.tables import figures, notes, ratio, table

__all__ = ["figures", "main", "notes", "ratio", "table"]
